"""`ScenarioDB`: the scenario database, a directory holding a LanceDB table and `avcap_db.json`.

    DB/avcap_db.json      schema "avcap.scenario-db/1", the embedder, the attribute questions,
                          counts, the files ingested (size, mtime) and the ingest log
    DB/scenarios.lance/   the LanceDB table: one row per clip (columns in docs/formats.md)
    DB/.avcap_db.lock     the writer lock (one ingest at a time)

Ingest is incremental and keyed by clip_id: a new clip is added, a clip labelled again replaces
its row when the new record's `labelled_at` is later (an old file ingested again never overwrites
a newer label), a file whose size and mtime match the log is skipped. Error records are counted,
not indexed. A malformed line is reported (file:line and field) and counted, the rest of its file
is still ingested. After every ingest the full-text index covers every row (`optimize`), and a
vector index is built once the table reaches `VECTOR_INDEX_MIN_ROWS`.

Reads (`search`, `get`, `count`, `attribute_values`) are safe from several threads of one process.
lancedb and pyarrow are imported inside the functions that use them: `avcap --help` does not pay
for them (lancedb alone takes ~1 s to import).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from avcap.core.records import WriterLock, read_json, write_json_atomic
from avcap.scenarios import query as Q
from avcap.scenarios.embed import Embedder, EmbedderError, ScenarioVectors, load_embedder
from avcap.scenarios.record import (
    AttributeQuestion,
    ScenarioFormatError,
    questions_for,
    read_questions,
    scan_scenarios,
    scenario_files,
)

DB_SCHEMA = "avcap.scenario-db/1"
META_FILE = "avcap_db.json"
TABLE = "scenarios"
LOCK_FILE = ".avcap_db.lock"
VECTOR_INDEX_MIN_ROWS = 100_000  # below this, exact (flat) vector search is fast enough (~15 ms at 100k rows)
VECTOR_NPROBES = 20  # IVF partitions a query visits (of ~sqrt(rows))
CHUNK = 20_000  # records embedded and written per step of an ingest
MAX_PROBLEMS_PER_FILE = 5  # malformed lines printed per file; the rest are counted

CLIP_COLUMNS = {"duration_s": "float64", "width": "int64", "height": "int64", "fps": "float64",
                "frames": "int64", "size_bytes": "int64"}
LABELLER_COLUMNS = ("model_name", "checkpoint", "checkpoint_path", "engine", "fingerprint")
BASE_COLUMNS = ("clip_id", "source", "caption", "text", "vector", "thumbnail", "preview", "labelled_at",
                "record_file", "extra_json", *CLIP_COLUMNS, *LABELLER_COLUMNS)
NEGATIVE_STARTS = ("no ", "no,", "none", "neither", "not ")
_ASKS_ABSENCE = re.compile(r"\b(absent|missing|not (?:visible|present|seen))\b", re.IGNORECASE)


class ScenarioDBError(ValueError):
    """A database or an input that cannot be used: one line naming the file and field."""


@dataclass
class IngestReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0  # the database already holds this record (or a newer label of the clip)
    older: int = 0  # of `unchanged`: records older than the clip's indexed label (kept the newer)
    errors: int = 0  # error records (the clip could not be labelled): counted, not indexed
    malformed: int = 0  # lines that are not a valid scenario record
    files_read: int = 0
    files_skipped: int = 0  # unchanged since the last ingest (size and mtime)
    records_read: int = 0
    total: int = 0  # rows in the database afterwards
    seconds: float = 0.0
    index_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # one line per malformed line (capped per file)
    error_records: list[str] = field(default_factory=list)  # "clip_id: error" (first 20)

    def summary(self) -> str:
        rate = self.records_read / self.seconds if self.seconds > 0 else 0.0
        extra = f" ({self.older} older than the indexed label)" if self.older else ""
        mal = f", {self.malformed} malformed" if self.malformed else ""
        return (f"added {self.added}, replaced {self.replaced}, unchanged {self.unchanged}{extra}, "
                f"errors {self.errors}{mal}, total {self.total}; {self.records_read} records from "
                f"{self.files_read} files ({self.files_skipped} unchanged files skipped) in {self.seconds:.1f} s "
                f"({rate:,.0f} records/s, indexes {self.index_seconds:.1f} s)")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = d["problems"][:20]
        return d


@dataclass
class Hit:
    """One clip of a result (or of `ScenarioDB.get`)."""

    clip_id: str
    rank: int
    score: Optional[float]  # hybrid: RRF score; text: BM25; vector: cosine similarity; filter-only: None
    caption: Optional[str]
    attributes: dict[str, dict[str, Optional[str]]]  # name -> {"letter", "answer"}
    matched: dict[str, Optional[str]]  # the attributes the where-clauses matched: name -> answer
    source: str
    thumbnail: Optional[str]
    preview: Optional[str]
    clip: dict[str, Any]
    labeller: dict[str, str]
    labelled_at: str
    caption_json: Optional[dict[str, Any]] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def states(question: Optional[AttributeQuestion], answer: Optional[str]) -> bool:
    """Does this answer, out of its question's context, say what is in the clip? Not an answer of
    absence ("No bus is visible", "None", "Neither ...": it would match a search for "bus"), nor
    any answer of a question that asks what is absent ("Which of these is absent ...?": its answer
    "Traffic lights" means there are none)."""
    if not answer or answer.casefold().startswith(NEGATIVE_STARTS):
        return False
    return question is None or not _ASKS_ABSENCE.search(question.question)


def stated_answers(rec: dict[str, Any], questions: Mapping[str, AttributeQuestion] = {}) -> list[str]:
    """The answers of a record (its JSON form) that `states`, in its attributes' order."""
    return [a["answer"] for name, a in (rec.get("attributes") or {}).items()
            if states(questions.get(name), a.get("answer"))]


def searchable_text(rec: dict[str, Any], questions: Mapping[str, AttributeQuestion] = {}) -> str:
    """The `text` column, which full-text search sees: the caption, then each stated answer
    followed by a full stop (in the database's attribute order)."""
    return " ".join([rec.get("caption") or "", *(f"{x}." for x in stated_answers(rec, questions))]).strip()


def _parse_time(s: Optional[str]) -> datetime:
    try:
        t = datetime.fromisoformat(str(s).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _newer(a: Optional[str], b: Optional[str]) -> bool:
    """Is labelled_at `a` strictly later than `b`?"""
    return _parse_time(a) > _parse_time(b)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ScenarioDB:
    """A scenario database directory. Open it once (`open_db`) and share it between threads."""

    def __init__(self, path: str | Path, meta: dict[str, Any], embedder: Optional[Embedder] = None):
        self.path = Path(path)
        self.meta = meta
        self._embedder = embedder
        self._lock = threading.RLock()
        self._conn = None
        self._table = None
        self._values_cache: dict[tuple[int, str], dict[str, Any]] = {}
        self._executor: Optional[ThreadPoolExecutor] = None

    # ---- opening ----------------------------------------------------------------------------

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                spec = self.meta["embedder"]
                self._embedder = load_embedder(spec.get("path") or spec["name"])
                self._check_embedder(self._embedder)
            return self._embedder

    def _check_embedder(self, e: Embedder) -> None:
        want = self.meta["embedder"]
        if e.name != want["name"] or e.dim != want["dim"]:
            raise EmbedderError(f"{self.meta_path}: embedder: the database was built with {want['name']} "
                                f"(dim {want['dim']}), not {e.name} (dim {e.dim}); search with the same "
                                "embedder, or index into a new database")

    def _db(self):
        if self._conn is None:
            # Lance's Rust log prints warnings meant for its developers (k-means with empty
            # clusters on duplicate captions, API deprecations) on stderr: errors only, unless
            # the user set LANCEDB_LOG (read when lancedb is first imported)
            os.environ.setdefault("LANCEDB_LOG", "error")
            # lancedb imported here: opening it costs ~1 s, which `avcap --help` must not pay
            import lancedb

            self._conn = lancedb.connect(str(self.path))
        return self._conn

    def table(self):
        """The LanceDB table, or None while nothing has been ingested."""
        with self._lock:
            if self._table is None and (self.path / f"{TABLE}.lance").is_dir():
                self._table = self._db().open_table(TABLE)
            return self._table

    def refresh(self) -> None:
        """See what another process ingested since this one opened the database."""
        with self._lock:
            self.meta = _read_meta(self.meta_path)
            if self._table is not None:
                self._table.checkout_latest()
            self._values_cache.clear()

    # ---- what is in it ----------------------------------------------------------------------

    def attributes(self) -> list[AttributeQuestion]:
        """The attribute questions (name, question_id, question, choices) the records answer."""
        return [AttributeQuestion.model_validate(a) for a in self.meta.get("attributes", [])]

    def _questions(self) -> dict[str, AttributeQuestion]:
        return {a.name: a for a in self.attributes()}

    def count(self, where: Sequence[str] | Mapping[str, Any] | None = (), filter: Optional[str] = None) -> int:
        """Rows in the database, or rows matching the filters."""
        tbl = self.table()
        if tbl is None:
            return 0
        sql = Q.combine(Q.where_sql(Q.parse_where(where, self._questions())), Q.check_filter(filter))
        if sql is None:
            return tbl.count_rows()
        try:
            return tbl.count_rows(sql)
        except Exception as exc:  # a filter LanceDB refuses: one line
            raise Q.QueryError(Q.filter_error_line(filter or sql, exc)) from None

    def attribute_values(self, name: str) -> dict[str, dict[str, Any]]:
        """How many clips have each answer of attribute `name`: letter -> {"answer", "count"}
        (every choice listed, 0 when none; "" for records whose answer named no choice)."""
        # pyarrow imported here: only reads need it
        import pyarrow.compute as pc

        questions = self._questions()
        if name not in questions:
            Q.parse_where([f"{name}=?"], questions)  # raises the unknown-attribute line
        q = questions[name]
        out = {k: {"answer": v, "count": 0} for k, v in sorted(q.choices.items())}
        tbl = self.table()
        if tbl is None:
            return out
        key = (tbl.version, name)
        with self._lock:
            if key in self._values_cache:
                return self._values_cache[key]
        col = tbl.search().select([Q.letter_column(name)]).limit(None).to_arrow().column(0)
        for item in pc.value_counts(col).to_pylist():
            letter = item["values"] or ""
            out.setdefault(letter, {"answer": q.choices.get(letter), "count": 0})["count"] += item["counts"]
        with self._lock:
            self._values_cache[key] = out
        return out

    def get(self, clip_id: str) -> Optional[Hit]:
        tbl = self.table()
        if tbl is None:
            return None
        rows = (tbl.search().where(f"clip_id = {Q.sql_string(clip_id)}")
                .select(self._hit_columns()).limit(1).to_arrow().to_pylist())
        return self._hit(rows[0], 0, None, []) if rows else None

    # ---- search -----------------------------------------------------------------------------

    def search(self, query: str = "", where: Sequence[str] | Mapping[str, Any] | None = (),
               filter: Optional[str] = None, limit: int = 10, offset: int = 0, mode: str = "hybrid") -> list[Hit]:
        """Rank clips for `query` (free text) among those the filters keep. Modes: "hybrid" (full
        text and vector fused by reciprocal rank), "text" (BM25 only), "vector" (embedding only);
        an empty query lists the filtered clips in table order (score None)."""
        if mode not in Q.MODES:
            raise Q.QueryError(f"--mode {mode!r}: expected one of {', '.join(Q.MODES)}")
        if limit < 1 or offset < 0:
            raise Q.QueryError(f"--limit {limit} / --offset {offset}: limit must be at least 1, offset at least 0")
        conditions = Q.parse_where(where, self._questions())
        raw_filter = Q.check_filter(filter)
        sql = Q.combine(Q.where_sql(conditions), raw_filter)
        tbl = self.table()
        if tbl is None:
            return []
        query = (query or "").strip()
        try:
            if not query:
                b = tbl.search().select(self._hit_columns()).limit(limit).offset(offset)
                rows = (b.where(sql) if sql else b).to_arrow().to_pylist()
                return [self._hit(r, offset + i + 1, None, conditions) for i, r in enumerate(rows)]
            if mode == "text":
                ranked = self._fts(tbl, query, sql, limit, offset)
            elif mode == "vector":
                ranked = self._vector(tbl, query, sql, limit, offset)
            else:
                depth = max(50, 2 * (offset + limit))
                text_job = self._pool().submit(self._fts, tbl, query, sql, depth, 0)
                vec = self._vector(tbl, query, sql, depth, 0)
                text = text_job.result()
                rowid = {cid: rid for cid, rid, _ in vec + text}
                fused = Q.rrf([[cid for cid, _, _ in text], [cid for cid, _, _ in vec]])[offset:offset + limit]
                ranked = [(cid, rowid[cid], score) for cid, score in fused]
        except (EmbedderError, Q.QueryError):
            raise
        except Exception as exc:  # a filter LanceDB refuses (unknown column, bad syntax): one line
            if sql is None:
                raise
            raise Q.QueryError(Q.filter_error_line(raw_filter or sql, exc)) from None
        rows = {r["clip_id"]: r for r in tbl.take_row_ids([rid for _, rid, _ in ranked])
                .select(self._hit_columns()).to_arrow().to_pylist()} if ranked else {}
        return [self._hit(rows[cid], offset + i + 1, score, conditions) for i, (cid, _, score) in enumerate(ranked)]

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="avcap-search")
            return self._executor

    @staticmethod
    def _ranked(table, score: str, to_score: Callable[[float], float]) -> list[tuple[str, int, float]]:
        return [(c, r, to_score(x)) for c, r, x in zip(table.column("clip_id").to_pylist(),
                                                       table.column("_rowid").to_pylist(), table.column(score).to_pylist())]

    def _fts(self, tbl, query: str, sql: Optional[str], limit: int, offset: int) -> list[tuple[str, int, float]]:
        """(clip_id, row id, BM25 score), best first."""
        b = (tbl.search(query, query_type="fts", fts_columns="text").with_row_id(True)
             .select(["clip_id", "_score"]).limit(limit).offset(offset))
        if sql:
            b = b.where(sql, prefilter=True)
        return self._ranked(b.to_arrow(), "_score", float)

    def _vector(self, tbl, query: str, sql: Optional[str], limit: int, offset: int) -> list[tuple[str, int, float]]:
        """(clip_id, row id, cosine similarity), best first. With a vector index, a filter that
        keeps few rows can leave the probed partitions short of `limit`: then the filtered rows
        are searched exactly."""
        vec = self.embedder.embed([query])[0]

        def run(exact: bool):
            b = (tbl.search(vec, query_type="vector", vector_column_name="vector").distance_type("dot")
                 .with_row_id(True).select(["clip_id", "_distance"]).limit(limit).offset(offset))
            if self.meta.get("vector_index"):
                b = b.bypass_vector_index() if exact else b.nprobes(VECTOR_NPROBES)
            if sql:
                b = b.where(sql, prefilter=True)
            return self._ranked(b.to_arrow(), "_distance", lambda d: 1.0 - d)

        got = run(exact=False)
        if sql and len(got) < limit and self.meta.get("vector_index"):
            got = run(exact=True)
        return got

    def _hit_columns(self) -> list[str]:
        cols = [c for c in BASE_COLUMNS if c not in ("vector", "text")]
        for a in self.meta.get("attributes", []):
            cols += [a["name"], Q.letter_column(a["name"])]
        return cols

    def _hit(self, r: dict[str, Any], rank: int, score: Optional[float], conditions: list[Q.Condition]) -> Hit:
        attrs = {}
        for a in self.meta.get("attributes", []):
            letter = r.get(Q.letter_column(a["name"]))
            if letter is not None or r.get(a["name"]) is not None:
                attrs[a["name"]] = {"letter": letter, "answer": r.get(a["name"])}
        matched = {c.name: r.get(c.name) for c in conditions if not c.negate}
        extra = json.loads(r["extra_json"]) if r.get("extra_json") else {}
        return Hit(
            clip_id=r["clip_id"], rank=rank, score=None if score is None else float(score), caption=r.get("caption"),
            attributes=attrs, matched=matched, source=r["source"], thumbnail=r.get("thumbnail"),
            preview=r.get("preview"), clip={k: r.get(k) for k in CLIP_COLUMNS if r.get(k) is not None},
            labeller={k: r.get(k) for k in LABELLER_COLUMNS}, labelled_at=r["labelled_at"],
            caption_json=extra.get("caption_json"),
        )

    # ---- ingest -----------------------------------------------------------------------------

    def ingest(self, paths: Iterable[str | Path], *, progress: Optional[Callable[[int, float], None]] = None,
               force: bool = False) -> IngestReport:
        """Add label output directories or record files (see the module doc); `progress(records
        read so far, seconds)` is called after each chunk. `force` re-reads files the log says are
        unchanged. Raises ScenarioDBError (nothing written) for a missing path, a directory with no
        records, or attribute questions that disagree with the database's."""
        files = self._resolve(paths)
        with WriterLock(self.path, LOCK_FILE, "avcap index"):
            self.refresh()
            questions = self._merge_questions(files)
            report = IngestReport()
            emb = ScenarioVectors(self.embedder)
            self._db()
            t0 = time.monotonic()  # the rate counts reading, embedding and writing, not loading libraries
            log = self.meta.setdefault("files", {})
            for f, _ in files:
                st = f.stat()
                key = str(f.resolve())
                seen = log.get(key)
                if not force and seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
                    report.files_skipped += 1
                    report.unchanged += seen.get("records", 0)
                    continue
                n = self._ingest_file(f, questions, emb, report, progress, t0)
                log[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "records": n, "ingested_at": _now()}
                report.files_read += 1
            t_index = time.monotonic()
            if report.added or report.replaced or not self._indexes_current():
                self._update_indexes()
            report.index_seconds = time.monotonic() - t_index
            tbl = self.table()
            report.total = tbl.count_rows() if tbl is not None else 0
            report.seconds = time.monotonic() - t0
            self.meta["counts"] = {"scenarios": report.total}
            self.meta["updated_at"] = _now()
            entry = {"at": _now(), "inputs": [str(f) for f, _ in files],
                     **{k: v for k, v in report.to_json().items() if k not in ("problems", "error_records")}}
            self.meta.setdefault("ingests", []).append(entry)
            write_json_atomic(self.meta_path, self.meta)
            self._values_cache.clear()
        return report

    def _resolve(self, paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
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

    def _merge_questions(self, files: list[tuple[Path, Path]]) -> dict[str, AttributeQuestion]:
        """The database's attribute questions plus those of the inputs; one attribute name must
        mean one question with one set of choices everywhere."""
        have = {a["name"]: (AttributeQuestion.model_validate(a), str(self.meta_path)) for a in self.meta.get("attributes", [])}
        for qpath in dict.fromkeys(q for _, q in files):
            try:
                qs = read_questions(qpath)
            except ScenarioFormatError as exc:
                raise ScenarioDBError(str(exc)) from None
            for i, a in enumerate(qs.attributes):
                clash = set(BASE_COLUMNS) & {a.name, Q.letter_column(a.name)}
                if clash or a.name.endswith("_letter") and a.name[:-7] in have:
                    raise ScenarioDBError(f"{qpath}: attributes.{i}.name: {a.name!r} collides with a database "
                                          "column; rename the attribute")
                old = have.get(a.name)
                if old is None:
                    have[a.name] = (a, str(qpath))
                elif old[0].model_dump() != a.model_dump():
                    what = next(k for k in ("question_id", "question", "choices")
                                if getattr(old[0], k) != getattr(a, k))
                    raise ScenarioDBError(f"{qpath}: attributes.{i}.{what}: attribute {a.name!r} differs from "
                                          f"the one in {old[1]} ({getattr(a, what)!r} vs {getattr(old[0], what)!r}); "
                                          "one name must mean one question in a database")
        merged = {name: q for name, (q, _) in have.items()}
        new = [n for n in merged if n not in {a["name"] for a in self.meta.get("attributes", [])}]
        if new:
            tbl = self.table()
            if tbl is not None:  # columns for attributes this database has not seen yet
                tbl.add_columns({c: "CAST(NULL AS STRING)" for n in new for c in (n, Q.letter_column(n))})
            self.meta["attributes"] = [q.model_dump() for q in merged.values()]
        return merged

    def _ingest_file(self, f: Path, questions: dict[str, AttributeQuestion], emb: ScenarioVectors,
                     report: IngestReport, progress, t0: float) -> int:
        n_ok = 0
        shown = 0
        malformed_before = report.malformed
        for chunk in _chunks(scan_scenarios(f, as_dict=True), CHUNK):
            good: dict[str, dict[str, Any]] = {}
            for item in chunk:
                if isinstance(item, ScenarioFormatError):
                    report.malformed += 1
                    if shown < MAX_PROBLEMS_PER_FILE:
                        report.problems.append(str(item))
                        shown += 1
                    continue
                report.records_read += 1
                n_ok += 1
                cid = item["clip_id"]
                if item.get("error"):
                    report.errors += 1
                    if len(report.error_records) < 20:
                        report.error_records.append(f"{cid}: {item['error']}")
                    continue
                unknown = set(item.get("attributes", {})) - set(questions)
                if unknown:
                    report.malformed += 1
                    if shown < MAX_PROBLEMS_PER_FILE:
                        report.problems.append(f"{f}: clip {cid}: attributes: {', '.join(sorted(unknown))} "
                                               f"not in {questions_for(f)}")
                        shown += 1
                    continue
                prev = good.get(cid)
                if prev is None or _newer(item["labelled_at"], prev["labelled_at"]):
                    if prev is not None:
                        report.unchanged += 1
                    good[cid] = item
                else:
                    report.unchanged += 1
            self._write(list(good.values()), f, questions, emb, report)
            if progress:
                progress(report.records_read, time.monotonic() - t0)
        more = report.malformed - malformed_before - shown
        if more > 0:
            report.problems.append(f"{f}: {more} more malformed lines not shown")
        return n_ok

    def _existing(self, ids: list[str]) -> dict[str, str]:
        """clip_id -> labelled_at of the rows among `ids` that the table holds."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tbl = self.table()
        if tbl is None:
            return {}
        have = tbl.search().select(["clip_id", "labelled_at"]).limit(None).to_arrow()
        mask = pc.is_in(have.column("clip_id"), value_set=pa.array(ids, pa.string()))
        hit = have.filter(mask)
        return dict(zip(hit.column("clip_id").to_pylist(), hit.column("labelled_at").to_pylist()))

    def _write(self, recs: list[dict[str, Any]], f: Path, questions: dict[str, AttributeQuestion],
               emb: ScenarioVectors, report: IngestReport) -> None:
        if not recs:
            return
        existing = self._existing([r["clip_id"] for r in recs])
        new, repl = [], []
        for r in recs:
            old = existing.get(r["clip_id"])
            if old is None:
                new.append(r)
            elif _newer(r["labelled_at"], old):
                repl.append(r)
            else:
                report.unchanged += 1
                report.older += _newer(old, r["labelled_at"])
        if new:
            data = self._arrow(new, f, questions, emb)
            tbl = self.table()
            if tbl is None:
                self._table = self._db().create_table(TABLE, data=data)
            else:
                tbl.add(data)
            report.added += len(new)
        if repl:
            data = self._arrow(repl, f, questions, emb)
            self.table().merge_insert("clip_id").when_matched_update_all().execute(data)
            report.replaced += len(repl)

    def _schema(self, questions: dict[str, AttributeQuestion], dim: int):
        import pyarrow as pa

        fields = [pa.field("clip_id", pa.string(), nullable=False), pa.field("source", pa.string()),
                  pa.field("caption", pa.string()), pa.field("text", pa.string()),
                  pa.field("vector", pa.list_(pa.float32(), dim)),
                  pa.field("thumbnail", pa.string()), pa.field("preview", pa.string()),
                  pa.field("labelled_at", pa.string()), pa.field("record_file", pa.string()),
                  pa.field("extra_json", pa.string())]
        fields += [pa.field(k, pa.float64() if t == "float64" else pa.int64()) for k, t in CLIP_COLUMNS.items()]
        fields += [pa.field(k, pa.string()) for k in LABELLER_COLUMNS]
        for name in questions:
            fields += [pa.field(name, pa.string()), pa.field(Q.letter_column(name), pa.string())]
        return pa.schema(fields)

    def _arrow(self, recs: list[dict[str, Any]], f: Path, questions: dict[str, AttributeQuestion],
               emb: ScenarioVectors):
        """The rows of `recs` as an Arrow table of the database's schema. The attributes go through
        Arrow as one struct column (C++, ~40 answers a record); `text` and the stated answers of
        the vectors are computed per distinct answer, not per record."""
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(recs)
        dim = emb.embedder.dim
        names = list(questions)
        answer_t = pa.struct([(k, pa.string()) for k in ("letter", "answer", "raw", "error")])
        attrs = pa.array([r.get("attributes") or {} for r in recs], type=pa.struct([(k, answer_t) for k in names]))
        captions = [r.get("caption") or None for r in recs]
        cols: dict[str, Any] = {
            "clip_id": [r["clip_id"] for r in recs], "source": [r["source"] for r in recs], "caption": captions,
            "thumbnail": [r.get("thumbnail") for r in recs], "preview": [r.get("preview") for r in recs],
            "labelled_at": [r["labelled_at"] for r in recs], "record_file": [str(f)] * n,
        }
        clips = [r.get("clip") or {} for r in recs]
        cols.update({k: [c.get(k) for c in clips] for k in CLIP_COLUMNS})
        cols.update({k: [r["labeller"][k] for r in recs] for k in LABELLER_COLUMNS})
        extra = np.array([r.get("caption_json") is not None for r in recs], dtype=bool)
        stated_rows: dict[str, list[np.ndarray]] = {}
        stated_cols = []
        for name in names:
            sub = attrs.field(name)
            answer = sub.field("answer")
            cols[name], cols[Q.letter_column(name)] = answer, sub.field("letter")
            extra |= pc.or_(pc.is_valid(sub.field("raw")), pc.is_valid(sub.field("error"))).to_numpy(zero_copy_only=False)
            enc = answer.dictionary_encode()
            idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            values = enc.dictionary.to_pylist()
            suffixed = []
            for j, text in enumerate(values):
                stated = states(questions[name], text)
                suffixed.append(f"{text}." if stated else None)
                if stated:
                    stated_rows.setdefault(text, []).append(np.flatnonzero(idx == j))
            stated_cols.append(pa.array(suffixed, pa.string()).take(enc.indices))
        cap = pa.array(captions, pa.string())
        cols["text"] = pc.fill_null(pc.binary_join_element_wise(cap, *stated_cols, " ", null_handling="skip"), "")
        rows = {t: np.concatenate(parts) for t, parts in stated_rows.items()}
        vectors = np.ascontiguousarray(emb(captions, rows), dtype=np.float32)
        cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        cols["extra_json"] = [_extra_json(recs[i]) if extra[i] else None for i in range(n)]
        schema = self._schema(questions, dim)
        return pa.Table.from_arrays([c if isinstance(c, (pa.Array, pa.ChunkedArray)) else pa.array(c, fld.type)
                                     for fld, c in ((fld, cols[fld.name]) for fld in schema)], schema=schema)

    def _indexes_current(self) -> bool:
        """Does every index cover every row? (An ingest killed before its index update left rows
        out; the next ingest brings them in even when it adds nothing.)"""
        tbl = self.table()
        if tbl is None:
            return True
        indices = tbl.list_indices()
        if not any(i.index_type == "FTS" for i in indices):
            return False
        return all(tbl.index_stats(i.name).num_unindexed_rows == 0 for i in indices)

    def _update_indexes(self) -> None:
        """Every row searchable through its index after an ingest. First time: the full-text index
        on `text` (English stemming, stop words) and a BTREE on clip_id (`get`, the merge on
        re-labels). Later: `optimize`, which folds the new rows into every index and compacts
        small fragments (measured: 0.5 s after adding 20k rows to 100k; rebuilding the FTS index
        takes 4.4 s at 100k). The vector index (IVF_SQ, ~sqrt(rows) partitions) is built once the
        table reaches VECTOR_INDEX_MIN_ROWS and rebuilt when it has doubled since, so partitions
        stay balanced; below that, vector search is exact."""
        # lancedb imported here: see the module doc
        from lancedb.index import FTS, BTree, IvfSq

        tbl = self.table()
        if tbl is None:
            return
        kinds = {i.index_type for i in tbl.list_indices()}
        if "FTS" in kinds:
            tbl.optimize(cleanup_older_than=timedelta(hours=1))
        else:
            tbl.create_index("text", config=FTS(with_position=False))
        if "BTree" not in kinds:
            tbl.create_index("clip_id", config=BTree())
        n = tbl.count_rows()
        built = (self.meta.get("vector_index") or {}).get("rows", 0)
        if n >= VECTOR_INDEX_MIN_ROWS and n >= 2 * built:
            parts = max(1, int(np.sqrt(n)))
            tbl.create_index("vector", config=IvfSq(distance_type="dot", num_partitions=parts), replace=True)
            self.meta["vector_index"] = {"type": "IVF_SQ", "partitions": parts, "rows": n}


def _extra_json(r: dict[str, Any]) -> Optional[str]:
    """What the columns do not hold, so that `get` can give it back: the JSON caption and the
    answers' raw text and errors."""
    extra: dict[str, Any] = {}
    if r.get("caption_json") is not None:
        extra["caption_json"] = r["caption_json"]
    raw = {k: {kk: a[kk] for kk in ("raw", "error") if a.get(kk) is not None}
           for k, a in r.get("attributes", {}).items() if a.get("raw") is not None or a.get("error") is not None}
    if raw:
        extra["attributes"] = raw
    return json.dumps(extra, ensure_ascii=False) if extra else None


def _chunks(items: Iterator, n: int) -> Iterator[list]:
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = read_json(path)
    except FileNotFoundError:
        raise ScenarioDBError(f"{path.parent}: not a scenario database (no {META_FILE}); create one with avcap index") from None
    except ValueError as exc:
        raise ScenarioDBError(str(exc)) from None
    if not isinstance(meta, dict):
        raise ScenarioDBError(f"{path}: expected a JSON object")
    version = meta.get("schema")
    if version != DB_SCHEMA:
        raise ScenarioDBError(f"{path}: schema: {version!r} is not {DB_SCHEMA!r} (made by another avcap version; "
                              "index the label outputs into a new database)")
    for key in ("embedder", "attributes", "counts"):
        if key not in meta:
            raise ScenarioDBError(f"{path}: {key}: missing")
    return meta


def open_db(path: str | Path, *, embedder: str | Embedder | None = None, create: bool = False) -> ScenarioDB:
    """Open the scenario database at `path` (with `create`, make it when absent). `embedder`: a
    spec for `load_embedder` or an Embedder; by default the one the database was built with
    (a new database: wordllama). Another embedder than the database's raises EmbedderError."""
    path = Path(path)
    meta_path = path / META_FILE
    emb = load_embedder(embedder) if isinstance(embedder, str) else embedder
    if meta_path.exists():
        db = ScenarioDB(path, _read_meta(meta_path), emb)
        if emb is not None:
            db._check_embedder(emb)
        return db
    if not create:
        if path.exists() and any(path.iterdir()):
            raise ScenarioDBError(f"{path}: not a scenario database (no {META_FILE})")
        raise ScenarioDBError(f"{path}: no scenario database here (build one with avcap index ... --db {path})")
    if path.exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
        raise ScenarioDBError(f"{path}: not empty and not a scenario database (no {META_FILE}); use a new directory")
    path.mkdir(parents=True, exist_ok=True)
    emb = emb or load_embedder(None)
    spec = emb.spec()
    meta = {"schema": DB_SCHEMA, "created_at": _now(), "updated_at": _now(), "table": TABLE,
            "embedder": {k: v for k, v in spec.items() if v is not None}, "attributes": [],
            "counts": {"scenarios": 0}, "files": {}, "ingests": []}
    write_json_atomic(meta_path, meta)
    return ScenarioDB(path, meta, emb)
