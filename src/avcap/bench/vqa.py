"""`vqa.jsonl`, the verified MCQ set `avcap bench apply` writes: its record schema and the one
reader every step uses (`avcap infer`, `avcap score`, `avcap curate`).

`check_vqa_lines(path, pool=...)` looks at every line and says what is wrong with it, naming the
line and the field: not JSON, a missing or mistyped field, an answer other than A-D, choices that
are not exactly A-D, a key that is not `<video_id>/<question_id>`, a question id the pool does not
hold, a key on several lines (identical lines: the first is kept and the others are reported; lines
that disagree: none is used, since picking one would be a guess). `read_vqa` returns the usable
records and one line per problem; the callers print and count the problems and go on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from avcap.bench.pool import load_pool
from avcap.core.config import CATEGORIES, RecipeConfig
from avcap.core.records import schema_error_text


class VQARecord(BaseModel):
    """One line of `vqa.jsonl`. Unknown extra keys are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    key: str
    video_id: str = Field(min_length=1)
    question_id: str = Field(min_length=1)
    category: str
    question: str = Field(min_length=1)
    choices: dict[Literal["A", "B", "C", "D"], str]
    answer: Literal["A", "B", "C", "D"]
    provenance: Literal["agreed", "reviewed"]

    @field_validator("question_id", mode="before")
    @classmethod
    def _id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("category")
    @classmethod
    def _known_category(cls, v: str) -> str:
        if v not in CATEGORIES:
            raise ValueError(f"category {v!r} is not one of {list(CATEGORIES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "VQARecord":
        if set(self.choices) != {"A", "B", "C", "D"}:
            raise ValueError(f"choices must have exactly the letters A-D, got {sorted(self.choices)}")
        if self.key != f"{self.video_id}/{self.question_id}":
            raise ValueError(f"key {self.key!r} must be '<video_id>/<question_id>'")
        return self


@dataclass
class VQALine:
    lineno: int
    text: str
    record: Optional[VQARecord]  # None when the line cannot be used
    problem: Optional[str] = None

    @property
    def usable(self) -> bool:
        return self.record is not None and self.problem is None


def check_vqa_lines(path: str | Path, *, pool_ids: Optional[set[str]] = None, pool_source: str = "the pool") -> list[VQALine]:
    """Every non-empty line of `path` with its validated record or its problem (see module doc)."""
    path = Path(path)
    lines: list[VQALine] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                lines.append(_check_line(lineno, text, pool_ids, pool_source))
    by_key: dict[str, list[VQALine]] = {}
    for line in lines:
        if line.usable:
            by_key.setdefault(line.record.key, []).append(line)
    for key, same in by_key.items():
        if len(same) == 1:
            continue
        where = ", ".join(str(x.lineno) for x in same)
        dumps = {json.dumps(x.record.model_dump(mode="json"), sort_keys=True) for x in same}
        if len(dumps) == 1:
            for x in same[1:]:
                x.problem = f"key {key!r}: duplicate of line {same[0].lineno} (identical; kept once)"
        else:
            for x in same:
                x.problem = f"key {key!r} is on lines {where} with different content; none is used"
    return lines


def _check_line(lineno: int, text: str, pool_ids: Optional[set[str]], pool_source: str) -> VQALine:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return VQALine(lineno, text, None, f"malformed JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return VQALine(lineno, text, None, f"wrong schema: a record must be a JSON object, not {type(obj).__name__}")
    try:
        rec = VQARecord.model_validate(obj)
    except ValidationError as exc:
        return VQALine(lineno, text, None, f"wrong schema: {schema_error_text(exc)}")
    if pool_ids is not None and rec.question_id not in pool_ids:
        return VQALine(lineno, text, None, f"question_id: {rec.question_id!r} is not in {pool_source}")
    return VQALine(lineno, text, rec)


def read_vqa(path: str | Path, *, pool_ids: Optional[set[str]] = None,
             pool_source: str = "the pool") -> tuple[list[dict[str, Any]], list[str]]:
    """The usable records of `vqa.jsonl` (as dicts, file order) and one `file:line: problem` line
    per line that cannot be used."""
    lines = check_vqa_lines(path, pool_ids=pool_ids, pool_source=pool_source)
    records = [x.record.model_dump(mode="json") for x in lines if x.usable]
    problems = [f"{path}:{x.lineno}: {x.problem}" for x in lines if not x.usable]
    return records, problems


def read_vqa_for(cfg: RecipeConfig, path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """`read_vqa` checked against the configured question pool (`[avcap.bench] pool`, else the
    packaged one): what `avcap infer` asks and `avcap score` expects. Raises PoolError for a bad pool."""
    b = cfg.avcap.bench
    pool = load_pool(cfg.resolve(b.pool) if b.pool else None)
    return read_vqa(path, pool_ids={q.id for q in pool.questions}, pool_source=f"the question pool ({pool.source})")
