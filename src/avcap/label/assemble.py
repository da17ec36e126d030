"""From the labelling run's records (caption.jsonl, attributes.jsonl) to one scenario record per clip.

Pure functions of their inputs, except `clip_info`, which probes the clip (avcap.video), and
`clip_record`, which also writes the clip's pictures (both runners of `avcap label` call it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from avcap.bench.pool import Question
from avcap.core.config import Label
from avcap.label.thumbs import picture_stem, write_pictures
from avcap.scenarios.record import (
    AttributeAnswer,
    AttributeQuestion,
    ClipInfo,
    Labeller,
    QuestionSet,
    ScenarioRecord,
)
from avcap.video import VideoError, probe


def question_set(pool_source: str, questions: list[Question]) -> QuestionSet:
    return QuestionSet(pool=pool_source, attributes=[
        AttributeQuestion(name=q.attribute_name, question_id=q.id, question=q.question, choices=q.choices)
        for q in questions
    ])


def labeller(run: dict[str, Any]) -> Labeller:
    """Who labelled, from the run's run.json."""
    ck = run.get("checkpoint") or {}
    return Labeller(model_name=str(run.get("model_name")), checkpoint=str(run.get("checkpoint_label")),
                    checkpoint_path=str(ck.get("path")), engine=str((run.get("engine") or {}).get("name")),
                    fingerprint=str(run.get("fingerprint")))


def clip_info(path: Path) -> tuple[ClipInfo, Optional[str]]:
    """The clip's duration, size, fps and bytes; (empty info, the reason) when it cannot be probed."""
    try:
        info = probe(path)
    except (VideoError, OSError) as exc:
        return ClipInfo(), str(exc)
    except Exception as exc:  # PyAV's own errors (a corrupt container) carry no common base of ours
        return ClipInfo(), f"{path}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    size = None if info.is_frame_dir else os.stat(path).st_size
    return ClipInfo(duration_s=round(info.duration, 3), width=info.width, height=info.height,
                    fps=round(info.fps, 3), frames=info.total_frames, size_bytes=size), None


def answer(rec: dict[str, Any], q: AttributeQuestion) -> AttributeAnswer:
    if rec.get("error"):
        return AttributeAnswer(error=str(rec["error"]))
    text = (rec.get("text") or "").strip()
    letter = rec.get("letter")
    return AttributeAnswer(letter=letter, answer=q.choices.get(letter) if letter else None,
                           raw=None if letter and text == letter else text)


def scenario(clip_id: str, source: Path, caption: dict[str, Any], attributes: dict[str, dict[str, Any]],
             questions: QuestionSet, info: ClipInfo, probe_error: Optional[str], who: Labeller, at: str,
             pictures: tuple[Optional[str], Optional[str]]) -> ScenarioRecord:
    """One clip's record. `attributes`: question id -> its attributes.jsonl record. The clip is an
    error when it cannot be probed, or when its caption and every answer failed."""
    answers = {q.name: answer(attributes[q.question_id], q) for q in questions.attributes if q.question_id in attributes}
    failed_all = caption.get("error") and all(a.error for a in answers.values())
    error = probe_error or (str(caption["error"]) if failed_all else None)
    if error:
        return ScenarioRecord(clip_id=clip_id, source=str(source), error=error, clip=info, labeller=who,
                              labelled_at=at)
    json_caption = caption.get("caption") if isinstance(caption.get("caption"), dict) else None
    return ScenarioRecord(
        clip_id=clip_id, source=str(source), caption=caption.get("caption_text"), caption_json=json_caption,
        attributes=answers, clip=info, thumbnail=pictures[0], preview=pictures[1], labeller=who, labelled_at=at,
    )


def same_labels(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two records say the same (the time they were assembled aside)."""
    return {k: v for k, v in a.items() if k != "labelled_at"} == {k: v for k, v in b.items() if k != "labelled_at"}


def clip_record(clip_id: str, source: Path, caption: dict[str, Any], attributes: dict[str, dict[str, Any]],
                questions: QuestionSet, who: Labeller, at: str, thumbs: Path, lc: Label,
                log) -> tuple[dict[str, Any], bool]:
    """One clip's scenario record as JSON, its pictures written under `thumbs` when missing:
    (record, whether the pictures failed). A clip the model read but the picture decode cannot
    keeps its labels, without pictures."""
    info, probe_error = clip_info(source)
    pictures: tuple[Optional[str], Optional[str]] = (None, None)
    failed = False
    if probe_error is None:
        stem = picture_stem(clip_id)
        thumb, strip = thumbs / f"{stem}.jpg", thumbs / f"{stem}.strip.jpg"
        try:
            if not (thumb.is_file() and strip.is_file()):
                write_pictures(source, thumb, strip, thumbnail_width=lc.thumbnail_width,
                               preview_frames=lc.preview_frames, preview_height=lc.preview_height)
            pictures = (str(thumb), str(strip))
        except Exception as exc:  # a clip the model read but the picture decode cannot: labels stay
            failed = True
            log(f"  no pictures: {' '.join(str(exc).split())[:300]}")
    rec = scenario(clip_id, source, caption, attributes, questions, info, probe_error, who, at, pictures)
    return rec.to_json(), failed
