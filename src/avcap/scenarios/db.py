"""`ScenarioDB`: the scenario database (a directory: store.py), opened once and searched.

Reads (`search`, `get`, `count`, `attribute_values`) are safe from several threads of one
process; one process ingests at a time (ingest.py, behind the directory's writer lock). A reader
sees the table version it opened until `refresh()`. lancedb and pyarrow are imported inside the
functions that use them: `avcap --help` does not pay for them (lancedb alone takes ~1 s).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from avcap.core.records import write_json_atomic
from avcap.scenarios import query as Q
from avcap.scenarios.embed import Embedder, EmbedderError, load_embedder
from avcap.scenarios.ingest import IngestReport, Progress, ingest
from avcap.scenarios.record import AttributeQuestion
from avcap.scenarios.rows import BASE_COLUMNS, CLIP_COLUMNS, LABELLER_COLUMNS
from avcap.scenarios.store import LOCK_FILE, META_FILE, TABLE, ScenarioDBError, connect, new_meta, read_meta
from avcap.scenarios.understand import Facet, Understanding, Vocabulary, load_vocabulary

__all__ = ["Facet", "Hit", "IngestReport", "ScenarioDB", "ScenarioDBError", "Understanding", "open_db"]

VECTOR_NPROBES = 40  # IVF partitions a query visits (of ~rows/4096, ingest.VECTOR_PARTITION_ROWS): recall@10 0.77, 0.86 filtered, at 1.1M rows (ingest.update_indexes)
VECTOR_REFINE = 10  # candidates re-ranked on the full vectors, per result


@dataclass
class Hit:
    """One clip of a result (or of `ScenarioDB.get`)."""

    clip_id: str
    rank: int
    score: Optional[float]  # hybrid: facets matched + RRF score; hybrid-plain: RRF score; text: BM25;
    # vector: cosine similarity; filter-only: None
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
    facets: dict[str, Optional[str]] = field(default_factory=dict)  # the query's facets this clip matches: name -> answer

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ScenarioDB:
    """A scenario database directory. Open it once (`open_db`) and share it between threads."""

    def __init__(self, path: str | Path, meta: dict[str, Any], embedder: Optional[Embedder] = None,
                 aliases: Sequence[str | Path] = ()):
        self.path = Path(path)
        self.meta = meta
        self._embedder = embedder
        self._alias_files = [Path(a) for a in aliases]
        self._vocabulary: Optional[Vocabulary] = None
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
        with self._lock:
            if self._conn is None:
                self._conn = connect(self.path)
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
            self.meta = read_meta(self.meta_path)
            if self._table is not None:
                self._table.checkout_latest()
            self._values_cache.clear()
            self._vocabulary = None

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

    def vocabulary(self) -> Vocabulary:
        """The words query understanding knows for this database's attributes (understand.py): the
        packaged vocabulary, the database's aliases.json, the alias files it was opened with and
        those of AVCAP_SEARCH_ALIASES. Raises ScenarioDBError for a bad alias file."""
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = load_vocabulary(self.attributes(), self.path, self._alias_files)
            return self._vocabulary

    def understand(self, query: str, where: Sequence[str] | Mapping[str, Any] | None = ()) -> Understanding:
        """What mode "hybrid" reads in `query`: its facets (less those on attributes a where-clause
        already filters) and the words it adds."""
        conditions = Q.parse_where(where, self._questions())
        return self._understand(query, conditions)

    def _understand(self, query: str, conditions: list[Q.Condition]) -> Understanding:
        u = self.vocabulary().understand(query)
        filtered = {c.name for c in conditions}
        u.facets = [f for f in u.facets if f.name not in filtered]
        return u

    def search(self, query: str = "", where: Sequence[str] | Mapping[str, Any] | None = (),
               filter: Optional[str] = None, limit: int = 10, offset: int = 0, mode: str = "hybrid") -> list[Hit]:
        """Rank clips for `query` (free text) among those the filters keep. Modes: "hybrid" (query
        understanding: the clips matching more of the query's facets first, each tier ranked by
        full text and vector fused by reciprocal rank), "hybrid-plain" (full text and vector fused,
        no understanding), "text" (BM25 only), "vector" (embedding only); an empty query lists the
        filtered clips in table order (score None). `where` and `filter` are hard filters."""
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
        facets: list[Facet] = []
        try:
            if not query:
                b = tbl.search().select(self._hit_columns()).limit(limit).offset(offset)
                rows = (b.where(sql) if sql else b).to_arrow().to_pylist()
                return [self._hit(r, offset + i + 1, None, conditions) for i, r in enumerate(rows)]
            depth = max(50, 2 * (offset + limit))
            if mode == "text":
                ranked = self._fts(tbl, query, sql, limit, offset)
            elif mode == "vector":
                ranked = self._vector(tbl, self.embedder.embed([query])[0], sql, limit, offset)
            elif mode == "hybrid-plain" or not (u := self._understand(query, conditions)).facets:
                ranked = self._fused(tbl, query, sql, depth)[offset:offset + limit]
            else:
                facets = u.facets
                ranked = self._tiered(tbl, u, sql, offset + limit, depth)[offset:offset + limit]
        except (EmbedderError, Q.QueryError, ScenarioDBError):
            raise
        except Exception as exc:  # a filter LanceDB refuses (unknown column, bad syntax): one line
            if sql is None:
                raise
            raise Q.QueryError(Q.filter_error_line(raw_filter or sql, exc)) from None
        rows = {r["clip_id"]: r for r in tbl.take_row_ids([rid for _, rid, _ in ranked])
                .select(self._hit_columns()).to_arrow().to_pylist()} if ranked else {}
        return [self._hit(rows[cid], offset + i + 1, score, conditions, facets)
                for i, (cid, _, score) in enumerate(ranked)]

    def _fused(self, tbl, text: str, sql: Optional[str], depth: int, vec=None) -> list[tuple[str, int, float]]:
        """Full text and vector, each to `depth`, run concurrently and fused by reciprocal rank."""
        text_job = self._pool().submit(self._fts, tbl, text, sql, depth, 0)
        vec_ranked = self._vector(tbl, self.embedder.embed([text])[0] if vec is None else vec, sql, depth, 0)
        text_ranked = text_job.result()
        rowid = {cid: rid for cid, rid, _ in vec_ranked + text_ranked}
        fused = Q.rrf([[cid for cid, _, _ in text_ranked], [cid for cid, _, _ in vec_ranked]])
        return [(cid, rowid[cid], score) for cid, score in fused]

    def _tiered(self, tbl, u: Understanding, sql: Optional[str], need: int,
                depth: int) -> list[tuple[str, int, float]]:
        """The clips matching all k facet groups of `u`, then those matching k-1, then the rest by
        how many they match, each tier ranked by `_fused` (on the expanded query) under the hard
        filter `sql`; a tier is searched only while fewer than `need` clips are ranked. Score:
        groups matched + the RRF score (< 1)."""
        text = u.text
        vec = self.embedder.embed([text])[0]
        groups = u.groups
        conds = ["(" + " OR ".join(Q.facet_sql(f.name, f.letters) for f in g) + ")" for g in groups]
        k = len(conds)
        tiers: list[tuple[str, Optional[int]]] = [(Q.all_of(conds), k)]
        if k >= 2:
            tiers.append((Q.exactly_all_but_one(conds), k - 1))
            tiers.append((f"NOT ({Q.at_least_all_but_one(conds)})", None if k >= 3 else 0))
        else:
            tiers.append((f"NOT {conds[0]}", 0))
        out: list[tuple[str, int, float]] = []
        for tier_sql, matched in tiers:
            if len(out) >= need:
                break
            where = Q.combine(sql, tier_sql)
            # an empty tier is skipped: a filtered vector query that finds no row visits every
            # partition (0.1-0.5 s at 1.1M rows), where this look stops at the first row it finds
            if not tbl.search().where(where).select(["clip_id"]).limit(1).to_arrow().num_rows:
                continue
            got = self._fused(tbl, text, where, depth, vec)
            if matched is None:  # the rest: how many groups each candidate matches, from its letters
                cols = sorted({Q.letter_column(f.name) for f in u.facets})
                rows = {r["clip_id"]: r for r in tbl.take_row_ids([rid for _, rid, _ in got])
                        .select(["clip_id", *cols]).to_arrow().to_pylist()} if got else {}
                n = {cid: sum(any(rows[cid].get(Q.letter_column(f.name)) in f.letters for f in g) for g in groups)
                     for cid, _, _ in got}
                got = sorted(got, key=lambda x: -n[x[0]])  # stable: RRF order within a count
                out += [(cid, rid, n[cid] + score) for cid, rid, score in got]
            else:
                out += [(cid, rid, matched + score) for cid, rid, score in got]
        return out

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

    def _vector(self, tbl, vec, sql: Optional[str], limit: int, offset: int) -> list[tuple[str, int, float]]:
        """(clip_id, row id, cosine similarity) for the query vector `vec`, best first. With a vector index, the search
        visits the VECTOR_NPROBES partitions nearest the query; with a filter too, it goes on
        through further partitions until the page is full or none is left (LanceDB's
        maximum_nprobes=0), since the nearest partitions may hold few rows the filter keeps (a
        query about lane changes, filtered to clips that turn at a junction). Measured at 1.1M
        rows: 47-65 ms with a filter, where a first pass of 40 partitions and a second one when it
        fell short took 27 ms for most queries but 80-90 ms for those; LanceDB's exact search with
        a filter read every vector (0.3-0.9 s)."""
        b = (tbl.search(vec, query_type="vector", vector_column_name="vector").distance_type("dot")
             .with_row_id(True).select(["clip_id", "_distance"]).limit(limit).offset(offset))
        if self.meta.get("vector_index"):
            b = (b.minimum_nprobes(VECTOR_NPROBES).maximum_nprobes(0 if sql else VECTOR_NPROBES)
                 .refine_factor(VECTOR_REFINE))
        if sql:
            b = b.where(sql, prefilter=True)
        return self._ranked(b.to_arrow(), "_distance", lambda d: 1.0 - d)

    def _hit_columns(self) -> list[str]:
        """What a Hit is made of: the base columns and each attribute's letter (its answer is the
        choice text of the letter, from the questions: reading both columns of ~50 attributes
        made fetching a page's rows twice as slow at 1.1M rows)."""
        cols = [c for c in BASE_COLUMNS if c not in ("vector", "text")]
        return cols + [Q.letter_column(a["name"]) for a in self.meta.get("attributes", [])]

    def _hit(self, r: dict[str, Any], rank: int, score: Optional[float], conditions: list[Q.Condition],
             facets: Sequence[Facet] = ()) -> Hit:
        attrs = {}
        for a in self.meta.get("attributes", []):
            letter = r.get(Q.letter_column(a["name"]))
            if letter is not None:
                attrs[a["name"]] = {"letter": letter, "answer": a["choices"].get(letter)}
        matched = {c.name: attrs.get(c.name, {}).get("answer") for c in conditions if not c.negate}
        extra = json.loads(r["extra_json"]) if r.get("extra_json") else {}
        return Hit(
            clip_id=r["clip_id"], rank=rank, score=None if score is None else float(score), caption=r.get("caption"),
            attributes=attrs, matched=matched, source=r["source"], thumbnail=r.get("thumbnail"),
            preview=r.get("preview"), clip={k: r.get(k) for k in CLIP_COLUMNS if r.get(k) is not None},
            labeller={k: r.get(k) for k in LABELLER_COLUMNS}, labelled_at=r["labelled_at"],
            caption_json=extra.get("caption_json"),
            facets={f.name: attrs[f.name]["answer"] for f in facets
                    if attrs.get(f.name, {}).get("letter") in f.letters},
        )

    # ---- ingest -----------------------------------------------------------------------------

    def ingest(self, paths: Iterable[str | Path], *, progress: Optional[Progress] = None,
               force: bool = False) -> IngestReport:
        """Add label output directories or record files (ingest.py says how); `progress(records
        read so far, seconds)` is called after each chunk of 20,000. `force` re-reads files the
        log says are unchanged. Raises ScenarioDBError, before anything is written, for a missing
        path, a directory with no records, or attribute questions that disagree with the
        database's."""
        return ingest(self, paths, progress=progress, force=force)


def open_db(path: str | Path, *, embedder: str | Embedder | None = None, create: bool = False,
            aliases: Sequence[str | Path] = ()) -> ScenarioDB:
    """Open the scenario database at `path` (with `create`, make it when absent). `embedder`: a
    spec for `load_embedder` or an Embedder; by default the one the database was built with
    (a new database: wordllama). Another embedder than the database's raises EmbedderError.
    `aliases`: vocabulary files for query understanding, besides the packaged one, the
    database's aliases.json and AVCAP_SEARCH_ALIASES's (read at the first search)."""
    path = Path(path)
    meta_path = path / META_FILE
    emb = load_embedder(embedder) if isinstance(embedder, str) else embedder
    if meta_path.exists():
        db = ScenarioDB(path, read_meta(meta_path), emb, aliases)
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
    meta = new_meta(emb.spec())
    write_json_atomic(meta_path, meta)
    return ScenarioDB(path, meta, emb, aliases)
