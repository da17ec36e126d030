"""`avcap label --runner ray` against the single-process runner: the same clips, the same model.

    python benchmarks/bench_label_ray.py --mode cpu [--clips 320] [--actors 1,2] [--out DIR]
    python3 benchmarks/bench_label_ray.py --mode gpu [--size 2B] [--clips 256] [--out $OUT]

Not a test. Each run is `python -m avcap label ...` in a fresh process, timed from outside (wall
seconds, Python's start and the model's load included), on its own output directory. Every runner
labels two clip counts, the small one a quarter of --clips: the slope between them is its time per
clip with every fixed cost (Python, Ray's start, the actors' model load) taken out, the intercept
those fixed costs. Ray's overhead is reported both ways: per clip (steady state) and end to end at
--clips. The clips are `avcap synth` renders, cycled under distinct file names, so that each is
decoded anew (the engine's cache is by path).

- cpu: the tiny model (`avcap tiny-model`), 96x64 clips, 4 frames, 4 attribute questions; the Ray
  runs start a local Ray with this box's CPUs, one actor per --actors entry.
- gpu: a real-size Cosmos-Reason2 architecture (avcap.models.qwen3_vl.cost.realsize_config, random
  weights, bf16, saved once as an HF directory; tokenizer and processor of the tiny model), 1280x720
  clips of 8 s at 30 fps, 16 frames at <= 448x736, the caption greedy with 128 new tokens, 12
  attribute questions (shared video prefix) with <= 10 new tokens, engine batches of 32, decode in
  12 CPU processes with the resize on the GPU; one actor holding the GPU.

Writes bench_label_ray.json (and each run's label_summary.json / run.json numbers) to --out
(default: $OUT when set, else benchmarks/runs/label_ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("error", "caption", "caption_json", "attributes")


def env_info(mode: str) -> dict[str, Any]:
    import importlib.metadata as md

    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                           "mode": mode, "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    for pkg in ("torch", "transformers", "av", "ray"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    except ImportError:
        pass
    return env


def build_model(work: Path, size: str) -> Path:
    """The tiny model, or a real-size architecture with random weights saved beside its tokenizer."""
    from avcap.demo.tiny_model import build_tiny_model

    tiny = work / "tiny-model"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, size="tiny", seed=0)
    if size == "tiny":
        return tiny
    out = work / f"model-{size}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    from avcap.models.qwen3_vl.cost import realsize_config

    t = AutoConfig.from_pretrained(tiny)
    cfg = realsize_config(size)
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(cfg, k, getattr(t, k))
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg.text_config, k, getattr(t.text_config, k))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    tmp = work / f".model-{size}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tiny, tmp, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    model.save_pretrained(tmp)
    del model
    os.replace(tmp, out)
    return out


def render(work: Path, n: int, width: int, height: int, seconds: float, fps: float) -> list[Path]:
    from avcap.demo.synth import synthesize

    world = work / f"world-{width}x{height}-{seconds}s"
    synthesize(world, videos=n, train_videos=0, lingoqa_segments=0, seed=0, width=width, height=height,
               seconds=seconds, fps=fps, workers=min(n, os.cpu_count() or 1))
    return sorted((world / "eval" / "AV_CAPTION" / "videos").glob("*.mp4"))


def manifest(work: Path, clips: list[Path], count: int) -> Path:
    """`count` clips: distinct names (symlinks) cycling over the renders."""
    d = work / "names"
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(count):
        p = d / f"c{k:05d}.mp4"
        if not p.is_symlink():
            p.symlink_to(clips[k % len(clips)])
        lines.append(json.dumps({"clip_id": f"c{k:05d}", "path": str(p)}))
    m = work / f"clips-{count}.jsonl"
    m.write_text("\n".join(lines) + "\n")
    return m


def write_config(path: Path, model: Path, mode: str, attributes: list[str]) -> Path:
    if mode == "cpu":
        body = """
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.engine]
batch_size = 8
device = "cpu"
dtype = "float32"
[avcap.sampling.caption]
temperature = 0.0
max_tokens = 12
[avcap.sampling.mcq]
max_tokens = 3
"""
    else:
        body = """
[custom.vision]
nframes = 16
max_pixels = 329728
[avcap.engine]
batch_size = 32
dtype = "bfloat16"
decode_workers = 12
decode_processes = true
resize_on_gpu = true
[avcap.sampling.caption]
temperature = 0.0
max_tokens = 128
[avcap.sampling.mcq]
max_tokens = 10
"""
    path.write_text(f'[policy]\nmodel_name_or_path = "{model}"\n' + body
                    + f"[avcap.label]\nattributes = {json.dumps(attributes)}\nthumbnail_width = 320\n")
    return path


def label(cfg: Path, clips: Path, out: Path, runner: str, extra: list[str], log) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "avcap", "label", "--clips", str(clips), "--out", str(out), "--config", str(cfg),
           "--model-name", "bench", "--no-progress", "--runner", runner, *extra]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(ROOT / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))})
    wall = time.perf_counter() - t
    log(f"$ {' '.join(cmd[2:])}\n  exit {res.returncode}, {wall:.1f} s\n"
        + "".join(f"  | {line}\n" for line in res.stderr.splitlines()[-12:]))
    if res.returncode != 0:
        return {"failed": res.returncode, "stderr_tail": res.stderr[-3000:]}
    out_info: dict[str, Any] = {"wall_s": round(wall, 2)}
    if runner == "ray":
        s = json.loads((out / "label_summary.json").read_text())
        out_info.update({k: s.get(k) for k in ("labelled", "errors", "pending", "actors", "batch_clips", "startup_s",
                                                "steady_clips_per_s", "clips_per_s", "per_actor", "partitions_written")})
    else:
        run = json.loads((out / "run.json").read_text())
        t = run.get("timings", {})
        out_info.update(engine_load_s=t.get("engine_load_s"), caption_s=(t.get("caption") or {}).get("seconds"),
                        attributes_s=(t.get("attributes") or {}).get("seconds"))
    return out_info


def records(out: Path) -> dict[str, dict]:
    from avcap.scenarios.record import scenario_files

    return {r["clip_id"]: r for f in scenario_files(out) for r in map(json.loads, f.read_text().splitlines())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--size", default=None, help="gpu: 2B or 8B (default 2B); cpu: tiny")
    ap.add_argument("--clips", type=int, default=None, help="clips of the large run (cpu 320, gpu 256); the small run a quarter")
    ap.add_argument("--actors", default=None, help="Ray runs, comma-separated actor counts (cpu 1,2; gpu 1)")
    ap.add_argument("--batch-clips", type=int, default=None, help="--batch-clips of the Ray runs (default: the runner's)")
    ap.add_argument("--renders", type=int, default=8, help="distinct clips rendered (cycled under distinct names)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/avcap-bench-label"))
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "runs" / "label_ray")
    ap.add_argument("--deadline", type=float, default=580.0, help="seconds from start: runs that would not finish are skipped")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    gpu = args.mode == "gpu"
    size = args.size or ("2B" if gpu else "tiny")
    n_large = args.clips or (256 if gpu else 320)
    n_small = max(1, n_large // 4)
    actor_counts = [int(a) for a in (args.actors or ("1" if gpu else "1,2")).split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "bench_label_ray.log").open("a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    from avcap.bench.pool import load_pool

    result: dict[str, Any] = {"env": env_info(args.mode), "args": {k: str(v) for k, v in vars(args).items()},
                              "size": size, "clips": [n_small, n_large], "runs": {}}
    log(json.dumps(result["env"]))
    t = time.monotonic()
    model = build_model(args.work, size)
    w, h, sec, fps = (1280, 720, 8.0, 30.0) if gpu else (96, 64, 3.0, 8.0)
    renders = render(args.work, args.renders, w, h, sec, fps)
    result["setup_s"] = round(time.monotonic() - t, 1)
    attributes = [q.id for q in load_pool().questions][: 12 if gpu else 4]
    cfg = write_config(args.work / f"recipe-{args.mode}.toml", model, args.mode, attributes)
    log(f"model {model}, {len(renders)} renders {w}x{h} {sec}s, {len(attributes)} attributes; setup {result['setup_s']} s")

    variants = [("single", "single", [])] + [
        (f"ray{a}", "ray", ["--actors", str(a)] + (["--batch-clips", str(args.batch_clips)] if args.batch_clips else []))
        for a in actor_counts]
    for n in (n_small, n_large):  # interleaved: drift of the machine hits every runner alike
        clips = manifest(args.work, renders, n)
        for name, runner, extra in variants:
            left = args.deadline - (time.monotonic() - t_start)
            done = [r for r in result["runs"].values() if "wall_s" in r]
            guess = max((r["wall_s"] for r in done), default=0) * (n / n_small if n == n_large else 1)
            if guess and guess > left:
                log(f"skipped {name} x{n}: ~{guess:.0f} s needed, {left:.0f} s left")
                continue
            result["runs"][f"{name}_{n}"] = label(cfg, clips, args.work / f"out-{name}-{n}", runner, extra, log)
            (args.out / "bench_label_ray.json").write_text(json.dumps(result, indent=1))

    # per clip (slope) and fixed (intercept) for each runner; Ray's overhead against the single runner
    table = {}
    for name, _, _ in variants:
        a, b = result["runs"].get(f"{name}_{n_small}"), result["runs"].get(f"{name}_{n_large}")
        if a and b and "wall_s" in a and "wall_s" in b:
            per = (b["wall_s"] - a["wall_s"]) / (n_large - n_small)
            table[name] = {"s_per_clip": round(per, 4), "clips_per_s": round(1 / per, 3) if per > 0 else None,
                           "fixed_s": round(a["wall_s"] - per * n_small, 1), f"wall_s_{n_large}": b["wall_s"],
                           f"clips_per_s_end_to_end_{n_large}": round(n_large / b["wall_s"], 3)}
    base = table.get("single")
    for name, row in table.items():
        if base and name != "single":
            row["overhead_per_clip_pct"] = round(100 * (row["s_per_clip"] / base["s_per_clip"] - 1), 1)
            row[f"overhead_end_to_end_pct_{n_large}"] = round(100 * (row[f"wall_s_{n_large}"] / base[f"wall_s_{n_large}"] - 1), 1)
    result["table"] = table

    # the same labels? (greedy; on a GPU bf16 batches of another make-up may flip a token)
    ref = records(args.work / f"out-single-{n_large}") if "wall_s" in result["runs"].get(f"single_{n_large}", {}) else {}
    for name, _, _ in variants[1:]:
        if ref and "wall_s" in result["runs"].get(f"{name}_{n_large}", {}):
            got = records(args.work / f"out-{name}-{n_large}")
            same = sum(1 for c, r in ref.items() if c in got and all(got[c][k] == r[k] for k in LABELS))
            result["runs"][f"{name}_{n_large}"]["same_labels_as_single"] = f"{same}/{len(ref)}"
            result["runs"][f"{name}_{n_large}"]["clip_ids_equal"] = sorted(got) == sorted(ref)
    result["seconds"] = round(time.monotonic() - t_start, 1)
    (args.out / "bench_label_ray.json").write_text(json.dumps(result, indent=1))
    log(json.dumps(result["table"], indent=1))
    for name in result["runs"]:
        r = result["runs"][name]
        if "wall_s" not in r:
            log(f"{name:>12}: failed (exit {r['failed']})")
            continue
        log(f"{name:>12}: wall {r['wall_s']:7.1f} s" + (f", startup {r['startup_s']} s, steady {r['steady_clips_per_s']} clips/s,"
                                                         f" same labels {r.get('same_labels_as_single', '-')}" if "startup_s" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
