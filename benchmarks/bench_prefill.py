"""Where the engine's prefill time goes, at real size (issue 9): one batch of caption prompts
through `FastGenerator.prefill` (vision tower + language model + cache fill), timed and profiled.

    python3 benchmarks/bench_prefill.py --out $OUT            # 2B, 64 videos, prefill batches 4/8/16
    python3 benchmarks/bench_prefill.py --tiny --out /tmp/pf  # CPU smoke run (tiny model)

Reports per video: the prefill's wall time (median of --repeats), the GPU's busy time within it
(union of kernel, copy and memset intervals from torch.profiler, under the profiler's overhead)
and so the time the GPU waits for the host, per phase (vision tower, language model, rope index)
its host time and GPU span, the top kernels, a Chrome trace (prefill_trace.json.gz), and where the
host waits for the GPU in a prefill and a short caption decode (`--syncs`). The frames come from a short 1936x1220 clip sampled
to 16 frames (the token count of the real clips: decoding is not what this measures).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu as bg  # noqa: E402

RUN = bg.RUN


def busy_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def labelled(obj, name: str, label: str) -> None:
    """Wrap obj.name in a profiler range called `label` (device time per phase in the table)."""
    import torch

    inner = getattr(obj, name)

    def wrapped(*a, **k):
        with torch.profiler.record_function(label):
            return inner(*a, **k)

    setattr(obj, name, wrapped)


def host_syncs(eng, batch, keys, pixels, tokens: int) -> dict[str, Any]:
    """Where the host waits for the GPU in a prefill and in a caption decode of `tokens` tokens:
    torch's sync debug mode warns at every synchronizing call; each warning's Python stack (the
    innermost avcap / transformers frames) is counted."""
    import traceback
    import warnings

    import torch

    from avcap.engines.hf.fast_generate import SamplingSpec

    sites: dict[str, dict[str, int]] = {}
    phase = ["prefill"]

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/avcap/" in f.filename or "/transformers/" in f.filename or "bench_" in f.filename]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))
        counts = sites.setdefault(phase[0], {})
        counts[where or f"{filename}:{lineno}"] = counts.get(where or f"{filename}:{lineno}", 0) + 1

    spec = SamplingSpec.from_sampling(bg.caption_sampling(argparse.Namespace(caption_tokens=tokens)), tokens)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            with torch.inference_mode():
                eng.fast.prefill(batch, keys, max_new_tokens=tokens, video_pixels=pixels, device=eng.device)
                torch.cuda.set_sync_debug_mode(0)
                bg.sync()
                phase[0] = f"generate ({tokens} tokens, prefill included)"
                torch.cuda.set_sync_debug_mode("warn")
                eng.fast.generate(batch, keys, spec, max_new_tokens=tokens, video_pixels=pixels, device=eng.device)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return {ph: dict(sorted(c.items(), key=lambda kv: -kv[1])) for ph, c in sites.items()}


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from avcap.core.config import Vision
    from avcap.engines.base import Request

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2B")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--prefill-batches", default="8,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--syncs", type=int, default=40, metavar="TOKENS",
                    help="also list where the host waits for the GPU (torch's sync debug mode) in one "
                         "prefill + a TOKENS-token caption decode (0: skip)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks/prefill_out")
    ap.add_argument("--work", default="/tmp/avcap-bench")
    a = ap.parse_args(argv)
    out = RUN.use_out_dir(a.out)
    RUN.results.update(args=vars(a), environment=bg.environment())
    device = "cpu" if a.tiny else "cuda"
    dtype = torch.float32 if a.tiny else torch.bfloat16
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tiny_dir = bg.build_tiny_dir(work)
    size = "tiny" if a.tiny else a.size
    w, h = (192, 128) if a.tiny else (1936, 1220)
    nframes, max_pixels = (4, 128 * 192) if a.tiny else (16, 360000)
    clip = bg._quick_clip(work, w, h)
    names = bg.clip_names(work, [clip], a.videos, f"prefill_{w}x{h}")
    model = bg.build_model(size, tiny_dir, device, dtype)
    args = argparse.Namespace(prefill_batch=8, decoder="cpu", decode_workers=4, tiny=a.tiny)
    eng = bg.make_engine(model, tiny_dir, Vision(nframes=nframes, max_pixels=max_pixels), args, batch=a.videos,
                         compile=a.compile)
    m = model.model
    labelled(m, "get_rope_index", "avcap:rope_index")
    labelled(m.visual, "forward", "avcap:vision")
    labelled(m.language_model, "forward", "avcap:language_model")
    try:
        reqs = [Request(f"c{i}", bg.caption_messages(p)) for i, p in enumerate(names)]
        chunk = bg._chunk_of(eng, reqs)
        with torch.inference_mode():
            batch, pixels = eng.shared_inputs_for(chunk)
            keys = [[id(vf) for vf in f] for _, f in chunk]

            def prefill():
                t = time.perf_counter()
                eng.fast.prefill(batch, keys, max_new_tokens=256, video_pixels=pixels, device=eng.device)
                bg.sync()
                return time.perf_counter() - t

            res: dict[str, Any] = {"videos": a.videos, "prompt_tokens": int(batch["input_ids"].shape[1])}
            for pb in [int(x) for x in a.prefill_batches.split(",")]:
                eng.fast.prefill_batch = pb
                t_warm = prefill()  # the first of a shape compiles (and compares the host's vision inputs)
                res["host_vision"] = {"on": eng.fast.host_vision, "error": eng.fast.host_vision_error}
                # interleaved A/B: vision inputs from the host (if on) against the plain call
                kinds = ("host", "plain") if eng.fast.host_vision else ("plain",)
                times: dict[str, list[float]] = {k: [] for k in kinds}
                for _ in range(a.repeats):
                    for k in kinds:
                        eng.fast.host_vision = k == "host"
                        times[k].append(prefill())
                eng.fast.host_vision = "host" in kinds
                for k in kinds:
                    key = f"pb{pb}" + ("" if k == kinds[0] else f"_{k}")
                    res[key] = {"vision_inputs": k, "warm_s": round(t_warm, 2), "s": [round(x, 3) for x in times[k]],
                                "ms_per_video": round(statistics.median(times[k]) / a.videos * 1e3, 2)}
                    RUN.log(f"prefill batch {pb} ({k}): {res[key]}")
                RUN.results["prefill"] = res
                RUN.save()
            eng.fast.prefill_batch = int(a.prefill_batches.split(",")[0])
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=acts) as prof:
                t = prefill()
        evs = prof.events()
        # device events are kernels, copies, memsets, and the GPU-side spans of profiler ranges
        # (ours and torch's): only the first three are work
        kernels = [(e.time_range.start, e.time_range.end) for e in evs
                   if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                   and not e.name.startswith(("avcap:", "Torch-Compiled Region", "## Call CompiledFxGraph"))]
        busy_us = busy_union(kernels)
        res["profiled"] = {"wall_ms_per_video": round(t / a.videos * 1e3, 2),
                           "gpu_busy_ms_per_video": round(busy_us / 1e3 / a.videos, 2),
                           "gpu_busy_fraction": round(busy_us / 1e6 / t, 3) if kernels else None,
                           "kernels": len(kernels)}
        phases = {}
        for e in prof.key_averages():
            if e.key.startswith("avcap:"):
                # gpu_span_ms: from the range's first to its last GPU activity (queued work of the
                # previous range included), not the kernel time of the phase
                phases[e.key[6:]] = {"calls": e.count, "cpu_ms": round(e.cpu_time_total / 1e3, 1),
                                     "gpu_span_ms": round(getattr(e, "device_time_total", 0) / 1e3, 1)}
        res["profiled"]["phases"] = phases
        RUN.log(f"profiled: {res['profiled']}")
        key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        (out / "prefill_profile.txt").write_text(
            prof.key_averages().table(sort_by=key, row_limit=45, max_name_column_width=90))
        tmp = out / "prefill_trace.json"
        prof.export_chrome_trace(str(tmp))
        with open(tmp, "rb") as f, gzip.open(out / "prefill_trace.json.gz", "wb") as g:
            g.write(f.read())
        tmp.unlink()
        RUN.results["prefill"] = res
        if a.syncs and device == "cuda":
            RUN.results["syncs"] = host_syncs(eng, batch, keys, pixels, a.syncs)
            RUN.log(f"host syncs: {RUN.results['syncs']}")
    finally:
        eng.close()
        RUN.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
