"""`avcap curate preview`: the recipe's "10×10 random sample from the training dataset".

Draws up to 100 curated samples uniformly at random (seeded) from every source under the dataset
root (each subdirectory with a meta.json) and renders them as a grid:

- `preview.png` — one tile per clip: the sampled frame nearest the clip's middle;
- `preview.mp4` — the same grid with every clip playing (`frames` frames sampled evenly over
  each clip, qwen-vl-utils style, shown at `fps`).

Every tile carries its source's name and a border in the source's colour; empty tiles (fewer
than 100 samples) stay dark. Frames are decoded and resized with avcap.video only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from avcap.data.sources import CurateError, discover_sources, read_source
from avcap.video import load_video, resize_frames, write_video

# Heavy libraries (PIL) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _fit(h: int, w: int, box_h: int, box_w: int) -> tuple[int, int]:
    s = min(box_h / h, box_w / w)
    return max(2, int(h * s) // 2 * 2), max(2, int(w * s) // 2 * 2)


def _tile_frames(video: Path, frames: int, tile_h: int, tile_w: int) -> tuple[np.ndarray, int]:
    """(T x tile_h x tile_w x 3 letterboxed frames, index of the frame nearest the middle)."""

    vf = load_video(video, nframes=frames, max_pixels=max(tile_h * tile_w * 4, 3136 * 2))
    h, w = _fit(vf.frames.shape[1], vf.frames.shape[2], tile_h, tile_w)
    small = resize_frames(vf.frames, h, w)
    out = np.zeros((small.shape[0], tile_h, tile_w, 3), np.uint8)
    y, x = (tile_h - h) // 2, (tile_w - w) // 2
    out[:, y : y + h, x : x + w] = small
    mid = (vf.total_frames - 1) / 2
    k = int(np.argmin([abs(i - mid) for i in vf.frame_indices]))
    return out, k


def _label(tile: np.ndarray, text: str, color: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(tile)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, tile.shape[1] - 1, tile.shape[0] - 1], outline=color, width=2)
    box = d.textbbox((0, 0), text)
    d.rectangle([2, 2, 6 + box[2] - box[0], 4 + box[3] - box[1] + 2], fill=(0, 0, 0))
    d.text((4, 3), text, fill=color)
    return np.asarray(im)


def preview(dataset_root: str | Path, out: Optional[str | Path] = None, *, seed: int = 0, grid: int = 10,
            tile_height: int = 108, tile_width: int = 192, frames: int = 16, fps: float = 4.0,
            meta_file: str = "meta.json", workers: int = 8) -> tuple[Path, Path]:
    """Render `preview.png` and `preview.mp4` into `out` (default: the dataset root)."""
    from PIL import Image

    root = Path(dataset_root)
    names = discover_sources(root, meta_file)
    if not names:
        raise CurateError(f"{root}: no curated source (no */{meta_file}); run `avcap curate` first")
    pool: list[tuple[str, Path]] = []  # (source, video) of every curated sample
    for name in names:
        src = read_source(root, name, meta_file)
        pool += [(name, src.video_path(i)) for i in range(len(src.samples))]
    if not pool:
        raise CurateError(f"{root}: the curated sources {names} hold no samples")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(grid * grid, len(pool)), replace=False)
    chosen = [pool[i] for i in pick]
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}

    with ThreadPoolExecutor(max(1, workers)) as ex:
        tiles = list(ex.map(lambda c: _tile_frames(c[1], frames, tile_height, tile_width), chosen))
    t_max = max(t.shape[0] for t, _ in tiles)
    canvas = np.zeros((t_max, grid * tile_height, grid * tile_width, 3), np.uint8)
    still = np.zeros((grid * tile_height, grid * tile_width, 3), np.uint8)
    for n, ((name, _), (clip, mid)) in enumerate(zip(chosen, tiles)):
        r, c = divmod(n, grid)
        ys, xs = slice(r * tile_height, (r + 1) * tile_height), slice(c * tile_width, (c + 1) * tile_width)
        still[ys, xs] = _label(clip[mid], name, colors[name])
        for t in range(t_max):  # a shorter clip holds its last frame
            canvas[t, ys, xs] = _label(clip[min(t, clip.shape[0] - 1)], name, colors[name])

    out_dir = Path(out) if out is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    png, mp4 = out_dir / "preview.png", out_dir / "preview.mp4"
    tmp = png.with_name(".preview.png.tmp")
    Image.fromarray(still).save(tmp, format="PNG")
    tmp.replace(png)
    write_video(mp4, iter(canvas), fps)
    return png, mp4
