"""Per-video question selection: every required question plus a seeded sample of the rest.

The sample depends only on (seed, video_id) — not on run order, the other videos, or the process —
so the same video always gets the same questions.
"""

from __future__ import annotations

import hashlib
import random

from avcap.bench.pool import Pool, Question


def video_rng(seed: int, video_id: str) -> random.Random:
    digest = hashlib.sha256(f"avcap-bench:{seed}:{video_id}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def select_questions(pool: Pool, video_id: str, *, seed: int, questions_per_video: int) -> list[Question]:
    """Required questions + (questions_per_video - len(required)) sampled optional ones, in pool order."""
    required = pool.required
    k = questions_per_video - len(required)
    if k < 0 or k > len(pool.optional):
        raise ValueError(
            f"{pool.source}: cannot pick {questions_per_video} questions per video with "
            f"{len(required)} required and {len(pool.optional)} optional"
        )
    sampled = {q.id for q in video_rng(seed, video_id).sample(pool.optional, k)}
    return [q for q in pool.questions if q.required or q.id in sampled]
