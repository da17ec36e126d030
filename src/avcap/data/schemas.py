"""Schemas of the raw training sources, in the shapes the recipe publishes (section 3, "Example
Annotations"), plus the verified MCQ records of `vqa.jsonl` (docs/formats.md).

One annotation JSON file per video:

- `HumanAnnotation` — the human-annotated caption (`human_annotated`): scene fields, meta-actions,
  `safety_analysis`, `driving_difficulty`, critical objects with boxes;
- `CVAnnotation` — the computer-vision auto-label (`cv_annotated`): event start and
  `final_content.ego_behavior_schema` (reasoning, effect on ego behaviour, difficulty score);
- `Reason1SFTAnnotation` — reasoning SFT data (`reason1_sft`): `response` with `description`,
  `driving difficulty explanation` (a key with spaces) and timestamped `notice`s.

`VQARecord` (from `avcap.bench.vqa`) is one line of an evaluation set's `vqa.jsonl` (what `avcap bench
apply` writes).

Unknown extra keys are kept (real exports carry more fields than the recipe shows); a missing
required key or a value of the wrong type is a schema error. `validate_source(kind, obj)` is the
one entry point the curation step and other helpers' tests use.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from avcap.bench.vqa import VQARecord

SOURCE_KINDS = ("human_annotated", "cv_annotated", "reason1_sft", "vqa")


class _Open(BaseModel):
    """Known keys validated, unknown keys kept (and written back out unchanged)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _bool_text(v: Any) -> Any:
    # the recipe writes booleans as the strings "True"/"False"; accept JSON booleans too
    if isinstance(v, bool):
        return "True" if v else "False"
    return v


# ----------------------------------------------------------------------------- human annotation


class Box(_Open):
    x1: float
    y1: float
    x2: float
    y2: float


class CriticalObject(_Open):
    box: Box
    box_time: float  # seconds into the clip
    critical_reasoning: str
    object_type: str


class HumanAnnotation(_Open):
    weather: str
    lighting: str
    road_conditions: str
    traffic_light: str
    traffic_sign: str
    additional_traffic_rules: str
    road_type: str
    junction_type: str
    lane_type: str
    additional_map_rules: str
    interactive_expanded_metaaction: Optional[list[str]] = None
    noninteractive_expanded_metaaction: Optional[list[str]] = None
    safety_analysis: str = Field(min_length=1)
    driving_difficulty: int = Field(ge=0)
    rule_violation: str
    interesting_scenario: str
    critical_object: list[CriticalObject] = Field(default_factory=list)

    _bools = field_validator("rule_violation", "interesting_scenario", mode="before")(_bool_text)


# ----------------------------------------------------------------------------- CV auto-label


class EgoBehaviorSchema(_Open):
    ego_behavior_reasoning: str = Field(min_length=1)
    effect_on_ego_behavior: str = Field(min_length=1)
    difficulty_score: int = Field(ge=0)


class CVFinalContent(_Open):
    ego_behavior_schema: EgoBehaviorSchema


class CVAnnotation(_Open):
    event_start_frame: int = Field(ge=0)
    event_start_timestamp: int  # microseconds (epoch) in the recipe's example
    final_content: CVFinalContent


# ----------------------------------------------------------------------------- reasoning SFT

# "Between time 10.18s and 17.07s" (the recipe's example); seconds may be integers
NOTICE_TIME = re.compile(r"^\s*Between time\s+(\d+(?:\.\d+)?)s\s+and\s+(\d+(?:\.\d+)?)s\s*$")


class Reason1SFTResponse(_Open):
    description: str = Field(min_length=1)
    driving_difficulty_explanation: str = Field(alias="driving difficulty explanation")
    notice: list[dict[str, str]] = Field(default_factory=list)

    @field_validator("notice")
    @classmethod
    def _one_timed_entry(cls, v: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, item in enumerate(v):
            if len(item) != 1:
                raise ValueError(f"notice[{i}] must hold exactly one 'Between time As and Bs': text entry")
            (when,) = item
            m = NOTICE_TIME.match(when)
            if not m:
                raise ValueError(f"notice[{i}] key {when!r} is not 'Between time <a>s and <b>s'")
            if float(m.group(1)) > float(m.group(2)):
                raise ValueError(f"notice[{i}] ends before it starts: {when!r}")
        return v


class Reason1SFTAnnotation(_Open):
    response: Reason1SFTResponse


# ----------------------------------------------------------------------------- vqa.jsonl


# ----------------------------------------------------------------------------- dispatch

SCHEMAS: dict[str, type[BaseModel]] = {
    "human_annotated": HumanAnnotation,
    "cv_annotated": CVAnnotation,
    "reason1_sft": Reason1SFTAnnotation,
    "vqa": VQARecord,
}

Annotation = Union[HumanAnnotation, CVAnnotation, Reason1SFTAnnotation, VQARecord]


def validate_source(kind: str, obj: Any) -> Annotation:
    """Validate one raw record of a source kind; raises pydantic.ValidationError (or KeyError
    for an unknown kind)."""
    try:
        model = SCHEMAS[kind]
    except KeyError:
        raise KeyError(f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})") from None
    return model.model_validate(obj)
