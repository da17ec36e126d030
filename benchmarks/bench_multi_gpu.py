"""Several GPUs of one host: the recipe's FSDP2 SFT of the real-size 8B architecture and sharded
captioning, measured for scaling. One command per machine:

    python3 benchmarks/bench_multi_gpu.py --gpus 8        # nvidia-h200-x8 (also --gpus 2 / --gpus 4)
    python3 benchmarks/bench_multi_gpu.py --smoke         # CPU: tiny model, gloo, 2 processes (~1 min)

Not a test. Writes `bench_multi_gpu.json`, `bench_multi_gpu.log` and `bench_multi_gpu_table.txt`
to --out (default: $OUT when set, else benchmarks/); work files (clips, curated data, the random
caption model, every run's logs) go to --work and are reused by a rerun: finished runs with the
same settings are not repeated, so a command stopped by --deadline is simply run again.

Every process it launches gets NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 (NVLink multicast stays off), PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
(unless set, or --no-expandable-segments) and OMP_NUM_THREADS = CPUs per GPU (the same CPU share
per GPU at every K). On a bare device image the wheels carried in .whl/ are installed to
/tmp/avcap-site first (pydantic, typer, PyAV, ...), and src/ is put on the path.

What it measures:

- memory estimate (avcap.models.qwen3_vl.cost.sft_memory, pure arithmetic): bytes per GPU of 8B full-parameter SFT
  with the recipe's per-GPU settings (mini_batch 4, model_max_length 4096, gradient checkpointing,
  32 samples per step) on 1, 2, 4, 8 GPUs; a K whose estimate exceeds the GPU's memory is skipped.
- sft: `avcap.train.loop` (via `train(cfg, init_random=True)`, i.e. `avcap train --init-random`) under
  `torchrun --nproc-per-node K` for K in 1, 2, 4, 8 (<= --gpus) with the SAME per-GPU batch: the
  recipe's TOML (uber_sft_blended.toml, embedded below) with only paths and sizes changed —
  dataset_root, output_dir, model_name_or_path (a config-only directory: the real 8B
  architecture, random weights built on the meta device and sharded, no weights file),
  dp_shard_size = K, max_num_steps, dataloader_num_workers (the recipe's 4 cannot keep up with
  1936x1220 clips at ~4 s of decode per sample per core), checkpointing off. Data: avcap.demo.synth
  clips (one per source at the recipe's 1936x1220, 30 s, 30 fps) curated by avcap.data into the
  recipe's three sources and weights. Per K: tokens/s per GPU (steps after --warmup-steps), MFU
  (avcap.models.qwen3_vl.cost.train_flops; datasheet bf16 peak), peak memory per GPU (torch max allocated and
  reserved, every rank; nvidia-smi's memory.used per GPU, sampled each second), and scaling
  efficiency = tokens/s/GPU at K over that at the smallest K that ran (and 2 -> 8 explicitly).
- caption: `avcap infer --tasks caption` under `torchrun --nproc-per-node K` (shards = ranks,
  device cuda:LOCAL_RANK) with a random-weight real-size model (written once, bf16), the recipe's
  vision settings and caption sampling (max_tokens --caption-tokens: random weights never stop
  early), over the first K x --videos-per-gpu videos of one clip set (distinct file names cycling
  over the rendered clips, so every video is decoded anew): the same work per GPU for every K. The
  merged output is checked: every video exactly once, every shard's part file exactly its
  round-robin share. Videos/s = videos / the slowest shard's captioning time (model load
  excluded; end-to-end also reported); scaling efficiency = videos/s / (K x videos/s at K = 1).

Targets (issue 10): >= 85% SFT scaling efficiency from 2 to 8 GPUs, >= 95% for captioning; 8B
full-parameter SFT fits with the recipe's per-GPU settings on 8 GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, also when imported by path
from bench_env import ensure_deps, gpus_present, stop_group  # noqa: E402
from bench_log import RunLog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()


def recipe_toml() -> str:
    """The recipe's TOML as published (placeholders filled in), shipped with avcap (imported after
    `ensure_deps` has put avcap and its dependencies on the path)."""
    from avcap.core.config import RECIPE_PATH

    return RECIPE_PATH.read_text()

NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
SFT_TARGET, CAPTION_TARGET = 0.85, 0.95
SOURCES = ("cv_annotated", "human_annotated", "reason1_sft")  # the recipe's subdirectories (avcap.demo.synth's kinds)


RUN = RunLog("bench_multi_gpu")
RESULTS = RUN.results
log = RUN.log
save = RUN.save


# ----------------------------------------------------------------------------- environment


def environment(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    import torch
    import transformers

    env: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                           "torch": torch.__version__, "transformers": transformers.__version__,
                           "cpus": os.cpu_count(), "gpus": gpus}
    try:
        import av

        env["pyav"] = av.__version__
    except ImportError:
        pass
    if gpus:
        try:
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as exc:  # noqa: BLE001
            env["nccl"] = f"unknown ({type(exc).__name__})"
        try:
            env["topology"] = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                                             timeout=60, check=False).stdout[:3000]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return env


def peak_flops_of(gpus: list[dict[str, Any]]) -> float | None:
    from avcap.models.qwen3_vl.cost import PEAK_BF16_FLOPS

    for g in gpus[:1]:
        for key, v in PEAK_BF16_FLOPS.items():
            if key in g["name"]:
                return v
    return None


def child_env(ctx: Ctx, k: int) -> dict[str, str]:
    """The environment of every launched process: NVLink multicast off, the same CPU share per GPU."""
    env = dict(os.environ)
    env.update(NCCL_ENV)
    env.update(WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(ctx.threads_per_process))
    if ctx.args.expandable_segments and "PYTORCH_CUDA_ALLOC_CONF" not in env:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"  # less fragmentation (as torchtitan)
    if ctx.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class GpuMemoryPoller:
    """Peak `memory.used` per GPU as nvidia-smi sees it (CUDA context and NCCL buffers included),
    sampled every `period` seconds while a run is alive."""

    def __init__(self, enabled: bool, period: float = 1.0):
        self.enabled, self.period, self.peak_mib = enabled, period, {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMemoryPoller:
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=20, check=False).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                idx, _, used = line.partition(",")
                if idx.strip().isdigit():
                    i = int(idx)
                    self.peak_mib[i] = max(self.peak_mib.get(i, 0.0), float(used))
            self._stop.wait(self.period)

    def peak_gib(self, k: int) -> list[float] | None:
        return [round(self.peak_mib.get(i, 0.0) / 1024, 2) for i in range(k)] if self.peak_mib else None


def torchrun(k: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(k)]


def launch(cmd: list[str], log_path: Path, env: dict[str, str], timeout: float) -> tuple[int, float]:
    """Run `cmd` (its own process group, output to log_path); on timeout stop the whole group."""
    t = time.perf_counter()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            stop_group(proc, wait=30)
            rc = 124
    return rc, time.perf_counter() - t


def echo_child(path: Path, pattern: str, limit: int = 12) -> None:
    """The child log's lines that match `pattern` (step lines, rates, errors), into this log."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if re.search(pattern, ln)]
    except OSError:
        return
    for ln in lines[-limit:]:
        log(f"    | {ln.strip()[:240]}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


# ----------------------------------------------------------------------------- the recipe's TOML


_HEADER = re.compile(r"^\s*\[([A-Za-z0-9_.\-]+)\]\s*(#.*)?$")
_KEYLINE = re.compile(r"^(\s*)([A-Za-z0-9_\-]+)(\s*=\s*)(.*?)(\s+#.*)?$")


def edit_toml(text: str, values: dict[str, Any]) -> str:
    """`text` with `values` ({"table.sub.key": value}) set: a key's line is rewritten in place (its
    comment kept), a new key goes at the end of its table, a new table at the end. Checked: the
    result parses to the original plus exactly these values."""
    from avcap.core.config import toml_value

    lines = text.splitlines()
    table = ""
    todo = dict(values)
    last_line_of: dict[str, int] = {"": -1}
    for i, line in enumerate(lines):
        h = _HEADER.match(line)
        if h:
            table = h.group(1)
            last_line_of[table] = i
            continue
        m = _KEYLINE.match(line)
        if m and not line.lstrip().startswith("#"):
            key = f"{table}.{m.group(2)}" if table else m.group(2)
            last_line_of[table] = i
            if key in todo:
                lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{toml_value(todo.pop(key))}{m.group(5) or ''}"
    inserts: dict[int, list[str]] = {}
    new_tables: dict[str, list[str]] = {}
    for key, v in todo.items():
        tbl, _, name = key.rpartition(".")
        if tbl in last_line_of:
            inserts.setdefault(last_line_of[tbl], []).append(f"{name} = {toml_value(v)}")
        else:
            new_tables.setdefault(tbl, []).append(f"{name} = {toml_value(v)}")
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        out += inserts.get(i, [])
    for tbl, kv in new_tables.items():
        out += ["", f"[{tbl}]", *kv]
    result = "\n".join(out) + "\n"
    expected = tomllib.loads(text)
    for key, v in values.items():
        *path, name = key.split(".")
        cur = expected
        for p in path:
            cur = cur.setdefault(p, {})
        cur[name] = list(v) if isinstance(v, tuple) else v
    if tomllib.loads(result) != expected:
        raise AssertionError(f"edit_toml: the edited TOML does not parse to the intended values {values}")
    return result


def recipe_changes(values: dict[str, Any]) -> dict[str, list[Any]]:
    """key -> [recipe value (None: not in the recipe), new value], for the report."""
    recipe = tomllib.loads(recipe_toml())
    out = {}
    for key, v in values.items():
        cur: Any = recipe
        for p in key.split("."):
            cur = cur.get(p) if isinstance(cur, dict) else None
        if cur != v:
            out[key] = [cur, v]
    return out


# ----------------------------------------------------------------------------- context


class Ctx:
    def __init__(self, args: argparse.Namespace, gpus: list[dict[str, Any]]):
        self.args, self.gpus = args, gpus
        self.smoke: bool = args.smoke
        self.work = Path(args.work).resolve()
        self.n_gpus: int = args.gpus
        cpus = os.cpu_count() or 1
        self.cpus_per_gpu = max(1, cpus // max(1, self.n_gpus))
        self.threads_per_process = 1 if self.smoke else self.cpus_per_gpu
        self.capacity_bytes: float | None = (min(g["memory_mib"] for g in gpus) * 2**20) if gpus else None
        self.peak_flops = None if self.smoke else peak_flops_of(gpus)
        self.deadline: float = args.deadline
        self.tiny_dir: Path | None = None
        self.data_root = self.work / "data" / "train"
        self.world = self.work / "world"
        self.caption_set = self.work / "caption_set"

    def left(self) -> float:
        return self.deadline - RUN.elapsed()


def import_bench_gpu():
    """benchmarks/bench_gpu.py's pieces: tiny model directory, real-size model builder, clip names."""
    sys.path.insert(0, str(HERE.parent))
    import bench_gpu

    return bench_gpu


_WEIGHT_FILES = ("config.json", "generation_config.json")


def copy_processor_files(tiny_dir: Path, dest: Path) -> None:
    for f in tiny_dir.iterdir():
        if f.is_file() and f.name not in _WEIGHT_FILES and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy2(f, dest / f.name)


def config_only_dir(size: str, tiny_dir: Path, dest: Path) -> Path:
    """A model directory with the `size` architecture's config.json (token ids of the tiny
    tokenizer) and the tiny processor, no weights: what `avcap train --init-random` starts from."""
    if (dest / "COMPLETE").exists():
        return dest
    import torch

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = import_bench_gpu().build_model(size, tiny_dir, "meta", torch.float32)
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    copy_processor_files(tiny_dir, tmp)
    (tmp / "COMPLETE").write_text(size + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


# ----------------------------------------------------------------------------- data


def prepare_world(ctx: Ctx) -> dict[str, Any]:
    """avcap.demo.synth: one training clip per source and --eval-clips evaluation clips (reused when done)."""
    from avcap.demo.synth import synthesize

    a = ctx.args
    n = a.eval_clips + len(SOURCES) * a.train_clips
    t = time.perf_counter()
    m = synthesize(ctx.world, videos=a.eval_clips, train_videos=a.train_clips, lingoqa_segments=0, seed=0,
                   width=a.width, height=a.height, seconds=a.seconds, fps=a.fps,
                   workers=max(1, min(n, (os.cpu_count() or 1) - 1)))
    clips = sorted((ctx.world / "eval" / "AV_CAPTION" / "videos").glob("*.mp4"))
    return {"clips": [str(c) for c in clips], "synth_s": round(time.perf_counter() - t, 1),
            "render_seconds_mean": m.get("render_seconds_mean"),
            "geometry": f"{a.width}x{a.height}, {a.seconds:g} s at {a.fps:g} fps"}


def prepare_train_data(ctx: Ctx) -> dict[str, Any]:
    """avcap.data: the synthetic training clips as the recipe's three sources under work/data/train."""
    from avcap.core.config import load_config
    from avcap.data.sources import curate

    values: dict[str, Any] = {"custom.dataset.dataset_root": str(ctx.data_root)}
    for s in SOURCES:
        values[f"avcap.curate.sources.{s}.kind"] = s
        values[f"avcap.curate.sources.{s}.path"] = str(ctx.world / "train" / s)
    path = ctx.work / "curate.toml"
    path.write_text(edit_toml(recipe_toml(), values))
    lines: list[str] = []
    report = curate(load_config(path), echo=lines.append)
    if report.problems:
        raise RuntimeError(f"curate: {len(report.problems)} unusable input(s): {lines[-5:]}")
    return {"sources": {k: v.written for k, v in report.sources.items()}}


def caption_set(ctx: Ctx, clips: list[str]) -> list[str]:
    """The AV_CAPTION-shaped clip set: max K x --videos-per-gpu distinct names over the clips."""
    count = max(ctx.args.k_caption) * ctx.args.videos_per_gpu
    names = import_bench_gpu().clip_names(ctx.caption_set, clips, count, "videos")  # caption_set/names/videos/
    return sorted(Path(n).stem for n in names)


# ----------------------------------------------------------------------------- memory estimate


RECIPE_CLIP = (1220, 1936)  # height, width of the recipe's dash-cam clips (design.md)


def clip_geometry(height: int, width: int, shape) -> dict[str, int]:
    """Patches per frame group and groups per video for a clip of this size with the recipe's vision."""
    from avcap.video import resized_size

    v = tomllib.loads(recipe_toml())["custom"]["vision"]
    factor = shape.patch * shape.merge
    h, w = resized_size(height, width, v["nframes"], factor=factor, min_pixels=v["min_pixels"],
                        max_pixels=v["max_pixels"], total_pixels=None)
    return {"height": h, "width": w, "patches_per_group": (h // shape.patch) * (w // shape.patch),
            "groups": v["nframes"] // shape.tpatch}


def recipe_memory_estimate(ctx: Ctx) -> dict[str, Any]:
    """8B full-parameter SFT with the recipe's per-GPU settings on 1, 2, 4, 8 GPUs (worst case:
    every sequence at model_max_length, every non-vision token labelled; 1936x1220 clips)."""
    from avcap.models.qwen3_vl.cost import GIB, Shape, realsize_config, sft_memory

    recipe = tomllib.loads(recipe_toml())
    shape = Shape.from_config(realsize_config("8B"))
    geo = clip_geometry(*RECIPE_CLIP, shape)
    t = recipe["train"]
    mini = t["train_policy"]["mini_batch"]
    kw = dict(micro_batch=mini, seq_len=recipe["policy"]["model_max_length"],
              video_patches=geo["patches_per_group"] * geo["groups"],
              grad_accumulation=t["train_batch_per_replica"] // mini,
              gradient_checkpointing=recipe["policy"]["model_gradient_checkpointing"])
    capacity = ctx.capacity_bytes or 139 * GIB
    by = {}
    for g in (1, 2, 4, 8):
        m = sft_memory(shape, gpus=g, **kw)
        by[str(g)] = {**m.as_gib(), "fits": m.fits(capacity)}
    return {"model": "8B", "params_b": round(shape.total_params() / 1e9, 3), "per_gpu_settings": kw,
            "capacity_gib": round(capacity / GIB, 1),
            "capacity_from": "nvidia-smi" if ctx.capacity_bytes else "assumed H200 (139 GiB)", "by_gpus": by}


# ----------------------------------------------------------------------------- SFT


def sft_values(ctx: Ctx, k: int, run_dir: Path, model_dir: Path) -> dict[str, Any]:
    a = ctx.args
    values: dict[str, Any] = {
        "custom.dataset.dataset_root": str(ctx.data_root),
        "train.output_dir": str(run_dir / "out"),
        "train.max_num_steps": a.steps,
        "train.train_batch_per_replica": a.batch_per_gpu,
        "train.train_policy.mini_batch": a.mini_batch,
        "train.train_policy.dataloader_num_workers": a.workers,
        "train.ckpt.enable_checkpoint": False,
        "policy.model_name_or_path": str(model_dir),
        "policy.parallelism.dp_shard_size": k,
    }
    if a.steps > 3:  # small synthetic sources: at least one step per epoch
        values["train.epoch"] = a.steps
    if a.compile:
        values["train.compile"] = True
    if a.memory_budget is not None:
        values["avcap.train.activation_memory_budget"] = a.memory_budget
    if a.train_decoder != "cpu":
        values["avcap.train.decoder"] = a.train_decoder
    if not a.grad_checkpointing:
        values["policy.model_gradient_checkpointing"] = False
    if a.master_dtype:
        values["train.master_dtype"] = a.master_dtype
    if a.mixed_precision != "autocast":
        values["avcap.train.mixed_precision"] = a.mixed_precision
    if not a.host_inputs:
        values["avcap.train.host_inputs"] = False
    if a.compile_tuning != "default":
        values["avcap.train.compile_tuning"] = a.compile_tuning
    if a.profile_step:  # cosmos-rl's [profiler]: one warm-up step recorded and dropped, then the step kept
        values.update({"profiler.enable_profiler": True, "profiler.sub_profiler_config.wait_steps": a.profile_step - 2,
                       "profiler.sub_profiler_config.warmup_steps": 1, "profiler.sub_profiler_config.active_steps": 1,
                       "profiler.sub_profiler_config.rank_filter": [0]})
    return values


def run_sft(ctx: Ctx, k: int, model_dir: Path, shape, geo: dict[str, int]) -> dict[str, Any]:
    run_dir = ctx.work / "sft" / f"K{k}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "ranks").mkdir(parents=True)
    values = sft_values(ctx, k, run_dir, model_dir)
    cfg_path = run_dir / "recipe.toml"
    cfg_path.write_text(edit_toml(recipe_toml(), values))
    cmd = torchrun(k) + [str(HERE), "--worker", "sft", "--config", str(cfg_path), "--stats-dir", str(run_dir / "ranks")]
    log(f"sft K={k}: {' '.join(cmd[2:6])} ... ({run_dir / 'log.txt'})")
    with GpuMemoryPoller(bool(ctx.gpus)) as poll:
        rc, wall = launch(cmd, run_dir / "log.txt", child_env(ctx, k), min(ctx.args.run_timeout, ctx.left() - 5))
    echo_child(run_dir / "log.txt", r"^(step |training |done:|error|Traceback)|Error")
    res = summarize_sft(ctx, k, run_dir, rc, wall, shape, geo)
    res["nvidia_smi_peak_used_gib"] = poll.peak_gib(k)
    res["recipe_changes"] = recipe_changes(values)
    return res


def summarize_sft(ctx: Ctx, k: int, run_dir: Path, rc: int, wall: float, shape, geo: dict[str, int]) -> dict[str, Any]:
    from avcap.models.qwen3_vl.cost import sft_memory, train_flops
    from avcap.core.records import iter_records, latest_by_key

    a = ctx.args
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "ranks").glob("rank_*.json"))]
    recs = sorted(latest_by_key(iter_records(run_dir / "out" / "train_log.jsonl")).values(), key=lambda r: r["step"])
    res: dict[str, Any] = {"k": k, "rc": rc, "wall_s": round(wall, 1), "steps_logged": len(recs),
                           "ranks_reported": len(ranks)}
    gpu_mem = [r["memory"] for r in ranks if "max_reserved_gib" in (r.get("memory") or {})]  # a killed rank has none
    if gpu_mem:
        res["peak_allocated_gib"] = max(m["max_allocated_gib"] for m in gpu_mem)
        res["peak_reserved_gib"] = max(m["max_reserved_gib"] for m in gpu_mem)
        res["peak_reserved_gib_per_rank"] = {r["rank"]: r["memory"]["max_reserved_gib"] for r in ranks
                                             if "max_reserved_gib" in (r.get("memory") or {})}
        res["capacity_gib"] = gpu_mem[0].get("total_gib")
    cpu_mem = [r["memory"]["max_rss_gib"] for r in ranks if "max_rss_gib" in (r.get("memory") or {})]
    if cpu_mem:
        res["peak_rss_gib_per_rank"] = cpu_mem
    res["children_env"] = ranks[0].get("env") if ranks else None
    # the profiled step and its profiler warm-up run slower: left out of the rates
    timed = [r for r in recs if r["step"] > a.warmup_steps and r["step"] not in (a.profile_step, a.profile_step - 1)]
    profile = run_dir / "out" / "profile"
    if profile.is_dir():  # the operator table and summary (the Chrome trace stays in --work: it is large)
        dest = Path(a.out) / f"sft_K{k}_profile"
        dest.mkdir(parents=True, exist_ok=True)
        for f in profile.iterdir():
            if not f.name.endswith(".json.gz"):
                shutil.copy2(f, dest / f.name)
        res["profile"] = {f.name: json.loads(f.read_text()) for f in profile.glob("*.summary.json")}
    ok = rc == 0 and len(recs) == a.steps and len(ranks) == k and all(r.get("status") == "ok" for r in ranks) and timed
    if not ok:
        text = tail(run_dir / "log.txt", 4000)
        why = "timeout" if rc == 124 else ("out of GPU memory" if "OutOfMemoryError" in text or "CUDA out of memory" in text
                                           else f"exit {rc}")
        res.update(status="failed", error=why, log_tail=text)
        return res
    seconds = sum(r["step_time_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
    samples = sum(len(r["batch"]) for r in timed)
    labelled = sum(r["assistant_tokens"] for r in timed)
    mean_seq = tokens / samples
    per_sample = train_flops(shape, text_tokens=round(mean_seq), patches_per_group=geo["patches_per_group"],
                             groups=geo["groups"], logits_tokens=round(labelled / samples))
    per_sample_hw = train_flops(shape, text_tokens=round(mean_seq), patches_per_group=geo["patches_per_group"],
                                groups=geo["groups"], logits_tokens=round(labelled / samples), recompute=True)
    res.update(
        status="ok", steps_timed=len(timed), samples_per_step=len(timed[0]["batch"]),
        step_time_s=[round(r["step_time_s"], 3) for r in recs],
        tokens_per_step=round(tokens / len(timed)), mean_tokens_per_sample=round(mean_seq, 1),
        labelled_tokens_per_sample=round(labelled / samples, 1),
        tokens_per_s=round(tokens / seconds, 1), tokens_per_s_per_gpu=round(tokens / seconds / k, 1),
        samples_per_s_per_gpu=round(samples / seconds / k, 3),
        loss=[round(r["loss"], 4) for r in recs],
        # seconds each step waited for the DataLoader (rank 0; train_log's data_wait_s)
        data_wait_s=[round(r["data_wait_s"], 3) if r.get("data_wait_s") is not None else None for r in recs],
        # 4 significant digits: hundreds on a GPU, thousandths for the CPU smoke run's tiny model
        tflops_per_s_per_gpu=float(f"{per_sample * samples / seconds / k / 1e12:.4g}"),
    )
    if ctx.peak_flops:
        res["mfu"] = round(per_sample * samples / seconds / (k * ctx.peak_flops), 4)
        res["hfu_with_recompute"] = round(per_sample_hw * samples / seconds / (k * ctx.peak_flops), 4)
    if a.measured_peak_tflops:  # RESULTS' MFU basis: the bf16 matmul rate measured on the GPU (run 1)
        res["mfu_of_measured_peak"] = round(per_sample * samples / seconds / (k * a.measured_peak_tflops * 1e12), 4)
    est = sft_memory(shape, gpus=k, micro_batch=a.mini_batch, seq_len=round(mean_seq),
                     video_patches=geo["patches_per_group"] * geo["groups"],
                     logits_tokens=round(labelled / samples), grad_accumulation=max(1, a.batch_per_gpu // a.mini_batch))
    res["memory_estimate_gib"] = est.as_gib()
    if ctx.capacity_bytes:
        res["memory_estimate_gib"]["fits"] = est.fits(ctx.capacity_bytes)
    return res


def worker_sft(args: argparse.Namespace) -> int:
    """One torchrun rank: avcap.train.loop with --init-random, then this rank's peak memory and env."""
    import resource

    import torch

    from avcap.core.config import load_config
    from avcap.train.loop import shutdown, train

    rank = int(os.environ.get("RANK", "0"))
    stats: dict[str, Any] = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                             "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "status": "started",
                             "env": {k: os.environ.get(k) for k in NCCL_ENV},
                             "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    t = time.perf_counter()
    try:
        cfg = load_config(args.config)
        train(cfg, echo=lambda s: print(s, flush=True), init_random=True)
        stats["status"] = "ok"
    except BaseException as exc:
        stats["status"] = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        stats["wall_s"] = round(time.perf_counter() - t, 2)
        if torch.cuda.is_available():
            dev = torch.cuda.current_device()
            stats["memory"] = {"device": torch.cuda.get_device_name(dev),
                               "max_allocated_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
                               "max_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / 2**30, 2),
                               "total_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 2)}
        else:
            stats["memory"] = {"max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        Path(args.stats_dir, f"rank_{rank:02d}.json").write_text(json.dumps(stats, indent=1) + "\n")
        shutdown()
    return 0


# ----------------------------------------------------------------------------- captioning


def caption_model_dir(ctx: Ctx) -> Path:
    """Random real-size weights (bf16 on GPU), written once by a child process (keeps CUDA out of
    this one); in --smoke the tiny model, written by this process."""
    dest = ctx.work / "models" / f"caption-{ctx.args.caption_size}"
    if (dest / "COMPLETE").exists():
        return dest
    if ctx.smoke:
        worker_write_model(argparse.Namespace(size=ctx.args.caption_size, tiny_dir=str(ctx.tiny_dir), dest=str(dest)))
        return dest
    cmd = [sys.executable, str(HERE), "--worker", "write-model", "--size", ctx.args.caption_size,
           "--tiny-dir", str(ctx.tiny_dir), "--dest", str(dest)]
    log_path = ctx.work / "models" / f"write-{ctx.args.caption_size}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rc, wall = launch(cmd, log_path, child_env(ctx, 1), min(ctx.args.run_timeout, ctx.left() - 5))
    if rc != 0 or not (dest / "COMPLETE").exists():
        raise RuntimeError(f"writing the caption model failed (exit {rc}): {tail(log_path, 2000)}")
    log(f"caption model {ctx.args.caption_size} written in {wall:.0f}s -> {dest}")
    return dest


def worker_write_model(args: argparse.Namespace) -> int:
    import torch

    dest = Path(args.dest)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = import_bench_gpu().build_model(args.size, Path(args.tiny_dir), device,
                                           torch.bfloat16 if device == "cuda" else torch.float32)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    copy_processor_files(Path(args.tiny_dir), tmp)
    (tmp / "COMPLETE").write_text(args.size + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return 0


def infer_values(ctx: Ctx, model_dir: Path) -> dict[str, Any]:
    from avcap.core.config import Engine, SamplingTable

    a = ctx.args
    values: dict[str, Any] = {"avcap.model_name": "bench", "avcap.engine.model": str(model_dir),
                              "avcap.engine.batch_size": a.caption_batch,
                              "avcap.datasets.BENCH.kind": "av_caption",
                              "avcap.datasets.BENCH.root": str(ctx.caption_set / "names")}
    if "decode_workers" in Engine.model_fields:
        values["avcap.engine.decode_workers"] = max(1, ctx.cpus_per_gpu - 1)
    if a.decode_processes and "decode_processes" in Engine.model_fields:
        values["avcap.engine.decode_processes"] = True
    caption = SamplingTable().caption.model_dump()
    caption["max_tokens"] = a.caption_tokens
    for key, v in caption.items():
        if v is not None:
            values[f"avcap.sampling.caption.{key}"] = v
    return values


def run_caption(ctx: Ctx, k: int, model_dir: Path, ids: list[str]) -> dict[str, Any]:
    from avcap.core.config import load_config
    from avcap.eval.infer import output_dir

    run_dir = ctx.work / "caption" / f"K{k}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg_path = run_dir / "infer.toml"
    cfg_path.write_text(edit_toml(recipe_toml(), infer_values(ctx, model_dir)))
    n = k * ctx.args.videos_per_gpu
    cmd = torchrun(k) + ["-m", "avcap", "infer", "--config", str(cfg_path), "--dataset", "BENCH", "--tasks", "caption",
                         "--limit", str(n), "--outputs-dir", str(run_dir / "outputs"), "--no-progress"]
    log(f"caption K={k}: {n} videos ({run_dir / 'log.txt'})")
    with GpuMemoryPoller(bool(ctx.gpus)) as poll:
        rc, wall = launch(cmd, run_dir / "log.txt", child_env(ctx, k), min(ctx.args.run_timeout, ctx.left() - 5))
    echo_child(run_dir / "log.txt", r"^\s*(caption: |merged |not merged|error)|Error|Traceback")
    out = output_dir(load_config(cfg_path), run_dir / "outputs", "bench", "base", "BENCH")
    res: dict[str, Any] = {"k": k, "rc": rc, "wall_s": round(wall, 1), "videos": n,
                           "nvidia_smi_peak_used_gib": poll.peak_gib(k)}
    res["check"] = verify_caption_outputs(out, ids[:n], k)
    timing = shard_timings(out, k)
    res.update(timing)
    if rc != 0 or not res["check"]["ok"] or not timing.get("seconds"):
        res.update(status="failed", error="timeout" if rc == 124 else f"exit {rc}" if rc else "outputs incomplete",
                   log_tail=tail(run_dir / "log.txt", 4000))
        return res
    res.update(status="ok", videos_per_s=round(n / timing["seconds"], 4),
               videos_per_s_per_gpu=round(n / timing["seconds"] / k, 4),
               end_to_end_videos_per_s=round(n / wall, 4))
    return res


def verify_caption_outputs(out_dir: Path, expected: list[str], k: int) -> dict[str, Any]:
    """The merged caption.jsonl holds every expected video exactly once (no error records) and,
    with K > 1, part file i holds exactly the videos j with j % K == i (avcap.eval.infer's round-robin
    over the sorted ids), the parts disjoint."""
    from avcap.eval.infer import task_file
    from avcap.core.records import iter_records

    problems: list[str] = []
    shard_sizes: list[int] = []
    if k > 1:
        seen: Counter = Counter()
        for i in range(k):
            part = task_file(out_dir, "caption", k, i)
            if not part.is_file():
                problems.append(f"shard {i}: no part file {part.name}")
                shard_sizes.append(0)
                continue
            keys = [r["key"] for r in iter_records(part)]
            shard_sizes.append(len(keys))
            seen.update(keys)
            want = {v for j, v in enumerate(expected) if j % k == i}
            if set(keys) != want or len(keys) != len(set(keys)):
                problems.append(f"shard {i}: {len(keys)} records, {len(set(keys) & want)} of its {len(want)} videos")
        overlap = sorted(key for key, c in seen.items() if c > 1)
        if overlap:
            problems.append(f"{len(overlap)} video(s) in more than one shard: {overlap[:5]}")
    merged_path = out_dir / "caption.jsonl"
    recs = list(iter_records(merged_path))
    keys = [r["key"] for r in recs]
    counts = Counter(keys)
    missing = sorted(set(expected) - set(keys))
    extra = sorted(set(keys) - set(expected))
    dups = sorted(key for key, c in counts.items() if c > 1)
    errors = [r["key"] for r in recs if r.get("error")]
    ok = merged_path.is_file() and not (missing or extra or dups or errors or problems)
    return {"ok": ok, "merged_file": merged_path.is_file(), "records": len(recs), "expected": len(expected),
            "missing": missing[:20], "n_missing": len(missing), "unexpected": extra[:20], "duplicates": dups[:20],
            "errors": errors[:20], "shard_sizes": shard_sizes, "problems": problems}


def shard_timings(out_dir: Path, k: int) -> dict[str, Any]:
    """Captioning time as one run: the slowest shard's seconds (they run at once), videos summed."""
    files = sorted(out_dir.glob("run.shard-*-of-*.json")) if k > 1 else [out_dir / "run.json"]
    rows = []
    for f in files:
        try:
            t = json.loads(f.read_text()).get("timings") or {}
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(t.get("caption"), dict):
            rows.append({"seconds": t["caption"].get("seconds") or 0.0, "videos": t["caption"].get("videos") or 0,
                         "engine_load_s": t.get("engine_load_s")})
    if len(rows) != k:
        return {"shards_timed": len(rows)}
    return {"shards_timed": len(rows), "seconds": max(r["seconds"] for r in rows),
            "shard_seconds": [round(r["seconds"], 2) for r in rows],
            "engine_load_s": [r["engine_load_s"] for r in rows]}


# ----------------------------------------------------------------------------- scaling


def scaling(per_gpu: dict[int, float]) -> dict[str, Any]:
    """Efficiency of each K against the smallest K measured: rate per GPU at K / rate per GPU there."""
    ks = sorted(k for k, v in per_gpu.items() if v)
    if not ks:
        return {}
    base = ks[0]
    return {"baseline_k": base, "efficiency": {str(k): round(per_gpu[k] / per_gpu[base], 4) for k in ks}}


def summarize(ctx: Ctx) -> None:
    sft = RESULTS.get("sft", {}).get("runs", {})
    cap = RESULTS.get("caption", {}).get("runs", {})
    targets: dict[str, Any] = {}
    if sft:
        rates = {int(k): r.get("tokens_per_s_per_gpu") for k, r in sft.items() if r.get("status") == "ok"}
        sc = scaling(rates)
        if rates.get(2) and rates.get(8):
            sc["efficiency_2_to_8"] = round(rates[8] / rates[2], 4)
        RESULTS["sft"]["scaling"] = sc
        v = sc.get("efficiency_2_to_8")
        targets["sft_scaling_2_to_8"] = {"target": SFT_TARGET, "value": v, "met": None if v is None else v >= SFT_TARGET}
        r8 = sft.get("8") if RESULTS["sft"].get("size") == "8B" else None
        fit = None if r8 is None else (r8.get("status") == "ok")
        targets["sft_8b_fits_8_gpus"] = {"measured": fit, "peak_reserved_gib": (r8 or {}).get("peak_reserved_gib"),
                                         "estimate": RESULTS.get("memory_estimate", {}).get("by_gpus", {}).get("8")}
    if cap:
        rates = {int(k): r.get("videos_per_s_per_gpu") for k, r in cap.items() if r.get("status") == "ok"}
        sc = scaling(rates)
        RESULTS["caption"]["scaling"] = sc
        eff = {int(k): v for k, v in sc.get("efficiency", {}).items() if int(k) > 1}
        worst = min(eff.values()) if eff and sc.get("baseline_k") == 1 else None
        targets["caption_scaling"] = {"target": CAPTION_TARGET, "value_min_over_k": worst,
                                      "met": None if worst is None else worst >= CAPTION_TARGET}
    if ctx.smoke:
        for t in targets.values():
            t["met"] = None
            t["note"] = "smoke run (CPU, tiny model): proves the script, measures nothing"
    RESULTS["targets"] = targets


def table() -> str:
    r = RESULTS
    env = r.get("env", {})
    gpus = env.get("gpus") or []
    device = (f"device: {len(gpus)} x {gpus[0]['name'] if gpus else 'cpu'}  torch {env.get('torch')}  transformers "
              f"{env.get('transformers')}  nccl {env.get('nccl', '-')}  cpus {env.get('cpus')}  date {env.get('date')}")
    lines = [device, f"NCCL env: {' '.join(f'{k}={v}' for k, v in NCCL_ENV.items())}"]
    est = r.get("memory_estimate") or {}
    if est:
        lines.append(f"8B SFT memory per GPU, estimate (recipe per-GPU settings, worst case), capacity "
                     f"{est['capacity_gib']} GiB ({est['capacity_from']}):")
        for g, m in est["by_gpus"].items():
            lines.append(f"  {g} GPU(s): total {m['total']:7.1f} GiB = states {m['sharded_states']} + unsharded grads "
                         f"{m['accumulated_grads']} + gathered {m['gathered_params']} + checkpoints {m['checkpoints']} + "
                         f"block {m['block_backward']} + logits {m['logits']} + overhead {m['overhead']}  "
                         f"{'fits' if m['fits'] else 'DOES NOT FIT'}")
    sft = r.get("sft") or {}
    if sft.get("runs"):
        lines.append(f"SFT {sft.get('size')} (per GPU: {sft.get('batch_per_gpu')} samples/step, micro-batch "
                     f"{sft.get('mini_batch')}, {sft.get('workers')} loader workers):")
        lines.append(f"  {'K':>2} {'tok/s/GPU':>10} {'MFU':>6} {'step s':>7} {'peak res GiB':>12} {'est GiB':>8} "
                     f"{'eff':>6}  status")
        eff = (sft.get("scaling") or {}).get("efficiency", {})
        for k, v in sorted(sft["runs"].items(), key=lambda x: int(x[0])):
            if v.get("status") != "ok":
                lines.append(f"  {k:>2} {'-':>10} {'-':>6} {'-':>7} {v.get('peak_reserved_gib', '-')!s:>12} "
                             f"{'-':>8} {'-':>6}  {v.get('status')}: {v.get('error') or v.get('reason')}")
                continue
            step = sum(v["step_time_s"][-v["steps_timed"]:]) / v["steps_timed"]
            lines.append(f"  {k:>2} {v['tokens_per_s_per_gpu']:>10} {v.get('mfu', '-')!s:>6} {step:>7.2f} "
                         f"{v.get('peak_reserved_gib', '-')!s:>12} {v['memory_estimate_gib']['total']:>8} "
                         f"{eff.get(k, '-')!s:>6}  ok")
        sc = sft.get("scaling") or {}
        if "efficiency_2_to_8" in sc:
            lines.append(f"  scaling 2 -> 8 GPUs: {sc['efficiency_2_to_8']:.3f} (target >= {SFT_TARGET})")
    cap = r.get("caption") or {}
    if cap.get("runs"):
        lines.append(f"captioning {cap.get('size')} ({cap.get('videos_per_gpu')} videos per GPU, batch "
                     f"{cap.get('batch')}, {cap.get('caption_tokens')} new tokens each):")
        lines.append(f"  {'K':>2} {'videos':>6} {'videos/s':>9} {'per GPU':>8} {'e2e v/s':>8} {'eff':>6}  check")
        eff = (cap.get("scaling") or {}).get("efficiency", {})
        for k, v in sorted(cap["runs"].items(), key=lambda x: int(x[0])):
            chk = v.get("check") or {}
            if v.get("status") != "ok":
                lines.append(f"  {k:>2} {v.get('videos', '-'):>6} {'-':>9} {'-':>8} {'-':>8} {'-':>6}  "
                             f"{v.get('status')}: {v.get('error') or v.get('reason')}")
                continue
            lines.append(f"  {k:>2} {v['videos']:>6} {v['videos_per_s']:>9} {v['videos_per_s_per_gpu']:>8} "
                         f"{v['end_to_end_videos_per_s']:>8} {eff.get(k, '-')!s:>6}  "
                         f"{'every video once' if chk.get('ok') else chk}")
    for name, t in (r.get("targets") or {}).items():
        lines.append(f"target {name}: {json.dumps(t, default=str)[:300]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def cached(ctx: Ctx, name: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    p = ctx.work / "results" / f"{name}.json"
    if ctx.args.fresh or not p.exists():
        return None
    try:
        blob = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if blob.get("fingerprint") == fingerprint and blob["result"].get("status") == "ok":
        return {**blob["result"], "cached": True}
    return None


def store(ctx: Ctx, name: str, fingerprint: dict[str, Any], result: dict[str, Any]) -> None:
    p = ctx.work / "results" / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"fingerprint": fingerprint, "result": result}, indent=1, default=str) + "\n")


def run_order(sections: list[str], k_sft: list[int], k_cap: list[int]) -> list[tuple[str, int]]:
    """Most informative first, so a deadline cuts the least: SFT at the most and fewest GPUs, captioning
    at the most and fewest, then the rest."""
    order: list[tuple[str, int]] = []
    if "sft" in sections and k_sft:
        order += [("sft", max(k_sft)), ("sft", min(k_sft))]
    if "caption" in sections and k_cap:
        order += [("caption", max(k_cap)), ("caption", min(k_cap))]
    order += [("sft", k) for k in sorted(k_sft) if "sft" in sections]
    order += [("caption", k) for k in sorted(k_cap) if "caption" in sections]
    return list(dict.fromkeys(order))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all nvidia-smi lists; --smoke: 2 processes)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, gloo, 2 processes, tiny clips: proves the script")
    ap.add_argument("--sections", default="sft,caption")
    ap.add_argument("--k", default=None, help="process counts, e.g. 2,4,8 (default: 1, 2, 4, 8 up to --gpus)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE.parent))
    ap.add_argument("--work", default="/tmp/avcap-multi-gpu")
    ap.add_argument("--tiny-dir", default=None, help="an existing avcap tiny-model directory (default: built in --work)")
    ap.add_argument("--wheels", default=str(REPO / ".whl"))
    ap.add_argument("--deadline", type=float, default=570.0, help="seconds from start; runs that would overrun are skipped")
    ap.add_argument("--run-timeout", type=float, default=400.0, help="seconds one launched run may take")
    ap.add_argument("--fresh", action="store_true", help="ignore finished runs kept in --work")
    ap.add_argument("--no-fit-check", action="store_true", help="also run SFT at K whose memory estimate exceeds the GPU")
    ap.add_argument("--no-expandable-segments", dest="expandable_segments", action="store_false",
                    help="leave PYTORCH_CUDA_ALLOC_CONF unset (default: expandable_segments:True in every child)")
    # SFT
    ap.add_argument("--size", default="8B", help="SFT architecture: 8B (the recipe's) or 2B")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="[train] compile = true (regional torch.compile)")
    ap.add_argument("--memory-budget", type=float, default=None,
                    help="[avcap.train] activation_memory_budget (with --compile)")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the rates")
    ap.add_argument("--batch-per-gpu", type=int, default=32, help="train_batch_per_replica (recipe: 32)")
    ap.add_argument("--mini-batch", type=int, default=4, help="train_policy.mini_batch (recipe: 4)")
    ap.add_argument("--no-grad-checkpointing", dest="grad_checkpointing", action="store_false",
                    help="policy.model_gradient_checkpointing = false (no recompute; e.g. with --mini-batch 2)")
    ap.add_argument("--train-decoder", default="cpu", choices=["cpu", "nvdec"],
                    help="[avcap.train] decoder: the DataLoader's video decoder")
    ap.add_argument("--master-dtype", default=None, choices=["auto", "float32", "bfloat16"],
                    help="[train] master_dtype (default: the recipe's, auto)")
    ap.add_argument("--mixed-precision", default="autocast", choices=["autocast", "copy"],
                    help="[avcap.train] mixed_precision (one GPU, fp32 master weights)")
    ap.add_argument("--compile-tuning", default="default", choices=["default", "kernels", "max-autotune"],
                    help="[avcap.train] compile_tuning (with --compile): inductor's search for faster kernels")
    ap.add_argument("--no-host-inputs", dest="host_inputs", action="store_false",
                    help="[avcap.train] host_inputs = false: transformers' forward derives positions and vision inputs on the GPU")
    ap.add_argument("--profile-step", type=int, default=0,
                    help="[profiler] on rank 0 for this step (>= 2; it and the step before are left out of the rates)")
    ap.add_argument("--measured-peak-tflops", type=float, default=770.0,
                    help="also report MFU against this rate (RESULTS: run 1's bf16 8192^3 matmul on an H100); 0: off")
    ap.add_argument("--workers", type=int, default=None, help="dataloader_num_workers (default: CPUs per GPU - 2, >= 4)")
    ap.add_argument("--sft-need-s", type=float, default=150.0, help="time one SFT run is expected to take (deadline planning)")
    # captioning
    ap.add_argument("--caption-size", default="8B")
    ap.add_argument("--videos-per-gpu", type=int, default=64)
    ap.add_argument("--caption-batch", type=int, default=32)
    ap.add_argument("--caption-tokens", type=int, default=256)
    ap.add_argument("--decode-processes", action="store_true", help="[avcap.engine] decode_processes = true")
    ap.add_argument("--caption-need-s", type=float, default=100.0)
    # clips
    ap.add_argument("--eval-clips", type=int, default=4)
    ap.add_argument("--train-clips", type=int, default=1, help="per source")
    ap.add_argument("--width", type=int, default=1936)
    ap.add_argument("--height", type=int, default=1220)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=30.0)
    # child modes
    ap.add_argument("--worker", choices=["sft", "write-model"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stats-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dest", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.profile_step == 1:
        ap.error("--profile-step: 2 or later (the profiler records one step before it and drops it)")
    if args.smoke:
        args.size = args.caption_size = "tiny"
        args.gpus = args.gpus or 2
        args.steps, args.warmup_steps, args.batch_per_gpu, args.mini_batch = 2, 1, 2, 1
        args.workers = 0 if args.workers is None else args.workers
        args.videos_per_gpu, args.caption_batch, args.caption_tokens = 2, 2, 4
        args.eval_clips, args.train_clips = 2, 1
        args.width, args.height, args.seconds, args.fps = 96, 64, 2.0, 8.0
        args.deadline = max(args.deadline, 3600.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        ensure_deps(Path(args.wheels))
        return {"sft": worker_sft, "write-model": worker_write_model}[args.worker](args)
    os.environ.update(NCCL_ENV)  # this process too (and so every child that inherits it)
    RUN.use_out_dir(args.out)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ensure_deps(Path(args.wheels))
    gpus = [] if args.smoke else gpus_present()
    if not args.smoke and not gpus:
        raise SystemExit("no GPU found by nvidia-smi; use --smoke for the CPU run")
    args.gpus = args.gpus or len(gpus)
    if not args.smoke and args.gpus > len(gpus):
        raise SystemExit(f"--gpus {args.gpus} but nvidia-smi lists {len(gpus)}")
    gpus = gpus[: args.gpus]
    ks = [int(x) for x in args.k.split(",")] if args.k else [k for k in (1, 2, 4, 8) if k <= args.gpus]
    if args.gpus not in ks and not args.k:
        ks.append(args.gpus)
    args.k_caption = ks
    ctx = Ctx(args, gpus)
    if args.workers is None:
        args.workers = max(4, ctx.cpus_per_gpu - 2)
    RESULTS.clear()
    RESULTS.update(mode="smoke" if args.smoke else "gpu", command=" ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                   env=environment(gpus), nccl_env=dict(NCCL_ENV),
                   args={k: v for k, v in vars(args).items() if k not in ("worker", "config", "stats_dir", "dest")})
    sections = args.sections.split(",")
    log(f"{RESULTS['mode']}: {args.gpus} GPU(s) {[g['name'] for g in gpus] or 'cpu'}, K = {ks}, sections {sections}")

    RESULTS["memory_estimate"] = recipe_memory_estimate(ctx)
    save()
    for line in table().splitlines()[2:]:
        log(line)

    bg = import_bench_gpu()
    ctx.tiny_dir = Path(args.tiny_dir) if args.tiny_dir else bg.build_tiny_dir(ctx.work)
    world: dict[str, Any] = {}

    def _world():
        try:
            world.update(prepare_world(ctx))
        except Exception as exc:  # noqa: BLE001
            world["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"

    render = threading.Thread(target=_world, daemon=True)
    render.start()  # CPU, while the caption model is written on a GPU
    cap_model: Path | None = None
    if "caption" in sections:
        try:
            cap_model = caption_model_dir(ctx)
        except Exception as exc:  # noqa: BLE001
            RESULTS["caption"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"caption: model not written: {exc}")
    render.join()
    RESULTS["clips"] = {k: v for k, v in world.items() if k != "clips"}
    if "error" in world:
        log(f"clips: FAILED {world['error']}")
        save()
        return 1
    log(f"clips: {RESULTS['clips']}")
    from avcap.models.qwen3_vl.cost import Shape

    sft_dir = shape = geo = None
    k_sft: list[int] = []
    if "sft" in sections:
        RESULTS["data"] = prepare_train_data(ctx)
        sft_dir = config_only_dir(args.size, ctx.tiny_dir, ctx.work / "models" / f"sft-{args.size}-config")
        from transformers import AutoConfig

        shape = Shape.from_config(AutoConfig.from_pretrained(sft_dir))
        geo = clip_geometry(args.height, args.width, shape)
        RESULTS["sft"] = {"size": args.size, "batch_per_gpu": args.batch_per_gpu, "mini_batch": args.mini_batch,
                          "workers": args.workers, "steps": args.steps, "warmup_steps": args.warmup_steps,
                          "clip_geometry": geo, "runs": {}, "skipped": {}}
        est = RESULTS["memory_estimate"]["by_gpus"]
        for k in ks:
            if args.size == "8B" and not args.no_fit_check and str(k) in est and not est[str(k)]["fits"]:
                RESULTS["sft"]["skipped"][str(k)] = (f"memory estimate {est[str(k)]['total']} GiB > "
                                                     f"{RESULTS['memory_estimate']['capacity_gib']} GiB per GPU")
            else:
                k_sft.append(k)
    ids: list[str] = []
    k_cap: list[int] = []
    if "caption" in sections and cap_model is not None:
        ids = caption_set(ctx, world["clips"])
        k_cap = list(ks)
        RESULTS.setdefault("caption", {}).update(
            size=args.caption_size, videos_per_gpu=args.videos_per_gpu, batch=args.caption_batch,
            caption_tokens=args.caption_tokens, clip_set=f"{len(ids)} names over {len(world['clips'])} clips",
            runs={}, skipped={})
    save()

    need = {"sft": args.sft_need_s, "caption": args.caption_need_s}
    for section, k in run_order(sections, k_sft, k_cap):
        fp = {"section": section, "k": k, "args": {n: getattr(args, n) for n in (
            "size", "steps", "warmup_steps", "batch_per_gpu", "mini_batch", "workers", "caption_size", "videos_per_gpu",
            "caption_batch", "caption_tokens", "decode_processes", "width", "height", "seconds", "fps", "eval_clips",
            "train_clips", "expandable_segments", "compile", "memory_budget", "grad_checkpointing", "train_decoder",
            "profile_step", "master_dtype", "mixed_precision", "host_inputs", "compile_tuning")}, "versions": {n: RESULTS["env"].get(n) for n in ("torch", "transformers")}}
        name = f"{section}-K{k}"
        hit = cached(ctx, name, fp)
        if hit is not None:
            RESULTS[section]["runs"][str(k)] = hit
            log(f"{name}: kept from an earlier run ({ctx.work / 'results'})")
            continue
        if ctx.left() < need[section]:
            RESULTS[section]["skipped"][str(k)] = f"deadline: {ctx.left():.0f}s left, a run needs ~{need[section]:.0f}s"
            log(f"{name}: skipped ({RESULTS[section]['skipped'][str(k)]}); run the same command again to continue")
            continue
        try:
            res = (run_sft(ctx, k, sft_dir, shape, geo) if section == "sft" else run_caption(ctx, k, cap_model, ids))
        except Exception as exc:  # noqa: BLE001
            res = {"k": k, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        RESULTS[section]["runs"][str(k)] = res
        if res.get("status") == "ok":
            store(ctx, name, fp, res)
            need[section] = max(need[section] * 0.5, 1.15 * res["wall_s"])
        log(f"{name}: {res.get('status')} " + json.dumps({x: res.get(x) for x in (
            "tokens_per_s_per_gpu", "mfu", "peak_reserved_gib", "videos_per_s", "wall_s", "error")
            if res.get(x) is not None}))
        summarize(ctx)
        save()
    summarize(ctx)
    not_run = [f"{s} K={k}: {why}" for s in ("sft", "caption") for k, why in (RESULTS.get(s, {}).get("skipped") or {}).items()]
    RESULTS["not_run"] = not_run
    text = table()
    print(text, flush=True)
    (RUN.out_dir / "bench_multi_gpu_table.txt").write_text(text + "\n")
    save()
    failed = [f"{s} K={k}" for s in ("sft", "caption") for k, r in (RESULTS.get(s, {}).get("runs") or {}).items()
              if r.get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
