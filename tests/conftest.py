"""Shared pytest fixtures (keep small; clips are generated once per session with avcap.video.write_video)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen3-VL checkpoint directory (avcap tiny-model, seed 0), built once per session."""
    from avcap.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)


def _make_frames(n: int, height: int, width: int, seed: int = 0):
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
    write_video(path, _make_frames(48, 48, 64), 30, gop=8)
    return path


@pytest.fixture(scope="session")
def make_frames():
    """make_frames(n, height, width, seed=0) -> iterator of H x W x 3 uint8 test frames."""
    return _make_frames


@pytest.fixture(scope="session")
def varied_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights (seed 0): its greedy output depends on the video
    and the prompt, so tests that compare outputs (batching, resume, shards) can tell them apart."""
    import shutil

    import torch
    from transformers import AutoModelForImageTextToText

    out = tmp_path_factory.mktemp("varied-model") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / p.shape[-1] ** 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def infer_data_dir(tmp_path_factory):
    """A small evaluation set in the synth layout: AV_CAPTION (4 clips + 1 corrupt file, 3 MCQs
    each, vqa.jsonl) and LINGOQA (3 segments of 5 JPEG frames, 2 questions x 2 references)."""
    import json

    import pandas as pd
    from PIL import Image

    from avcap.video import write_video

    root = tmp_path_factory.mktemp("infer-data") / "eval"
    av = root / "AV_CAPTION"
    (av / "videos").mkdir(parents=True)
    vids = [f"clip{i:02d}" for i in range(4)]
    for i, v in enumerate(vids):
        write_video(av / "videos" / f"{v}.mp4", _make_frames(20 + 4 * i, 64, 96, seed=i), 8, gop=8)
    (av / "videos" / "clip99.mp4").write_bytes(b"this is not a video")
    with open(av / "vqa.jsonl", "w", encoding="utf-8") as fh:
        for v in vids + ["clip99"]:
            for q in range(3):
                fh.write(json.dumps({
                    "key": f"{v}/q{q}", "video_id": v, "question_id": f"q{q}", "category": "Scene Description",
                    "question": f"What is the weather like? ({q})",
                    "choices": {"A": "clear", "B": "rain", "C": "fog", "D": "snow"}, "answer": "A",
                    "provenance": "agreed",
                }) + "\n")
    lq = root / "LINGOQA"
    rows = []
    for s in range(3):
        seg = f"seg{s}"
        d = lq / "images" / "val" / seg
        d.mkdir(parents=True)
        for k, frame in enumerate(_make_frames(5, 64, 96, seed=10 + s)):
            Image.fromarray(frame).save(d / f"{k}.jpg")
        for q in range(2):
            for a in range(2):
                rows.append({"question_id": f"{seg}-q{q}", "segment_id": seg,
                             "images": [f"images/val/{seg}/{k}.jpg" for k in range(5)],
                             "question": f"Is there a car ahead? ({q})", "answer": f"Yes ({a})."})
    pd.DataFrame(rows).to_parquet(lq / "val.parquet")
    return root
