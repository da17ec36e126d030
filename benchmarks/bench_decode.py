"""Video decode benchmark: 16-frame sampling of a 30 s 1936x1220 30 fps H.264 clip, sparse vs full.

    python benchmarks/bench_decode.py [--clip PATH] [--runs 5] [--json OUT]

Generates (once, cached under --cache) the clip with avcap.video.write_video: GOP 30, ~8 Mbit/s,
x264 defaults otherwise (3 B-frames, B-pyramid) — a panning textured road-like scene with moving
blocks and sensor noise, so P/B-frames carry real residuals. Then times, single-threaded decoder
(thread_count=1; pin the process with `taskset -c 0` for a strict one-core figure):

* full      — decode every frame, convert the 16 sampled ones to RGB (the strongest full-decode baseline)
* full+rgb  — decode every frame and convert every frame to RGB (what torchvision.io.read_video did
              for qwen-vl-utils)
* sparse    — avcap.video.load_video's decode path (index pass + keyframe seeks + reference frames only)
* sparse+resize — the whole load_video call (also resizes the 16 frames to 736x448, bicubic antialias)

and checks that sparse frames equal full-decode frames bit for bit. Reports the median of --runs.
Not a test: run it by hand; figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from avcap import video as V

W, H, FPS, SECONDS, GOP, BITRATE = 1936, 1220, 30, 30, 30, 8_000_000


def scene_frames(n: int = FPS * SECONDS, seed: int = 0):
    rng = np.random.default_rng(seed)
    # a wide smooth texture the camera pans over, plus a road, moving "cars", and sensor noise
    tex_w = W + 4 * n
    base = rng.integers(0, 256, (H // 8 + 1, tex_w // 8 + 1, 3), dtype=np.uint8)
    tex = np.repeat(np.repeat(base, 8, 0), 8, 1)[:H, :tex_w]
    tex = ((tex.astype(np.uint16) + np.roll(tex, 4, 1) + np.roll(tex, 4, 0) + np.roll(tex, (4, 4), (0, 1))) // 4).astype(np.uint8)
    yy = np.arange(H)[:, None]
    for i in range(n):
        f = tex[:, 4 * i : 4 * i + W].copy()
        f[H // 2 :] = (f[H // 2 :] // 3 + 60).astype(np.uint8)  # road
        for k in range(6):  # cars
            x = int((i * (3 + k) + k * 300) % (W - 200))
            y = H // 2 + 40 + 60 * k
            f[y : y + 120, x : x + 200] = (40 * k, 255 - 30 * k, 128)
        f = f.astype(np.int16) + rng.integers(-6, 7, (H, W, 1), dtype=np.int16)
        yield np.clip(f, 0, 255).astype(np.uint8)


def make_clip(path: Path) -> None:
    t = time.perf_counter()
    V.write_video(path, scene_frames(), FPS, gop=GOP, bitrate=BITRATE, preset="veryfast")
    print(f"wrote {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)


def full_decode(path: Path, indices: list[int], rgb_all: bool) -> list[np.ndarray]:
    import av

    want = set(indices)
    got = {}
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        for i, fr in enumerate(c.decode(s)):
            if rgb_all:
                a = fr.to_ndarray(format="rgb24")
                if i in want:
                    got[i] = a
            elif i in want:
                got[i] = fr.to_ndarray(format="rgb24")
    return [got[i] for i in indices]


def sparse_decode(path: Path, nframes: int) -> tuple[list[int], list[np.ndarray]]:
    c = V._open(path)
    try:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        index = V._build_index(path, c, s)
        info = V._info_from(path, s, index)
        idx = V.plan_sampling(info, nframes=nframes).frame_indices
        got = V._decode_sparse(path, c, s, index, idx)
    finally:
        c.close()
    return idx, [got[i] for i in idx]


def timed(fn, runs: int):
    ts = []
    out = None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, help="Use this clip instead of generating one.")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "avcap-bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--json", type=Path, help="Also write the figures as JSON here.")
    a = ap.parse_args()

    import av
    import torch

    torch.set_num_threads(1)
    clip = a.clip
    if clip is None:
        clip = a.cache / f"bench_{W}x{H}_{FPS}fps_{SECONDS}s_gop{GOP}.mp4"
        if not clip.exists():
            a.cache.mkdir(parents=True, exist_ok=True)
            make_clip(clip)
    info = V.probe(clip)
    mbit = clip.stat().st_size * 8 / info.duration / 1e6
    c = V._open(clip)
    index = V._build_index(clip, c, c.streams.video[0])
    c.close()
    n_key = sum(index.key)
    n_nonref = sum(index.nonref)

    t_sparse, (idx, sparse) = timed(lambda: sparse_decode(clip, a.nframes), a.runs)
    t_full, full = timed(lambda: full_decode(clip, idx, rgb_all=False), a.runs)
    t_full_rgb, _ = timed(lambda: full_decode(clip, idx, rgb_all=True), max(1, a.runs // 2))
    t_load, vf = timed(lambda: V.load_video(clip, nframes=a.nframes, max_pixels=360000), a.runs)
    identical = all(np.array_equal(x, y) for x, y in zip(sparse, full))

    r = {
        "clip": f"{info.width}x{info.height}, {info.fps:g} fps, {info.total_frames} frames, {info.duration:.1f} s, "
                f"{mbit:.2f} Mbit/s, {n_key} keyframes, {n_nonref} non-reference frames",
        "nframes": a.nframes,
        "frame_indices": idx,
        "full_s": t_full,
        "full_rgb_s": t_full_rgb,
        "sparse_s": t_sparse,
        "load_video_s": t_load,
        "resized": f"{vf.resized_width}x{vf.resized_height}",
        "full_decode_fps": info.total_frames / t_full,
        "sparse_sampled_frames_per_s": a.nframes / t_sparse,
        "speedup_vs_full": t_full / t_sparse,
        "speedup_vs_full_rgb": t_full_rgb / t_sparse,
        "identical_to_full_decode": identical,
        "runs": a.runs,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(r, indent=2))
    print(
        f"\nfull decode {t_full:.3f} s/video ({r['full_decode_fps']:.0f} frames/s) | full+rgb {t_full_rgb:.3f} s | "
        f"sparse {t_sparse:.3f} s/video ({r['sparse_sampled_frames_per_s']:.0f} sampled frames/s) | "
        f"speed-up {r['speedup_vs_full']:.1f}x (vs full+rgb {r['speedup_vs_full_rgb']:.1f}x) | "
        f"load_video incl. resize {t_load:.3f} s | identical: {identical}",
        file=sys.stderr,
    )
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
