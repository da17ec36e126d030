"""What to sample and at what size: qwen-vl-utils 0.0.14's maths, the sampling plan, the resize call,
and the types the video layer hands out (VideoInfo, SamplePlan, VideoFrames, VideoError).

Sampling and resizing follow qwen-vl-utils 0.0.14 (`qwen_vl_utils.vision_process`) exactly:

* `smart_nframes`: `nframes` XOR `fps`. `nframes` is rounded to a multiple of 2 (Python `round`,
  half to even). With `fps`: n = total / video_fps * fps, clamped to [min_frames, max_frames] and to
  the clip's length, floored to a multiple of 2.
* `sample_indices`: `torch.linspace(0, total - 1, n).round()` (float32, computed here with numpy)
  — first and last frame always included.
* `smart_resize`: each side rounded to `factor` (32 for Qwen3-VL / Cosmos-Reason2, patch 16;
  28 for Qwen2.5-VL / Cosmos-Reason1, patch 14), then scaled into [min_pixels, max_pixels].
  Where qwen-vl-utils would return a side of 0 (a very narrow clip, e.g. 150:1, with a small
  max_pixels; it refuses only aspect ratios > 200) avcap raises a ValueError instead —
  `plan_sampling` / `load_video` a VideoError naming the file.
* the per-frame pixel cap for video: `max(min(768·factor², total_pixels / nframes · 2),
  int(min_pixels · 1.05))`, then the smaller of that and the caller's `max_pixels`.
* frames are resized as RGB with torchvision's `resize(..., BICUBIC, antialias=True)` on uint8,
  exactly the call qwen-vl-utils makes (`resize_frames`, `resize_chw`, `resize_nchw`).

When a clip has fewer frames than asked, nothing fails: every frame is used, the last one repeated
once if needed to make an even count (Qwen's temporal patch is 2 frames; qwen-vl-utils pads a frame
list the same way), and `VideoFrames.notes` says what was done.

Nothing here decodes: `plan_sampling(probe(path))` says what `load_video` will return.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

# Heavy libraries (torch, torchvision) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")  # what a videos/ directory may hold


def is_video_path(p: Path) -> bool:
    """A video file by its suffix, or a directory (of JPEG frames)."""
    return p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES


# qwen-vl-utils 0.0.14 constants (vision_process.py)
MAX_RATIO = 200
SPATIAL_MERGE_SIZE = 2
VIDEO_MIN_TOKEN_NUM = 128
VIDEO_MAX_TOKEN_NUM = 768
FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MODEL_SEQ_LEN = 128000  # qwen-vl-utils reads env MODEL_SEQ_LEN (default 128000); avcap fixes it

DEFAULT_MIN_PIXELS = 3136  # the recipe's [custom.vision] min_pixels (56x56)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class VideoError(ValueError):
    """A video that cannot be used. The message starts with the path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # from worker processes: the default would call __init__(message) and fail
        return type(self), (self.path, self.problem)


def round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = 32,
    min_pixels: Optional[int] = None,
    max_pixels: Optional[int] = None,
) -> tuple[int, int]:
    """(h, w) divisible by `factor`, area within [min_pixels, max_pixels], aspect kept (qwen-vl-utils)."""
    max_pixels = max_pixels if max_pixels is not None else 16384 * factor**2
    min_pixels = min_pixels if min_pixels is not None else 4 * factor**2
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if min(height, width) <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    if min(h_bar, w_bar) < factor:  # qwen-vl-utils returns this size (0) and the resize then fails
        raise ValueError(
            f"a {width}x{height} frame ({max(height, width) / min(height, width):.0f}:1) shrunk to at most "
            f"{max_pixels} pixels is {w_bar}x{h_bar}: its short side falls below {factor}; raise max_pixels or crop the video"
        )
    return h_bar, w_bar


def smart_nframes(
    total_frames: int,
    video_fps: float,
    *,
    nframes: Optional[int] = None,
    fps: Optional[float] = None,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: Optional[int] = None,
) -> int:
    """Number of frames to sample (qwen-vl-utils `smart_nframes`; raises ValueError as it does).

    `max_frames=None` means qwen-vl-utils' default, min(768, total_frames).
    """
    if nframes is not None and fps is not None:
        raise ValueError("Only accept either `fps` or `nframes`")
    if nframes is not None:
        n = round_by_factor(nframes, FRAME_FACTOR)
    else:
        fps = FPS if fps is None else fps
        min_f = ceil_by_factor(min_frames, FRAME_FACTOR)
        max_f = floor_by_factor(max_frames if max_frames is not None else min(FPS_MAX_FRAMES, total_frames), FRAME_FACTOR)
        n = total_frames / video_fps * fps
        n = min(min(max(n, min_f), max_f), total_frames)
        n = floor_by_factor(n, FRAME_FACTOR)
    if not (FRAME_FACTOR <= n <= total_frames):
        raise ValueError(f"nframes should in interval [{FRAME_FACTOR}, {total_frames}], but got {n}.")
    return int(n)


LINSPACE_MAX_FRAMES = 1 << 24  # float32 holds every frame number up to here exactly


def sample_indices(total_frames: int, n: int) -> list[int]:
    """`torch.linspace(0, total_frames - 1, n).round().long().tolist()`, qwen-vl-utils' frame
    sampling, computed with numpy: importing torch costs a decode worker process seconds.

    torch's CPU kernel (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp, `linspace_kernel`) works
    in float32: step = (end - start) / (steps - 1), then `start + step * i` for i < steps // 2 and
    `end - step * (steps - 1 - i)` from there on. Its AVX2 and AVX512 builds, what x86 machines
    run, compute the second form as a fused multiply-add (one rounding), done here in float64,
    where it is exact for 1 <= n <= total_frames <= 2**24. Its DEFAULT build (x86 CPUs without
    AVX2, or ATEN_CPU_CAPABILITY=default) rounds the product first: other indices for some long
    clips (e.g. 16384 frames, n=506), so that is followed too. `.round()` is half to even (np.rint).
    """
    if not 1 <= n <= total_frames <= LINSPACE_MAX_FRAMES:
        raise ValueError(f"sample_indices needs 1 <= n <= total_frames <= {LINSPACE_MAX_FRAMES}, "
                         f"got n={n}, total_frames={total_frames}")
    if n == 1:
        return [0]  # torch fills a one-step linspace with its start
    end = np.float32(total_frames - 1)
    step = end / np.float32(n - 1)
    half = n // 2
    k = np.arange(n - 1 - half, -1, -1)  # steps - 1 - i for i >= half
    values = np.empty(n, dtype=np.float32)
    values[:half] = step * np.arange(half, dtype=np.float32)
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default":
        values[half:] = end - step * k.astype(np.float32)
    else:
        # step * k is exact in float64 (24-bit x 24-bit mantissas) and step >= 1, so end - step * k
        # (a multiple of 2**-23 below 2**24) is too: one rounding, to float32, as the fused kernel
        values[half:] = np.float64(end) - np.float64(step) * k
    return np.rint(values).astype(np.int64).tolist()


def frame_pixel_range(
    nframes: int,
    *,
    factor: int = 32,
    min_pixels: Optional[int] = DEFAULT_MIN_PIXELS,
    max_pixels: Optional[int] = None,
    total_pixels: Optional[float] = None,
) -> tuple[int, float]:
    """(min_pixels, max_pixels) per frame for a clip of `nframes` sampled frames (qwen-vl-utils fetch_video)."""
    if min_pixels is None:
        min_pixels = VIDEO_MIN_TOKEN_NUM * factor * factor
    if total_pixels is None:
        total_pixels = MODEL_SEQ_LEN * factor * factor * 0.9
    cap = max(min(VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    if max_pixels is not None:
        cap = min(max_pixels, cap)
    return min_pixels, cap


def resized_size(
    height: int,
    width: int,
    nframes: int,
    *,
    factor: int = 32,
    min_pixels: Optional[int] = DEFAULT_MIN_PIXELS,
    max_pixels: Optional[int] = None,
    total_pixels: Optional[float] = None,
) -> tuple[int, int]:
    """Resized (height, width) of every frame of an `nframes`-frame sample of a height x width clip."""
    lo, hi = frame_pixel_range(nframes, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels)
    return smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)


def num_video_tokens(
    num_frames: int,
    height: int,
    width: int,
    patch_size: int = 16,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> int:
    """LLM tokens for `num_frames` frames of resized `height` x `width` (timestamps/markers not counted).

    Frames are padded to a multiple of `temporal_patch_size` (as the processor does); each group of
    frames gives (h / patch)·(w / patch) / merge² tokens.
    """
    if height % patch_size or width % patch_size:
        raise ValueError(f"resized size {height}x{width} is not a multiple of patch size {patch_size}")
    grid_t = math.ceil(num_frames / temporal_patch_size)
    return grid_t * (height // patch_size) * (width // patch_size) // (merge_size * merge_size)


@dataclass
class VideoInfo:
    path: str
    total_frames: int
    fps: float
    height: int
    width: int
    duration: float
    codec: str = ""
    is_frame_dir: bool = False


@dataclass
class SamplePlan:
    """What `load_video` will do with a clip: which frames, what size, and any notes."""

    frame_indices: list[int]
    resized_height: int
    resized_width: int
    notes: list[str] = field(default_factory=list)


@dataclass
class VideoFrames:
    frames: np.ndarray  # uint8 T x H x W x 3, resized
    frame_indices: list[int]
    timestamps: list[float]
    fps: float  # of the source
    total_frames: int
    resized_height: int
    resized_width: int
    path: str
    notes: list[str] = field(default_factory=list)
    height: int = 0  # source frame size
    width: int = 0

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps if self.fps else 0.0

    @property
    def sample_fps(self) -> float:
        """qwen-vl-utils' `sample_fps`: nframes / total * fps."""
        return len(self.frame_indices) / max(self.total_frames, 1e-6) * self.fps

    def metadata(self) -> dict[str, Any]:
        """The `video_metadata` transformers' Qwen3-VL processor wants (use with do_sample_frames=False)."""
        return {
            "fps": float(self.fps),
            "frames_indices": list(self.frame_indices),
            "total_num_frames": int(self.total_frames),
            "duration": float(self.duration),
            "width": int(self.width),
            "height": int(self.height),
            "video_backend": "pyav",
        }

    def tensor(self):
        """Frames as a torch uint8 tensor T x 3 x H x W (the layout qwen-vl-utils returns)."""
        import torch

        return torch.from_numpy(self.frames).permute(0, 3, 1, 2).contiguous()


def plan_sampling(
    info: VideoInfo,
    *,
    nframes: Optional[int] = None,
    fps: Optional[float] = None,
    min_pixels: Optional[int] = DEFAULT_MIN_PIXELS,
    max_pixels: Optional[int] = None,
    total_pixels: Optional[float] = None,
    factor: int = 32,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: Optional[int] = None,
) -> SamplePlan:
    """Frame indices and resized size for `info` — what `load_video` will return, without decoding."""
    path = info.path
    if nframes is not None and fps is not None:
        raise ValueError("use only one of nframes or fps, not both (qwen-vl-utils semantics)")
    if nframes is not None and nframes <= 0 or fps is not None and fps <= 0:
        raise ValueError("nframes and fps must be positive")
    ratio = max(info.height, info.width) / min(info.height, info.width)
    if ratio > MAX_RATIO:
        raise VideoError(path, f"absurd aspect ratio {info.width}x{info.height} ({ratio:.0f}:1; qwen-vl-utils refuses > {MAX_RATIO})")
    total = info.total_frames
    notes: list[str] = []
    if nframes is not None:
        n = round_by_factor(nframes, FRAME_FACTOR)
        if n < FRAME_FACTOR:
            raise ValueError(f"nframes={nframes} rounds to {n}; need at least {FRAME_FACTOR}")
        if n <= total:
            indices = sample_indices(total, n)
        else:
            indices = _all_frames_even(total)
            notes.append(_short_note(nframes, total, indices))
    elif total >= FRAME_FACTOR:
        n = smart_nframes(total, info.fps, fps=fps, min_frames=min_frames, max_frames=max_frames)
        indices = sample_indices(total, n)
    else:
        indices = _all_frames_even(total)
        notes.append(f"clip has {total} frame: used it twice (the temporal patch is {FRAME_FACTOR} frames)")
    try:
        h, w = resized_size(info.height, info.width, len(indices), factor=factor, min_pixels=min_pixels,
                            max_pixels=max_pixels, total_pixels=total_pixels)
    except ValueError as exc:
        raise VideoError(path, str(exc)) from None
    return SamplePlan(indices, h, w, notes)


def _all_frames_even(total: int) -> list[int]:
    idx = list(range(total))
    if total % FRAME_FACTOR:
        idx.append(total - 1)
    return idx


def _short_note(asked: int, total: int, indices: list[int]) -> str:
    s = f"asked for {asked} frames, clip has {total}: sampled all {total}"
    if len(indices) > total:
        s += f" and repeated the last to make {len(indices)} (the temporal patch is {FRAME_FACTOR} frames)"
    return s


def resize_frames(frames: np.ndarray | Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """T x H x W x 3 uint8 -> T x height x width x 3 uint8 with qwen-vl-utils' exact resize call.

    qwen-vl-utils calls `torchvision.transforms.functional.resize(video_TCHW_uint8, [h, w],
    interpolation=BICUBIC, antialias=True)` (float32 bicubic with antialias, clamped, rounded back
    to uint8). The filter treats every frame independently, so frames are resized one at a time
    (same pixels, a fraction of the memory).
    """
    import torch

    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
        out[i] = resize_chw(t, height, width).permute(1, 2, 0).numpy()
    return out


def resize_chw(frame, height: int, width: int):
    """One 3 x H x W uint8 torch frame (any device) -> 3 x height x width uint8, qwen-vl-utils' call."""
    return resize_nchw(frame.unsqueeze(0), height, width)[0]


def resize_nchw(frames, height: int, width: int):
    """N x 3 x H x W uint8 torch frames (any device) -> N x 3 x height x width uint8, qwen-vl-utils'
    call; the filter treats every frame alone, so a batch gives each frame's own result."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    return TF.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
