"""`sample_indices` (numpy) against its reference, `torch.linspace(0, total - 1, n).round().long()`.

torch is imported only inside the tests, as the reference: the point of the numpy version is that
a CPU decode (a FrameLoader's worker process) never imports torch. The sweep is exhaustive where
clips are common (every n up to 256 for every clip up to 2000 frames) and sampled beyond it, up to
20000 frames (11 minutes at 30 fps) and n up to 768 (qwen-vl-utils' FPS_MAX_FRAMES). Once, every
n in 2..768 for every clip of 2..20000 frames (15 M pairs, ~4 minutes a kernel) gave torch's AVX512,
AVX2 and DEFAULT kernels' float32 values bit for bit; these tests take ~15 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from avcap.video.sampling import FPS_MAX_FRAMES, LINSPACE_MAX_FRAMES, sample_indices

MAX_TOTAL = 20000


def _reference(total: int, n: int) -> list[int]:
    import torch

    return torch.linspace(0, total - 1, n).round().long().tolist()


def _mismatches(pairs) -> list[tuple[int, int]]:
    return [(t, n) for t, n in pairs if sample_indices(t, n) != _reference(t, n)]


def _long_clip_pairs(totals: int, seed: int) -> list[tuple[int, int]]:
    """Every n for clip lengths at powers of two and the range's ends and for `totals` random lengths
    (the kernels' float32 detail decides indices from ~10000 frames and n ~400 on: qwen-vl-utils'
    fps sampling of clips over ~5.5 minutes), n == total, and the three largest n for many lengths."""
    rng = np.random.default_rng(seed)
    lengths = {2**k + d for k in range(2, 15) for d in (-1, 0, 1)} | {3001, 16384, 19999, MAX_TOTAL}
    lengths |= set(rng.integers(3001, MAX_TOTAL + 1, totals).tolist())
    pairs = [(t, n) for t in sorted(lengths) for n in range(1, min(t, FPS_MAX_FRAMES) + 1)]
    pairs += [(t, t) for t in range(1, 3001)] + [(t, t) for t in range(3001, MAX_TOTAL + 1, 97)]
    pairs += [(t, n) for t in range(FPS_MAX_FRAMES, MAX_TOTAL + 1, 11) for n in range(FPS_MAX_FRAMES - 2, FPS_MAX_FRAMES + 1)]
    return pairs


@pytest.fixture(scope="module")
def second_process():
    """A second process (spawned: a fork would inherit torch's thread pool) that checks half of a
    sweep's pairs while this one checks the other half: the box has two cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_reference, 3, 2).result()  # started, torch imported
        yield pool


def _mismatches_in_two(pairs, pool) -> list[tuple[int, int]]:
    """_mismatches(pairs), every pair checked once: the second half in `pool`'s process."""
    half = len(pairs) // 2
    theirs = pool.submit(_mismatches, pairs[half:])
    return _mismatches(pairs[:half]) + theirs.result()


def test_every_n_up_to_256_for_clips_up_to_2000_frames(second_process):
    pairs = [(t, n) for t in range(1, 2001) for n in range(1, min(t, 256) + 1)]
    assert len(pairs) == 479_360
    assert _mismatches_in_two(pairs, second_process) == []


def test_long_clips_up_to_20000_frames_and_768_samples(second_process):
    rng = np.random.default_rng(0)
    pairs = _long_clip_pairs(120, seed=0)
    pairs += [(int(t), int(rng.integers(1, min(t, FPS_MAX_FRAMES) + 1))) for t in rng.integers(2001, MAX_TOTAL + 1, 20_000)]
    assert len(pairs) > 130_000
    assert _mismatches_in_two(pairs, second_process) == []


def test_default_kernel():
    """torch's DEFAULT build (ATEN_CPU_CAPABILITY=default; x86 CPUs without AVX2) does not fuse
    `end - step * k`: other indices for some long clips, which sample_indices follows there too."""
    script = textwrap.dedent(f"""
        import sys
        import torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_sampling_linspace import _long_clip_pairs, _mismatches, _reference
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT", torch.backends.cpu.get_cpu_capability()
        pairs = [(t, n) for t in range(1, 601) for n in range(1, min(t, 64) + 1)] + _long_clip_pairs(40, seed=1)
        print(len(pairs), _reference(16384, 506), _mismatches(pairs), sep="\\n")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert out.returncode == 0, out.stderr
    count, default_506, mismatches = out.stdout.strip().splitlines()
    assert int(count) > 50_000 and mismatches == "[]", mismatches
    assert json.loads(default_506) != sample_indices(16384, 506)  # the kernels differ: both paths tested


def test_one_sample_and_bad_input():
    assert sample_indices(1, 1) == _reference(1, 1) == [0]
    assert sample_indices(500, 1) == _reference(500, 1) == [0]
    for total, n in [(10, 0), (10, -2), (10, 11), (0, 0), (LINSPACE_MAX_FRAMES + 1, 2)]:
        with pytest.raises(ValueError, match="sample_indices needs 1 <= n <= total_frames"):
            sample_indices(total, n)


def test_cpu_decode_to_planes_does_not_import_torch(tmp_path, make_frames):
    """What a FrameLoader's CPU worker does with resize_on_gpu (`_load(..., planes=True)`): no torch."""
    from avcap.video import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, make_frames(40, 48, 64, seed=3), 30, gop=8)
    script = textwrap.dedent(f"""
        import sys
        from avcap.engines.frames import _load
        decoded = _load({str(path)!r}, {{"nframes": 8, "factor": 32}}, planes=True)
        assert decoded.planes is not None and len(decoded.video.frame_indices) == 8
        print(decoded.video.frame_indices, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() and out.stdout.strip().endswith("False"), out.stdout
    assert out.stdout.startswith(str(_reference(40, 8)))
