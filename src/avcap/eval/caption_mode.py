"""MCQ-VQA in caption mode: every question of a captioned video answered by an engine from the
caption alone (the recipe's "answers from what the captioner wrote"), cached and resumable."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from avcap.bench.pool import format_question
from avcap.core.records import RecordWriter, iter_records, latest_by_key
from avcap.engines import Request, build_messages

CAPTION_MODE_FILE = "mcq_caption_mode.jsonl"
CAPTION_MODE_PROMPT = (
    "Below is a description of a video recorded by the front camera of a vehicle (the ego vehicle).\n\n"
    "Description:\n{caption}\n\n"
    "Answer the question using only the description.\n\n{question}"
)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def caption_mode_records(
    questions: Iterable[Mapping[str, Any]],
    captions: Mapping[str, Optional[str]],
    engine: Any,
    sampling: Any,
    cache_path: Any,
    *,
    answerer: str,
    system: Optional[str] = "You are a helpful assistant.",
    mcq_suffix: str = "Answer with the option's letter from the given choices directly.",
    log: Any = None,
) -> list[dict[str, Any]]:
    """Answer every question of a captioned video from the caption alone (caption mode).

    `questions`: vqa.jsonl records; `captions`: video id -> the model's caption text (None when its
    caption request failed: those questions are recorded as errors, i.e. wrong). Answers are cached
    in `cache_path` (crash-safe JSONL, one record per question, appended as each batch finishes);
    a rerun reuses a cached answer when the caption, prompt and answerer are unchanged, so an
    interrupted scoring run resumes where it stopped. Returns mcq-style records for `mcq_scores`.
    """
    cache_path = Path(cache_path)
    cached = latest_by_key(iter_records(cache_path)) if cache_path.exists() else {}
    out: dict[str, dict[str, Any]] = {}
    todo: list[tuple[dict[str, Any], Request]] = []
    order: list[str] = []
    for q in questions:
        vid = str(q["video_id"])
        if vid not in captions:
            continue  # the video was not captioned (e.g. --limit): not part of this output set
        key = str(q.get("key") or f"{vid}/{q.get('question_id')}")
        order.append(key)
        base = {
            "key": key,
            "video_id": vid,
            "question_id": q.get("question_id"),
            "category": q.get("category"),
            "choices": q["choices"],
            "answer": q.get("answer"),
            "answerer": answerer,
        }
        caption = captions[vid]
        if not isinstance(caption, str) or not caption.strip():
            out[key] = {**base, "text": None, "error": "no caption for this video (its caption request failed)"}
            continue
        prompt = CAPTION_MODE_PROMPT.format(caption=caption.strip(), question=format_question(q, mcq_suffix))
        fp = _sha256(f"{answerer}\n{system}\n{prompt}")
        hit = cached.get(key)
        if hit and hit.get("fingerprint") == fp and not hit.get("error"):
            out[key] = hit
            continue
        todo.append(({**base, "fingerprint": fp}, Request(key=key, messages=build_messages(system, prompt))))
    if todo:
        bs = max(1, int(getattr(engine, "batch_size", 8) or 8))
        if log:
            log(f"  caption mode: {len(todo)} question(s) to answer with {answerer} ({len(order) - len(todo)} cached)")
        with RecordWriter(cache_path) as writer:
            for b in range(0, len(todo), bs):
                chunk = todo[b : b + bs]
                results = engine.generate([r for _, r in chunk], sampling)
                for (base, _), res in zip(chunk, results):
                    rec = {**base, "text": res.text, "error": res.error}
                    writer.append(rec)
                    out[base["key"]] = rec
    return [out[k] for k in order if k in out]
