"""How much GPU time does a model lose while other processes decode video, and to what?

    python3 benchmarks/bench_decode_interference.py --clips DIR [--procs 10] [--seconds 15]
        [--modes none,cpu,nvdec_decode,nvdec_copy,nvdec] [--json OUT]

Runs 12-17 (benchmarks/RESULTS.md, "Decoding beside the model") found that NVDEC decoding in
other processes costs the 2B model ~20 % of its GPU time whatever the number of processes, and
converting 8 frames per call instead of one did not change that. This separates the causes.

A fixed GPU workload stands in for the model: one CUDA graph of bf16 matmuls (compute-bound, like
a prefill), a large device copy (bandwidth-bound, like decode attention over the KV cache) and 200
small kernels (launch-bound, like a decode step), replayed back to back in this process. For each
mode, --procs spawned worker processes decode the clips (16 frames, the caption benchmark's
settings) in a loop while the replay time is measured:

* none          no decoding: the baseline
* cpu           load_video(decoder="cpu"): no GPU work at all
* nvdec_decode  NVDEC decodes what the 16 frames need; frames stay on the GPU and are dropped:
                FFmpeg's own per-picture work only (map, copy into its surface), no avcap kernels
* nvdec_copy    + avcap's copy of each sampled picture's NV12 planes out of the surface
* nvdec         load_video(decoder="nvdec"): + colour conversion, resize and download
* cuvid_decode, cuvid_copy, cuvid_full
                nvdec_decode / nvdec_copy / the nvdec work, decoded through NVIDIA's parser (FFmpeg's
                h264_cuvid, `bench_cuvid.open_cuvid`) instead of FFmpeg's parser + hwaccel; env
                AVCAP_CUVID_VARIANT picks the set-up ("sysmem" is the one that opens beside torch,
                frames in system memory), AVCAP_CUVID_CONTINUOUS=1 feeds the seek groups without flushes
* nvdec_planes   decode_video(decoder="nvdec"): NVDEC's sampled pictures downloaded as NV12 by
                FFmpeg, nothing converted (what an NVDEC worker does when the engine's finishers
                convert, `[avcap.engine] resize_on_gpu`, since run 43)
* nvdec_cdecode  nvdec_decode without flushes: avcap's `_Continuous` decoder, one per worker for all
                its clips (what decoder="nvdec" does since run 40); nvdec_decode keeps the flushed
                path, which makes FFmpeg create the hardware decoder anew per seek group
* nvdec_decode_direct, nvdec_full_direct
                nvdec_decode / the nvdec work with FFmpeg's `hwaccel_flags=+unsafe_output`: NVDEC
                hands out its mapped surfaces instead of copying every decoded picture into a
                frame pool (safe here: avcap releases each frame, or copies a sampled one, at once)

A mode may name its own worker count: `--modes none,nvdec_decode:10,cuvid_decode:4`. The suffix
`_keep` (`nvdec_keep:4`) runs a mode with every decoded picture returned by the decoder, as before
avcap flagged reference-only packets AV_PKT_FLAG_DISCARD (2026-11-25, run 42).
Per mode: replay ms (median of windows of 10 replays), slowdown against none, clips/s decoded.
`--cpu-smoke` runs the orchestration on the CPU (matmul workload, modes none,cpu) for a check
without a GPU. Not a test; figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

LOAD_KW = dict(nframes=16, max_pixels=360000, factor=32)
MODES = ("none", "cpu", "nvdec_decode", "nvdec_copy", "nvdec", "nvdec_decode_direct", "nvdec_full_direct",
         "cuvid_decode", "cuvid_copy", "cuvid_full", "nvdec_cdecode", "nvdec_planes")


def continuous_nvdec(path: Path, convert) -> dict[int, object]:
    """The 16 sampled frames of `path` through avcap's unflushed NVDEC decoder (`avcap.video.nvdec.Continuous`,
    kept by this thread from clip to clip): presentation index -> convert(frame)."""
    from avcap import video as V
    from avcap.video import index as VI
    from avcap.video import nvdec as VN

    container = VI.open_video(path)
    try:
        stream = container.streams.video[0]
        index = VI.build_index(path, container, stream)
        plan = V.plan_sampling(VI.info_from(path, stream, index), **LOAD_KW)
        got = VN.decode_continuous_or_none(path, container, stream, index, plan.frame_indices, convert)
    finally:
        container.close()
    if got is None:
        raise RuntimeError(f"{path}: not decodable without flushes (not H.264, or a group not at an IDR picture)")
    return got


def check_continuous(clips: list[str]) -> list[dict]:
    """continuous_nvdec's frames against the CPU decoder's, full-size RGB (must be equal)."""
    import numpy as np

    from avcap import video as V
    from avcap.video import nvdec as VN

    out = []
    for clip in clips:
        p = Path(clip)
        got = continuous_nvdec(p, lambda f: VN.copy_frame(p, f))
        idx = sorted(got)
        ref = dict(zip(idx, V.decode_frames(p, idx)))
        worst = max(int(np.abs(VN.rgb_from_nv12(p, f.y, f.uv, f.colorspace, f.color_range, f.height, f.width)
                               .permute(1, 2, 0).cpu().numpy().astype(int) - ref[i].astype(int)).max())
                    for i, f in got.items())
        out.append({"clip": p.name, "frames": len(got), "rgb_max_abs_diff": worst})
    return out


def decode_once(path: str, mode: str) -> None:
    """One clip's worth of the mode's work (see module docstring)."""
    from avcap import video as V
    from avcap.video import cpu as VC
    from avcap.video import index as VI
    from avcap.video import nvdec as VN

    if mode in ("cpu", "nvdec"):
        V.load_video(path, decoder=mode, **LOAD_KW)
        return
    if mode == "nvdec_planes":
        V.decode_video(path, decoder="nvdec", **LOAD_KW)
        return
    p = Path(path)
    if mode == "nvdec_cdecode":
        continuous_nvdec(p, lambda frame: None)
        return
    cuvid = mode.startswith("cuvid")
    container = VI.open_video(p, None if cuvid else VN.hwaccel(p))
    try:
        stream = container.streams.video[0]
        cc = None
        if cuvid:
            import bench_cuvid

            bench_cuvid.VARIANT = os.environ.get("AVCAP_CUVID_VARIANT", "current")
            bench_cuvid.CONTINUOUS = os.environ.get("AVCAP_CUVID_CONTINUOUS") == "1"
            cc = bench_cuvid.open_cuvid(p, stream)
        if mode.endswith("_direct"):
            stream.codec_context.options = {"hwaccel_flags": "+unsafe_output"}
        index = VI.build_index(p, container, stream)
        plan = V.plan_sampling(VI.info_from(p, stream, index), **LOAD_KW)
        size = (plan.resized_height, plan.resized_width)
        full = lambda frame: VN.nv12_batch_resized(p, [VN.copy_frame(p, frame)], lambda hw: size)[0]  # noqa: E731
        convert = {
            "nvdec_decode": lambda frame: None,
            "nvdec_decode_direct": lambda frame: None,
            "nvdec_copy": lambda frame: VN.copy_frame(p, frame),
            "nvdec_full_direct": full,
            "cuvid_decode": lambda frame: None,
            "cuvid_copy": lambda frame: VN.copy_frame(p, frame),
            "cuvid_full": full,
        }[mode]
        if cuvid and bench_cuvid.VARIANT == "sysmem":  # frames arrive in system memory: keep the sampled ones
            convert = bench_cuvid.sysmem_nv12
        if cuvid and bench_cuvid.CONTINUOUS:
            bench_cuvid.continuous_sparse(p, container, stream, index, plan.frame_indices, convert, cc)
        else:
            VC.decode_sparse(p, container, stream, index, plan.frame_indices, convert=convert, cc=cc)
    finally:
        container.close()


def worker(clips: list[str], mode: str, start: int, stop, done, ready) -> None:
    import torch

    from avcap.video import discard

    torch.set_num_threads(1)
    if mode.endswith("_keep"):  # every decoded picture returned, as before AV_PKT_FLAG_DISCARD
        discard.set_enabled(False)
        mode = mode[: -len("_keep")]
    k = start
    first = True
    while not stop.is_set():
        decode_once(clips[k % len(clips)], mode)
        k += 1
        with done.get_lock():
            done.value += 1
        if first:
            ready.release()
            first = False


def workload(device: str):
    """A replay function of the stand-in model step, and what it runs."""
    import torch

    if device == "cpu":
        a = torch.randn(512, 512)

        def step():
            for _ in range(4):
                a.matmul(a)

        return step, "4 x 512^3 fp32 matmuls (CPU smoke)"
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    src = torch.empty(256 * 2**20, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    small = torch.zeros(1024, device=device)

    def eager():
        for _ in range(4):
            torch.mm(a, a)
        dst.copy_(src)
        for _ in range(200):
            small.add_(1)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        eager()
    return graph.replay, "4 x 8192^3 bf16 matmuls + 256 MiB device copy + 200 small kernels, one CUDA graph"


def measure(step, device: str, seconds: float) -> list[float]:
    """Milliseconds per replay, one value per window of 10 replays, for `seconds`."""
    import torch

    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sync()
        t = time.perf_counter()
        for _ in range(10):
            step()
        sync()
        out.append((time.perf_counter() - t) * 100)
    return out


def run_mode(mode: str, clips: list[str], procs: int, step, device: str, seconds: float) -> dict:
    if mode == "none":
        ms = measure(step, device, seconds)
        return {"mode": mode, "replay_ms": round(statistics.median(ms), 3), "windows": len(ms)}
    ctx = mp.get_context("spawn")
    stop, done, ready = ctx.Event(), ctx.Value("i", 0), ctx.Semaphore(0)
    workers = [ctx.Process(target=worker, args=(clips, mode, i, stop, done, ready), daemon=True) for i in range(procs)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    started = 0
    while started < procs and time.perf_counter() - t0 < 300 and any(w.is_alive() for w in workers):
        started += ready.acquire(timeout=1)  # each worker has started, imported and decoded one clip
    warm = time.perf_counter() - t0
    n0, t = done.value, time.perf_counter()
    ms = measure(step, device, seconds)
    clips_per_s = (done.value - n0) / (time.perf_counter() - t)
    died = [w.exitcode for w in workers if not w.is_alive()]  # a decoder that failed (its traceback is on stderr)
    stop.set()
    for w in workers:
        w.join(timeout=60)
        if w.is_alive():
            w.kill()
    out = {"mode": mode, "procs": procs, "replay_ms": round(statistics.median(ms), 3), "windows": len(ms),
           "clips_per_s": round(clips_per_s, 2), "warmup_s": round(warm, 1), "workers_started": started}
    if died:
        out["workers_died"] = len(died)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", required=True, help="directory of .mp4 clips (e.g. bench_gpu.py's synth clips)")
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--check-continuous", action="store_true", help="first compare nvdec_cdecode's frames with the CPU's")
    a = ap.parse_args()
    import torch

    device = "cpu" if a.cpu_smoke else "cuda"
    modes = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else a.procs) for m in a.modes.split(",") if m]
    unknown = sorted({m.removesuffix("_keep") for m, _ in modes} - set(MODES))
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    clips = sorted(str(p) for p in Path(a.clips).glob("*.mp4"))
    if not clips:
        raise SystemExit(f"{a.clips}: no .mp4 clips")
    step, what = workload(device)
    checks = None
    if a.check_continuous:  # twice over the clips: the decoder carries on from clip to clip
        checks = check_continuous(clips[:4] + clips[:4])
        print({"check_continuous": checks}, flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "workload": what, "clips": len(clips), "load_video": LOAD_KW, "results": []}
    if checks is not None:
        out["check_continuous"] = checks
    for mode, procs in modes:
        res = run_mode(mode, clips, procs, step, device, a.seconds)
        base = next((r["replay_ms"] for r in out["results"] if r["mode"] == "none"), None)
        if base:
            res["slowdown"] = round(res["replay_ms"] / base, 3)
        out["results"].append(res)
        print(res, flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
