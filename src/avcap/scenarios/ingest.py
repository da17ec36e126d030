"""`ScenarioDB.ingest`: scenario records into the table, incrementally, and the indexes after.

Keyed by clip_id: a clip the table does not hold is added; a clip it holds is replaced when the
new record's `labelled_at` is later (an old file ingested again never overwrites a newer label);
otherwise the record is `unchanged`. A records file whose size and mtime match the ingest log is
not read again. Error records are counted, not indexed. A malformed line is reported (file:line
and field) and counted, and the rest of its file is still ingested.

Three threads share the work. A reader thread parses the next block of lines (reader.py:
Arrow's JSON reader, the line checks only for what it refuses) while the ingesting thread
de-duplicates, embeds (sentence by sentence: embed.py) and builds the rows of this one, column
by column in Arrow; a writer thread streams the rows into one LanceDB write per COMMIT_ROWS
(Lance releases the GIL). COMMIT_ROWS is the fragment size that `optimize`'s compaction aims at,
so the fragments a big ingest leaves are not rewritten later (a smaller fragment stays a
compaction candidate: with 1,000,000-row fragments the `optimize` after 10k new rows onto 1.1M
took 25-31 s; now 4-5 s). A re-labelled clip is replaced with `merge_insert` once the rows
before it are committed. Then every index is brought up to date (`update_indexes`).

Measured on bench_scale's 1.1M records (2-core box, load 0.4-1.4): 17,962 records/s end to end,
of which reading + embedding + writing 27 s and the index builds 34 s (the full-text index's,
which uses one core); 92 s of CPU in all (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from avcap.core.records import WriterLock, write_json_atomic
from avcap.scenarios import rows as R
from avcap.scenarios.embed import ScenarioVectors
from avcap.scenarios.query import letter_column
from avcap.scenarios.reader import RecordReader
from avcap.scenarios.record import (
    AttributeQuestion,
    ScenarioFormatError,
    questions_for,
    read_questions,
    scenario_files,
)
from avcap.scenarios.store import LOCK_FILE, TABLE, ScenarioDBError, now

CHUNK_BYTES = 64 << 20  # bytes of record lines parsed, embedded and handed to the writer at a time (~12,000 records)
COMMIT_ROWS = 1 << 20  # new rows per LanceDB write: one fragment of the size optimize's compaction aims at, so never rewritten
VECTOR_INDEX_MIN_ROWS = 100_000  # below this, exact (flat) vector search is fast enough (~15 ms at 100k rows)
VECTOR_PARTITION_ROWS = 4096  # rows per IVF partition (269 at 1.1M rows); update_indexes says why
VECTOR_SAMPLE_RATE = 64  # rows per partition that train its centroid
MAX_PROBLEMS_PER_FILE = 5  # malformed lines printed per file; the rest are counted

Progress = Callable[[int, float], None]


class IngestReport:
    """What one ingest did (`summary()` is the CLI's line; `to_json()` goes in the ingest log)."""

    FIELDS = ("added", "replaced", "unchanged", "older", "errors", "malformed", "files_read", "files_skipped",
              "records_read", "total", "seconds", "index_seconds")

    def __init__(self) -> None:
        self.added = 0
        self.replaced = 0
        self.unchanged = 0  # the database already holds this record (or a newer label of the clip)
        self.older = 0  # of `unchanged`: records older than the clip's indexed label (the newer kept)
        self.errors = 0  # error records (the clip could not be labelled): counted, not indexed
        self.malformed = 0  # lines that are not a valid scenario record
        self.files_read = 0
        self.files_skipped = 0  # unchanged since the last ingest (size and mtime)
        self.records_read = 0
        self.total = 0  # rows in the database afterwards
        self.seconds = 0.0
        self.index_seconds = 0.0
        self.problems: list[str] = []  # one line per malformed line (MAX_PROBLEMS_PER_FILE per file)
        self.error_records: list[str] = []  # "clip_id: error" (the first 20)

    def summary(self) -> str:
        rate = self.records_read / self.seconds if self.seconds > 0 else 0.0
        older = f" ({self.older} older than the indexed label)" if self.older else ""
        mal = f", {self.malformed} malformed" if self.malformed else ""
        return (f"added {self.added}, replaced {self.replaced}, unchanged {self.unchanged}{older}, "
                f"errors {self.errors}{mal}, total {self.total}; {self.records_read} records from "
                f"{self.files_read} files ({self.files_skipped} unchanged files skipped) in {self.seconds:.1f} s "
                f"({rate:,.0f} records/s, indexes {self.index_seconds:.1f} s)")

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.FIELDS}, "problems": self.problems[:20],
                "error_records": self.error_records}


def ingest(db, paths: Iterable[str | Path], progress: Optional[Progress] = None, force: bool = False) -> IngestReport:
    """Ingest into `db` (a ScenarioDB); see ScenarioDB.ingest."""
    files = resolve(paths)
    with WriterLock(db.path, LOCK_FILE, "avcap index"):
        db.refresh()
        questions = merge_questions(db, files)
        report = IngestReport()
        run = _Run(db, questions, report)
        t0 = time.monotonic()  # the rate counts reading, embedding and writing, not loading libraries
        log = db.meta.setdefault("files", {})
        try:
            for f, _ in files:
                st = f.stat()
                key = str(f.resolve())
                seen = log.get(key)
                if not force and seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
                    report.files_skipped += 1
                    report.unchanged += seen.get("records", 0)
                    continue
                n = run.file(f, progress, t0)
                log[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "records": n, "ingested_at": now()}
                report.files_read += 1
        finally:
            run.appender.finish()
        t_index = time.monotonic()
        if report.added or report.replaced or not indexes_current(db):
            update_indexes(db)
        report.index_seconds = time.monotonic() - t_index
        tbl = db.table()
        report.total = tbl.count_rows() if tbl is not None else 0
        report.seconds = time.monotonic() - t0
        db.meta["counts"] = {"scenarios": report.total}
        db.meta["updated_at"] = now()
        entry = {"at": now(), "inputs": [str(f) for f, _ in files],
                 **{k: v for k, v in report.to_json().items() if k not in ("problems", "error_records")}}
        db.meta.setdefault("ingests", []).append(entry)
        write_json_atomic(db.meta_path, db.meta)
        db.refresh()
    return report


def resolve(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(records file, its questions.json) for every input; directories expand to their files."""
    out: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = scenario_files(p)
            if not files:
                raise ScenarioDBError(f"{p}: no scenarios.jsonl or scenarios/*.jsonl (not a label output directory)")
        elif p.is_file():
            files = [p]
        else:
            raise ScenarioDBError(f"{p}: no such file or directory")
        out += [(f, questions_for(f)) for f in files]
    if not out:
        raise ScenarioDBError("nothing to index: give label output directories or scenario record files")
    return out


def merge_questions(db, files: list[tuple[Path, Path]]) -> dict[str, AttributeQuestion]:
    """The database's attribute questions plus those of the inputs' questions.json; one attribute
    name must mean one question with one set of choices everywhere. New attributes get their
    columns in the table (null in the rows it holds)."""
    have = {a["name"]: (AttributeQuestion.model_validate(a), str(db.meta_path)) for a in db.meta.get("attributes", [])}
    for qpath in dict.fromkeys(q for _, q in files):
        try:
            qs = read_questions(qpath)
        except ScenarioFormatError as exc:
            raise ScenarioDBError(str(exc)) from None
        for i, a in enumerate(qs.attributes):
            if set(R.BASE_COLUMNS) & {a.name, letter_column(a.name)} or a.name.endswith("_letter") and a.name[:-7] in have:
                raise ScenarioDBError(f"{qpath}: attributes.{i}.name: {a.name!r} collides with a database column; "
                                      "rename the attribute")
            old = have.get(a.name)
            if old is None:
                have[a.name] = (a, str(qpath))
            elif old[0].model_dump() != a.model_dump():
                what = next(k for k in ("question_id", "question", "choices") if getattr(old[0], k) != getattr(a, k))
                raise ScenarioDBError(f"{qpath}: attributes.{i}.{what}: attribute {a.name!r} differs from the one in "
                                      f"{old[1]} ({getattr(a, what)!r} vs {getattr(old[0], what)!r}); one name must "
                                      "mean one question in a database")
    merged = {name: q for name, (q, _) in have.items()}
    known = {a["name"] for a in db.meta.get("attributes", [])}
    new = [n for n in merged if n not in known]
    if new:
        tbl = db.table()
        if tbl is not None:
            tbl.add_columns({c: "CAST(NULL AS STRING)" for n in new for c in (n, letter_column(n))})
        db.meta["attributes"] = [q.model_dump() for q in merged.values()]
    return merged


def _parse_time(s: Optional[str]) -> datetime:
    try:
        t = datetime.fromisoformat(str(s).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def newer(a: Optional[str], b: Optional[str]) -> bool:
    """Is labelled_at `a` strictly later than `b`? (ISO 8601; a naive time counts as UTC.)"""
    return _parse_time(a) > _parse_time(b)


class _Keys:
    """clip_id -> labelled_at of every row the table holds or this ingest wrote, in Arrow (no
    Python object per row: 1.1M keys take ~45 MB), with a sorted array of the ids' hashes in
    front: a block whose ids hash to nothing known (every block of a new database, every new
    clip) is answered from the hashes alone, where matching each block against all the keys
    took up to 0.26 s at 1.1M keys. Entries are prepended, so a lookup (the first match) sees
    the latest labelled_at of a replaced clip."""

    def __init__(self, tbl) -> None:
        self._ids: list = []
        self._at: list = []
        self._cache = None
        self._hashes = np.empty(0, dtype=np.int64)  # sorted
        if tbl is not None:
            have = tbl.search().select(["clip_id", "labelled_at"]).limit(None).to_arrow()
            self.add(have.column("clip_id"), have.column("labelled_at"))

    @staticmethod
    def _hash(ids) -> np.ndarray:
        return np.fromiter(map(hash, ids.to_pylist()), np.int64, len(ids))

    def lookup(self, ids):
        """The labelled_at of each clip id (a pyarrow array), null where there is none."""
        import pyarrow as pa
        import pyarrow.compute as pc

        h = self._hash(ids)
        at = np.searchsorted(self._hashes, h).clip(0, max(len(self._hashes) - 1, 0))
        maybe = self._hashes[at] == h if len(self._hashes) else np.zeros(len(h), dtype=bool)
        if not maybe.any():
            return pa.nulls(len(ids), pa.string())
        if self._cache is None:
            self._cache = (pa.concat_arrays(self._ids[::-1]), pa.concat_arrays(self._at[::-1]))
        all_ids, all_at = self._cache
        return all_at.take(pc.index_in(ids, value_set=all_ids))

    def add(self, ids, at) -> None:
        ids = ids.combine_chunks() if hasattr(ids, "combine_chunks") else ids
        self._ids.append(ids)
        self._at.append(at.combine_chunks() if hasattr(at, "combine_chunks") else at)
        self._cache = None
        h = np.sort(self._hash(ids))
        self._hashes = np.insert(self._hashes, np.searchsorted(self._hashes, h), h)


class _Appender:
    """New rows streamed into one LanceDB write (create_table the first time, then add), from a
    background thread fed through a short queue; `finish` commits it."""

    def __init__(self, db, questions: dict[str, AttributeQuestion], dim: int):
        self.db = db
        self.schema = R.schema(questions, dim)
        self.pending = 0  # rows handed over since the last commit
        self._q: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def put(self, table) -> None:
        room = COMMIT_ROWS - self.pending
        if table.num_rows > room:  # a commit of exactly COMMIT_ROWS rows, the rest to the next one
            self.put(table.slice(0, room))
            self.put(table.slice(room))
            return
        if self._thread is None:
            self._start()
        while True:
            try:
                self._q.put(table, timeout=0.5)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    self.finish()  # raises the writer's error
        self.pending += table.num_rows
        if self.pending >= COMMIT_ROWS:
            self.finish()

    def finish(self) -> None:
        if self._thread is None:
            return
        while self._thread.is_alive():
            try:
                self._q.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread, self._q, self.pending = None, None, 0
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _start(self) -> None:
        import pyarrow as pa

        q: queue.Queue = queue.Queue(maxsize=2)

        def batches() -> Iterator:
            while (table := q.get()) is not None:
                yield from table.to_batches()

        def write() -> None:
            try:
                reader = pa.RecordBatchReader.from_batches(self.schema, batches())
                tbl = self.db.table()
                if tbl is None:
                    self.db._table = self.db._db().create_table(TABLE, data=reader, schema=self.schema)
                else:
                    tbl.add(reader)
            except BaseException as exc:  # handed to the ingesting thread by finish()
                self._error = exc

        self._q = q
        self._thread = threading.Thread(target=write, name="avcap-index-writer", daemon=True)
        self._thread.start()


class _Run:
    """One ingest's state: the questions, the reader, the embedder, the keys, the writer, the report."""

    def __init__(self, db, questions: dict[str, AttributeQuestion], report: IngestReport):
        self.db = db
        self.questions = questions
        self.report = report
        self.reader = RecordReader(list(questions), questions_for)
        self.vectors = ScenarioVectors(db.embedder)
        db._db()
        self.keys = _Keys(db.table())
        self.appender = _Appender(db, questions, db.embedder.dim)

    def file(self, f: Path, progress: Optional[Progress], t0: float) -> int:
        """Ingest one records file; returns its number of records (error records included)."""
        report = self.report
        n_ok = shown = 0
        malformed_before = report.malformed
        for block in _prefetched(self.reader.blocks(f, CHUNK_BYTES)):
            for line in block.problems:
                report.malformed += 1
                if shown < MAX_PROBLEMS_PER_FILE:
                    report.problems.append(line)
                    shown += 1
            report.records_read += block.count
            n_ok += block.count
            recs = self._latest(self._without_errors(block.records))
            if recs.num_rows:
                self._write(recs, f)
            if progress:
                progress(report.records_read, time.monotonic() - t0)
        more = report.malformed - malformed_before - shown
        if more > 0:
            report.problems.append(f"{f}: {more} more malformed lines not shown")
        return n_ok

    def _without_errors(self, recs):
        """Error records counted (the first 20 named) and left out."""
        import pyarrow.compute as pc

        err = pc.is_valid(recs["error"])
        k = pc.sum(err).as_py() or 0
        if not k:
            return recs
        self.report.errors += k
        room = 20 - len(self.report.error_records)
        if room > 0:
            bad = recs.filter(err).slice(0, room)
            self.report.error_records += [f"{c}: {e}" for c, e in zip(bad["clip_id"].to_pylist(), bad["error"].to_pylist())]
        return recs.filter(pc.invert(err))

    def _latest(self, recs):
        """One record a clip: a later line replaces an earlier one of the same clip only when it
        is newer (each repeat counts as `unchanged`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = recs["clip_id"]
        if pc.count_distinct(ids).as_py() == recs.num_rows:
            return recs
        counts = pc.value_counts(ids)
        dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        rows = np.flatnonzero(pc.is_in(ids, value_set=dup).to_numpy(zero_copy_only=False))
        kept: dict[str, tuple[int, str]] = {}
        keep = np.ones(recs.num_rows, dtype=bool)
        for r, cid, at in zip(rows, ids.take(rows).to_pylist(), recs["labelled_at"].take(rows).to_pylist()):
            prev = kept.get(cid)
            if prev is None:
                kept[cid] = (r, at)
                continue
            self.report.unchanged += 1
            if newer(at, prev[1]):
                keep[prev[0]] = False
                kept[cid] = (r, at)
            else:
                keep[r] = False
        return recs.filter(pa.array(keep))

    def _write(self, recs, f: Path) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        report = self.report
        old = self.keys.lookup(recs["clip_id"])
        found = pc.is_valid(old).to_numpy(zero_copy_only=False)
        repl = np.zeros(len(found), dtype=bool)
        if found.any():
            at = recs["labelled_at"]
            same = pc.fill_null(pc.equal(at, old), False).to_numpy(zero_copy_only=False)
            report.unchanged += int(np.count_nonzero(same))
            for r in np.flatnonzero(found & ~same):
                a, b = at[int(r)].as_py(), old[int(r)].as_py()
                if newer(a, b):
                    repl[r] = True
                else:
                    report.unchanged += 1
                    report.older += newer(b, a)
        new = recs.filter(pa.array(~found)) if found.any() else recs
        if new.num_rows:
            self.appender.put(R.to_arrow(new, f, self.questions, self.vectors))
            report.added += new.num_rows
            self.keys.add(new["clip_id"], new["labelled_at"])
        if repl.any():
            self.appender.finish()  # the rows being replaced may be in the stream
            data = recs.filter(pa.array(repl))
            self.db.table().merge_insert("clip_id").when_matched_update_all().execute(
                R.to_arrow(data, f, self.questions, self.vectors))
            report.replaced += data.num_rows
            self.keys.add(data["clip_id"], data["labelled_at"])


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """`items`, made up to `depth` ahead by a background thread: Arrow parses the next block of
    records (without the GIL) while this one is embedded and converted. An error in the thread
    is raised here; stopping early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put((x, None)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer
            put((end, exc))
        finally:
            close = getattr(items, "close", None)
            if close:
                close()

    thread = threading.Thread(target=run, name="avcap-index-reader", daemon=True)
    thread.start()
    try:
        while True:
            x, exc = q.get()
            if x is end:
                if exc is not None:
                    raise exc
                return
            yield x
    finally:
        stop.set()
        thread.join()


def indexes_current(db) -> bool:
    """Does every index cover every row? (An ingest killed before its index update left rows
    out; the next ingest brings them in even when it adds nothing.)"""
    tbl = db.table()
    if tbl is None:
        return True
    indices = tbl.list_indices()
    if not any(i.index_type == "FTS" for i in indices):
        return False
    return all(tbl.index_stats(i.name).num_unindexed_rows == 0 for i in indices)


def update_indexes(db) -> None:
    """Every row searchable through its index after an ingest. First time: the full-text index
    on `text` (English stemming, stop words, no positions) and a BTREE on clip_id (`get`, the
    merge of re-labels). Later: `optimize`, which folds the new rows into every index, compacts
    small fragments and prunes versions older than an hour. The vector index is built once the
    table reaches VECTOR_INDEX_MIN_ROWS and rebuilt when the table has doubled since, so its
    partitions stay balanced; below that, vector search is exact. Every attribute's letter
    column (what `--where` filters on) gets a BITMAP index: a filter is then read from the
    index, not by scanning the column (at 1.1M rows, 12 of them built in 1.3 s; a filtered full-
    text query went from 32 to 9 ms, a filtered vector query from 45 to 23 ms, counting the rows
    of a filter from 10 to 1 ms). Index builds run at once, in two threads: LanceDB's full-text
    build uses one core whatever it is given (35 s of CPU at 1.1M rows), so the others are built
    one after another on the other.

    The vector index is IVF_RQ (RaBitQ: 1 bit a dimension, re-ranked on the full vectors), not
    IVF_SQ or IVF_PQ: measured on 1.11M caption vectors, after `optimize` folded 10k new rows in,
    a query of IVF_SQ compared 655k vectors instead of 23k (158 ms instead of 3 ms) and IVF_PQ's
    did likewise (6 ms), while IVF_RQ's stayed fast; IVF_RQ also builds fastest. Its partitions
    hold ~VECTOR_PARTITION_ROWS rows each, trained on VECTOR_SAMPLE_RATE rows a partition:
    measured at 1.1M rows (80 queries, 40 probes, refine factor 10, against exact search), 256
    partitions trained on 64 rows each build in 8.5 s of CPU with recall@10 0.77 (0.86 with an
    attribute filter) at p50 7 ms (37 ms filtered), where sqrt(rows) = 1048 partitions trained on
    256 rows each took 32 s for recall@10 0.78 (0.87) at 5 ms (36 ms filtered): the 1-bit codes
    bound the recall, not the partitions."""
    # lancedb imported here: see store.connect
    from lancedb.index import FTS, BTree, Bitmap, IvfRq

    tbl = db.table()
    if tbl is None:
        return
    indices = tbl.list_indices()
    kinds = {i.index_type for i in indices}
    if "FTS" in kinds:
        tbl.optimize(cleanup_older_than=timedelta(hours=1))
    text: list[Callable[[], Any]] = []  # the full-text build, alone in its thread
    rest: list[Callable[[], Any]] = []  # the others, one after another in a second thread
    if "FTS" not in kinds:
        text.append(lambda: tbl.create_index("text", config=FTS(with_position=False)))
    n = tbl.count_rows()
    built = (db.meta.get("vector_index") or {}).get("rows", 0)
    if n >= VECTOR_INDEX_MIN_ROWS and n >= 2 * built:
        parts = max(1, round(n / VECTOR_PARTITION_ROWS))
        rest.append(lambda: tbl.create_index("vector", replace=True, config=IvfRq(
            distance_type="dot", num_partitions=parts, sample_rate=VECTOR_SAMPLE_RATE)))
        db.meta["vector_index"] = {"type": "IVF_RQ", "partitions": parts, "rows": n}
    if "BTree" not in kinds:
        rest.append(lambda: tbl.create_index("clip_id", config=BTree()))
    have = {c for i in indices for c in i.columns}
    for a in db.meta.get("attributes", []):
        col = letter_column(a["name"])
        if col not in have:
            rest.append(lambda col=col: tbl.create_index(col, config=Bitmap()))
    _at_once([lambda jobs=jobs: [job() for job in jobs] for jobs in (text, rest) if jobs])


def _at_once(jobs: list[Callable[[], Any]]) -> None:
    """Run `jobs` in threads at once (LanceDB releases the GIL); the first error is raised."""
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs), thread_name_prefix="avcap-index") as ex:
        for f in [ex.submit(job) for job in jobs]:
            f.result()
