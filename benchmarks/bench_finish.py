"""What finishing a CPU-decoded clip costs the GPU (issue 9, `[avcap.engine] resize_on_gpu`).

With `resize_on_gpu` the CPU decoders hand over I420 pictures (`avcap.video.decode_video`) and the
engine's process converts them to RGB (avcap.video.colour, swscale's arithmetic) and resizes them
(qwen-vl-utils' torchvision call) on the model's GPU: `DecodedVideo.finish("cuda")`. That GPU time
is taken from the model. This script decodes --clips clips once on the CPU, then times `finish`
per clip (wall, synchronised; median over clips and --repeats), profiles one pass (kernel table:
where the GPU time goes), and does the same for each variant of the conversion:

- `eager`: `avcap.video.colour.nv12_to_rgb` op by op (the engine's way until 2026-11-25);
- `compiled`: through torch.compile (`nv12_to_rgb_fast`, its int32 arithmetic fused; what the
  engine runs on CUDA now), checked equal to eager bit for bit on every clip.

    python3 benchmarks/bench_finish.py --clips /tmp/avcap-bench/world/eval/AV_CAPTION/videos --out $OUT/finish
    python3 benchmarks/bench_finish.py --tiny --out /tmp/finish     # CPU smoke run (small clips, CPU "device")
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu as bg  # noqa: E402

RUN = bg.RUN


def decode(path: str, kw: dict[str, Any]):
    from avcap.video import decode_video

    return decode_video(path, **kw)


def kernel_table(prof, per: int, top: int = 12) -> list[dict[str, Any]]:
    """GPU kernels (and copies) by total time, ms per clip."""
    import torch

    rows: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
            rows.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
    out = [{"kernel": k[:110], "calls_per_clip": round(len(v) / per, 1), "ms_per_clip": round(sum(v) / 1e3 / per, 3)}
           for k, v in rows.items()]
    return sorted(out, key=lambda r: -r["ms_per_clip"])[:top]


def main(argv=None) -> int:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from avcap.video import colour as video_colour
    from avcap.core.config import Vision
    from avcap.engines.frames import video_kwargs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default="/tmp/avcap-bench/world/eval/AV_CAPTION/videos")
    ap.add_argument("--n", type=int, default=16, help="clips decoded (cycling over the directory's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="eager,compiled")
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--max-pixels", type=int, default=360000)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks/finish_out")
    ap.add_argument("--work", default="/tmp/avcap-bench")
    a = ap.parse_args(argv)
    RUN.use_out_dir(a.out)
    RUN.results.update(args=vars(a), environment=bg.environment())
    device = "cpu" if a.tiny else "cuda"
    if a.tiny:
        clips = [bg._quick_clip(Path(a.work), 192, 128)]
        a.nframes, a.max_pixels, a.n = 4, 128 * 192, 3
    elif Path(a.clips).is_dir():
        clips = sorted(str(p) for p in Path(a.clips).glob("*.mp4"))
    else:  # no rendered clips: a short clip of the same size (decoding is not what this measures)
        clips = [bg._quick_clip(Path(a.work), 1936, 1220)]
    if not clips:
        raise SystemExit(f"no clips in {a.clips}")
    paths = [clips[i % len(clips)] for i in range(a.n)]
    kw = video_kwargs(Vision(nframes=a.nframes, max_pixels=a.max_pixels), {}, 32)
    t = time.perf_counter()
    with ProcessPoolExecutor(min(8, a.n)) as pool:
        decoded = list(pool.map(decode, paths, [kw] * len(paths)))
    RUN.log(f"decoded {len(decoded)} clips in {time.perf_counter() - t:.1f}s; planes {decoded[0].planes.shape}, "
            f"resized to {decoded[0].video.resized_height}x{decoded[0].video.resized_width}")
    if not a.tiny:  # the engine reads planes bound for the GPU into pinned memory
        for d in decoded:
            d.planes = torch.from_numpy(d.planes).pin_memory()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    reference = None
    res: dict[str, Any] = {}
    for variant in a.variants.split(","):
        if variant not in ("eager", "compiled"):  # compiled: the engine's default on CUDA
            raise SystemExit(f"unknown variant {variant!r}")
        # eager: the state after a failed compile, nv12_to_rgb_fast converts eagerly
        video_colour.reset_compiled(eager=variant == "eager")
        try:
            t = time.perf_counter()
            first = [d.finish(device).frames for d in decoded]  # warm-up (compiles)
            sync()
            warm_s = time.perf_counter() - t
            if reference is None:
                reference = first
            equal = all(np.array_equal(x, y) for x, y in zip(first, reference))
            per_clip = []
            for _ in range(a.repeats):
                for d in decoded:
                    sync()
                    t = time.perf_counter()
                    d.finish(device)
                    sync()
                    per_clip.append(time.perf_counter() - t)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=acts) as prof:
                for d in decoded:
                    d.finish(device)
                sync()
            kernels = kernel_table(prof, len(decoded)) if device == "cuda" else []
            res[variant] = {"warm_s": round(warm_s, 2), "equal_to_eager": equal,
                            "ms_per_clip_median": round(statistics.median(per_clip) * 1e3, 2),
                            "ms_per_clip_range": [round(min(per_clip) * 1e3, 2), round(max(per_clip) * 1e3, 2)],
                            "gpu_kernel_ms_per_clip": round(sum(k["ms_per_clip"] for k in kernel_table(prof, len(decoded), 10 ** 6)), 3)
                            if device == "cuda" else None,
                            "kernels": kernels}
            RUN.log(f"{variant}: {res[variant]}")
        finally:
            video_colour.reset_compiled()
        RUN.results["finish"] = res
        RUN.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
