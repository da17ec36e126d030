"""Shared pytest fixtures (keep small; clips are generated once per session with avcap.video.write_video)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen3-VL checkpoint directory (avcap tiny-model, seed 0), built once per session."""
    from avcap.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)


def make_frames(n: int, height: int, width: int, seed: int = 0):
    """Moving gradients plus noise: enough texture for real P/B-frames, deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        f = np.stack([(xx * 3 + i * 5) % 256, (yy * 2 + i * 3) % 256, (xx + yy + i * 7) % 256], -1)
        f = f + rng.integers(0, 24, f.shape)
        yield np.clip(f, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def h264_clip(tmp_path_factory):
    """A 64x48, 30 fps, 48-frame H.264 MP4 (GOP 8, B-frames on)."""
    from avcap.video import write_video

    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_video(path, make_frames(48, 48, 64), 30, gop=8)
    return path
