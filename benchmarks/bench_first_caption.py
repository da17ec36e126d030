"""A fresh `avcap infer` process on real clip files: how long until its first caption record, and
the whole run's rate (issue 26, item 2), with the compile cache cold and then warm.

    python3 benchmarks/bench_first_caption.py --out $OUT              # one H100, 8B, 192 videos x 2 runs: ~5-6 min
    python3 benchmarks/bench_first_caption.py --tiny --out /tmp/fc    # CPU dry run: the tiny model, small clips

Not a test. Writes `bench_first_caption.json`, `bench_first_caption.log` and each run's own
timestamped output (`bench_first_caption_<run>.log`) to --out (default: $OUT when set, else
benchmarks/); work files (model, clips, outputs, the compile cache) go to --work and the model and
clips are reused from there by the next call on the same machine. On a bare device image the wheels
carried in .whl/ are installed to /tmp/avcap-site first (bench_env.ensure_deps), and src/ is put
on the path.

What it does:

- model: a directory loadable like a real checkpoint — the real Cosmos-Reason2-<size> architecture
  (avcap.models.qwen3_vl.cost.realsize_config), random weights initialised on the GPU and written
  with save_pretrained as bf16 safetensors, config, generation config, processor and tokenizer
  files of avcap's tiny model (whose token ids are all below the real vocabulary). Built once, in a
  child process (this process never touches the GPU), while the clips render.
- clips: `avcap.demo.synth` H.264 clips at 1936x1220, 30 fps, --seconds long (30 s, as
  bench_gpu.py), --clips of them, reused cyclically under --videos distinct file names (symlinks)
  in one folder, so every request decodes anew. The folder is a `kind = "clips"` dataset, and
  `avcap infer --tasks caption` on it is the plain "caption these clips" run (`avcap label` would
  also ask the attribute questions and draw thumbnails).
- config: `[avcap.engine] model` = that directory, `compile = true`, `decode_processes = true`,
  `decode_workers = 16`, `resize_on_gpu = true`, `batch_size = 64` (RESULTS.md, "Inference on one
  H100", the 8B captions); the recipe's caption sampling (temperature 0.7, top_p 0.8, top_k 20,
  presence_penalty 1.5, seed 0) with `max_tokens = --caption-tokens` (256, the benchmarks'; `avcap
  infer` has no min_tokens, so the records' num_output_tokens say how many were generated).
- runs: `python -m avcap infer --config F --dataset FIRST_CAPTION --tasks caption --outputs-dir D`
  as a child process, in the order of --runs: `cold` with AVCAP_CACHE_DIR a new empty folder,
  `warm` with the same folder again (the compile cache the cold run left); a fresh outputs folder
  each time; TORCHINDUCTOR_CACHE_DIR and AVCAP_COMPILE_CACHE removed from the child's environment.
  t0 = the clock just before Popen. The child's output is read as it comes and each line
  timestamped; its caption.jsonl is polled every --poll s for complete lines: the time of the first
  record, of every change of the record count (the batch timeline), of the last record, of the
  exit. (Records are written a batch at a time, so the first caption is the first batch's end; a
  record is seen up to --poll s after it is written.)
- report: per run the first caption's time from process start, videos/s from process start (to the
  last record and to the exit) and from the first record (the videos after the first batch over
  the time from the first record to the last); when the child printed its plan line (config read,
  clips listed; torch not imported yet) and its compile note (engine built: torch and transformers
  imported, weights loaded, the fast path's layer self-check done); run.json's timings
  (`total_s` is run_inference's; the rest of the exit time is the CLI's start and the process's
  teardown) and `engine_run.compile_cache`
  (folder, FX graph and AOTAutograd cache hits and misses); records' output tokens and errors;
  the child's output tail. Targets: first caption <= 30 s from the start of a process on a
  machine that has run avcap before (the warm run), whole run >= 4 videos/s.

Bytecode: the GPU box's image has no `.pyc` for torch and sets PYTHONDONTWRITEBYTECODE, so each
process compiles torch from source (+7 s per start, run 63; `avcap infer` says so in its log and
run.json's `bytecode`). `--bytecode-cache DIR` runs the avcap processes with PYTHONPYCACHEPREFIX=DIR
and bytecode writing on, as on an image installed with its bytecode (pip's default): the first
such process writes the cache, later ones read it.

Weights are read from the page cache when the model was just written or read by an earlier run
(128 GiB of RAM on the device); `--evict-weights` drops the model's files from the page cache
(fsync + posix_fadvise DONTNEED, no root needed) before each run, so they are read from disk.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # its sibling modules
from bench_env import ensure_deps, gpus_present, stop_group  # noqa: E402
from bench_log import RunLog  # noqa: E402

RUN = RunLog("bench_first_caption", {"runs": {}})
RESULTS = RUN.results
log = RUN.log
save = RUN.save
DATASET = "FIRST_CAPTION"
MODEL_FILES = (".safetensors", ".json", ".jinja", ".txt", ".model")


# ----------------------------------------------------------------------------- model directory


def write_model(size: str, tiny_dir: Path, dest: Path, device: str) -> None:
    """(The --build-model child.) The `size` architecture with random weights (bf16 on a GPU, the
    tiny model's own fp32 weights for size "tiny") saved as a checkpoint directory at `dest`."""
    import torch
    from bench_gpu import build_model

    t = time.perf_counter()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build_model(size, tiny_dir, device, dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    built = time.perf_counter() - t
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # config.json, generation_config.json, *.safetensors
    for f in tiny_dir.iterdir():  # processor, tokenizer and chat template of the tiny model
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")) and \
                f.name not in ("config.json", "generation_config.json"):
            shutil.copy2(f, tmp / f.name)
    n = sum(p.numel() for p in model.parameters())
    info = {"size": size, "params_b": round(n / 1e9, 3), "dtype": str(dtype).replace("torch.", ""), "device": device,
            "init_s": round(built, 1), "save_s": round(time.perf_counter() - t - built, 1),
            "bytes": sum(f.stat().st_size for f in tmp.iterdir() if f.suffix == ".safetensors")}
    (tmp / "COMPLETE").write_text(json.dumps(info) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(json.dumps(info), flush=True)


def start_model_build(args, work: Path, tiny_dir: Path) -> tuple[Path, subprocess.Popen | None]:
    """The model directory, and the child process building it (None when it is already there)."""
    dest = work / "models" / args.size
    if (dest / "COMPLETE").exists():
        return dest, None
    cmd = [sys.executable, str(HERE), "--build-model", str(dest), "--size", args.size, "--tiny-dir", str(tiny_dir),
           "--device", "cpu" if args.tiny else "cuda"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="") if args.tiny else dict(os.environ)
    log(f"model: building {dest} in a child process")
    with open(work / "build_model.log", "w") as fh:  # the child keeps its own copy of the descriptor
        return dest, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def finish_model_build(dest: Path, proc: subprocess.Popen | None, work: Path, timeout: float) -> dict[str, Any]:
    if proc is not None:
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = 124
        if rc != 0 or not (dest / "COMPLETE").exists():
            tail = (work / "build_model.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"building the model failed (exit {rc}):\n{tail}")
    info = json.loads((dest / "COMPLETE").read_text())
    info.update(path=str(dest), reused=proc is None)
    return info


def evict(model_dir: Path) -> dict[str, Any]:
    """Drop the model directory's files from the page cache: the next load reads the disk."""
    n = 0
    for f in model_dir.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += f.stat().st_size
            finally:
                os.close(fd)
    return {"evicted_bytes": n}


# ----------------------------------------------------------------------------- clips and dataset


def render(args, work: Path) -> dict[str, Any]:
    """--clips synth clips at the benchmark's geometry (reused when a complete render is there)."""
    from avcap.demo.synth import synthesize

    world = work / f"world-{args.width}x{args.height}-{args.seconds:g}s-{args.fps:g}fps-{args.clips}"
    manifest = world / "manifest.json"
    vids_dir = world / "eval" / "AV_CAPTION" / "videos"
    if manifest.exists() and json.loads(manifest.read_text()).get("status") == "complete":
        vids = sorted(vids_dir.glob("*.mp4"))
        if len(vids) >= args.clips:
            return {"clips": [str(v) for v in vids[: args.clips]], "reused": True}
    shutil.rmtree(world, ignore_errors=True)
    t = time.perf_counter()
    m = synthesize(world, videos=args.clips, train_videos=0, lingoqa_segments=0, seed=0, width=args.width,
                   height=args.height, seconds=args.seconds, fps=args.fps,
                   workers=max(1, min(args.clips, args.render_workers)))
    vids = sorted(vids_dir.glob("*.mp4"))
    return {"clips": [str(v) for v in vids], "render_s": round(time.perf_counter() - t, 1),
            "render_seconds_mean": m.get("render_seconds_mean"), "reused": False,
            "mbytes_each": [round(v.stat().st_size / 1e6, 1) for v in vids]}


def clip_folder(work: Path, clips: list[str], count: int) -> Path:
    """`count` distinct file names (symlinks) cycling over the rendered clips, in one folder."""
    d = work / f"clips-{count}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for k in range(count):
        (d / f"v{k:05d}.mp4").symlink_to(clips[k % len(clips)])
    return d


def write_config(args, work: Path, model: Path, clips: Path, first_batch: int | None = None) -> Path:
    s = json.dumps  # TOML basic strings are JSON strings
    engine = [
        f"model = {s(str(model))}",
        f"compile = {str(args.compile).lower()}",
        "decode_processes = true",
        f"decode_workers = {args.decode_workers}",
        "resize_on_gpu = true",
        f"batch_size = {args.batch_size}",
        f"decode_attention = {s(args.decode_attention)}",
    ]
    if first_batch:
        engine.append(f"first_batch = {first_batch}")
    if args.tiny:
        engine.append('device = "cpu"')
    text = "\n".join([
        "# bench_first_caption.py: a caption-only `avcap infer` run over a folder of clips",
        "[avcap]",
        f"model_name = {s('first-caption-' + args.size)}",
        "",
        "[avcap.engine]",
        *engine,
        "",
        "[avcap.sampling.caption]  # the recipe's caption sampling, the benchmarks' 256 new tokens",
        "temperature = 0.7",
        "top_p = 0.8",
        "top_k = 20",
        "presence_penalty = 1.5",
        f"max_tokens = {args.caption_tokens}",
        "seed = 0",
        "",
        f"[avcap.datasets.{DATASET}]",
        'kind = "clips"',
        f"root = {s(str(clips))}",
        "",
    ])
    path = work / ("config.toml" if not first_batch else f"config_first{first_batch}.toml")
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- one run


class Reader(threading.Thread):
    """The child's output as it comes (progress bars' carriage returns end a line too), each line
    stamped with seconds since t0, written to `path`."""

    def __init__(self, stream, path: Path, t0: float):
        super().__init__(daemon=True)
        self.stream, self.path, self.t0 = stream, path, t0
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        buf = b""
        with open(self.path, "w") as fh:
            while True:
                chunk = os.read(self.stream.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *done, buf = re.split(rb"[\r\n]", buf)
                now = time.perf_counter() - self.t0
                for raw in done:
                    line = raw.decode(errors="replace").rstrip()
                    if line:
                        self.lines.append((now, line))
                        fh.write(f"[{now:7.2f}s] {line}\n")
                fh.flush()
            if buf.strip():
                now = time.perf_counter() - self.t0
                self.lines.append((now, buf.decode(errors="replace").rstrip()))
                fh.write(f"[{now:7.2f}s] {self.lines[-1][1]}\n")

    def first(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        return next((round(t, 2) for t, line in self.lines if rx.search(line)), None)

    def tail(self, n: int = 40) -> list[str]:
        return [f"[{t:7.2f}s] {line}" for t, line in self.lines[-n:]]


def sweep_dir(work: Path, model: Path, n: int) -> Path:
    """A training output folder with checkpoints/step_1..n, each the model's files (symlinks): what
    `avcap infer --every-checkpoint` sweeps (the same weights read n times)."""
    root = work / "sweep"
    shutil.rmtree(root, ignore_errors=True)
    for k in range(1, n + 1):
        d = root / "checkpoints" / f"step_{k}"
        d.mkdir(parents=True)
        for f in model.iterdir():
            (d / f.name).symlink_to(f.resolve())
    return root


def count_records(path: Path, state: dict[str, int]) -> int:
    """Complete lines of `path` so far (each record is one O_APPEND write ending in a newline)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(state.get("offset", 0))
            data = fh.read()
    except FileNotFoundError:
        return state.get("lines", 0)
    state["offset"] = state.get("offset", 0) + len(data)
    state["lines"] = state.get("lines", 0) + data.count(b"\n")
    return state["lines"]


def run_once(args, label: str, cfg_path: Path, cache_dir: Path, model: Path, work: Path, timeout: float,
             src: Path | None = None, sweep: Path | None = None) -> dict[str, Any]:
    run_dir = work / "runs" / label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    outputs = run_dir / "outputs"
    target = outputs / f"first-caption-{args.size}" / "base" / DATASET / "caption.jsonl"
    # a sweep writes one output folder per checkpoint, in step order
    targets = ([outputs / f"first-caption-{args.size}" / f"ckpt-{k}" / DATASET / "caption.jsonl"
                for k in range(1, args.sweep + 1)] if sweep is not None else [target])
    target = targets[0]
    env = dict(os.environ, AVCAP_CACHE_DIR=str(cache_dir))
    for k in ("TORCHINDUCTOR_CACHE_DIR", "AVCAP_COMPILE_CACHE", "TRITON_CACHE_DIR"):
        env.pop(k, None)
    if args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.bytecode_cache:  # as on an image whose packages were installed with their bytecode
        env["PYTHONPYCACHEPREFIX"] = args.bytecode_cache
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    if src is not None:  # another avcap (e.g. `git archive <commit> src`), ahead of this one on the path
        env["PYTHONPATH"] = os.pathsep.join([str(src)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, "-m", "avcap", "infer", "--config", str(cfg_path), "--dataset", DATASET,
           "--tasks", "caption", "--outputs-dir", str(outputs)]
    if sweep is not None:
        cmd += ["--checkpoint", str(sweep), "--every-checkpoint"]
    if label in args.sample_stacks.split(","):  # the same command under the in-process stack sampler
        stacks = RUN.out_dir / f"bench_first_caption_stacks_{label}.json"
        cmd[1:1] = [str(HERE.parent / "stack_sampler.py"), "--out", str(stacks), "--seconds", f"{timeout:.0f}",
                    "--interval", "0.05", "--window", "2", "--"]
    res: dict[str, Any] = {"command": " ".join(cmd[1:]), "cache_dir": str(cache_dir), "src": str(src or REPO / "src"),
                           "cache_files_before": sum(1 for p in cache_dir.rglob("*") if p.is_file())}
    if args.evict_weights:
        res["weights"] = evict(model)
    log(f"{label}: {res['command']} (AVCAP_CACHE_DIR={cache_dir}, {res['cache_files_before']} files there; "
        f"up to {timeout:.0f}s)")
    child_log = RUN.out_dir / f"bench_first_caption_{label}.log"
    state: dict[str, int] = {}
    timeline: list[tuple[float, int]] = []
    t_wall = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=run_dir,
                            start_new_session=True)
    reader = Reader(proc.stdout, child_log, t0)
    reader.start()
    n, rc = 0, None
    states: list[dict[str, int]] = [state] + [{} for _ in targets[1:]]
    seen = [0] * len(targets)
    first: list[float | None] = [None] * len(targets)  # each target's first and last record times
    last: list[float | None] = [None] * len(targets)
    while True:
        rc = proc.poll()
        counts = [count_records(t, st) for t, st in zip(targets, states)]
        got = sum(counts)
        now = time.perf_counter() - t0
        for i, c in enumerate(counts):
            if c != seen[i]:
                seen[i] = c
                first[i] = round(now, 2) if first[i] is None else first[i]
                last[i] = round(now, 2)
        if got != n:
            n = got
            timeline.append((round(now, 2), n))
            if len(timeline) == 1:
                log(f"{label}: first record at {now:.2f}s")
        if rc is not None:
            break
        if now > timeout:
            log(f"{label}: still running after {timeout:.0f}s: stopped")
            stop_group(proc)
            rc = 124
            break
        time.sleep(args.poll)
    t_exit = time.perf_counter() - t0
    reader.join(timeout=30)
    got = sum(count_records(t, st) for t, st in zip(targets, states))
    if got != n:  # the last batch landed between the last poll and the exit
        timeline.append((round(t_exit, 2), got))
    if sweep is not None:  # per checkpoint: its first and last record, and the gap since the one before
        res["sweep"] = [{"checkpoint": f"ckpt-{k + 1}", "records": seen[k], "first_record_s": first[k],
                         "last_record_s": last[k],
                         "since_previous_s": (round(first[k] - last[k - 1], 2)
                                              if k and first[k] is not None and last[k - 1] is not None else None)}
                        for k in range(len(targets))]
    res.update(rc=rc, started_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_wall)),
               exit_s=round(t_exit, 2), timeline=timeline, output_tail=reader.tail())
    res["plan_line_s"] = reader.first(r"^avcap infer: ")  # config read, clips listed (torch not imported yet)
    res["model_loaded_s"] = reader.first(r"note: \[avcap\.engine\] compile = true")  # printed once the engine is built
    summarize_run(res, target, args)
    if res.get("first_record_s") is not None:
        log(f"{label}: rc {rc}; first record {res['first_record_s']}s, last {res['last_record_s']}s, exit "
            f"{res['exit_s']}s; {res['videos']} videos, {res['videos_per_s_from_start']} videos/s from the start, "
            f"{res.get('videos_per_s_from_first_record')} from the first record; compile cache "
            f"{(res.get('compile_cache') or {}).get('counters')}")
    else:
        log(f"{label}: rc {rc}, no record written; output tail:\n  " + "\n  ".join(res["output_tail"][-15:]))
    return res


def summarize_run(res: dict[str, Any], target: Path, args) -> None:
    records = []
    if target.exists():
        for line in target.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                res.setdefault("bad_lines", 0)
                res["bad_lines"] += 1
    res["records"] = len(records)
    res["videos"] = len({r.get("key") for r in records})
    errors = [r["error"] for r in records if r.get("error")]
    res["errors"] = len(errors)
    if errors:
        res["first_error"] = errors[0][:500]
    toks = [r.get("num_output_tokens") or 0 for r in records if not r.get("error")]
    if toks:
        res["output_tokens"] = {"mean": round(sum(toks) / len(toks), 1), "min": min(toks), "max": max(toks)}
        res["prompt_tokens"] = max(r.get("num_input_tokens") or 0 for r in records)
    good = [r for r in records if not r.get("error")]
    if good:  # the first batch's engine call (frames, load wait, model): each record holds its share
        n_first = res["timeline"][0][1] if res["timeline"] else len(good)
        head = good[:n_first]
        res["first_batch"] = {"records": len(head), "call_s": round(sum(r.get("time_s") or 0 for r in head), 2)}
    tl = res["timeline"]
    if tl:
        first_t, first_n = tl[0]
        last_t, last_n = tl[-1]
        res.update(first_record_s=first_t, first_batch_records=first_n, last_record_s=last_t)
        res["videos_per_s_from_start"] = round(last_n / last_t, 3)
        res["videos_per_s_start_to_exit"] = round(last_n / res["exit_s"], 3)
        if last_n > first_n and last_t > first_t:
            res["videos_per_s_from_first_record"] = round((last_n - first_n) / (last_t - first_t), 3)
        if res.get("model_loaded_s") is not None:
            res["first_batch_after_load_s"] = round(first_t - res["model_loaded_s"], 2)
    run_json = target.parent / "run.json"
    if run_json.exists():
        info = json.loads(run_json.read_text())
        er = info.get("engine_run") or {}
        res["compile_cache"] = er.get("compile_cache")
        res["engine_load"] = er.get("load")
        res["engine_startup"] = er.get("startup")
        res["engine_paths"] = er.get("paths")
        res["engine_fallbacks"] = er.get("fallbacks")
        res["engine_batch_failures"] = er.get("batch_failures")
        res["engine_counts"] = er.get("counts")
        res["engine_batches"] = er.get("batches")
        res["device"] = info.get("device")
        res["bytecode"] = info.get("bytecode")
        res["run_json_timings"] = info.get("timings")
        res["versions"] = info.get("versions")
        total = (info.get("timings") or {}).get("total_s")
        if total is not None:  # imports, CLI and config before run_inference, and the exit after it
            res["outside_run_inference_s"] = round(res["exit_s"] - total, 2)
    res["ok"] = res["rc"] == 0 and res["videos"] == args.videos and not res["errors"]


# ----------------------------------------------------------------------------- report


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(r: dict[str, Any]) -> str:
    a = r["args"]
    rows = [(f"device: {r.get('gpu') or 'cpu'}; torch {r['env'].get('torch')}, transformers {r['env'].get('transformers')}, "
             f"{r['env'].get('cpus')} CPUs"),
            (f"model: {a['size']} {r.get('model', {}).get('path')}; {a['videos']} videos of "
             f"{a['width']}x{a['height']} {a['seconds']:g}s {a['fps']:g}fps ({a['clips']} clips cycled); batch {a['batch_size']}, "
             f"compile {a['compile']}, {a['decode_workers']} decode processes, {a['caption_tokens']} caption tokens"),
            "",
            (f"{'run':<6} {'rc':>3} {'plan':>6} {'loaded':>7} {'1st rec':>8} {'last':>7} {'exit':>7} {'videos':>6} "
             f"{'v/s start':>9} {'->exit':>7} {'v/s 1st':>8} {'tokens':>7}  compile cache (fx hit/miss, aot hit/miss)")]
    for label, x in r["runs"].items():
        c = ((x.get("compile_cache") or {}).get("counters")) or {}
        cc = (f"{c.get('fxgraph_cache_hit', '-')}/{c.get('fxgraph_cache_miss', '-')}, "
              f"{c.get('autograd_cache_hit', '-')}/{c.get('autograd_cache_miss', '-')}") if c else "-"
        rows.append(f"{label:<6} {x.get('rc')!s:>3} {_f(x.get('plan_line_s')):>6} {_f(x.get('model_loaded_s')):>7} "
                    f"{_f(x.get('first_record_s')):>8} {_f(x.get('last_record_s')):>7} {_f(x.get('exit_s')):>7} "
                    f"{x.get('videos', '-')!s:>6} {_f(x.get('videos_per_s_from_start'), '{:.3f}'):>9} "
                    f"{_f(x.get('videos_per_s_start_to_exit'), '{:.3f}'):>7} "
                    f"{_f(x.get('videos_per_s_from_first_record'), '{:.3f}'):>8} "
                    f"{_f((x.get('output_tokens') or {}).get('mean'), '{:.0f}'):>7}  {cc}")
    for label, x in r["runs"].items():
        if x.get("sweep"):
            rows.append(f"{label}: per checkpoint {x['sweep']}")
        rows.append(f"{label}: load {x.get('engine_load')}; first batch {x.get('first_batch')}; "
                    f"startup (s from the engine's constructor) {x.get('engine_startup')}")
    rows.append("(seconds from process start: plan = the child's plan line (config read, clips listed), loaded = its "
                "compile note (engine constructed: imports, config, decoders, processor; the weights load in the "
                "background, see load), 1st rec / last = first / last caption record "
                f"on disk, polled every {a['poll']}s; v/s start = videos / last record, ->exit = videos / exit, "
                "v/s 1st = videos after the first batch / (last - first record))")
    warm = next((x for label, x in r["runs"].items() if label.startswith("warm") and "@" not in label), {})
    if warm.get("first_record_s") is not None:
        rows.append(f"targets (first warm run): first caption <= 30 s: {warm['first_record_s']:.1f} s — "
                    f"{'met' if warm['first_record_s'] <= 30 else 'not met'}; whole run >= 4 videos/s from process "
                    f"start: {warm['videos_per_s_from_start']:.2f} — "
                    f"{'met' if warm['videos_per_s_from_start'] >= 4 else 'not met'}")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU dry run: the tiny model, small clips, few videos")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE.parent))
    ap.add_argument("--work", default="/tmp/avcap-first-caption")
    ap.add_argument("--wheels", default=str(REPO / ".whl"))
    ap.add_argument("--size", default="8B", choices=["8B", "2B", "tiny"],
                    help="the real-size architecture (random weights); tiny: the tiny model itself (--tiny)")
    ap.add_argument("--runs", default="cold,warm,warm-first,warm-first",
                    help="in order: cold (a new empty compile cache), warm (the cache as the runs before left it) or "
                         "warm-first (warm, with [avcap.engine] first_batch = --first-batch); KIND@base: the same with "
                         "--baseline-src's avcap")
    ap.add_argument("--sweep", type=int, default=3,
                    help="checkpoints in a `sweep` run: avcap infer --every-checkpoint over that many copies of the "
                         "model (warm cache), each captioning every video")
    ap.add_argument("--baseline-src", default=None,
                    help="another avcap's src/ (e.g. from `git archive <commit> src`): runs named KIND@base "
                         "(cold@base, warm@base, warm-first@base) use it, the others this checkout's")
    ap.add_argument("--cache-dir", default=None, help="AVCAP_CACHE_DIR of a first warm run (default: a new folder)")
    ap.add_argument("--videos", type=int, default=192)
    ap.add_argument("--clips", type=int, default=8, help="distinct clips rendered (cycled over the videos)")
    ap.add_argument("--width", type=int, default=1936)
    ap.add_argument("--height", type=int, default=1220)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--render-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--first-batch", type=int, default=8,
                    help="[avcap.engine] first_batch of the warm-first runs (warm cache, a smaller first batch)")
    ap.add_argument("--decode-workers", type=int, default=16)
    ap.add_argument("--decode-attention", default="auto", choices=["auto", "sdpa", "flex", "triton"],
                    help="[avcap.engine] decode_attention of the runs")
    ap.add_argument("--caption-tokens", type=int, default=256)
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--bytecode-cache", default=None,
                    help="PYTHONPYCACHEPREFIX for the avcap processes (PYTHONDONTWRITEBYTECODE unset): a bytecode "
                         "cache where the image has none (run 63: the GPU box compiles torch from source each start)")
    ap.add_argument("--evict-weights", action="store_true", help="drop the model's files from the page cache before each run")
    ap.add_argument("--sample-stacks", default="",
                    help="comma-separated run labels (e.g. warm) run under benchmarks/stack_sampler.py: every "
                         "thread's Python stack 20 times a second, per 2 s window, to bench_first_caption_stacks_<run>.json")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between looks at the output file")
    ap.add_argument("--deadline", type=float, default=560.0, help="seconds from start the whole call must end by")
    ap.add_argument("--run-timeout", type=float, default=300.0, help="seconds one avcap infer process may take")
    ap.add_argument("--build-model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tiny-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny:
        args.size = "tiny"
        args.work = args.work + "-tiny" if args.work == "/tmp/avcap-first-caption" else args.work
        args.videos = 12 if args.videos == 192 else args.videos
        args.clips = 3 if args.clips == 8 else args.clips
        if (args.width, args.height, args.seconds, args.fps) == (1936, 1220, 30.0, 30.0):  # else as asked
            args.width, args.height, args.seconds, args.fps = 160, 96, 2.0, 8.0
        args.batch_size = 4 if args.batch_size == 64 else args.batch_size
        args.first_batch = 2 if args.first_batch == 8 else args.first_batch
        args.decode_workers = 2 if args.decode_workers == 16 else args.decode_workers
        args.caption_tokens = 64 if args.caption_tokens == 256 else args.caption_tokens
        args.render_workers = min(args.render_workers, 2)
        args.compile = True if args.compile is None else args.compile
        args.deadline = max(args.deadline, 900.0)
        args.run_timeout = max(args.run_timeout, 600.0)
    args.compile = True if args.compile is None else args.compile
    runs = args.runs.split(",")
    bad = [x for x in runs if x.removesuffix("@base") not in ("cold", "warm", "warm-first", "sweep")]
    if bad or not args.runs:
        ap.error(f"--runs: {', '.join(bad) or '(none)'}: each is cold, warm, warm-first or sweep, optionally "
                 "with @base")
    if any(x.endswith("@base") for x in runs) and not args.baseline_src:
        ap.error("--runs: a KIND@base run needs --baseline-src")
    if runs[0].startswith("warm") and not args.cache_dir:
        ap.error("--runs: a warm run needs a cold run before it, or --cache-dir (a folder a cold run filled)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_deps(Path(args.wheels))
    if args.build_model:
        write_model(args.size, Path(args.tiny_dir), Path(args.build_model), args.device)
        return 0
    import torch
    import transformers
    from bench_gpu import build_tiny_dir

    RUN.use_out_dir(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpu = None if args.tiny else next(iter(gpus_present()), None)
    if not args.tiny and gpu is None:
        raise SystemExit("no GPU found by nvidia-smi; use --tiny for the CPU dry run")
    RESULTS.update(mode="tiny (CPU dry run)" if args.tiny else "gpu", gpu=gpu,
                   command=" ".join(["bench_first_caption.py", *(argv if argv is not None else sys.argv[1:])]),
                   env={"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                        "torch": torch.__version__, "transformers": transformers.__version__, "cpus": os.cpu_count()},
                   args={k: v for k, v in vars(args).items() if k not in ("build_model", "tiny_dir", "device")})
    log(f"{RESULTS['mode']}: {gpu or 'cpu'}; torch {torch.__version__}, transformers {transformers.__version__}")
    try:
        tiny_dir = build_tiny_dir(work)
        model, builder = start_model_build(args, work, tiny_dir)
        try:
            RESULTS["clips"] = render(args, work)
        finally:
            RESULTS["model"] = finish_model_build(model, builder, work, args.deadline - RUN.elapsed() - 60)
        log(f"model: {RESULTS['model']}")
        log(f"clips: { {k: v for k, v in RESULTS['clips'].items() if k != 'clips'} }")
        folder = clip_folder(work, RESULTS["clips"]["clips"], args.videos)
        cfg_path = write_config(args, work, model, folder)
        RESULTS["config_toml"] = cfg_path.read_text()
        shutil.copy2(cfg_path, RUN.out_dir / "bench_first_caption_config.toml")
        save()
        cache_dir = Path(args.cache_dir) if args.cache_dir else None
        labels = args.runs.split(",")
        for i, name in enumerate(labels):
            label = name if labels.count(name) == 1 else f"{name}{labels[:i + 1].count(name)}"
            kind, _, variant = name.partition("@")
            if kind == "cold" or cache_dir is None:
                cache_dir = work / "cache" / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
                cache_dir.mkdir(parents=True, exist_ok=False)
            left = args.deadline - RUN.elapsed() - 5
            if left < 30:
                log(f"{label}: skipped, {left:.0f}s left before --deadline")
                RESULTS["runs"][label] = {"skipped": f"{left:.0f}s left before --deadline"}
                continue
            path = write_config(args, work, model, folder, args.first_batch) if kind == "warm-first" else cfg_path
            src = Path(args.baseline_src).resolve() if variant else None
            sweep = sweep_dir(work, model, args.sweep) if kind == "sweep" else None
            RESULTS["runs"][label] = run_once(args, label, path, cache_dir, model, work, min(args.run_timeout, left),
                                              src=src, sweep=sweep)
            save()
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
    return 0 if all(r.get("ok") for r in RESULTS["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
