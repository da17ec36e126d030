"""The table's rows: its schema, and scenario records (their JSON form) made into Arrow rows.

One row per clip. Besides the record's own fields (flattened: `clip.*` and `labeller.*` become
columns), a row holds `text`, what full-text search indexes, `vector`, the caption's embedding,
and two columns per attribute: `<name>` (the choice text) and `<name>_letter` (what `--where`
filters on). docs/formats.md, "Scenario database", lists them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from avcap.scenarios.embed import ScenarioVectors
from avcap.scenarios.query import letter_column
from avcap.scenarios.record import AttributeQuestion

CLIP_COLUMNS = {"duration_s": "float64", "width": "int64", "height": "int64", "fps": "float64",
                "frames": "int64", "size_bytes": "int64"}
LABELLER_COLUMNS = ("model_name", "checkpoint", "checkpoint_path", "engine", "fingerprint")
BASE_COLUMNS = ("clip_id", "source", "caption", "text", "vector", "thumbnail", "preview", "labelled_at",
                "record_file", "extra_json", *CLIP_COLUMNS, *LABELLER_COLUMNS)
NEGATIVE_STARTS = ("no ", "no,", "none", "neither", "not ")
_ASKS_ABSENCE = re.compile(r"\b(absent|missing|not (?:visible|present|seen))\b", re.IGNORECASE)


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


def schema(questions: Mapping[str, AttributeQuestion], dim: int):
    # pyarrow imported here: only ingest needs it (see db.py)
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
        fields += [pa.field(name, pa.string()), pa.field(letter_column(name), pa.string())]
    return pa.schema(fields)


def to_arrow(recs, record_file: Path, questions: Mapping[str, AttributeQuestion], vectors: ScenarioVectors):
    """The rows of `recs` (checked records as Arrow: `reader.record_schema`) as an Arrow table of
    `schema(questions, dim)`, column by column (no Python object per record): `text` and the
    stated answers are worked out per distinct answer, not per record; `extra_json` is built only
    for the records that have something for it."""
    # pyarrow imported here: only ingest needs it (see db.py)
    import pyarrow as pa
    import pyarrow.compute as pc

    recs = recs.combine_chunks()
    n = recs.num_rows
    dim = vectors.embedder.dim
    attrs = recs["attributes"]
    cap = recs["caption"].combine_chunks()
    cap = pc.if_else(pc.equal(cap, ""), pa.scalar(None, pa.string()), cap)  # "" is no caption
    cols: dict[str, Any] = {k: recs[k] for k in ("clip_id", "source", "thumbnail", "preview", "labelled_at")}
    cols["caption"] = cap
    cols["record_file"] = pa.repeat(str(record_file), n)
    cols.update({k: pc.struct_field(recs["clip"], k) for k in CLIP_COLUMNS})
    cols.update({k: pc.struct_field(recs["labeller"], k) for k in LABELLER_COLUMNS})
    extra = pc.is_valid(recs["caption_json"])
    stated_rows: dict[str, list[np.ndarray]] = {}
    stated_cols = []
    for name in questions:
        sub = pc.struct_field(attrs, name)
        answer = pc.struct_field(sub, "answer").combine_chunks()
        cols[name], cols[letter_column(name)] = answer, pc.struct_field(sub, "letter")
        extra = pc.or_(extra, pc.or_(pc.is_valid(pc.struct_field(sub, "raw")), pc.is_valid(pc.struct_field(sub, "error"))))
        enc = answer.dictionary_encode()
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        suffixed = []
        for j, text in enumerate(enc.dictionary.to_pylist()):
            stated = states(questions[name], text)
            suffixed.append(f"{text}." if stated else None)
            if stated:
                stated_rows.setdefault(text, []).append(np.flatnonzero(idx == j))
        stated_cols.append(pa.array(suffixed, pa.string()).take(enc.indices))
    cols["text"] = pc.fill_null(pc.binary_join_element_wise(cap, *stated_cols, " ", null_handling="skip"), "")
    emb = vectors(cap, {t: np.concatenate(parts) for t, parts in stated_rows.items()})
    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(emb, np.float32).reshape(-1)), dim)
    cols["extra_json"] = _extra_json(recs, questions, extra.fill_null(False).to_numpy(zero_copy_only=False))
    sch = schema(questions, dim)
    return pa.Table.from_arrays([c if isinstance(c, pa.ChunkedArray) else pa.chunked_array([c], f.type)
                                 for f, c in ((f, cols[f.name]) for f in sch)], schema=sch)


def _extra_json(recs, questions: Mapping[str, AttributeQuestion], extra: np.ndarray):
    """The `extra_json` column: `extra_json` of the records flagged in `extra`, null elsewhere."""
    import pyarrow as pa

    out: list[Optional[str]] = [None] * recs.num_rows
    idx = np.flatnonzero(extra)
    if len(idx):
        sub = recs.select(["caption_json", "attributes"]).take(idx).to_pylist()
        for i, r in zip(idx, sub):
            cj = r["caption_json"]
            out[i] = extra_json({"caption_json": None if cj is None else json.loads(cj),
                                 "attributes": {k: a for k, a in (r["attributes"] or {}).items() if a is not None}})
    return pa.array(out, pa.string())


def extra_json(r: dict[str, Any]) -> Optional[str]:
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
