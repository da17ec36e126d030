"""`avcap synth --out DIR`: render the procedural world in the layout of docs/formats.md.

    DIR/manifest.json                             deterministic: settings, counts, seeds (no timings)
    DIR/timings.json                              the last run's render times (wall clock)
    DIR/train/<source>/videos/<id>.mp4            source: human_annotated, cv_annotated, reason1_sft
    DIR/train/<source>/annotations/<id>.json      the recipe's published shape for that source
    DIR/train/world/<id>.json                     SceneRecord of every training video
    DIR/eval/AV_CAPTION/{videos,annotations,world}/<id>.*, captions.jsonl
    DIR/eval/LINGOQA/val.parquet, images/val/<segment_id>/{0..4}.jpg

Every video has its own seed drawn from (--seed, split, index), so a video is the same whatever
the counts, and reruns skip the videos already complete (an interrupted run resumes).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from avcap import __version__
from avcap.core.records import read_json, write_json_atomic, write_records_atomic
from avcap.demo.synth import annotate as A
from avcap.demo.synth.render import Renderer, render_video
from avcap.demo.synth.world import sample_scene

# Heavy libraries (PIL, numpy, pandas) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

SOURCES = ("human_annotated", "cv_annotated", "reason1_sft")
_SPLIT_CODE = {"eval": 1, "human_annotated": 2, "cv_annotated": 3, "reason1_sft": 4, "lingoqa": 5}
_ID_PREFIX = {"eval": "av", "human_annotated": "hu", "cv_annotated": "cv", "reason1_sft": "rs"}
LINGOQA_QUESTIONS_PER_SEGMENT = 5
LINGOQA_FRAMES = 5
TIMINGS_FILE = "timings.json"  # this run's wall-clock figures (differ from run to run)


class SynthError(ValueError):
    """A problem the user can fix (bad option, a directory made with other settings)."""


def video_seed(seed: int, split: str, index: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).generate_state(1, np.uint32)[0] >> 1)


def _settings(seed, width, height, seconds, fps) -> dict:
    return {"seed": seed, "width": width, "height": height, "seconds": seconds, "fps": fps}


# ---------------------------------------------------------------------------------------------
# one unit of work (runs in a worker process)
# ---------------------------------------------------------------------------------------------


def _job(job: dict) -> dict:
    t0 = time.perf_counter()
    kind = job["kind"]
    rec = sample_scene(job["seed"], duration_s=job["seconds"], fps=job["fps"], width=job["width"],
                       height=job["height"], video_id=job["id"])
    if kind == "lingoqa":
        seg = A.segment_id(rec)
        img_dir = Path(job["root"]) / "images" / "val" / seg
        n = rec.render.num_frames
        idx = _five(n)
        r = Renderer(rec)
        img_dir.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        for k, i in enumerate(idx):
            path = img_dir / f"{k}.jpg"
            tmp = img_dir / f".{k}.jpg.tmp"
            Image.fromarray(r.frame_at(i / rec.render.fps, i)).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
        rows = []
        for q, refs in A.lingoqa_questions(rec, LINGOQA_QUESTIONS_PER_SEGMENT):
            qid = A.question_id(seg, q)
            for ans in refs:
                rows.append({"question_id": qid, "segment_id": seg,
                             "images": [f"images/val/{seg}/{k}.jpg" for k in range(LINGOQA_FRAMES)],
                             "question": q, "answer": ans})
        return {"kind": kind, "id": job["id"], "rows": rows, "seconds": time.perf_counter() - t0}
    root = Path(job["root"])
    vid = job["id"]
    render_video(rec, root / "videos" / f"{vid}.mp4")
    if kind == "eval":
        ann = A.human_annotation(rec)
        write_json_atomic(root / "annotations" / f"{vid}.json", ann, indent=4)
        write_json_atomic(root / "world" / f"{vid}.json", json.loads(rec.model_dump_json()), indent=1)
        return {"kind": kind, "id": vid, "caption": ann["safety_analysis"], "seconds": time.perf_counter() - t0}
    ann = {"human_annotated": A.human_annotation, "cv_annotated": A.cv_annotation, "reason1_sft": A.reason_annotation}[kind](rec)
    write_json_atomic(root / "annotations" / f"{vid}.json", ann, indent=4)
    write_json_atomic(Path(job["world_dir"]) / f"{vid}.json", json.loads(rec.model_dump_json()), indent=1)
    return {"kind": kind, "id": vid, "seconds": time.perf_counter() - t0}


def _five(n: int) -> list[int]:
    """qwen-vl-utils' linspace(0, n-1, 5).round() (float32, half to even)."""
    import numpy as np

    return [int(v) for v in np.round(np.linspace(0, n - 1, LINGOQA_FRAMES, dtype=np.float32))]


def _done(job: dict) -> bool:
    root = Path(job["root"])
    vid = job["id"]
    if job["kind"] == "lingoqa":
        return False  # cheap (5 frames); the parquet is rewritten as a whole
    files = [root / "videos" / f"{vid}.mp4", root / "annotations" / f"{vid}.json"]
    files.append((root / "world" / f"{vid}.json") if job["kind"] == "eval" else Path(job["world_dir"]) / f"{vid}.json")
    return all(f.exists() for f in files)


# ---------------------------------------------------------------------------------------------
# the whole world
# ---------------------------------------------------------------------------------------------


def synthesize(
    out: str | os.PathLike,
    *,
    videos: int = 8,
    train_videos: int = 8,
    lingoqa_segments: Optional[int] = None,
    seed: int = 0,
    width: int = 320,
    height: int = 200,
    seconds: float = 4.0,
    fps: float = 4.0,
    workers: Optional[int] = None,
    progress: bool = False,
) -> dict:
    """Write the synthetic world under `out`; returns the manifest written to manifest.json plus
    `render_seconds_mean`, this run's mean render time per video (None when nothing was rendered),
    which only `timings.json` holds: manifest.json has no wall-clock figure, so a rerun or another
    run with the same seed and settings writes it byte for byte the same."""
    import pandas as pd

    out = Path(out)
    if videos < 0 or train_videos < 0:
        raise SynthError("--videos and --train-videos must be >= 0")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise SynthError(f"--width/--height must be even and >= 32, got {width}x{height}")
    if seconds <= 0 or fps <= 0:
        raise SynthError("--seconds and --fps must be positive")
    if round(seconds * fps) < 2:
        raise SynthError(f"--seconds x --fps gives {round(seconds * fps)} frame(s); need at least 2")
    n_lingo = videos if lingoqa_segments is None else lingoqa_segments
    settings = _settings(seed, width, height, seconds, fps)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = read_json(manifest_path)
        if old.get("settings") != settings:
            raise SynthError(f"{manifest_path}: this directory holds a world made with other settings "
                             f"({old.get('settings')}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    base = dict(width=width, height=height, seconds=seconds, fps=fps)
    jobs = []
    for i in range(videos):
        jobs.append(dict(base, kind="eval", id=f"{_ID_PREFIX['eval']}{i:05d}", seed=video_seed(seed, "eval", i),
                         root=str(out / "eval" / "AV_CAPTION")))
    for src in SOURCES:
        for i in range(train_videos):
            jobs.append(dict(base, kind=src, id=f"{_ID_PREFIX[src]}{i:05d}", seed=video_seed(seed, src, i),
                             root=str(out / "train" / src), world_dir=str(out / "train" / "world")))
    for i in range(n_lingo):
        jobs.append(dict(base, kind="lingoqa", id=f"lq{i:05d}", seed=video_seed(seed, "lingoqa", i),
                         root=str(out / "eval" / "LINGOQA")))
    seen: dict[int, str] = {}
    for j in jobs:  # seeds are 31-bit hashes: make any (astronomically unlikely) repeat loud
        if j["seed"] in seen:
            raise SynthError(f"seed collision between {seen[j['seed']]} and {j['id']}; choose another --seed")
        seen[j["seed"]] = j["id"]
    write_json_atomic(manifest_path, {"settings": settings, "status": "incomplete", "avcap_version": __version__})

    todo = [j for j in jobs if not _done(j)]
    n_workers = workers or min(len(todo), os.cpu_count() or 1, 8) or 1
    results: list[dict] = []
    t0 = time.perf_counter()
    if n_workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Pool(n_workers) as pool:
            for k, res in enumerate(pool.imap_unordered(_job, todo)):
                results.append(res)
                if progress:
                    _progress(k + 1, len(todo), res, t0)
    else:
        for k, j in enumerate(todo):
            results.append(_job(j))
            if progress:
                _progress(k + 1, len(todo), results[-1], t0)

    # captions.jsonl: rebuilt from the annotations (so a resumed run has every caption)

    eval_root = out / "eval" / "AV_CAPTION"
    if videos:
        caps = []
        for j in jobs:
            if j["kind"] == "eval":
                ann = read_json(eval_root / "annotations" / f"{j['id']}.json")
                caps.append({"key": j["id"], "video_id": j["id"], "caption": ann["safety_analysis"]})
        write_records_atomic(eval_root / "captions.jsonl", caps)
    if n_lingo:
        by_id = {r["id"]: r for r in results if r["kind"] == "lingoqa"}
        rows = [row for j in jobs if j["kind"] == "lingoqa" for row in by_id[j["id"]]["rows"]]
        lq = out / "eval" / "LINGOQA"
        lq.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(rows, columns=["question_id", "segment_id", "images", "question", "answer"])
        tmp = lq / ".val.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, lq / "val.parquet")
    timings = [r["seconds"] for r in results if r["kind"] != "lingoqa"]
    manifest = {
        "settings": settings,
        "status": "complete",
        "avcap_version": __version__,
        "generator": "avcap.demo.synth (procedural dash-cam world)",
        "counts": {
            "eval_videos": videos,
            "train_videos_per_source": train_videos,
            "lingoqa_segments": n_lingo,
            "lingoqa_questions": n_lingo * LINGOQA_QUESTIONS_PER_SEGMENT,
        },
        "frames_per_video": int(round(seconds * fps)),
        "sources": list(SOURCES),
        "layout": "docs/formats.md#synthetic-world",
        "video_seeds": {j["id"] if j["kind"] == "eval" else f"{j['kind']}/{j['id']}": j["seed"] for j in jobs},
    }
    write_json_atomic(manifest_path, manifest)
    # wall-clock figures of this run only: never in manifest.json (the same seed gives the same bytes)
    run_timings = {
        "videos_rendered": len(timings),
        "render_seconds_mean": round(sum(timings) / len(timings), 3) if timings else None,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "workers": n_workers,
    }
    write_json_atomic(out / TIMINGS_FILE, run_timings)
    return {**manifest, "render_seconds_mean": run_timings["render_seconds_mean"]}


def _progress(k: int, n: int, res: dict, t0: float) -> None:
    el = time.perf_counter() - t0
    print(f"[synth] {k}/{n} {res['kind']}/{res['id']} {res['seconds']:.1f}s (elapsed {el:.0f}s)", file=sys.stderr, flush=True)


def main(
    out: Path = typer.Option(..., "--out", help="Output directory (the layout of docs/formats.md, 'Synthetic world')."),
    videos: int = typer.Option(8, "--videos", help="Evaluation videos (AV_CAPTION); also the LingoQA segment count."),
    train_videos: int = typer.Option(8, "--train-videos", help="Training videos per source (human, CV, reasoning SFT)."),
    lingoqa_segments: Optional[int] = typer.Option(None, "--lingoqa-segments", help="LingoQA segments (default: --videos)."),
    seed: int = typer.Option(0, "--seed", help="World seed: same seed and settings, same bytes."),
    width: int = typer.Option(320, "--width", help="Frame width (even)."),
    height: int = typer.Option(200, "--height", help="Frame height (even)."),
    seconds: float = typer.Option(4.0, "--seconds", help="Clip length in seconds."),
    fps: float = typer.Option(4.0, "--fps", help="Frames per second."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Render processes (default: CPU count, at most 8)."),
) -> None:
    """Render the procedural dash-cam world: training sources, AV_CAPTION and LingoQA sets."""
    try:
        m = synthesize(out, videos=videos, train_videos=train_videos, lingoqa_segments=lingoqa_segments, seed=seed,
                       width=width, height=height, seconds=seconds, fps=fps, workers=workers, progress=True)
    except SynthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    c = m["counts"]
    typer.echo(f"{out}: {c['eval_videos']} eval videos, {c['train_videos_per_source']} training videos per source, "
               f"{c['lingoqa_segments']} LingoQA segments ({c['lingoqa_questions']} questions); "
               f"{m['frames_per_video']} frames of {width}x{height} per video")
    if m.get("render_seconds_mean") is not None:
        typer.echo(f"  render time: {m['render_seconds_mean']:.1f} s per video this run ({out / TIMINGS_FILE})")
