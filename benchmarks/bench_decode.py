"""Video decode benchmark: 16-frame sampling of a 30 s 1936x1220 30 fps H.264 clip, sparse vs full.

    python benchmarks/bench_decode.py [--clip PATH] [--runs 7] [--json OUT]

Generates (once, cached under --cache) the clip with avcap.video.write_video: GOP 30, ~8 Mbit/s,
x264 preset medium otherwise (3 B-frames, B-pyramid) — a procedural forward-driving dash-cam view
(perspective road texture, lane markings, buildings with parallax, cars, sensor noise), so P/B
frames carry real motion and residuals. Then times, single-threaded decoder
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
from avcap.video import cpu as VC
from avcap.video import index as VI

W, H, FPS, SECONDS, GOP, BITRATE = 1936, 1220, 30, 30, 30, 8_000_000


def _fbm(rng, size: int, octaves: int) -> np.ndarray:
    """Fractal value noise in [0, 1] (size x size, tileable enough for a benchmark)."""
    t = np.zeros((size, size), np.float32)
    for o in range(octaves):
        n = 2 ** (o + 2)
        g = rng.standard_normal((n + 1, n + 1)).astype(np.float32)
        x = np.linspace(0, n, size, endpoint=False)
        i = x.astype(int)
        f = (x - i).astype(np.float32)
        rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
        t += (rows[:, i] * (1 - f) + rows[:, i + 1] * f) / (1.45**o)
    t -= t.min()
    return t / t.max()


class DrivingScene:
    """A procedural forward-driving dash-cam view: textured road with lane markings, verges,
    buildings with parallax, sky, cars at different speeds, sensor noise. Frame i is a pure
    function of (seed, i), so frames can be rendered in parallel."""

    def __init__(self, seed: int = 0, width: int = W, height: int = H, fps: float = FPS):
        rng = np.random.default_rng(seed)
        self.seed, self.W, self.H, self.fps, self.S = seed, width, height, fps, 2048
        self.tex = [_fbm(rng, self.S, 9) for _ in range(4)]  # road, verge, sky, buildings
        self.hz = int(height * 0.45)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.ground = yy > self.hz
        gy, gx = yy[self.ground], xx[self.ground]
        self.z = height * 1.2 / np.maximum(gy - self.hz, 1.0)  # depth of each ground pixel (m)
        self.X = (gx - width / 2) * self.z / (width * 0.6)  # lateral offset (m)
        sy, sx = yy[~self.ground], xx[~self.ground]
        self.ang = (sx - width / 2) / width
        self.sky_y = sy
        self.cars = [(-1.8, 18.0, 0.5, (200, 30, 30)), (1.8, 30.0, -0.3, (30, 60, 200)),
                     (-1.8, 55.0, 0.2, (220, 220, 220)), (5.4, 40.0, -12.0, (40, 40, 40))]

    def frame(self, i: int) -> np.ndarray:
        S, Wd, Hd, hz = self.S, self.W, self.H, self.hz
        road_t, verge_t, sky_t, bld_t = self.tex
        t = i / self.fps
        fwd, sway = t * 15.0, 0.3 * np.sin(t * 0.7)
        img = np.empty((Hd, Wd, 3), np.float32)
        Xs = self.X + sway
        u = ((Xs * 60) % S).astype(np.int32)
        v = (((self.z + fwd) * 60) % S).astype(np.int32)
        road = np.abs(Xs) < 5.4
        g = np.where(road, 60 + 80 * road_t[v, u], 40 + 150 * verge_t[v, u])
        lane = ((np.abs(np.abs(Xs) - 1.8) < 0.08) & (((self.z + fwd) % 9) < 4.5)) | (np.abs(np.abs(Xs) - 5.3) < 0.1)
        gr = np.stack([np.where(road, g, g * 0.6), g, np.where(road, g * 1.05, g * 0.45)], -1)
        gr[lane] = 235
        img[self.ground] = gr
        sign = np.sign(self.ang)
        su = ((self.ang * 900 + t * 3) % S).astype(np.int32)
        sv = ((self.sky_y * 0.7) % S).astype(np.int32)
        bh = (0.4 + 0.6 * bld_t[7, ((self.ang * 400 + sign * t * 40) % S).astype(np.int32)]) * hz * 0.85
        isb = (hz - self.sky_y) < bh
        sk = 140 + 100 * sky_t[sv, su]
        bt = 40 + 190 * bld_t[((self.sky_y * 4) % S).astype(np.int32), ((self.ang * 2400 + sign * t * 160) % S).astype(np.int32)]
        img[~self.ground] = np.stack([np.where(isb, bt, sk * 0.8), np.where(isb, bt * 0.95, sk * 0.9),
                                      np.where(isb, bt * 0.9, sk * 1.1)], -1)
        for lx, d0, vel, col in self.cars:
            d = d0 + vel * t if vel > -5 else (d0 + vel * t) % 80 + 5
            d = max(d, 4.0)
            yb, w, h = hz + Hd * 1.2 / d, 1.9 * Wd * 0.6 / d, 1.5 * Wd * 0.6 / d
            xc = Wd / 2 + (lx - sway) * Wd * 0.6 / d
            y0, y1, x0, x1 = int(yb - h), int(yb), int(xc - w / 2), int(xc + w / 2)
            if y1 > 0 and x1 > 0 and x0 < Wd and y0 < Hd:
                img[max(y0, 0):min(y1, Hd), max(x0, 0):min(x1, Wd)] = col
                img[max(y0, 0):max(min(y0 + int(h * 0.35), Hd), 0), max(x0 + int(w * 0.1), 0):min(x1 - int(w * 0.1), Wd)] = (30, 40, 50)
        img += np.random.default_rng((self.seed, i)).normal(0, 2.0, (Hd, Wd, 1)).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


_SCENE = None


def _render(i: int) -> np.ndarray:
    global _SCENE
    if _SCENE is None:
        _SCENE = DrivingScene()
    return _SCENE.frame(i)


def scene_frames(n: int = FPS * SECONDS, workers: int | None = None):
    """Frames 0..n-1 of the default DrivingScene, rendered by a process pool, in order."""
    import multiprocessing as mp

    workers = workers or max(1, min(16, (os.cpu_count() or 2) - 1))
    if workers == 1:
        yield from (_render(i) for i in range(n))
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_render, range(n), chunksize=4)


def make_clip(path: Path) -> None:
    t = time.perf_counter()
    V.write_video(path, scene_frames(), FPS, gop=GOP, bitrate=BITRATE, preset="medium")
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


def sparse_decode(path: Path, nframes: int, stats: dict | None = None) -> tuple[list[int], list[np.ndarray]]:
    c = VI.open_video(path)
    try:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        index = VI.build_index(path, c, s)
        info = VI.info_from(path, s, index)
        idx = V.plan_sampling(info, nframes=nframes).frame_indices
        got = VC.decode_sparse(path, c, s, index, idx, stats)
    finally:
        c.close()
    return idx, [got[i] for i in idx]


def keyframes_only(path: Path, pts: list[int]) -> None:
    """Lower bound for any exact decoder: decode just the keyframe each sampled frame starts from."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        for p in pts:
            s.codec_context.flush_buffers()
            c.seek(p, stream=s, backward=True)
            for pkt in c.demux(s):
                if pkt.size:
                    s.codec_context.decode(pkt)
                    list(s.codec_context.decode(None))
                    break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, help="Use this clip instead of generating one.")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "avcap-bench")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--json", type=Path, help="Also write the figures as JSON here.")
    ap.add_argument("--make-only", action="store_true", help="Only generate the clip (uses all cores), then exit.")
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
    if a.make_only:
        return
    info = V.probe(clip)
    mbit = clip.stat().st_size * 8 / info.duration / 1e6
    c = VI.open_video(clip)
    index = VI.build_index(clip, c, c.streams.video[0])
    c.close()
    stats: dict = {}
    idx, sparse = sparse_decode(clip, a.nframes, stats)
    full = full_decode(clip, idx, rgb_all=False)
    identical = all(np.array_equal(x, y) for x, y in zip(sparse, full))
    order = sorted(range(len(index.pts)), key=index.pts.__getitem__)
    import bisect

    keypos = [d for d, k in enumerate(index.key) if k]
    start_pts = sorted({index.pts[keypos[bisect.bisect_right(keypos, order[i]) - 1]] for i in idx})

    def index_pass():
        c = VI.open_video(clip)
        try:
            VI.build_index(clip, c, c.streams.video[0])
        finally:
            c.close()

    methods = {
        "sparse": lambda: sparse_decode(clip, a.nframes),
        "full": lambda: full_decode(clip, idx, rgb_all=False),
        "full_rgb": lambda: full_decode(clip, idx, rgb_all=True),
        "load_video": lambda: V.load_video(clip, nframes=a.nframes, max_pixels=360000),
        "index_pass": index_pass,
        "keyframes_only": lambda: keyframes_only(clip, start_pts),
    }
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(a.runs):  # interleaved, so drift in machine speed hits every method alike
        for k, fn in methods.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    medc = {k: statistics.median(v) for k, v in cpu.items()}
    vf = V.load_video(clip, nframes=a.nframes, max_pixels=360000)
    r = {
        "clip": f"{info.width}x{info.height}, {info.fps:g} fps, {info.total_frames} frames, {info.duration:.1f} s, "
                f"{mbit:.2f} Mbit/s, {sum(index.key)} keyframes, {sum(index.nonref)} non-reference frames",
        "nframes": a.nframes,
        "frame_indices": idx,
        "sparse_packets_decoded": stats.get("packets_decoded"),
        "sparse_packets_skipped_nonref": stats.get("packets_skipped"),
        "sparse_groups": stats.get("groups"),
        "wall_s": med,
        "cpu_s": medc,
        "resized": f"{vf.resized_width}x{vf.resized_height}",
        "full_decode_fps": info.total_frames / med["full"],
        "sparse_sampled_frames_per_s": a.nframes / med["sparse"],
        "speedup_vs_full": med["full"] / med["sparse"],
        "speedup_vs_full_rgb": med["full_rgb"] / med["sparse"],
        "speedup_vs_full_cpu": medc["full"] / medc["sparse"],
        "identical_to_full_decode": identical,
        "runs": a.runs,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(r, indent=2))
    print(
        f"\nfull decode {med['full']:.3f} s/video ({r['full_decode_fps']:.0f} frames/s) | full+rgb {med['full_rgb']:.3f} s | "
        f"sparse {med['sparse']:.3f} s/video, cpu {medc['sparse']:.3f} s (index pass {med['index_pass']:.3f} s; "
        f"{r['sparse_packets_decoded']} packets decoded) | speed-up {r['speedup_vs_full']:.1f}x "
        f"(cpu {r['speedup_vs_full_cpu']:.1f}x, vs full+rgb {r['speedup_vs_full_rgb']:.1f}x) | "
        f"keyframes-only lower bound {med['keyframes_only']:.3f} s | load_video incl. resize {med['load_video']:.3f} s | "
        f"identical: {identical}",
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
