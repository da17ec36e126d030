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


def to_arrow(recs: list[dict[str, Any]], record_file: Path, questions: Mapping[str, AttributeQuestion],
             vectors: ScenarioVectors):
    """The rows of `recs` (checked record dicts) as an Arrow table of `schema(questions, dim)`.
    The attributes go through Arrow as one struct column (C++, ~40 answers a record); `text` and
    the stated answers are worked out per distinct answer, not per record."""
    # pyarrow imported here: only ingest needs it (see db.py)
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(recs)
    dim = vectors.embedder.dim
    names = list(questions)
    answer_t = pa.struct([(k, pa.string()) for k in ("letter", "answer", "raw", "error")])
    attrs = pa.array([r.get("attributes") or {} for r in recs], type=pa.struct([(k, answer_t) for k in names]))
    captions = [r.get("caption") or None for r in recs]
    cols: dict[str, Any] = {
        "clip_id": [r["clip_id"] for r in recs], "source": [r["source"] for r in recs], "caption": captions,
        "thumbnail": [r.get("thumbnail") for r in recs], "preview": [r.get("preview") for r in recs],
        "labelled_at": [r["labelled_at"] for r in recs], "record_file": [str(record_file)] * n,
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
        cols[name], cols[letter_column(name)] = answer, sub.field("letter")
        extra |= pc.or_(pc.is_valid(sub.field("raw")), pc.is_valid(sub.field("error"))).to_numpy(zero_copy_only=False)
        enc = answer.dictionary_encode()
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        suffixed = []
        for j, text in enumerate(enc.dictionary.to_pylist()):
            stated = states(questions[name], text)
            suffixed.append(f"{text}." if stated else None)
            if stated:
                stated_rows.setdefault(text, []).append(np.flatnonzero(idx == j))
        stated_cols.append(pa.array(suffixed, pa.string()).take(enc.indices))
    cap = pa.array(captions, pa.string())
    cols["text"] = pc.fill_null(pc.binary_join_element_wise(cap, *stated_cols, " ", null_handling="skip"), "")
    emb = vectors(captions, {t: np.concatenate(parts) for t, parts in stated_rows.items()})
    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(emb, np.float32).reshape(-1)), dim)
    cols["extra_json"] = [extra_json(recs[i]) if extra[i] else None for i in range(n)]
    sch = schema(questions, dim)
    return pa.Table.from_arrays([c if isinstance(c, (pa.Array, pa.ChunkedArray)) else pa.array(c, fld.type)
                                 for fld, c in ((fld, cols[fld.name]) for fld in sch)], schema=sch)


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
