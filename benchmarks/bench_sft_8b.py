"""8B full-parameter SFT on one 80 GB GPU through `avcap train`, with the recipe's TOML and only
sizes changed (issue 26, item 3):

    python3 benchmarks/bench_sft_8b.py                       # one H100: ~3-4 min (~6 with a retry)
    python3 benchmarks/bench_sft_8b.py --tiny --out DIR      # CPU dry run: the tiny model, small clips

Not a test. Writes `bench_sft_8b.json`, `bench_sft_8b.log` and the training process's own output
(`bench_sft_8b_train.log`) to --out (default: $OUT when set, else benchmarks/); work files go to --work.
On a bare device image the wheels carried in .whl/ (PyAV, pydantic, ...) are installed to
/tmp/avcap-site first, and src/ is put on the path.

What it does:

- model: a config-only directory with the real Cosmos-Reason2-8B architecture
  (avcap.models.qwen3_vl.cost.realsize_config, token ids and processor of avcap's tiny model) and no
  weights; `avcap train --init-random` builds it on the meta device and initialises it on the GPU
  in its master dtype (seconds, no weights file).
- data: `avcap.demo.synth` clips at the recipe's 1936x1220, 30 fps (--seconds long: the 16 sampled
  frames are the same 448x736 whatever the length; short clips render and decode faster), curated
  by `avcap.data` into the recipe's three sources and weights.
- config: the recipe's TOML (src/avcap/core/recipes/uber_sft_blended.toml) with only paths and sizes
  changed — dataset_root, output_dir, model_name_or_path, dp_shard_size = 1, max_num_steps/epoch,
  dataloader_num_workers, checkpointing off unless --checkpoint (and the batch sizes only when
  --batch/--mini-batch say so, or when the recipe's micro-batch of 4 runs out of GPU memory: then
  the run is repeated with micro-batches of 2, --fallback-mini-batches, and every attempt is
  reported); every change is listed in the report. `[train] master_dtype` is not
  set: avcap's "auto" decides (fp32 master weights need ~168 GiB for the 8B; it picks bf16 master
  weights with stochastic rounding and says so in one warning line, recorded here).
- run: `avcap train --config FILE --init-random` in a child process (the CLI's own command), with
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless set; nvidia-smi's memory.used sampled
  each second.
- report: which master dtype auto chose and its reason line; peak GPU memory
  (torch.cuda.max_memory_allocated / max_memory_reserved in the training process, nvidia-smi);
  step times; tokens/s; MFU = model FLOPs (avcap.models.qwen3_vl.cost.train_flops, recomputation not
  counted) / 989 TFLOP/s (datasheet) and / the bf16 8192^3 matmul rate measured in the same process
  after training; sft_memory's estimate for the measured shapes beside the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # its sibling modules
from bench_env import ensure_deps, gpus_present  # noqa: E402
from bench_log import RunLog  # noqa: E402

RUN = RunLog("bench_sft_8b")
RESULTS = RUN.results
log = RUN.log
save = RUN.save
SOURCES = ("cv_annotated", "human_annotated", "reason1_sft")
DATASHEET_BF16 = 989e12


# ----------------------------------------------------------------------------- set-up


def model_dir(args, work: Path, tiny_dir: Path) -> Path:
    """The config-only directory `avcap train --init-random` starts from: the 8B architecture
    (or, --tiny, the tiny model's config) with the tiny processor, no weights."""
    dest = work / "models" / ("tiny-config" if args.tiny else "8B-config")
    if args.tiny:
        if not (dest / "config.json").exists():
            shutil.copytree(tiny_dir, dest, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
        return dest
    from bench_multi_gpu import config_only_dir

    return config_only_dir("8B", tiny_dir, dest)


def make_data(args, work: Path) -> dict[str, Any]:
    """Synthetic clips, --clips per source, curated into the recipe's three sources (reused when done)."""
    from avcap.core.config import load_config
    from avcap.data.sources import curate
    from avcap.demo.synth import synthesize
    from bench_multi_gpu import edit_toml, recipe_toml

    world = work / f"world-{args.width}x{args.height}-{args.seconds:g}s-{args.fps:g}fps-{args.clips}"
    t = time.perf_counter()
    m = synthesize(world, videos=0, train_videos=args.clips, lingoqa_segments=0, seed=0, width=args.width,
                   height=args.height, seconds=args.seconds, fps=args.fps,
                   workers=max(1, min(len(SOURCES) * args.clips, (os.cpu_count() or 1) - 1)))
    synth_s = time.perf_counter() - t
    root = world / "data" / "train"
    values: dict[str, Any] = {"custom.dataset.dataset_root": str(root)}
    for s in SOURCES:
        values[f"avcap.curate.sources.{s}.kind"] = s
        values[f"avcap.curate.sources.{s}.path"] = str(world / "train" / s)
    path = world / "curate.toml"
    path.write_text(edit_toml(recipe_toml(), values))
    t = time.perf_counter()
    lines: list[str] = []
    report = curate(load_config(path), echo=lines.append)
    if report.problems:
        raise RuntimeError(f"curate: {len(report.problems)} unusable input(s): {lines[-5:]}")
    return {"root": str(root), "sources": {k: v.written for k, v in report.sources.items()},
            "synth_s": round(synth_s, 1), "curate_s": round(time.perf_counter() - t, 1),
            "render_seconds_mean": m.get("render_seconds_mean"),
            "clips": f"{args.width}x{args.height}, {args.seconds:g} s at {args.fps:g} fps, {args.clips} per source"}


def recipe_values(args, data_root: str, run_dir: Path, model: Path) -> dict[str, Any]:
    """The recipe's keys this run changes: paths and sizes only."""
    values: dict[str, Any] = {
        "custom.dataset.dataset_root": data_root,
        "train.output_dir": str(run_dir / "out"),
        "train.max_num_steps": args.steps,
        "train.train_policy.dataloader_num_workers": args.workers,
        "train.ckpt.enable_checkpoint": bool(args.checkpoint),
        "policy.model_name_or_path": str(model),
        "policy.parallelism.dp_shard_size": 1,
    }
    if args.steps > 3:  # the recipe's 3 epochs of a small set (>= 1 step each) may be fewer steps
        values["train.epoch"] = args.steps
    if args.checkpoint:
        values["train.ckpt.save_freq"] = args.steps  # one checkpoint, at the end
    if args.batch is not None:
        values["train.train_batch_per_replica"] = args.batch
    if args.mini_batch is not None:
        values["train.train_policy.mini_batch"] = args.mini_batch
    if args.master_dtype is not None:  # not a size: only to compare against auto's choice
        values["train.master_dtype"] = args.master_dtype
    return values


# ----------------------------------------------------------------------------- the run


def run_train(args, cfg_path: Path, run_dir: Path, gpu: dict[str, Any] | None) -> dict[str, Any]:
    from bench_multi_gpu import GpuMemoryPoller, launch

    env = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if args.expandable_segments and "PYTORCH_CUDA_ALLOC_CONF" not in env:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    if args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    stats = run_dir / "process.json"
    cmd = [sys.executable, str(HERE), "--worker", "--config", str(cfg_path), "--stats", str(stats)]
    timeout = min(args.run_timeout, args.deadline - RUN.elapsed() - 10)
    log(f"avcap train --config {cfg_path} --init-random (child; up to {timeout:.0f}s; log {run_dir / 'train.log'})")
    with GpuMemoryPoller(gpu is not None) as poll:
        rc, wall = launch(cmd, run_dir / "train.log", env, timeout)
    res: dict[str, Any] = {"rc": rc, "wall_s": round(wall, 1), "nvidia_smi_peak_used_gib": poll.peak_gib(1),
                           "alloc_conf": env.get("PYTORCH_CUDA_ALLOC_CONF")}
    try:
        res["process"] = json.loads(stats.read_text())
    except (OSError, json.JSONDecodeError):
        res["process"] = None
    return res


def worker(args) -> int:
    """The child: `avcap train --config FILE --init-random` (the CLI's command, in this process), then
    this process's peak GPU memory and the bf16 matmul rate of this GPU."""
    import torch

    from avcap.cli import app

    stats: dict[str, Any] = {"status": "started"}
    t = time.perf_counter()
    try:
        rc = app(["train", "--config", args.config, "--init-random"], standalone_mode=False)
        stats["status"] = "ok" if not rc else f"exit {rc}"
    except SystemExit as exc:
        stats["status"] = f"exit {exc.code}"
    except BaseException as exc:
        stats["status"] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc()
    stats["wall_s"] = round(time.perf_counter() - t, 2)
    if torch.cuda.is_available():
        dev = torch.cuda.current_device()
        stats["memory"] = {"device": torch.cuda.get_device_name(dev),
                           "max_allocated_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
                           "max_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / 2**30, 2),
                           "total_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 2)}
        try:
            stats["matmul_bf16_flops"] = matmul_rate()
        except Exception as exc:  # noqa: BLE001  (out of memory after a failed run, say)
            stats["matmul_error"] = f"{type(exc).__name__}: {exc}"[:300]
    else:
        import resource

        stats["memory"] = {"max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    Path(args.stats).write_text(json.dumps(stats, indent=1) + "\n")
    return 0 if stats["status"] == "ok" else 1


def matmul_rate(n: int = 8192, reps: int = 10) -> float:
    """bf16 n^3 matmul FLOP/s on this GPU (mean of `reps` after 3 warm-ups), after training's memory is freed."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- report


def summarize(args, run_dir: Path, res: dict[str, Any], model: Path) -> dict[str, Any]:
    from transformers import AutoConfig

    from avcap.core.records import iter_records, latest_by_key
    from avcap.models.qwen3_vl.cost import Shape, sft_memory, train_flops
    from bench_multi_gpu import clip_geometry

    text = (run_dir / "train.log").read_text(errors="replace") if (run_dir / "train.log").exists() else ""
    choice = [ln.strip() for ln in text.splitlines() if re.match(r"^(warning: )?\[train\] master_dtype", ln)]
    res["master_dtype_line"] = choice[0] if choice else None
    log_path = run_dir / "out" / "train_log.jsonl"
    recs = sorted(latest_by_key(iter_records(log_path)).values(), key=lambda r: r["step"]) if log_path.exists() else []
    res["steps_logged"] = len(recs)
    res["master_dtype"] = sorted({r.get("master_dtype") for r in recs}) if recs else None
    proc = res.get("process") or {}
    mem = proc.get("memory") or {}
    res.update({k: mem[k] for k in ("max_allocated_gib", "max_reserved_gib", "total_gib", "device") if k in mem})
    timed = [r for r in recs if r["step"] > args.warmup_steps]
    if res["rc"] != 0 or proc.get("status") != "ok" or len(recs) != args.steps or not timed:
        why = ("timeout" if res["rc"] == 124 else "out of GPU memory" if ("OutOfMemoryError" in text or "CUDA out of memory" in text)
               else proc.get("status") or f"exit {res['rc']}")
        res.update(status="failed", error=why, log_tail=text[-4000:])
        return res
    shape = Shape.from_config(AutoConfig.from_pretrained(model))
    geo = clip_geometry(args.height, args.width, shape)
    seconds = sum(r["step_time_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
    samples = sum(len(r["batch"]) for r in timed)
    labelled = sum(r["assistant_tokens"] for r in timed)
    mean_seq = tokens / samples
    per_sample = train_flops(shape, text_tokens=round(mean_seq), patches_per_group=geo["patches_per_group"],
                             groups=geo["groups"], logits_tokens=round(labelled / samples))
    flops_per_s = per_sample * samples / seconds
    res.update(
        status="ok", steps_timed=len(timed), samples_per_step=len(timed[0]["batch"]),
        step_time_s=[round(r["step_time_s"], 3) for r in recs], loss=[round(r["loss"], 4) for r in recs],
        grad_norm=[round(r["grad_norm"], 4) for r in recs],
        mean_tokens_per_sample=round(mean_seq, 1), labelled_tokens_per_sample=round(labelled / samples, 1),
        tokens_per_s=round(tokens / seconds, 1), samples_per_s=round(samples / seconds, 3),
        model_tflops_per_s=float(f"{flops_per_s / 1e12:.4g}"), clip_geometry=geo,
        params_b=round(shape.total_params() / 1e9, 3),
    )
    if mem.get("device"):  # a GPU run
        res["mfu_datasheet"] = round(flops_per_s / DATASHEET_BF16, 4)
        if proc.get("matmul_bf16_flops"):
            res["matmul_bf16_tflops"] = round(proc["matmul_bf16_flops"] / 1e12, 1)
            res["mfu_measured_peak"] = round(flops_per_s / proc["matmul_bf16_flops"], 4)
    cfg = json.loads((run_dir / "values.json").read_text())
    mini = cfg.get("train.train_policy.mini_batch", 4)
    batch = cfg.get("train.train_batch_per_replica", 32)
    dtype = recs[-1].get("master_dtype") or "float32"
    est = sft_memory(shape, gpus=1, micro_batch=mini, seq_len=round(mean_seq),
                     video_patches=geo["patches_per_group"] * geo["groups"], logits_tokens=round(labelled / samples),
                     grad_accumulation=max(1, batch // mini), master_dtype=dtype)
    res["memory_estimate_gib"] = est.as_gib()
    return res


def table(r: dict[str, Any]) -> str:
    t = r.get("train") or {}
    lines = [f"device: {r.get('gpu') or 'cpu'}  torch {r['env'].get('torch')}  transformers {r['env'].get('transformers')}",
             f"model: {r.get('model')}  data: {(r.get('data') or {}).get('clips')}",
             f"recipe changes: {json.dumps(r.get('recipe_changes'))}",
             f"master weights: {t.get('master_dtype')}  | {t.get('master_dtype_line')}"]
    if t.get("status") != "ok":
        lines.append(f"FAILED: {t.get('error')}")
        return "\n".join(lines)
    lines += [
        f"steps {t['steps_logged']} (timed {t['steps_timed']}), {t['samples_per_step']} samples/step, "
        f"{t['mean_tokens_per_sample']} tokens/sample ({t['labelled_tokens_per_sample']} labelled)",
        f"step times s: {t['step_time_s']}",
        f"tokens/s {t['tokens_per_s']}  samples/s {t['samples_per_s']}  model TFLOP/s {t['model_tflops_per_s']}  "
        f"MFU {t.get('mfu_datasheet', '-')} (989 TF/s datasheet), {t.get('mfu_measured_peak', '-')} "
        f"(measured bf16 matmul {t.get('matmul_bf16_tflops', '-')} TF/s)",
        f"peak memory: allocated {t.get('max_allocated_gib', '-')} GiB, reserved {t.get('max_reserved_gib', '-')} GiB, "
        f"nvidia-smi {t.get('nvidia_smi_peak_used_gib')} GiB of {t.get('total_gib', '-')} GiB; "
        f"sft_memory estimate {t['memory_estimate_gib']['total']} GiB",
        f"loss {t['loss']}",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: tiny model, small clips, 2 steps")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE.parent))
    ap.add_argument("--work", default="/tmp/avcap-sft-8b")
    ap.add_argument("--wheels", default=str(REPO / ".whl"))
    ap.add_argument("--deadline", type=float, default=380.0, help="seconds from start the whole run must end by")
    ap.add_argument("--run-timeout", type=float, default=400.0, help="seconds the training process may take")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (max_num_steps)")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the rates")
    ap.add_argument("--batch", type=int, default=None, help="train_batch_per_replica (default: the recipe's 32)")
    ap.add_argument("--mini-batch", type=int, default=None, help="train_policy.mini_batch (default: the recipe's 4)")
    ap.add_argument("--fallback-mini-batches", type=lambda v: [int(x) for x in v.split(",") if x], default=[2],
                    help="micro-batch sizes to try, in order, when a run runs out of GPU memory (default: 2; '' for none)")
    ap.add_argument("--retry-need-s", type=float, default=150.0, help="time a retry needs (deadline planning)")
    ap.add_argument("--workers", type=int, default=None, help="dataloader_num_workers (default: CPUs - 2)")
    ap.add_argument("--master-dtype", choices=["auto", "float32", "bfloat16"], default=None,
                    help="set [train] master_dtype (default: unset, i.e. auto) — a comparison, not the goal's run")
    ap.add_argument("--checkpoint", action="store_true", help="write the final checkpoint (8B: ~16 GB weights + "
                    "~33 GB optimizer state to --work; minutes)")
    ap.add_argument("--clips", type=int, default=4, help="clips per source (3 sources)")
    ap.add_argument("--width", type=int, default=1936)
    ap.add_argument("--height", type=int, default=1220)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--no-expandable-segments", dest="expandable_segments", action="store_false")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stats", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch = 2 if args.batch is None else args.batch
        args.mini_batch = 1 if args.mini_batch is None else args.mini_batch
        args.steps = 2 if args.steps == 4 else args.steps
        args.clips = 1 if args.clips == 4 else args.clips
        args.width, args.height, args.seconds, args.fps = 96, 64, 2.0, 8.0
        args.deadline = max(args.deadline, 1800.0)
        args.run_timeout = max(args.run_timeout, 1800.0)
        args.work = args.work + "-tiny" if args.work == "/tmp/avcap-sft-8b" else args.work
    if args.workers is None:
        args.workers = 0 if args.tiny else max(4, (os.cpu_count() or 6) - 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_deps(Path(args.wheels))
    if args.worker:
        return worker(args)
    import torch
    import transformers

    from bench_gpu import build_tiny_dir
    from bench_multi_gpu import edit_toml, recipe_changes, recipe_toml

    RUN.use_out_dir(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpu = None if args.tiny else next(iter(gpus_present()), None)
    if not args.tiny and gpu is None:
        raise SystemExit("no GPU found by nvidia-smi; use --tiny for the CPU dry run")
    RESULTS.update(mode="tiny (CPU dry run)" if args.tiny else "gpu", command=" ".join(["bench_sft_8b.py", *(argv or sys.argv[1:])]),
                   gpu=gpu, env={"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                                 "torch": torch.__version__, "transformers": transformers.__version__,
                                 "cpus": os.cpu_count()},
                   args={k: v for k, v in vars(args).items() if k not in ("worker", "config", "stats")})
    log(f"{RESULTS['mode']}: {gpu or 'cpu'}; torch {torch.__version__}, transformers {transformers.__version__}")
    try:
        tiny_dir = build_tiny_dir(work)
        t = time.perf_counter()
        model = model_dir(args, work, tiny_dir)
        RESULTS["model"] = f"{'tiny' if args.tiny else '8B'} config-only {model} ({time.perf_counter() - t:.1f}s)"
        log(f"model: {RESULTS['model']}")
        RESULTS["data"] = make_data(args, work)
        log(f"data: {RESULTS['data']}")
        save()
        # the recipe's micro-batch first; if it runs out of GPU memory, the next --fallback-mini-batches
        mini = args.mini_batch
        sizes = [mini] + [m for m in args.fallback_mini_batches if mini is None or m < mini]
        RESULTS["attempts"] = []
        for i, size in enumerate(sizes):
            args.mini_batch = size
            run_dir = work / f"run{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            values = recipe_values(args, RESULTS["data"]["root"], run_dir, model)
            (run_dir / "values.json").write_text(json.dumps(values, indent=1) + "\n")
            cfg_path = run_dir / "recipe.toml"
            cfg_path.write_text(edit_toml(recipe_toml(), values))
            RESULTS["recipe_changes"] = recipe_changes(values)
            RESULTS["recipe_toml"] = cfg_path.read_text()
            log(f"run {i}: recipe changes {json.dumps(RESULTS['recipe_changes'])}")
            res = run_train(args, cfg_path, run_dir, gpu)
            RESULTS["train"] = summarize(args, run_dir, res, model)
            RESULTS["attempts"].append({"mini_batch": size or "recipe", "status": RESULTS["train"].get("status"),
                                        "error": RESULTS["train"].get("error"),
                                        "max_reserved_gib": RESULTS["train"].get("max_reserved_gib")})
            shutil.copy2(run_dir / "train.log", RUN.out_dir / f"bench_sft_8b_train{'' if i == 0 else i}.log")
            save()
            t = RESULTS["train"]
            if t.get("status") == "ok" or t.get("error") != "out of GPU memory":
                break
            if RUN.elapsed() > args.deadline - args.retry_need_s:
                log(f"run {i}: out of GPU memory; no time left for a smaller micro-batch")
                break
            log(f"run {i}: out of GPU memory; again with a smaller micro-batch")
    except Exception as exc:  # noqa: BLE001
        RESULTS["error"] = f"{type(exc).__name__}: {exc}"
        RESULTS["traceback"] = traceback.format_exc()
        log(f"FAILED: {RESULTS['error']}")
        save()
        return 1
    text = table(RESULTS)
    for line in text.splitlines():
        log(line)
    save()
    return 0 if RESULTS["train"].get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
