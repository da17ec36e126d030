"""Probe: NVDEC through NVIDIA's own parser (FFmpeg's h264_cuvid) against PyAV's CUDA hwaccel.

    python3 benchmarks/bench_cuvid.py --clips DIR [--runs 5] [--threads 1,2,4] [--seconds 10] [--json OUT]

The hwaccel path (`avcap.video` decoder="nvdec") keeps FFmpeg's software H.264 parser and waits
for each picture before the next is sent (~0.6 clips/s per worker process beside the model, ~9
clips/s for the whole GPU whatever the worker count: benchmarks/RESULTS.md). h264_cuvid queues
several pictures on the hardware before mapping the first. For the first clips of DIR (16
frames, the caption benchmark's sampling), one process:

* diagnose    which cuvid set-up opens (`open_cuvid`), with FFmpeg's log
* parity      full-size RGB of the 16 sampled frames, cuvid vs the CPU decoder (must be 0)
* per clip    seconds per clip, sparse decode, hwaccel (NV12 copies on the GPU) vs cuvid
              (median of --runs; a new decoder per clip, as the engine's workers make); also
              cuvid fed all seek groups without flushes (`continuous_sparse`)
* flush       seconds per `flush_buffers()` of a cuvid decoder (done between seek groups)
* threads     clips/s with N threads of this process decoding at once (cuvid), the GIL shared

Result (runs 33-36, benchmarks/RESULTS.md): exact, but it opens only with a CUDA context of its
own (frames to system memory), and it is slower than the hwaccel per clip (0.74 s fed without
flushes, 4.7 s with, against 0.55 s). Not a test; figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from avcap import video as V
from avcap.video import cpu as VC
from avcap.video import index as VI
from avcap.video import nvdec as VN

LOAD_KW = dict(nframes=16, max_pixels=360000, factor=32)


CONTINUOUS = False  # --continuous: no flush between seek groups (continuous_sparse)
VARIANT = "current"  # how the cuvid decoder is set up (see open_cuvid); --variant / the first that opens


def open_cuvid(path: Path, stream, variant: str | None = None):
    """An h264_cuvid decoder for `stream`. "current" = the device avcap's NVDEC path uses (torch's
    context, made current: `avcap.video.nvdec.hwaccel`), frames on the GPU; "nosize" = the same
    without width/height; "primary" = PyAV's default CUDA device (its own retain of the primary
    context); "sysmem" = no hwaccel: cuvid makes a CUDA context of its own and frames come to
    system memory."""
    import av
    from av.codec.hwaccel import HWAccel

    variant = variant or VARIANT
    hw = {"current": VN.hwaccel, "nosize": VN.hwaccel, "sysmem": lambda path: None,
          "primary": lambda path: HWAccel("cuda", device="0", allow_software_fallback=False, is_hw_owned=True)}
    cc = av.CodecContext.create("h264_cuvid", "r", hwaccel=hw[variant](path))
    cc.extradata = stream.codec_context.extradata
    if variant != "nosize":
        cc.width, cc.height = stream.codec_context.width, stream.codec_context.height
    cc.open()
    return cc


def diagnose(path: Path) -> dict:
    """Which set-up opens and decodes, each with FFmpeg's log (verbose) kept."""
    import av.logging

    out = {}
    for variant in ("current", "nosize", "primary", "sysmem"):
        with av.logging.Capture() as logs:
            old = av.logging.get_level()
            av.logging.set_level(av.logging.VERBOSE)
            try:
                container = VI.open_video(path)
                try:
                    stream = container.streams.video[0]
                    cc = open_cuvid(path, stream, variant)
                    n = 0
                    for packet in container.demux(stream):
                        n += len(cc.decode(packet))
                        if n >= 3:
                            break
                    out[variant] = {"ok": True, "frames": n}
                finally:
                    container.close()
            except Exception as exc:  # the point: record why
                out[variant] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                av.logging.set_level(old)
        out[variant]["log"] = [f"{lvl}:{name}: {msg.strip()}" for lvl, name, msg in logs][-12:]
    return out


def sysmem_nv12(frame) -> VN.NV12:
    """A system-memory NV12 frame (cuvid without hwaccel) as CPU torch planes."""
    import torch

    a = torch.from_numpy(frame.to_ndarray())  # (H * 3/2) x W
    h, w = frame.height, frame.width
    return VN.NV12(a[:h], a[h:].view(h // 2, w // 2, 2), frame.colorspace, frame.color_range, h, w)


PRIMARY_FIRST = """
import sys, av
from av.codec.hwaccel import HWAccel
c = av.open(sys.argv[1]); s = c.streams.video[0]
cc = av.CodecContext.create("h264_cuvid", "r", hwaccel=HWAccel("cuda", device="0", allow_software_fallback=False,
                            is_hw_owned=True, options={"primary_ctx": "1"}))
cc.extradata = s.codec_context.extradata
cc.open()
frames = []
for packet in c.demux(s):
    frames += cc.decode(packet)
    if frames:
        break
import torch  # after FFmpeg retained the primary context: torch uses the same one
y = torch.from_dlpack(frames[0].planes[0].__dlpack__(stream=None))
print("ok", frames[0].format.name, tuple(y.shape), int(y.float().sum().item()))
"""


def primary_first(path: Path) -> dict:
    """Does h264_cuvid with GPU frames work when FFmpeg retains the primary context before torch?"""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", PRIMARY_FIRST, str(path)], capture_output=True, text=True, timeout=120)
    return {"rc": r.returncode, "out": r.stdout.strip()[-400:], "err": r.stderr.strip()[-800:]}


def continuous_sparse(path: Path, container, stream, index, indices, convert, cc) -> dict[int, object]:
    """`_decode_sparse`'s packets (each target's reference chain from its keyframe), fed to one
    decoder without a flush between groups: every group starts at an IDR picture, which resets the
    decoder's references by itself (checked; a group that does not start at one stops the probe).
    For cuvid a flush destroys and re-creates the hardware decoder."""
    targets, groups = VI.seek_groups(index, indices)
    want = {index.pts[d]: i for d, i in targets.items()}
    pos_of_pts = {p: d for d, p in enumerate(index.pts)}
    nal_len = VI.nal_length_size(stream.codec_context.extradata)
    got: dict[int, object] = {}

    def take(frames):
        for frame in frames:
            if frame.pts in want:
                converted = convert(frame)
                for i in want[frame.pts]:
                    got[i] = converted

    for start, end in groups:
        container.seek(index.dts[start] if index.dts[start] is not None else index.pts[start], stream=stream,
                       backward=True, any_frame=False)
        first = True
        for packet in container.demux(stream):
            d = pos_of_pts.get(packet.pts) if packet.size else None
            if d is None or d < start:
                continue
            if d > end:
                break
            if first:
                if d != start or not VI.h264_is_idr(memoryview(packet), nal_len):
                    raise RuntimeError(f"{path}: group at {start} does not start at an IDR picture")
                first = False
            if index.nonref[d] and d not in targets:
                continue
            take(cc.decode(packet))
    take(cc.decode(None))
    return got


def sparse_nv12(path: Path, cuvid: bool, stats: dict | None = None) -> dict[int, object]:
    """The sampled frames' NV12 copies (on the GPU; cuvid "sysmem": in system memory), decoded by
    hwaccel or cuvid."""
    container = VI.open_video(path, None if cuvid else VN.hwaccel(path))
    try:
        stream = container.streams.video[0]
        cc = open_cuvid(path, stream) if cuvid else None
        index = VI.build_index(path, container, stream)
        plan = V.plan_sampling(VI.info_from(path, stream, index), **LOAD_KW)
        convert = sysmem_nv12 if cuvid and VARIANT == "sysmem" else (lambda frame: VN.copy_frame(path, frame))
        if cuvid and CONTINUOUS:
            got = continuous_sparse(path, container, stream, index, plan.frame_indices, convert, cc)
        else:
            got = VC.decode_sparse(path, container, stream, index, plan.frame_indices, stats=stats,
                                   convert=convert, cc=cc)
    finally:
        container.close()
    if len(got) != len(set(plan.frame_indices)):
        raise RuntimeError(f"{path}: {len(got)} of {len(set(plan.frame_indices))} frames decoded")
    return got


def parity(path: Path) -> dict:
    import torch

    got = sparse_nv12(path, cuvid=True)
    ref = dict(zip(sorted(got), V.decode_frames(path, sorted(got))))
    worst = 0
    for i, f in got.items():
        rgb = VN.rgb_from_nv12(path, f.y, f.uv, f.colorspace, f.color_range, f.height, f.width)
        mine = rgb.permute(1, 2, 0).cpu().numpy()
        worst = max(worst, int(np.abs(mine.astype(int) - ref[i].astype(int)).max()))
    torch.cuda.synchronize()
    return {"clip": path.name, "frames": len(got), "rgb_max_abs_diff": worst}


def per_clip(clips: list[Path], cuvid: bool, runs: int) -> dict:
    ts, stats = [], {}
    for k in range(runs):
        t = time.perf_counter()
        sparse_nv12(clips[k % len(clips)], cuvid, stats)
        ts.append(time.perf_counter() - t)
    return {"s_per_clip": round(statistics.median(ts), 4), "all": [round(x, 4) for x in ts], **stats}


def flush_cost(path: Path, n: int = 5) -> float:
    container = VI.open_video(path)
    try:
        stream = container.streams.video[0]
        cc = open_cuvid(path, stream)
        for packet in container.demux(stream):  # a sequence header seen: the decoder exists
            cc.decode(packet)
            break
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            cc.flush_buffers()
            ts.append(time.perf_counter() - t)
    finally:
        container.close()
    return round(statistics.median(ts), 5)


def threads_rate(clips: list[Path], n: int, seconds: float) -> dict:
    done = [0] * n
    stop = threading.Event()
    errors: list[str] = []

    def run(k: int) -> None:
        j = k
        while not stop.is_set():
            try:
                sparse_nv12(clips[j % len(clips)], cuvid=True)
            except Exception as exc:  # recorded, not fatal: the probe reports it
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            done[k] += 1
            j += n

    workers = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    out = {"threads": n, "clips_per_s": round(sum(done) / (time.perf_counter() - t), 2)}
    if errors:
        out["errors"] = errors[:3]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--continuous", action="store_true", help="thread rates without flushes between groups")
    ap.add_argument("--variant", default=None, help="cuvid set-up (open_cuvid); default: the first that opens")
    a = ap.parse_args()
    import av
    import torch

    clips = sorted(a.clips.glob("*.mp4")) if a.clips.is_dir() else [a.clips]
    out: dict = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0),
                 "python": platform.python_version(), "torch": torch.__version__, "pyav": av.__version__,
                 "clips": len(clips), "load_video": LOAD_KW}

    def save() -> None:
        print(json.dumps(out), flush=True)
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))

    global VARIANT
    out["diagnose"] = diagnose(clips[0])
    ok = [v for v, r in out["diagnose"].items() if r["ok"]]
    save()
    if not ok:
        return
    VARIANT = a.variant or ok[0]
    out["variant"] = VARIANT
    out["primary_first"] = primary_first(clips[0])
    save()
    out["parity"] = [parity(c) for c in clips[:2]]
    save()
    sparse_nv12(clips[0], cuvid=False)  # warm both paths
    out["hwaccel"] = per_clip(clips, False, a.runs)
    out["cuvid"] = per_clip(clips, True, a.runs)
    global CONTINUOUS
    CONTINUOUS = True
    try:
        out["parity_continuous"] = [parity(c) for c in clips[:2]]
        out["cuvid_continuous"] = per_clip(clips, True, a.runs)
    except Exception as exc:  # recorded: the NVIDIA parser may not take the stream this way
        out["continuous_error"] = f"{type(exc).__name__}: {exc}"
    CONTINUOUS = a.continuous
    out["cuvid_flush_s"] = flush_cost(clips[0])
    save()
    out["cuvid_threads"] = [threads_rate(clips, int(n), a.seconds) for n in a.threads.split(",") if n]
    save()


if __name__ == "__main__":
    main()
