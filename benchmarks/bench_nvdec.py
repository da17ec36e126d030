"""Probe: can NVDEC (PyAV's bundled FFmpeg, hwaccel "cuda") lift the CPU decode ceiling of the
2B caption run? Times 16-frame sampling of bench_decode.py's 30 s 1936x1220 30 fps H.264 clip.

    python3 benchmarks/bench_nvdec.py [--clip PATH] [--runs 5] [--procs 8] [--json OUT]

* cpu sparse  — avcap.video.decode_frames (one thread): the path avcap uses today
* nvdec full  — decode every frame on NVDEC (the hardware decodes every picture in order), the 16
                sampled ones downloaded to system memory as RGB
* nvdec seek  — seek to the keyframe before each sampled frame and decode forward to it on NVDEC
* nvdec procs — `--procs` processes decoding the clip at once (nvdec seek): clips/s for the machine

Checks the luma plane of every sampled frame against the software decoder's (NVDEC is bit-exact
for conformant H.264 in principle; the RGB conversion may differ). Not a test; figures go to
benchmarks/RESULTS.md.

    python3 benchmarks/bench_nvdec.py --load-video [--clip PATH|DIR] [--real PATH] [--runs 5]
                                      [--loaders nvdec:p12,cpu:p16,nvdec+cpu:10:p5,...] [--json OUT]

measures avcap's own paths instead: `avcap.video.load_video(decoder="nvdec")` against
`decoder="cpu"` (16 frames, max_pixels 360000 -> 736x448, the caption benchmark's settings):
per-clip seconds (median of --runs, one process, decoder thread_count 1), clips/s through the
engine's `FrameLoader` in each --loaders set-up ("<decoder>:<t|p><workers>": threads or worker
processes; "nvdec+cpu:<nvdec workers>:<t|p><cpu workers>"; distinct file names, so every video is
decoded anew; a --clip directory cycles through its .mp4 files), CPU seconds per clip (this
process, worker processes), GPU memory the workers hold, and parity — full-size RGB (our NV12
colour conversion vs swscale's) and the final resized uint8 frames — on the clip and on --real
footage (a single --clip only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from avcap import video as V  # noqa: E402
from avcap.video import cpu as VC  # noqa: E402
from avcap.video import index as VI  # noqa: E402
from avcap.video import nvdec as VN  # noqa: E402


HW_OWNED = False  # --hw-owned: frames stay in GPU memory (DLPack), only the sampled ones are read


def _hw():
    from av.codec.hwaccel import HWAccel

    return HWAccel(device_type="cuda", allow_software_fallback=False, is_hw_owned=HW_OWNED)


def _take(fr, fmt: str):
    """The sampled frame: RGB/YUV in system memory, or (--hw-owned) its NV12 planes as GPU tensors
    (luma first), synchronised so the timing includes the copy."""
    if not HW_OWNED:
        return fr.to_ndarray(format=fmt)
    import torch

    planes = [torch.from_dlpack(p.__dlpack__(stream=None)).clone() for p in fr.planes]  # capsule: PyAV syncs itself
    torch.cuda.synchronize()
    return planes


def _index(path: Path):
    c = VI.open_video(path)
    try:
        s = c.streams.video[0]
        index = VI.build_index(path, c, s)
        info = VI.info_from(path, s, index)
    finally:
        c.close()
    return index, V.plan_sampling(info, nframes=16).frame_indices


def nvdec_full(path: Path, indices: list[int], fmt: str = "rgb24") -> list[np.ndarray]:
    import av

    want, got = set(indices), {}
    with av.open(str(path), hwaccel=_hw()) as c:
        s = c.streams.video[0]
        for i, fr in enumerate(c.decode(s)):
            if i in want:
                got[i] = _take(fr, fmt)
            if len(got) == len(want):
                break
    return [got[i] for i in indices]


def nvdec_seek(path: Path, indices: list[int], index=None, fmt: str = "rgb24") -> list[np.ndarray]:
    """Seek to the keyframe at or before each target, decode forward (presentation order by pts)."""
    import av

    index = index or _index(path)[0]
    pts_of = {i: index.pts[i] for i in indices}
    got: dict[int, np.ndarray] = {}
    with av.open(str(path), hwaccel=_hw()) as c:
        s = c.streams.video[0]
        by_pts = {p: i for i, p in pts_of.items()}
        for i in indices:
            if i in got:
                continue
            c.seek(pts_of[i], stream=s, backward=True)
            for fr in c.decode(s):
                if fr.pts in by_pts and by_pts[fr.pts] not in got:
                    got[by_pts[fr.pts]] = _take(fr, fmt)
                if fr.pts is not None and fr.pts >= pts_of[i]:
                    break
    return [got[i] for i in indices]


def _one(path: str, hw_owned: bool = False) -> float:
    global HW_OWNED
    HW_OWNED = hw_owned
    t = time.perf_counter()
    idx = _index(Path(path))
    nvdec_seek(Path(path), idx[1], idx[0])
    return time.perf_counter() - t


def median_time(fn, runs: int) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="/tmp/avcap-nvdec/clip.mp4")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--hw-owned", action="store_true", help="keep NVDEC frames on the GPU (DLPack), no RGB check")
    a = ap.parse_args()
    global HW_OWNED
    HW_OWNED = a.hw_owned
    from av.codec.hwaccel import hwdevices_available

    import bench_decode

    clip = Path(a.clip)
    if clip.is_dir():  # (this path once set `out` before it existed)
        raise SystemExit(f"{clip}: a directory; this mode times one clip (--load-video takes a directory)")
    if not clip.exists():
        clip.parent.mkdir(parents=True, exist_ok=True)
        bench_decode.make_clip(clip)
    index, idx = _index(clip)
    out: dict = {"clip": str(clip), "hwdevices": list(hwdevices_available()), "frames": idx}
    ref_rgb = V.decode_frames(clip, idx)
    out["cpu_sparse_s"] = median_time(lambda: V.decode_frames(clip, idx), a.runs)
    try:
        full = nvdec_full(clip, idx)
    except Exception as exc:  # no NVDEC in this FFmpeg / no GPU: say so and stop
        out["nvdec_error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out, indent=1))
        return
    seek = nvdec_seek(clip, idx, index)
    if a.hw_owned:  # luma planes on the GPU vs the software decoder's luma
        import av

        soft = {}
        with av.open(str(clip)) as c:
            for i, fr in enumerate(c.decode(c.streams.video[0])):
                if i in set(idx):
                    soft[i] = fr.to_ndarray(format="yuv420p")[: fr.height]
                if len(soft) == len(idx):
                    break
        out["luma_equal"] = all(np.array_equal(f[0].cpu().numpy()[: soft[i].shape[0], : soft[i].shape[1]], soft[i])
                                for f, i in zip(seek, idx))
        full = seek = None
    out["nvdec_full_s"] = median_time(lambda: nvdec_full(clip, idx), a.runs)
    out["nvdec_seek_s"] = median_time(lambda: nvdec_seek(clip, idx, index), a.runs)
    if a.hw_owned:
        return _procs(out, clip, a)
    out["rgb_max_abs_diff_full"] = int(max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(full, ref_rgb)))
    out["rgb_max_abs_diff_seek"] = int(max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(seek, ref_rgb)))
    out["rgb_mean_abs_diff_full"] = float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(full, ref_rgb)]))
    # luma: NVDEC frames as yuv420p vs the software decoder's
    import av

    soft_y = {}
    with av.open(str(clip)) as c:
        want = set(idx)
        for i, fr in enumerate(c.decode(c.streams.video[0])):
            if i in want:
                soft_y[i] = fr.to_ndarray(format="yuv420p")[: fr.height]
            if len(soft_y) == len(want):
                break
    hw_y = nvdec_full(clip, idx, fmt="yuv420p")
    out["luma_equal"] = all(np.array_equal(h[: soft_y[i].shape[0]], soft_y[i]) for h, i in zip(hw_y, idx))
    _procs(out, clip, a)


def _procs(out: dict, clip: Path, a) -> None:
    print(json.dumps(out), flush=True)
    import multiprocessing as mp

    for procs in sorted({1, a.procs}):  # spawn: a forked child cannot use the parent's CUDA state
        with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_one, [str(clip)] * procs, [a.hw_owned] * procs))  # warm-up: CUDA contexts
            t = time.perf_counter()
            n = procs * 4
            list(pool.map(_one, [str(clip)] * n, [a.hw_owned] * n))
            out[f"nvdec_seek_clips_per_s_{procs}procs"] = n / (time.perf_counter() - t)
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


# ----------------------------------------------------------------------------- avcap.video decoder="nvdec"

LOAD_KW = dict(nframes=16, max_pixels=360000, factor=32)


def _diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs_diff": int(d.max()), "mean_abs_diff": float(d.mean()), "frac_differing": float((d > 0).mean())}


def full_size_parity(path: Path) -> dict:
    """Full-size RGB of the 16 sampled frames: NVDEC + our NV12 conversion (on the GPU) vs the
    software decoder + swscale (avcap's CPU path), and the colour tags both decoders report."""
    hw = VN.hwaccel(path)
    got = {}
    for mode in ("cpu", "nvdec"):
        c = VI.open_video(path, hw if mode == "nvdec" else None)
        try:
            s = c.streams.video[0]
            index = VI.build_index(path, c, s)
            idx = V.plan_sampling(VI.info_from(path, s, index), **LOAD_KW).frame_indices
            tags = []

            def convert(fr, mode=mode, tags=tags):
                tags.append((int(fr.colorspace), int(fr.color_range)))
                if mode == "cpu":
                    return VC.to_rgb(fr)
                y, uv = VN.surface_planes(path, fr)
                rgb = VN.rgb_from_nv12(path, y, uv, fr.colorspace, fr.color_range, fr.height, fr.width)
                return rgb.permute(1, 2, 0).contiguous().cpu().numpy()

            frames = VC.decode_sparse(path, c, s, index, idx, convert=convert)
        finally:
            c.close()
        got[mode] = (np.stack([frames[i] for i in idx]), sorted(set(tags)))
    out = _diff(got["nvdec"][0], got["cpu"][0])
    out.update(colour_tags_cpu=got["cpu"][1], colour_tags_nvdec=got["nvdec"][1], frames=len(got["cpu"][0]),
               size=list(got["cpu"][0].shape[1:3]))
    return out


def resized_parity(path: Path) -> dict:
    a = V.load_video(path, decoder="cpu", **LOAD_KW)
    b = V.load_video(path, decoder="nvdec", **LOAD_KW)
    assert a.frame_indices == b.frame_indices and a.frames.shape == b.frames.shape
    return {**_diff(b.frames, a.frames), "shape": list(a.frames.shape), "notes_cpu": a.notes, "notes_nvdec": b.notes}


def _names(clip: Path, root: Path, count: int, tag: str) -> list[str]:
    """`count` distinct names (symlinks) for the clip, or cycling through the .mp4 files of a
    directory (e.g. bench_gpu.py's synth clips), so no video is served from the loader's cache."""
    sources = sorted(clip.glob("*.mp4")) if clip.is_dir() else [clip]
    d = root / tag
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        p = d / f"v{k:04d}.mp4"
        if not p.exists():
            p.symlink_to(sources[k % len(sources)].resolve())
        out.append(str(p))
    return out


def _gpu_used_mib() -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def loader_spec(spec: str) -> dict:
    """FrameLoader keywords of a --loaders entry: "<decoder>:<t|p><workers>" (threads or worker
    processes), or "nvdec+cpu:<nvdec workers>:<t|p><cpu workers>"; a trailing ":gpu" makes the CPU
    decoders hand their pictures over for conversion and resize on this process's GPU
    (`[avcap.engine] resize_on_gpu`)."""
    parts = spec.split(":")
    finish = parts[-1] == "gpu"
    if finish:
        parts = parts[:-1]
    decoder, lane = parts[0], parts[-1]
    kw = {"decoder": decoder, "workers": int(lane[1:]), "processes": lane[0] == "p"}
    if finish:
        kw["finish_device"] = "cuda"
    if decoder == "nvdec+cpu":
        kw["nvdec_workers"] = int(parts[1])
    return kw


def _workers_cpu_s(loader) -> float:
    """User + system CPU seconds of the loader's worker processes so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in loader.worker_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def loader_throughput(clip: Path, spec: str, per_worker: int = 3) -> dict:
    """clips/s through the engine's FrameLoader: warm the workers (spawn, imports, CUDA) on one
    video per worker, then time `per_worker` videos per worker queued at once. CPU seconds per clip
    are this process's (the NVDEC threads' and the loader's; worker processes not included)."""
    import resource

    from avcap.core.config import Vision
    from avcap.engines.frames import FrameLoader

    kw = loader_spec(spec)
    workers = kw["workers"] + kw.get("nvdec_workers", 0)
    vision = Vision(nframes=LOAD_KW["nframes"], max_pixels=LOAD_KW["max_pixels"])
    root = (clip if clip.is_dir() else clip.parent) / "names"
    names = _names(clip, root, workers * (per_worker + 1), spec.replace(":", "-").replace("+", "_"))
    warm, timed = names[:workers], names[workers:]
    parts = lambda ns: [{"type": "video", "video": n} for n in ns]  # noqa: E731
    used0 = _gpu_used_mib()
    loader = FrameLoader(vision, LOAD_KW["factor"], capacity=len(names) + 1, **kw)
    try:
        t = time.perf_counter()
        futs = [loader.future(p) for p in parts(warm)]
        [f.result() for f in futs]
        warm_s = time.perf_counter() - t
        used = _gpu_used_mib()
        before = dict(loader.decoded_by)
        w0 = _workers_cpu_s(loader)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        futs = [loader.future(p) for p in parts(timed)]
        [f.result() for f in futs]
        dt = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        w1 = _workers_cpu_s(loader)
        by = {k: v - before.get(k, 0) for k, v in loader.decoded_by.items()}
    finally:
        loader.close()
        for pool in loader._procs.values():
            pool.shutdown(wait=True)  # workers gone before the next measurement reads GPU memory
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"spec": spec, **kw, "videos": len(timed), "decoded_by": by,
            "seconds": round(dt, 2), "clips_per_s": round(len(timed) / dt, 2), "warmup_s": round(warm_s, 1),
            "this_process_cpu_s_per_clip": round(cpu / len(timed), 3),
            "worker_processes_cpu_s_per_clip": round((w1 - w0) / len(timed), 3),
            "gpu_mib_held_by_workers": round(used - used0)}


def bench_load_video(a) -> None:
    import platform

    import av
    import torch
    import torchvision

    import bench_decode

    clip = Path(a.clip)
    out: dict = {"clip": str(clip), "load_video_kwargs": LOAD_KW, "date": time.strftime("%Y-%m-%d"),
                 "versions": {"python": platform.python_version(), "av": av.__version__,
                              "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
                              "torch": torch.__version__, "torchvision": torchvision.__version__},
                 "gpu": torch.cuda.get_device_name(0), "cpu": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count()}

    def dump():
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
        else:
            print(json.dumps(out), flush=True)

    if clip.is_dir():
        out["clips"] = len(list(clip.glob("*.mp4")))
        a.skip_single = True  # parity and single-clip timings take one clip
    elif not clip.exists():
        clip.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        bench_decode.make_clip(clip)
        out["render_s"] = round(time.perf_counter() - t, 1)
    out["clip_mbytes"] = round(sum(c.stat().st_size for c in (clip.glob("*.mp4") if clip.is_dir() else [clip])) / 1e6, 1)
    torch.zeros(1, device="cuda")  # CUDA context of this process, outside the timings
    if not a.skip_single:
        single(a, clip, out, dump)
    out["frame_loader"] = []
    for spec in a.loaders.split(","):
        out["frame_loader"].append(loader_throughput(clip, spec))
        print(out["frame_loader"][-1], flush=True)
        dump()


def single(a, clip: Path, out: dict, dump) -> None:
    """Parity of nvdec vs cpu frames and one-clip load_video timings."""
    out["parity_full_size_rgb"] = {"clip": full_size_parity(clip)}
    out["parity_resized"] = {"clip": resized_parity(clip)}
    if a.real and Path(a.real).exists():
        out["parity_full_size_rgb"]["real"] = full_size_parity(Path(a.real))
        out["parity_resized"]["real"] = resized_parity(Path(a.real))
    dump()
    for decoder in ("cpu", "nvdec"):
        V.load_video(clip, decoder=decoder, **LOAD_KW)  # warm
        out[f"load_video_{decoder}_s"] = round(median_time(lambda: V.load_video(clip, decoder=decoder, **LOAD_KW), a.runs), 3)
    dump()


if __name__ == "__main__":
    if "--load-video" in sys.argv:
        ap = argparse.ArgumentParser(description="avcap.video load_video decoder=nvdec vs cpu")
        ap.add_argument("--load-video", action="store_true")
        ap.add_argument("--clip", default="/tmp/avcap-nvdec/clip.mp4")
        ap.add_argument("--real", default=None, help="real footage for the parity check (e.g. the udacity clip)")
        ap.add_argument("--runs", type=int, default=5)
        ap.add_argument("--loaders", default="nvdec:p4,nvdec:p8,nvdec:p12,nvdec:t8,cpu:p16",
                        help="FrameLoader set-ups to time (see loader_spec)")
        ap.add_argument("--skip-single", action="store_true", help="no parity checks / single-clip timings")
        ap.add_argument("--json", default=None)
        bench_load_video(ap.parse_args())
    else:
        main()
