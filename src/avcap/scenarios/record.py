"""The scenario record: what `avcap label` writes for one clip and `avcap index` ingests.

A label output directory holds

    questions.json      the attribute questions the clips were asked (`QuestionSet`)
    scenarios.jsonl     one `ScenarioRecord` per clip (single-process runner)
    scenarios/*.jsonl   or partitions of them (distributed runner), same records

Every line carries `"schema": "avcap.scenario/1"`; a reader refuses other versions with one line
naming the file, the line and the version it found (docs/formats.md, "Scenario records").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avcap.core.records import RecordError, iter_records, read_json, schema_error_text

SCHEMA = "avcap.scenario/1"
QUESTIONS_SCHEMA = "avcap.scenario-questions/1"
QUESTIONS_FILE = "questions.json"
RECORDS_FILE = "scenarios.jsonl"
PARTITIONS_DIR = "scenarios"


class ScenarioFormatError(ValueError):
    """A scenario file that cannot be read: one line naming the file (and line, field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttributeQuestion(_Model):
    """One attribute: a short name for filters (`weather`) and the pool question that answers it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    question_id: str
    question: str
    choices: dict[str, str]  # letter -> choice text, A..D


class QuestionSet(_Model):
    schema_: Literal["avcap.scenario-questions/1"] = Field(QUESTIONS_SCHEMA, alias="schema")
    pool: str  # where the questions came from (the packaged pool, or a user's pool file)
    attributes: list[AttributeQuestion]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def by_name(self) -> dict[str, AttributeQuestion]:
        return {a.name: a for a in self.attributes}


class AttributeAnswer(_Model):
    letter: Optional[str] = None  # None: the model's answer named no choice (`raw` keeps it) or failed
    answer: Optional[str] = None  # the choice text of `letter`
    raw: Optional[str] = None  # the model's text when it is not just the letter
    error: Optional[str] = None  # the request failed (engine error)


class ClipInfo(_Model):
    duration_s: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[float] = None
    frames: Optional[int] = None
    size_bytes: Optional[int] = None


class Labeller(_Model):
    """What produced the record: a resume or an index can tell two labellings apart."""

    model_name: str
    checkpoint: str  # the checkpoint label (base, step_400, ...)
    checkpoint_path: str
    engine: str
    fingerprint: str  # the label run's settings fingerprint (run.json)


class ScenarioRecord(_Model):
    schema_: Literal["avcap.scenario/1"] = Field(SCHEMA, alias="schema")
    clip_id: str = Field(min_length=1)
    source: str  # the clip's path (absolute) or URI
    error: Optional[str] = None  # the clip could not be labelled (unreadable video, ...): no caption
    caption: Optional[str] = None  # the caption's text (the JSON caption's safety_analysis, else the text)
    caption_json: Optional[dict[str, Any]] = None  # the caption when the model wrote JSON
    attributes: dict[str, AttributeAnswer] = Field(default_factory=dict)  # attribute name -> answer
    clip: ClipInfo = Field(default_factory=ClipInfo)
    thumbnail: Optional[str] = None  # JPEG of the middle sampled frame (absolute path)
    preview: Optional[str] = None  # JPEG strip of a few sampled frames (absolute path)
    labeller: Labeller
    labelled_at: str  # ISO 8601, when the record was assembled

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def parse_record(obj: Any, where: str) -> ScenarioRecord:
    """One record from a parsed JSON line; `where` ("file:line") starts every error line."""
    if not isinstance(obj, dict):
        raise ScenarioFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema")
    if version != SCHEMA:
        raise ScenarioFormatError(
            f"{where}: schema: {version!r} is not {SCHEMA!r}"
            + (" (written by another avcap version; relabel or convert)" if isinstance(version, str) else
               " (not a scenario record: expected the output of `avcap label`)")
        )
    try:
        return ScenarioRecord.model_validate(obj)
    except ValidationError as exc:
        raise ScenarioFormatError(f"{where}: {schema_error_text(exc)}") from None


def iter_scenarios(path: str | Path) -> Iterator[ScenarioRecord]:
    """Every record of one scenario JSONL file (a torn last line is skipped, as everywhere)."""
    path = Path(path)
    try:
        for n, obj in enumerate(iter_records(path, missing_ok=False), start=1):
            yield parse_record(obj, f"{path}:{n}")
    except RecordError as exc:
        raise ScenarioFormatError(str(exc)) from None


_TOP_KEYS = frozenset(ScenarioRecord.model_fields) - {"schema_"} | {"schema"}
_ANSWER_KEYS = frozenset(AttributeAnswer.model_fields)
_CLIP_INTS = frozenset(k for k, f in ClipInfo.model_fields.items() if "int" in str(f.annotation))
_CLIP_KEYS = frozenset(ClipInfo.model_fields)
_LABELLER_KEYS = frozenset(Labeller.model_fields)
_OPT_STR_KEYS = ("error", "caption", "thumbnail", "preview")


def _plainly_valid(obj: dict) -> bool:
    """Does `obj` satisfy ScenarioRecord as it stands, with nothing for pydantic to coerce? (A
    strict subset of what validation accepts: True means model_validate would accept `obj` and
    give back the same values.)"""
    if not _TOP_KEYS.issuperset(obj) or obj.get("schema") != SCHEMA:
        return False
    cid, source, at = obj.get("clip_id"), obj.get("source"), obj.get("labelled_at")
    if not (type(cid) is str and cid and type(source) is str and type(at) is str):
        return False
    if any(obj.get(k) is not None and type(obj[k]) is not str for k in _OPT_STR_KEYS):
        return False
    cj = obj.get("caption_json")
    if cj is not None and not (type(cj) is dict and all(type(k) is str for k in cj)):
        return False
    lab = obj.get("labeller")
    if type(lab) is not dict or lab.keys() != _LABELLER_KEYS or any(type(v) is not str for v in lab.values()):
        return False
    clip = obj.get("clip", {})
    if type(clip) is not dict or not _CLIP_KEYS.issuperset(clip):
        return False
    for k, v in clip.items():
        if v is not None and not (type(v) is int or (type(v) is float and k not in _CLIP_INTS)):
            return False
    attrs = obj.get("attributes", {})
    if type(attrs) is not dict:
        return False
    for k, a in attrs.items():
        if type(k) is not str or type(a) is not dict or not _ANSWER_KEYS.issuperset(a):
            return False
        for v in a.values():
            if v is not None and type(v) is not str:
                return False
    return True


def parse_record_dict(obj: Any, where: str) -> dict[str, Any]:
    """A record as a checked JSON dict, for readers of millions of lines (`avcap index`): a record
    that is plainly valid is returned as it is (~15 µs, where building the pydantic model with its
    nested answers takes ~200 µs); anything else goes through `parse_record`, so errors and
    coercions are the model's."""
    if isinstance(obj, dict) and _plainly_valid(obj):
        return obj
    return parse_record(obj, where).to_json()


def scan_scenarios(path: str | Path, *, as_dict: bool = False
                   ) -> Iterator[ScenarioRecord | dict[str, Any] | ScenarioFormatError]:
    """Every line of one scenario JSONL file as a record (with `as_dict`, its checked JSON dict:
    `parse_record_dict`), or as the error that names its file:line and field: a reader that skips
    a bad line and goes on (`avcap index`). A torn last line is skipped; a missing or unreadable
    file raises OSError."""
    path = Path(path)
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return  # torn by a kill mid-write: not a record
            line = raw.strip()
            if not line:
                continue
            yield read_line(line, f"{path}:{n}", as_dict=as_dict)


def read_line(line: bytes, where: str, *, as_dict: bool = False) -> ScenarioRecord | dict[str, Any] | ScenarioFormatError:
    """One stripped, non-empty line of a scenario JSONL file as `scan_scenarios` gives it."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ScenarioFormatError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)})")
    try:
        return parse_record_dict(obj, where) if as_dict else parse_record(obj, where)
    except ScenarioFormatError as exc:
        return exc.with_traceback(None)  # no cycle through this frame: it is freed at once


def scenario_files(label_dir: str | Path) -> list[Path]:
    """The record files of a label output directory: scenarios.jsonl and scenarios/*.jsonl."""
    d = Path(label_dir)
    files = [d / RECORDS_FILE] if (d / RECORDS_FILE).is_file() else []
    parts = d / PARTITIONS_DIR
    if parts.is_dir():
        files += sorted(p for p in parts.glob("*.jsonl") if not p.name.startswith("."))
    return files


def read_questions(path: str | Path) -> QuestionSet:
    path = Path(path)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise ScenarioFormatError(f"{path}: no such file (a label output directory has one)") from None
    except (RecordError, ValueError) as exc:
        raise ScenarioFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != QUESTIONS_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ScenarioFormatError(f"{path}: schema: {found!r} is not {QUESTIONS_SCHEMA!r}")
    try:
        return QuestionSet.model_validate(data)
    except ValidationError as exc:
        raise ScenarioFormatError(f"{path}: {schema_error_text(exc)}") from None


def questions_for(records_file: str | Path) -> Path:
    """The questions.json that describes a records file: beside it, or one level up (partitions)."""
    f = Path(records_file)
    for d in (f.parent, f.parent.parent):
        if (d / QUESTIONS_FILE).is_file():
            return d / QUESTIONS_FILE
    return f.parent / QUESTIONS_FILE
