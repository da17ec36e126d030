"""`avcap bench build`: select questions per video, answer them twice, sort agreed from disputed.

Layout under the dataset directory DIR (docs/formats.md, "Evaluation dataset"):

    DIR/videos/<id>.mp4            DIR/annotations/<id>.json         DIR/world/<id>.json (synthetic only)
    DIR/bench/answers.jsonl        every answer, one crash-safe record per (answerer, video, question)
    DIR/bench/pairs.jsonl          one record per selected (video, question): both letters, status
    DIR/bench/build.json           pool, seed, answerers and counts of the last completed build

An answer record is reused on a rerun only if it has no error and was made by the same answerer
(fingerprint of engine, model, prompts, sampling) for the same question text; everything else is
answered (again). A kill loses at most the chunk in flight.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from avcap import __version__
from avcap.bench.answerers import (
    Answerer,
    Item,
    TruthAnswerer,
    WorldTruth,
    make_answerer,
)
from avcap.bench.errors import BenchError
from avcap.bench.pool import Pool, check_pool_fits, load_pool
from avcap.bench.select import select_questions
from avcap.core.config import RecipeConfig
from avcap.core.records import (
    DirectoryBusy,
    RecordWriter,
    WriterLock,
    iter_records,
    latest_by_key,
    remove_stale_temp_files,
    write_json_atomic,
    write_records_atomic,
)
from avcap.video import is_video_path

ROLES = ("annotation", "video")
PROGRESS_EVERY_S = 10.0


def bench_dir(dataset: Path) -> Path:
    return Path(dataset) / "bench"


def list_videos(dataset: Path) -> dict[str, Path]:
    """video_id -> path, for every video file (or directory of frames) in DIR/videos."""
    vdir = Path(dataset) / "videos"
    if not vdir.is_dir():
        raise BenchError([f"{dataset}: no videos/ directory (expected {vdir})"])
    out: dict[str, Path] = {}
    for p in sorted(vdir.iterdir()):
        if p.name.startswith("."):
            continue
        if is_video_path(p):
            vid = p.name if p.is_dir() else p.stem
            if vid in out:
                raise BenchError([f"{vdir}: two videos share the id {vid!r} ({out[vid].name}, {p.name})"])
            out[vid] = p
    if not out:
        raise BenchError([f"{vdir}: no videos"])
    return out


def load_bench_pool(cfg: RecipeConfig) -> Pool:
    b = cfg.avcap.bench
    pool = load_pool(cfg.resolve(b.pool) if b.pool else None)
    check_pool_fits(pool, b.questions_per_video, b.required_per_video)
    return pool


def make_items(cfg: RecipeConfig, pool: Pool, dataset: Path, videos: dict[str, Path]) -> list[Item]:
    b = cfg.avcap.bench
    world = Path(dataset) / "world"
    items = []
    for vid, path in videos.items():
        ann = Path(dataset) / "annotations" / f"{vid}.json"
        for q in select_questions(pool, vid, seed=b.seed, questions_per_video=b.questions_per_video):
            items.append(Item(vid, q, path, ann, world / f"{vid}.json" if world.is_dir() else None))
    return items


def answer_key(role: str, item_key: str) -> str:
    return f"{role}:{item_key}"


def _current(rec: Optional[dict], fp: str, item: Item) -> bool:
    """The record answers this item's question text, made by this very answerer."""
    return rec is not None and rec.get("answerer_fp") == fp and rec.get("question_fp") == item.question.fingerprint()


def run_answerer(
    answerer: Answerer,
    items: list[Item],
    answers_path: Path,
    *,
    log: Callable[[str], None],
) -> dict[str, int]:
    """Answer every item this answerer has no valid record for; append records chunk by chunk."""
    fp = answerer.fingerprint()
    latest = latest_by_key(iter_records(answers_path))
    todo = []
    for it in items:
        rec = latest.get(answer_key(answerer.role, it.key))
        if not _current(rec, fp, it) or rec.get("error"):  # errors are retried
            todo.append(it)
    log(f"{answerer.role} answerer ({answerer.description}): {len(items) - len(todo)} done, {len(todo)} to answer")
    counts = Counter()
    if not todo:
        return dict(counts)
    t0 = last = time.perf_counter()
    with RecordWriter(answers_path) as writer:
        step = max(1, answerer.batch_size)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            for item, ans in zip(chunk, answerer.answer(chunk)):
                writer.append(
                    {
                        "key": answer_key(answerer.role, item.key),
                        "role": answerer.role,
                        "video_id": item.video_id,
                        "question_id": item.question.id,
                        "letter": ans.letter,
                        "text": ans.text,
                        "raw_text": ans.raw_text if ans.raw_text != ans.text else None,
                        "error": ans.error,
                        "answerer": answerer.description,
                        "answerer_fp": fp,
                        "question_fp": item.question.fingerprint(),
                    }
                )
                counts["error" if ans.error else "answered" if ans.letter else "unparseable"] += 1
            done, now = start + len(chunk), time.perf_counter()
            if done == len(todo) or now - last >= PROGRESS_EVERY_S:
                log(f"  {answerer.role}: {done}/{len(todo)} answered ({now - t0:.1f}s)")
                last = now
    return dict(counts)


def _status(a: dict, v: dict) -> tuple[str, Optional[str]]:
    if a.get("error") or v.get("error"):
        return "review", "error"
    if not a.get("letter") or not v.get("letter"):
        return "review", "unparseable"
    return ("agreed", None) if a["letter"] == v["letter"] else ("review", "disagree")


def make_pairs(items: list[Item], answers_path: Path, fps: dict[str, str]) -> list[dict]:
    """One record per item from the valid answers of both answerers (missing answer: error)."""
    latest = latest_by_key(iter_records(answers_path))
    base = answers_path.parent
    pairs = []
    for it in items:
        got = {}
        for role in ROLES:
            rec = latest.get(answer_key(role, it.key))
            if not _current(rec, fps[role], it):
                rec = {"letter": None, "text": None, "error": "not answered"}
            got[role] = rec
        status, reason = _status(got["annotation"], got["video"])
        q = it.question
        pairs.append(
            {
                "key": it.key,
                "video_id": it.video_id,
                "question_id": q.id,
                "category": q.category,
                "question": q.question,
                "choices": dict(q.choices),
                "required": q.required,
                "depends_on": list(q.depends_on),
                "video": os.path.relpath(it.video, base),
                "annotation": os.path.relpath(it.annotation, base) if it.annotation else None,
                "world": os.path.relpath(it.world, base) if it.world else None,
                **{f"{role}_{f}": got[role].get(f) for role in ROLES for f in ("letter", "text", "error")},
                "status": status,
                "reason": reason,
            }
        )
    return pairs


def build_benchmark(
    cfg: RecipeConfig,
    dataset: str | Path,
    *,
    limit: Optional[int] = None,
    answerers: Optional[dict[str, Answerer]] = None,
    world: Optional[WorldTruth] = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict:
    """Run (or resume) the build for `dataset`; returns the summary written to bench/build.json.
    `world`: the dataset's world truth, for answerers of kind "truth"."""
    dataset = Path(dataset)
    pool = load_bench_pool(cfg)
    videos = list_videos(dataset)
    if limit is not None:
        videos = dict(list(videos.items())[:limit])
    items = make_items(cfg, pool, dataset, videos)
    answerers = answerers or {role: make_answerer(role, cfg, world) for role in ROLES}
    questions = list({it.question.id: it.question for it in items}.values())
    problems = [p for a in answerers.values() for p in a.check(questions)]
    if any(isinstance(a, TruthAnswerer) for a in answerers.values()):
        if not (dataset / "world").is_dir():
            problems.append(f"{dataset}: no world/ directory; a kind = \"truth\" answerer needs the synthetic world's records")
    missing_ann = sorted(v for v in videos if not (dataset / "annotations" / f"{v}.json").is_file())
    if missing_ann and any(getattr(a, "reads", None) == "annotation" for a in answerers.values()):
        shown = ", ".join(missing_ann[:5]) + (" ..." if len(missing_ann) > 5 else "")
        log(f"warning: {len(missing_ann)} video(s) have no annotation in {dataset / 'annotations'}: {shown}")
    if problems:
        raise BenchError(problems)

    out = bench_dir(dataset)
    try:
        with WriterLock(out, ".build.lock", "avcap bench build"):
            remove_stale_temp_files(out)  # what a kill between a temp file and its rename left
            return _build(cfg, dataset, pool, videos, items, answerers, log)
    except DirectoryBusy as exc:
        raise BenchError([str(exc)]) from None


def _build(cfg: RecipeConfig, dataset: Path, pool: Pool, videos: dict, items: list[Item],
           answerers: dict[str, Answerer], log: Callable[[str], None]) -> dict:
    out = bench_dir(dataset)
    answers_path = out / "answers.jsonl"
    log(f"{len(videos)} videos x {cfg.avcap.bench.questions_per_video} questions = {len(items)} pairs "
        f"(pool {pool.source}, seed {cfg.avcap.bench.seed})")
    answered = {}
    for role in ROLES:
        a = answerers[role]
        try:
            answered[role] = run_answerer(a, items, answers_path, log=log)
        finally:
            a.close()  # free one model before the next loads
    fps = {role: answerers[role].fingerprint() for role in ROLES}
    pairs = make_pairs(items, answers_path, fps)
    write_records_atomic(out / "pairs.jsonl", pairs)
    status = Counter(p["status"] for p in pairs)
    reasons = Counter(p["reason"] for p in pairs if p["reason"])
    summary = {
        "avcap_version": __version__,
        "dataset": str(dataset),
        "pool": {"source": pool.source, "sha256": pool.sha256(), "questions": len(pool.questions)},
        "seed": cfg.avcap.bench.seed,
        "questions_per_video": cfg.avcap.bench.questions_per_video,
        "videos": len(videos),
        "pairs": len(pairs),
        "agreed": status["agreed"],
        "review": status["review"],
        "review_reasons": dict(sorted(reasons.items())),
        "answerers": {r: {"description": answerers[r].description, "fingerprint": fps[r]} for r in ROLES},
        "answered_this_run": answered,
    }
    write_json_atomic(out / "build.json", summary)
    log(f"{len(pairs)} pairs: {status['agreed']} agreed, {status['review']} to review "
        f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}) -> {out / 'pairs.jsonl'}")
    return summary


def read_pairs(dataset: str | Path) -> list[dict]:
    path = bench_dir(Path(dataset)) / "pairs.jsonl"
    if not path.is_file():
        raise BenchError([f"{path}: no such file; run `avcap bench build --dataset {dataset}` first"])
    return list(iter_records(path))
