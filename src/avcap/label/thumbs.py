"""A scenario's pictures: a thumbnail (the sampled frame nearest the clip's middle) and a preview
strip (a few frames spread over the clip, side by side), JPEG files beside the records.

Frames are sampled and decoded by avcap.video (qwen-vl-utils' even spread over the clip), then
scaled back to the clip's own aspect ratio; a thumbnail is never wider than the clip.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from avcap.video import VideoFrames, load_video

# PIL is imported inside the functions that use it: `avcap --help` imports every verb's module
# and stays fast.

_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def picture_stem(clip_id: str) -> str:
    """A clip id as a relative file path: no `..`, no absolute path, only portable characters."""
    parts = [_UNSAFE.sub("_", p) for p in clip_id.split("/") if p not in ("", ".")]
    return "/".join("_" * len(p) if p == ".." else p for p in parts) or "_"


def sample_frames(video: str | Path, frames: int) -> VideoFrames:
    """`frames` (rounded up to even) frames spread over the clip, at the clip's size or below 640x640."""
    n = frames + frames % 2
    return load_video(video, nframes=n, max_pixels=640 * 640)


def _scaled(frame: np.ndarray, width: int, height: int):
    from PIL import Image

    return Image.fromarray(frame).resize((max(1, width), max(1, height)), Image.BICUBIC)


def _save_jpeg(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, path)


def write_pictures(video: str | Path, thumbnail: Path, preview: Path, *, thumbnail_width: int,
                   preview_frames: int, preview_height: int) -> None:
    """Write both pictures of one clip (a VideoError when the clip cannot be decoded)."""
    from PIL import Image

    vf = sample_frames(video, max(preview_frames, 2))
    aspect = vf.width / vf.height if vf.height else vf.frames.shape[2] / vf.frames.shape[1]
    mid = (vf.total_frames - 1) / 2
    k = int(np.argmin([abs(i - mid) for i in vf.frame_indices]))
    tw = min(thumbnail_width, vf.width or thumbnail_width)
    _save_jpeg(_scaled(vf.frames[k], tw, round(tw / aspect)), thumbnail)

    picks = np.unique(np.round(np.linspace(0, len(vf.frames) - 1, preview_frames)).astype(int))
    pw = round(preview_height * aspect)
    strip = Image.new("RGB", (pw * len(picks) + 2 * (len(picks) - 1), preview_height), (0, 0, 0))
    for n, i in enumerate(picks):
        strip.paste(_scaled(vf.frames[i], pw, preview_height), (n * (pw + 2), 0))
    _save_jpeg(strip, preview)
