"""Decode workers with `nvdec_keyframes`: parity and CPU time per clip, one process.

    python3 benchmarks/bench_nvkey.py --clips DIR [--rounds 2] [--json OUT]

`avcap.video.decode_video` (what `resize_on_gpu`'s CPU decoders run) on each clip of DIR (16
frames, the caption benchmark's sampling), without and with `nvdec_keyframes=True` (sampled
keyframes that start no other sample's chain decoded on NVDEC, one picture each): the I420
pictures must be equal; process CPU seconds and wall seconds per clip (medians over clips and
rounds, the two set-ups interleaved). Not a test; figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from avcap import video as V

LOAD_KW = dict(nframes=16, max_pixels=360000, factor=32)


def timed(path: Path, nvkey: bool):
    c, w = time.process_time(), time.perf_counter()
    out = V.decode_video(path, nvdec_keyframes=nvkey, **LOAD_KW)
    return out, time.process_time() - c, time.perf_counter() - w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    import av

    clips = sorted(a.clips.glob("*.mp4")) if a.clips.is_dir() else [a.clips]
    out: dict = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "pyav": av.__version__,
                 "clips": len(clips), "load_video": LOAD_KW}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        timed(clips[0], True)  # NVDEC decoder made once per process: not in the timings
        cpu: dict[bool, list[float]] = {False: [], True: []}
        wall: dict[bool, list[float]] = {False: [], True: []}
        equal = []
        for _ in range(a.rounds):
            for clip in clips:
                got = {}
                for nvkey in (False, True):
                    got[nvkey], c, w = timed(clip, nvkey)
                    cpu[nvkey].append(c)
                    wall[nvkey].append(w)
                equal.append(bool(np.array_equal(got[False].planes, got[True].planes))
                             and (got[False].colorspace, got[False].color_range) == (got[True].colorspace, got[True].color_range))
    out["warnings"] = [str(x.message) for x in caught][:3]
    out["nvdec_used"] = any(d is not None for d in V._keyframe_decoders.values())
    out["planes_equal"] = f"{sum(equal)}/{len(equal)}"
    for nvkey, name in ((False, "cpu"), (True, "nvkey")):
        out[name] = {"cpu_s_per_clip": round(statistics.median(cpu[nvkey]), 4),
                     "wall_s_per_clip": round(statistics.median(wall[nvkey]), 4)}
    out["cpu_ratio"] = round(out["nvkey"]["cpu_s_per_clip"] / out["cpu"]["cpu_s_per_clip"], 3)
    print(json.dumps(out), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
