"""The question pool: schema, the packaged 50-question pool, user pools, and the MCQ prompt text.

A pool file is JSON or YAML: either a list of questions or an object with a `questions` list.
Each question:

    {"id": "sd01", "attribute": "area", "category": "Scene Description", "question": "...",
     "choices": {"A": "...", "B": "...", "C": "...", "D": "..."},
     "required": true, "depends_on": ["road_type", "safety_analysis"]}

`attribute` (optional; default: the id) is the answer's short name in the scenario database
(`avcap label` asks the questions, `avcap search --where area=urban` filters on them);
`choices` are in a fixed order (A..D) for every video; `depends_on` names the human-annotation
fields the question relies on (the review file shows them as the annotation excerpt).
Every problem is reported with the file and the question (index and id).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from avcap.core.config import CATEGORIES

LETTERS = ("A", "B", "C", "D")
PACKAGED = "avcap/bench/pool.json"


class PoolError(ValueError):
    """Problems in a pool file, one line each, naming the file and the question."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    attribute: Optional[str] = Field(None, pattern=r"^[a-z][a-z0-9_]*$")
    category: str
    question: str = Field(min_length=1)
    choices: dict[str, str]
    required: bool = False
    depends_on: list[str] = Field(default_factory=list)

    @field_validator("category")
    @classmethod
    def _category(cls, v: str) -> str:
        if v not in CATEGORIES:
            raise ValueError(f"unknown category {v!r} (one of: {', '.join(CATEGORIES)})")
        return v

    @field_validator("choices")
    @classmethod
    def _choices(cls, v: dict[str, str]) -> dict[str, str]:
        if list(v) != list(LETTERS):
            raise ValueError(f"choices must be exactly A, B, C, D in that order (got {', '.join(v) or 'none'})")
        texts = [t.strip() for t in v.values()]
        if any(not t for t in texts):
            raise ValueError("a choice is empty")
        if len({t.lower() for t in texts}) != len(texts):
            raise ValueError("two choices have the same text")
        return v

    @property
    def attribute_name(self) -> str:
        """The answer's name in the scenario database (the question id when the pool names none)."""
        return self.attribute or self.id.lower()

    def fingerprint(self) -> str:
        """Changes whenever the text a model sees changes (question or choices)."""
        blob = json.dumps([self.question, self.choices], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


class Pool(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    questions: tuple[Question, ...]

    @property
    def required(self) -> list[Question]:
        return [q for q in self.questions if q.required]

    @property
    def optional(self) -> list[Question]:
        return [q for q in self.questions if not q.required]

    def by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}

    def sha256(self) -> str:
        blob = json.dumps([q.model_dump() for q in self.questions], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def summary(self) -> dict[str, dict[str, int]]:
        """category -> {"questions": n, "required": n}, in CATEGORIES order."""
        out = {c: {"questions": 0, "required": 0} for c in CATEGORIES}
        for q in self.questions:
            out[q.category]["questions"] += 1
            out[q.category]["required"] += int(q.required)
        return {c: v for c, v in out.items() if v["questions"]}


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PoolError([f"{path}: no such pool file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolError([f"{path}: cannot read ({exc})"]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PoolError([f"{path}: not valid YAML ({exc})"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoolError([f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"]) from None


def parse_pool(data: Any, source: str) -> Pool:
    """Validate pool data; every problem names `source` and the question."""
    items = data.get("questions") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise PoolError([f"{source}: expected a non-empty list of questions (or an object with a 'questions' list)"])
    problems: list[str] = []
    questions: list[Question] = []
    seen: dict[str, int] = {}
    attributes: dict[str, int] = {}
    for i, item in enumerate(items, start=1):
        name = f"question #{i}" + (f" ({item.get('id')!r})" if isinstance(item, dict) and item.get("id") else "")
        if not isinstance(item, dict):
            problems.append(f"{source}: {name}: expected an object, got {type(item).__name__}")
            continue
        try:
            q = Question.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "<question>"
                msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                problems.append(f"{source}: {name}: {loc}: {msg}")
            continue
        if q.id in seen:
            problems.append(f"{source}: {name}: duplicate id (first used by question #{seen[q.id]})")
            continue
        if q.attribute_name in attributes:
            problems.append(f"{source}: {name}: attribute: {q.attribute_name!r} is also question "
                            f"#{attributes[q.attribute_name]}'s")
            continue
        seen[q.id] = i
        attributes[q.attribute_name] = i
        questions.append(q)
    if problems:
        raise PoolError(problems)
    return Pool(source=source, questions=tuple(questions))


def load_pool(path: Optional[Union[str, Path]] = None) -> Pool:
    """The packaged pool (path None) or a user's pool file (JSON or YAML)."""
    if path is None:
        text = resources.files("avcap.bench").joinpath("pool.json").read_text(encoding="utf-8")
        return parse_pool(json.loads(text), PACKAGED)
    p = Path(path)
    return parse_pool(_read(p), str(p))


def check_pool_fits(pool: Pool, questions_per_video: int, required_per_video: int) -> None:
    """The pool must supply `required_per_video` required questions and enough others to sample."""
    problems = []
    n_req = len(pool.required)
    if n_req != required_per_video:
        problems.append(
            f"{pool.source}: has {n_req} required question(s) but [avcap.bench] required_per_video = "
            f"{required_per_video}; mark exactly that many questions \"required\": true or change the config"
        )
    need = questions_per_video - required_per_video
    if len(pool.optional) < need:
        problems.append(
            f"{pool.source}: has {len(pool.optional)} optional question(s) but each video samples {need} "
            f"(questions_per_video {questions_per_video} - required_per_video {required_per_video})"
        )
    if problems:
        raise PoolError(problems)


def format_question(q: Union[Question, Mapping[str, Any]], suffix: str = "") -> str:
    """The MCQ prompt: question, newline, one line per choice "A. text", newline, suffix.

    `q` is a pool `Question` or any record with `question` and `choices` (a vqa.jsonl line)."""
    if isinstance(q, Question):
        question, choices = q.question, q.choices
    else:
        question, choices = q["question"], q["choices"]
    lines = [question.strip(), *(f"{k}. {v}" for k, v in choices.items())]
    if suffix:
        lines.append(suffix)
    return "\n".join(lines)
