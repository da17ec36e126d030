"""The video layer: the only code in avcap that decodes, samples, resizes or encodes video.

Sampling and resizing follow qwen-vl-utils 0.0.14 (`qwen_vl_utils.vision_process`) exactly:

* `smart_nframes`: `nframes` XOR `fps`. `nframes` is rounded to a multiple of 2 (Python `round`,
  half to even). With `fps`: n = total / video_fps * fps, clamped to [min_frames, max_frames] and to
  the clip's length, floored to a multiple of 2.
* `sample_indices`: `linspace(0, total - 1, n).round()` — first and last frame always included.
* `smart_resize`: each side rounded to `factor` (32 for Qwen3-VL / Cosmos-Reason2, patch 16;
  28 for Qwen2.5-VL / Cosmos-Reason1, patch 14), then scaled into [min_pixels, max_pixels].
  Where qwen-vl-utils would return a side of 0 (a very narrow clip, e.g. 150:1, with a small
  max_pixels; it refuses only aspect ratios > 200) avcap raises a ValueError instead —
  `plan_sampling` / `load_video` a VideoError naming the file.
* the per-frame pixel cap for video: `max(min(768·factor², total_pixels / nframes · 2),
  int(min_pixels · 1.05))`, then the smaller of that and the caller's `max_pixels`.
* frames are resized as RGB with torchvision's `resize(..., BICUBIC, antialias=True)` on uint8,
  exactly the call qwen-vl-utils makes.

Decoding uses PyAV (its wheels bundle FFmpeg). `load_video` decodes only what the sampled frames
need: a demux pass (no decoding) indexes every packet — presentation timestamp, keyframe flag and,
for H.264, whether the picture is a reference picture — then for each group of targets it seeks to
the keyframe before them and decodes forward to the last target, sending the decoder only the
keyframe, the reference pictures and the targets themselves. A non-reference picture is, by the
H.264 definition, never used to predict another picture, so leaving it out changes no pixel of the
frames we keep; tests check frame-for-frame equality with a full decode. The reference pictures
that are not targets go in flagged AV_PKT_FLAG_DISCARD: FFmpeg decodes them but never returns
their frames (for NVDEC, no copy out of the hardware decoder).

Frame index i is the i-th frame in presentation order (the i-th smallest packet pts), which is what
a full sequential decode produces. Timestamps are `index / fps` with fps the stream's average rate,
the convention transformers uses for `video_metadata` (exact for constant-frame-rate video; for
variable-frame-rate video the index is still exact, the timestamp is then the nominal one).

A directory of JPEG/PNG frames (as LingoQA ships) is a video too: frames in natural sort order,
fps from a `fps.txt` in the directory, else the caller's `source_fps`, else 1.

When a clip has fewer frames than asked, nothing fails: every frame is used, the last one repeated
once if needed to make an even count (Qwen's temporal patch is 2 frames; qwen-vl-utils pads a frame
list the same way), and `VideoFrames.notes` says what was done.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import inspect
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np

from avcap.video.colour import (
    UnsupportedColour,
    crop_nv12,
    interleave_uv,
    nv12_to_rgb,
    nv12_to_rgb_fast,
    swscale_coefficients,
)

# Heavy libraries (PIL, av, torch, torchvision) are imported inside the functions that use them: `avcap --help` and
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


# --------------------------------------------------------------------------------------------
# pure functions (qwen-vl-utils 0.0.14 semantics)
# --------------------------------------------------------------------------------------------


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


def sample_indices(total_frames: int, n: int) -> list[int]:
    """`torch.linspace(0, total-1, n).round()` as qwen-vl-utils computes it (float32, half to even)."""
    import torch

    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


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


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    gop: int = 30,
    crf: Optional[float] = None,
    bitrate: Optional[int] = None,
    pix_fmt: str = "yuv420p",
    preset: str = "medium",
    bframes: Optional[int] = None,
    codec: str = "libx264",
    options: Optional[dict[str, str]] = None,
    container_options: Optional[dict[str, str]] = None,
) -> None:
    """Encode RGB frames (H x W x 3 uint8) to an H.264 MP4 with PyAV, atomically (temp file + rename).

    `gop` is the exact keyframe interval (scene-cut keyframes off). Rate control: `bitrate` (bits/s)
    or `crf` (default 23 when neither is given). Odd frame sizes are padded to even by repeating
    the last row/column (4:2:0 needs even sizes). `bframes=None` keeps x264's default (3).
    `options` go to the encoder (e.g. {"x264-params": ...}), `container_options` to the muxer
    (MP4/MOV default: {"movflags": "+faststart"}, the index first so readers can seek at once).
    """
    import av

    path = Path(path)
    if bitrate is not None and crf is not None:
        raise ValueError("give either bitrate or crf, not both")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix or '.mp4'}")
    rate = Fraction(fps).limit_denominator(1001000)
    fmt = {".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}.get(path.suffix.lower(), "mp4")
    count = 0
    try:
        if container_options is None:
            container_options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
        with av.open(str(tmp), mode="w", format=fmt, options=container_options) as out:
            stream = None
            for arr in frames:
                arr = np.asarray(arr)
                if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                    raise ValueError(f"frame {count}: expected H x W x 3 uint8, got {arr.shape} {arr.dtype}")
                h, w = arr.shape[:2]
                if h % 2 or w % 2:
                    arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                    h, w = arr.shape[:2]
                if stream is None:
                    stream = out.add_stream(codec, rate=rate)
                    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
                    opts: dict[str, str] = {}
                    if codec in ("libx264", "libx265"):
                        params = [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
                        if codec == "libx264":
                            # macroblock-tree rate control gave different bitstreams for identical
                            # frames from run to run with this x264 build; off, encodes reproduce
                            params.append("mbtree=0")
                        if bframes is not None:
                            params.append(f"bframes={bframes}")
                        opts["preset"] = preset
                        opts["x264-params" if codec == "libx264" else "x265-params"] = ":".join(params)
                    stream.codec_context.gop_size = gop
                    if bitrate is not None:
                        stream.bit_rate = int(bitrate)
                        if codec == "libx264":
                            opts["maxrate"] = str(int(bitrate * 1.5))
                            opts["bufsize"] = str(int(bitrate * 2))
                    else:
                        opts["crf"] = str(23 if crf is None else crf)
                    opts.update(options or {})
                    stream.codec_context.options = opts
                elif (h, w) != (stream.height, stream.width):
                    raise ValueError(f"frame {count}: size {w}x{h} differs from the first frame's {stream.width}x{stream.height}")
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format=pix_fmt)
                frame.pts = count
                for packet in stream.encode(frame):
                    out.mux(packet)
                count += 1
            if stream is None:
                raise ValueError("no frames to write")
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# probing and indexing
# --------------------------------------------------------------------------------------------


def _clean_path(path: str | os.PathLike) -> Path:
    s = os.fspath(path)
    if s.startswith("file://"):
        s = s[len("file://") :]
    return Path(s)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _frame_files(directory: Path) -> list[Path]:
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _dir_fps(directory: Path, source_fps: Optional[float]) -> float:
    f = directory / "fps.txt"
    if f.exists():
        try:
            v = float(f.read_text().strip())
        except ValueError:
            raise VideoError(f, "fps.txt must hold one positive number") from None
        if not v > 0:
            raise VideoError(f, "fps.txt must hold one positive number")
        return v
    return float(source_fps) if source_fps else 1.0


@dataclass
class _Index:
    """Every packet of the video stream, in decode order."""

    pts: list[int]
    dts: list[Optional[int]]
    key: list[bool]
    nonref: list[bool]
    header_frames: int

    @property
    def presentation(self) -> list[int]:
        return sorted(self.pts)


def _nal_length_size(extradata: Optional[bytes]) -> Optional[int]:
    """4 (usually) for avcC (MP4/MKV) H.264, None for Annex B (start codes)."""
    if extradata and len(extradata) >= 7 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    return None


def _h264_is_nonref(data: memoryview, nal_len: Optional[int]) -> bool:
    """True when the access unit's first slice NAL has nal_ref_idc == 0 (a non-reference picture)."""
    hdr = _h264_first_slice(data, nal_len)
    return hdr is not None and (hdr >> 5) & 3 == 0


def _h264_is_idr(data: memoryview, nal_len: Optional[int]) -> bool:
    """True when the access unit's first slice NAL is an IDR slice (nal_unit_type 5)."""
    hdr = _h264_first_slice(data, nal_len)
    return hdr is not None and hdr & 0x1F == 5


def _h264_first_slice(data: memoryview, nal_len: Optional[int]) -> Optional[int]:
    """The header byte of the access unit's first slice NAL (nal_unit_type 1 or 5), or None."""
    n = len(data)
    if nal_len is not None:
        i = 0
        while i + nal_len < n:
            size = int.from_bytes(data[i : i + nal_len], "big")
            hdr = data[i + nal_len]
            if hdr & 0x1F in (1, 5):
                return hdr
            i += nal_len + size
        return None
    raw = bytes(data[: min(n, 1 << 16)])
    i = raw.find(b"\x00\x00\x01")
    while 0 <= i < len(raw) - 3:
        hdr = raw[i + 3]
        if hdr & 0x1F in (1, 5):
            return hdr
        i = raw.find(b"\x00\x00\x01", i + 3)
    return None


# for avformat_find_stream_info's probing decoders only (PyAV hands `options` to them, not to the
# streams' own decoders): without it the probe decodes the first picture just to learn the pixel
# format (a full keyframe: ~50 ms of CPU at 1936x1220, ~4 % of decoding a clip's 16 sampled
# frames); the stream's decoder reads that from the bitstream itself
_PROBE_OPTIONS = {"skip_frame": "all"}


_AV_PKT_FLAG_DISCARD = 0x0004  # libavcodec/packet.h
# benchmarks' A/B switch (read here so that spawned decoder processes see it too): "0" returns every
# decoded picture to Python as before 2026-11-25
_DISCARD_UNSAMPLED = os.environ.get("AVCAP_DISCARD_UNSAMPLED", "1") != "0"
_packet_ptr_offset: Optional[int] = None  # where PyAV's Packet object keeps its AVPacket pointer; -1: not found


# PyAV releases whose Packet layout the discard flag was checked on (tests/test_video.py's discard
# tests and the GPU runs of benchmarks/RESULTS.md): on any other release it stays off, with a warning
_DISCARD_CHECKED_PYAV = ("18.1.0",)


def _read_memory(address: int, size: int) -> Optional[bytes]:
    """`size` bytes of this process's memory at `address`, read through /proc/self/mem: an
    unmapped address is an OSError there (None here), never a segmentation fault."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            data = mem.read(size)
    except (OSError, OverflowError, ValueError):
        return None
    return data if len(data) == size else None


def _find_packet_ptr_offset() -> int:
    """The byte offset of `AVPacket *ptr` inside PyAV's Packet object, found on a packet of our own:
    the pointer whose AVPacket's data and size (FFmpeg >= 5 layout: buf, pts, dts, data, size,
    stream_index, flags) are the packet's; -1 when no field qualifies, when the PyAV release is not
    one the layout was checked on, or where /proc/self/mem cannot be read. Every candidate pointer
    is followed through `_read_memory`, so a wrong guess is a miss, not a crash."""
    import av

    if av.__version__ not in _DISCARD_CHECKED_PYAV:
        warnings.warn(f"avcap.video: PyAV {av.__version__} is not a release the AV_PKT_FLAG_DISCARD probe was "
                      f"checked on ({', '.join(_DISCARD_CHECKED_PYAV)}): every decoded picture is returned "
                      "(correct, a little slower)", stacklevel=3)
        return -1
    probe = av.Packet(b"avcap")
    for off in range(16, type(probe).__basicsize__ - 7, 8):
        raw = _read_memory(id(probe) + off, 8)
        if raw is None:
            return -1  # no /proc/self/mem: stay off
        ptr = int.from_bytes(raw, sys.byteorder)
        if not ptr or ptr < 1 << 16 or ptr % 8:
            continue
        fields = _read_memory(ptr + 24, 12)  # data pointer, size
        if fields is not None and int.from_bytes(fields[:8], sys.byteorder) == probe.buffer_ptr \
                and int.from_bytes(fields[8:12], sys.byteorder, signed=True) == probe.size:
            return off
    return -1


def _mark_discard(packet) -> bool:
    """Flag `packet` AV_PKT_FLAG_DISCARD: the decoder decodes it (it stays a reference for what
    follows) but never returns its frame. For NVDEC that skips mapping and copying the picture out
    of the hardware decoder, which is GPU work in the decoding process's context; on the CPU it
    skips wrapping a frame nobody reads. PyAV exposes the flag read-only, so it is set in the
    AVPacket itself, located once on a packet of our own and confirmed through PyAV's getters on
    every packet; False (nothing changed) where that does not hold."""

    global _packet_ptr_offset
    if not _DISCARD_UNSAMPLED or not packet.size:
        return False
    if _packet_ptr_offset is None:
        _packet_ptr_offset = _find_packet_ptr_offset()
    if _packet_ptr_offset < 0:
        return False
    ptr = ctypes.c_void_p.from_address(id(packet) + _packet_ptr_offset).value
    if not ptr or ctypes.c_int.from_address(ptr + 32).value != packet.size \
            or ctypes.c_void_p.from_address(ptr + 24).value != packet.buffer_ptr:
        return False
    flags = ctypes.c_int.from_address(ptr + 40)
    old = flags.value
    flags.value = old | _AV_PKT_FLAG_DISCARD
    if not packet.is_discard:  # not the flags field after all: undo
        flags.value = old
        return False
    return True


def _open(path: Path, hwaccel=None):
    """The container, its video stream decoded in software or (`hwaccel`, see `_nvdec_hwaccel`) on NVDEC."""
    import av

    if not path.exists():
        raise VideoError(path, "no such file or directory")
    if path.is_dir():
        raise VideoError(path, "is a directory (a frame directory is read with load_video/probe)")
    try:
        container = av.open(str(path), options=_PROBE_OPTIONS, hwaccel=hwaccel)
    except (av.error.FFmpegError, UnicodeDecodeError, NotImplementedError) as exc:  # type: ignore[attr-defined]
        if hwaccel is not None:  # a file software cannot open either gets the plain error
            _open(path).close()
            raise VideoError(path, f"decoder='nvdec': NVDEC could not be set up for this video "
                             f"({exc.__class__.__name__}: {exc}); use decoder='cpu'") from None
        raise VideoError(path, f"not a video, or corrupt or truncated (FFmpeg: {exc.__class__.__name__}: {exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "not a video: no video stream found (or the file is truncated)")
    return container


def _stream_fps(stream) -> Optional[float]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _build_index(path: Path, container, stream) -> _Index:
    import av

    nonref_check = stream.codec_context.name == "h264"
    nal_len = _nal_length_size(stream.codec_context.extradata) if nonref_check else None
    pts: list[int] = []
    dts: list[Optional[int]] = []
    key: list[bool] = []
    nonref: list[bool] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise VideoError(path, "packets carry no timestamps; cannot index frames")
            pts.append(packet.pts)
            dts.append(packet.dts)
            key.append(bool(packet.is_keyframe))
            nonref.append(nonref_check and _h264_is_nonref(memoryview(packet), nal_len))
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise VideoError(path, f"corrupt or truncated video: demuxing failed after {len(pts)} packets ({exc})") from None
    header = int(stream.frames or 0)
    if len(set(pts)) != len(pts):
        raise VideoError(path, "duplicate packet timestamps; cannot index frames")
    if header and len(pts) < header:
        raise VideoError(path, f"corrupt or truncated video: the header lists {header} frames, only {len(pts)} are present")
    return _Index(pts=pts, dts=dts, key=key, nonref=nonref, header_frames=header)


def probe(path: str | os.PathLike, *, source_fps: Optional[float] = None) -> VideoInfo:
    """Frame count (exact: every packet is indexed, nothing decoded), fps, size and duration."""
    path = _clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise VideoError(path, f"directory holds zero frames (no {'/'.join(IMAGE_SUFFIXES)} files)")
        fps = _dir_fps(path, source_fps)
        h, w = _image_size(files[0])
        return VideoInfo(str(path), len(files), fps, h, w, len(files) / fps, codec="images", is_frame_dir=True)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        index = _build_index(path, container, stream)
        return _info_from(path, stream, index)
    finally:
        container.close()


def _info_from(path: Path, stream, index: _Index) -> VideoInfo:
    total = len(index.pts)
    if total == 0:
        raise VideoError(path, "video has zero frames")
    fps = _stream_fps(stream)
    if not fps:
        raise VideoError(path, "video stream has no frame rate")
    h, w = stream.codec_context.height, stream.codec_context.width
    if not h or not w:
        raise VideoError(path, "video stream has no frame size")
    return VideoInfo(str(path), total, fps, h, w, total / fps, codec=stream.codec_context.name)


def _image_size(file: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(file) as im:
            return im.height, im.width
    except Exception as exc:
        raise VideoError(file, f"not a readable image ({exc.__class__.__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# sampling plan
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


def _to_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _set_threads(stream, threads: int) -> None:
    """1: decode on the calling core only; 0: FFmpeg picks; n: n threads (frame + slice threading)."""
    cc = stream.codec_context
    cc.thread_count = threads
    if threads != 1:
        cc.thread_type = "AUTO"


DECODERS = ("cpu", "nvdec")


def _nvdec_hwaccel(path: Path):
    """PyAV's CUDA hwaccel keeping frames on the GPU, or a VideoError saying why NVDEC cannot be used."""
    import av

    try:
        import torch
    except ImportError:
        raise VideoError(path, "decoder='nvdec' needs torch with CUDA, and torch is not installed") from None
    if not torch.cuda.is_available():
        raise VideoError(path, "decoder='nvdec' needs a CUDA GPU, and torch sees none; use decoder='cpu'")
    try:
        from av.codec.hwaccel import HWAccel, hwdevices_available

        if "cuda" not in hwdevices_available():
            raise VideoError(path, f"decoder='nvdec': PyAV {av.__version__}'s FFmpeg has no CUDA device support "
                             f"(it has: {', '.join(hwdevices_available()) or 'none'}); use decoder='cpu'")
        # FFmpeg decodes into torch's own CUDA context (the device's primary one), made current on
        # this thread first: its default, retaining the primary context itself, refuses one that torch
        # already started ("incompatible flags"), and a context of its own would hold surfaces that
        # torch kernels cannot read
        device = torch.cuda.current_device()
        torch.cuda.current_stream(device).query()  # a runtime call: binds the primary context here
        return HWAccel("cuda", device=str(device), allow_software_fallback=False, is_hw_owned=True,
                       options={"primary_ctx": "0", "current_ctx": "1"})
    except (ImportError, TypeError) as exc:
        raise VideoError(path, f"decoder='nvdec' needs PyAV >= 18 (CUDA hwaccel with frames kept on the GPU); "
                         f"PyAV {av.__version__}: {exc}") from None


def _colour_coefficients(path: Path, colorspace: int, color_range: int):

    try:
        return swscale_coefficients(colorspace, color_range)
    except UnsupportedColour as exc:
        raise VideoError(path, f"decoder='nvdec': {exc}; use decoder='cpu'") from None


def _cropped_nv12(path: Path, y, uv, height: int, width: int):

    try:
        return crop_nv12(y, uv, height, width)
    except UnsupportedColour as exc:
        raise VideoError(path, f"decoder='nvdec': {exc}; use decoder='cpu'") from None


def _rgb_from_nv12(path: Path, y, uv, colorspace: int, color_range: int, height: int, width: int):
    """3 x height x width uint8 RGB (torch, planes' device) from possibly padded NV12 planes, as swscale
    converts the software decoder's frame (avcap.video.colour)."""

    coeffs = _colour_coefficients(path, colorspace, color_range)
    y, uv = _cropped_nv12(path, y, uv, height, width)
    return nv12_to_rgb(y, uv, coeffs)


def _nvdec_sw_format(path: Path, frame) -> str:
    """The pixel format of a CUDA frame's surface (nv12, p010le, ...); a VideoError for a frame NVDEC
    did not decode."""
    sw = getattr(frame, "sw_format", None)
    if frame.format.name != "cuda" or sw is None:
        raise VideoError(path, f"decoder='nvdec': NVDEC did not decode this stream (it gave {frame.format.name} frames)")
    return sw.name


def _nvdec_planes(path: Path, frame):
    """(y, uv) of a CUDA frame: torch views of the decoder's NV12 surface (no copy)."""
    import torch

    sw = _nvdec_sw_format(path, frame)
    if sw != "nv12":
        raise VideoError(path, f"decoder='nvdec': only 8-bit 4:2:0 video (NV12 surfaces) is converted, "
                         f"NVDEC gave {sw}; use decoder='cpu'")
    # FFmpeg's copy into the surface is on the legacy default stream: `_conversion_stream` waits for it
    y, uv = (torch.from_dlpack(p.__dlpack__(stream=None)) for p in frame.planes[:2])
    return y, uv


@dataclass
class _NV12:
    """One decoded picture's visible NV12 planes (contiguous torch copies) and colour tags."""

    y: Any
    uv: Any
    colorspace: int
    color_range: int
    height: int
    width: int


# frames converted and resized per call. 8 per call (~30 kernels per call instead of per frame)
# did not lower the time the model loses beside NVDEC worker processes (benchmarks/gpu_run12) and
# held 8x the GPU memory in every worker (an engine run with 12 NVDEC threads ran out of memory)
_NV12_BATCH = 1


def _nv12_batch_resized(path: Path, frames: Sequence[_NV12],
                        size_of: Callable[[tuple[int, int]], tuple[int, int]],
                        batch: int = _NV12_BATCH) -> list[np.ndarray]:
    """NV12 copies -> RGB -> resized, `batch` frames at a time with the same size and colour tags, on
    their device (CUDA: this thread's conversion stream); H x W x 3 uint8 numpy each. Frame by frame
    the same as converting and resizing each alone."""

    import torch


    out: list[np.ndarray] = []
    cuda = bool(frames) and frames[0].y.is_cuda
    with torch.cuda.stream(_conversion_stream()) if cuda else contextlib.nullcontext():
        i = 0
        while i < len(frames):
            f0 = frames[i]
            tags = (f0.colorspace, f0.color_range, f0.height, f0.width)
            j = i + 1
            while j < len(frames) and j - i < batch and \
                    (frames[j].colorspace, frames[j].color_range, frames[j].height, frames[j].width) == tags:
                j += 1
            rgb = nv12_to_rgb_fast(torch.stack([f.y for f in frames[i:j]]), torch.stack([f.uv for f in frames[i:j]]),
                                   _colour_coefficients(path, f0.colorspace, f0.color_range))
            small = resize_nchw(rgb, *size_of((f0.height, f0.width)))
            out += list(small.permute(0, 2, 3, 1).contiguous().cpu().numpy())  # a GPU download synchronises
            i = j
    return out


def _nv12_resized(path: Path, y, uv, colorspace: int, color_range: int, height: int, width: int,
                  size_of: Callable[[tuple[int, int]], tuple[int, int]]) -> np.ndarray:
    """Possibly padded NV12 planes (torch, any device) -> RGB -> resized on their device -> H x W x 3 uint8."""
    y, uv = _cropped_nv12(path, y, uv, height, width)
    return _nv12_batch_resized(path, [_NV12(y, uv, colorspace, color_range, height, width)], size_of)[0]


_conversion = threading.local()


def _conversion_stream():
    """This thread's CUDA stream for NVDEC frame copies and conversion, made to wait for FFmpeg first.

    FFmpeg copies each decoded picture into its surface on the legacy default stream. Our kernels
    run on a stream of their own (torch's lowest priority), not on the default stream: decoding in a
    process whose model runs on its own non-blocking stream (the transformers engine's) then neither
    waits for the model's queued kernels nor delays them, and decoder threads do not wait for each
    other. The wait on the default stream orders our work after FFmpeg's copy."""
    import torch

    device = torch.cuda.current_device()
    streams = getattr(_conversion, "streams", None)
    if streams is None:
        streams = _conversion.streams = {}
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    stream = streams[device]
    stream.wait_stream(torch.cuda.default_stream(device))
    return stream


def _nvdec_copy(path: Path, frame) -> _NV12:
    """The visible NV12 planes of an NVDEC frame copied out of the decoder's surface, which goes back
    to the decoder when this returns (the copy has finished by then)."""
    import torch

    y, uv = _cropped_nv12(path, *_nvdec_planes(path, frame), frame.height, frame.width)
    stream = _conversion_stream()
    with torch.cuda.stream(stream):
        y = torch.empty_like(y, memory_format=torch.contiguous_format).copy_(y)
        uv = torch.empty_like(uv, memory_format=torch.contiguous_format).copy_(uv)
    stream.synchronize()
    return _NV12(y, uv, frame.colorspace, frame.color_range, frame.height, frame.width)


def decode_all(path: str | os.PathLike, *, threads: int = 1) -> np.ndarray:
    """Every frame of a video file, in presentation order (T x H x W x 3 uint8). For tests and baselines."""
    path = _clean_path(path)
    frames = decode_frames_full(path, None, threads=threads)
    return np.stack(frames)


def decode_frames_full(path: Path, indices: Optional[Sequence[int]], *, threads: int = 1,
                       convert: Callable = _to_rgb, hwaccel=None) -> list[np.ndarray]:
    """Decode the whole clip sequentially, keeping (converted to RGB) only `indices` (None: all)."""
    import av

    container = _open(path, hwaccel)
    try:
        stream = container.streams.video[0]
        _set_threads(stream, threads)
        want = None if indices is None else set(indices)
        got: dict[int, np.ndarray] = {}
        out: list[np.ndarray] = []
        i = -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                if want is None:
                    out.append(convert(frame))
                elif i in want:
                    got[i] = convert(frame)
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            raise VideoError(path, f"corrupt or truncated video: decoding failed after {i + 1} frames ({exc})") from None
    finally:
        container.close()
    if want is None:
        return out
    missing = sorted(want - got.keys())
    if missing:
        raise VideoError(path, f"corrupt or truncated video: only {i + 1} frames decode, frame {missing[0]} is missing")
    return [got[j] for j in indices]  # type: ignore[union-attr]


def _seek_groups(index: _Index, indices: Sequence[int]) -> tuple[dict[int, list[int]], list[list[int]]]:
    """(decode position -> presentation indices of the targets there, [start, end] decode-position
    groups): each target's chain starts at the last keyframe at or before it in decode order whose
    pts is not after the target's (open-GOP leading pictures go one GOP back); overlapping chains
    decode as one group."""

    order = sorted(range(len(index.pts)), key=index.pts.__getitem__)  # presentation rank -> decode pos
    keypos = [d for d, k in enumerate(index.key) if k]
    if not keypos or keypos[0] != 0 and not index.key[0]:
        # no keyframe flags (or stream starts without one): decode from the start
        keypos = [0] + keypos
    targets: dict[int, list[int]] = {}
    for i in set(indices):
        targets.setdefault(order[i], []).append(i)
    spans = []
    for d in targets:
        j = bisect.bisect_right(keypos, d) - 1
        while j > 0 and index.pts[keypos[j]] > index.pts[d]:
            j -= 1
        spans.append((keypos[max(j, 0)], d))
    groups: list[list[int]] = []
    for start, d in sorted(spans):
        if groups and start <= groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], d)
        else:
            groups.append([start, d])
    return targets, groups


class _Continuous:
    """A decoder fed the seek groups of clip after clip without a flush.

    For NVDEC a flush costs a new hardware decoder: FFmpeg's H.264 flush resets its context and the
    next picture sets the hwaccel up again (benchmarks/RESULTS.md, runs 38-40: without flushes an
    NVDEC worker decodes twice the clips). Every group starts at an IDR picture, which resets the
    decoder's references, so groups can follow each other; their packets carry running tickets as
    timestamps (a group's presentation order kept) so frames are matched to what went in, and at
    the end of a clip copies of its last IDR picture push out what reordering holds back (their
    frames are dropped whenever they come out)."""

    PUSHES = 8

    def __init__(self, cc):
        self.cc = cc
        self.ticket = 0

    def decode(self, container, stream, index: _Index, indices: Sequence[int],
               convert: Callable) -> Optional[dict[int, Any]]:
        """index -> convert(frame) for `indices`; None (nothing converted) where this clip cannot be
        decoded this way (a group not starting at an IDR picture, pictures held back beyond the
        pushes): the caller decodes it the usual way. FFmpeg errors propagate."""
        import av

        targets, groups = _seek_groups(index, indices)
        pos_of_pts = {p: d for d, p in enumerate(index.pts)}
        nal_len = _nal_length_size(stream.codec_context.extradata)
        want: dict[int, list[int]] = {}
        got: dict[int, Any] = {}

        def feed(data: bytes, ticket: int) -> None:
            packet = av.Packet(data)
            packet.pts = ticket
            if ticket not in want:
                _mark_discard(packet)
            for frame in self.cc.decode(packet):
                for i in want.pop(frame.pts, ()):
                    got[i] = convert(frame)

        last_idr = None
        for start, end in groups:
            container.seek(index.dts[start] if index.dts[start] is not None else index.pts[start], stream=stream,
                           backward=True, any_frame=False)
            base, fed_start = self.ticket + 1, False
            for packet in container.demux(stream):
                d = pos_of_pts.get(packet.pts) if packet.size and packet.pts is not None else None
                if d is None or d < start:
                    continue
                if not fed_start:
                    if d != start or not _h264_is_idr(memoryview(packet), nal_len):
                        return None
                    fed_start, last_idr = True, bytes(packet)
                if d > end:
                    break
                if index.nonref[d] and d not in targets:
                    continue  # a non-reference picture nobody needs
                ticket = base + (packet.pts - index.pts[start])  # closed GOP: nothing shows before its IDR
                self.ticket = max(self.ticket, ticket)
                if d in targets:
                    want[ticket] = targets[d]
                feed(bytes(packet), ticket)
            if not fed_start:
                return None
        for _ in range(self.PUSHES):
            if not want:
                break
            self.ticket += 1
            feed(last_idr, self.ticket)
        return None if want else got


_continuous = threading.local()  # each decoding thread's _Continuous decoders, by stream format


def _continuous_nvdec(path: Path, stream) -> Optional[_Continuous]:
    """This thread's NVDEC decoder for `stream`'s format (H.264 only: its IDR pictures are
    recognised), kept from clip to clip; None for other codecs."""
    import av

    cc0 = stream.codec_context
    if cc0.name != "h264":
        return None
    key = _stream_format(stream)
    cache = getattr(_continuous, "decoders", None)
    if cache is None:
        cache = _continuous.decoders = {}
    if key not in cache:
        cc = av.CodecContext.create("h264", "r", hwaccel=_nvdec_hwaccel(path))
        cc.extradata = cc0.extradata
        if len(cache) >= 2:  # a couple of formats at a time: each holds its surfaces on the GPU
            cache.pop(next(iter(cache)))
        cache[key] = _Continuous(cc)
    return cache[key]


def _stream_format(stream) -> tuple:
    """What a decoder kept from clip to clip must share with the stream: its headers and size."""
    cc0 = stream.codec_context
    return bytes(cc0.extradata or b""), cc0.width, cc0.height


def _forget_continuous(stream) -> None:
    getattr(_continuous, "decoders", {}).pop(_stream_format(stream), None)


def _decode_sparse(path: Path, container, stream, index: _Index, indices: Sequence[int],
                   stats: Optional[dict] = None, convert: Callable = _to_rgb, cc=None) -> dict[int, np.ndarray]:
    """Decode only what `indices` (presentation order) need; returns index -> RGB frame.

    `stats`, when given, receives counts: groups (seeks), packets_decoded, packets_skipped.
    `cc`: the decoder to feed (default: the stream's own; benchmarks/bench_cuvid.py passes others).
    """
    import av

    pos_of_pts = {p: d for d, p in enumerate(index.pts)}
    targets, groups = _seek_groups(index, indices)

    cc = cc or stream.codec_context
    result: dict[int, np.ndarray] = {}
    n_sent = n_skipped = 0
    for gi, (start, end) in enumerate(groups):
        if gi:
            cc.flush_buffers()
        want_pts = {index.pts[d]: targets[d] for d in targets if start <= d <= end}
        seek_ts = index.dts[start] if index.dts[start] is not None else index.pts[start]
        fed_start = False
        for attempt in range(2):
            container.seek(seek_ts if attempt == 0 else (stream.start_time or 0) - 1, stream=stream,
                           backward=True, any_frame=False)
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 or packet.pts is None:
                        continue
                    d = pos_of_pts.get(packet.pts)
                    if d is None:
                        continue
                    if d < start:
                        continue
                    if not fed_start:
                        if d != start:
                            break  # seek landed after the keyframe: retry from the stream start
                        fed_start = True
                    if d > end:
                        break
                    if index.nonref[d] and d not in targets:
                        n_skipped += 1
                        continue  # a non-reference picture nobody needs: no other pixel depends on it
                    n_sent += 1
                    if d not in targets:
                        _mark_discard(packet)  # decoded as a reference only: its frame never comes out
                    for frame in cc.decode(packet):
                        if frame.pts in want_pts:
                            rgb = convert(frame)
                            for i in want_pts[frame.pts]:
                                result[i] = rgb
                for frame in cc.decode(None):
                    if frame.pts in want_pts:
                        rgb = convert(frame)
                        for i in want_pts[frame.pts]:
                            result[i] = rgb
            except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
                raise VideoError(path, f"corrupt or truncated video: decoding failed near frame {min(min(v) for v in want_pts.values())} ({exc})") from None
            if fed_start:
                break
            cc.flush_buffers()
    if stats is not None:
        stats.update(groups=len(groups), packets_decoded=n_sent, packets_skipped=n_skipped)
    return result


def decode_frames(
    path: str | os.PathLike, indices: Sequence[int], *, threads: int = 1, sparse: bool = True
) -> list[np.ndarray]:
    """Frames `indices` (presentation order) of a video file at source size, RGB uint8 H x W x 3.

    `sparse=True` decodes only what those frames need; `sparse=False` decodes the whole clip.
    Both give identical pixels.
    """
    path = _clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    if not sparse:
        return decode_frames_full(path, indices, threads=threads)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        _set_threads(stream, threads)
        index = _build_index(path, container, stream)
        total = len(index.pts)
        bad = [i for i in indices if not 0 <= i < total]
        if bad:
            raise VideoError(path, f"frame index {bad[0]} out of range (clip has {total} frames)")
        got = _decode_sparse(path, container, stream, index, indices)
    finally:
        container.close()
    if any(i not in got for i in indices):
        return decode_frames_full(path, indices, threads=threads)
    return [got[i] for i in indices]


def load_video(
    path: str | os.PathLike,
    *,
    nframes: Optional[int] = None,
    fps: Optional[float] = None,
    min_pixels: Optional[int] = DEFAULT_MIN_PIXELS,
    max_pixels: Optional[int] = None,
    total_pixels: Optional[float] = None,
    factor: int = 32,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: Optional[int] = None,
    source_fps: Optional[float] = None,
    threads: int = 1,
    sparse: bool = True,
    decoder: str = "cpu",
) -> VideoFrames:
    """Sample and resize a video (file or directory of frames) the way qwen-vl-utils 0.0.14 does.

    Neither `nframes` nor `fps`: fps 2.0 (qwen-vl-utils' default). `max_pixels=None`: only the
    per-frame cap applies. `threads`: FFmpeg decoder threads (1 = one core per video, the fastest
    way to decode many videos at once). `sparse=False` decodes the whole clip (reference path).

    `decoder="nvdec"` decodes video files on the GPU (PyAV's CUDA hwaccel; frames stay in GPU memory),
    converts to RGB exactly as swscale does on the CPU (avcap.video.colour), resizes there with the
    same torchvision call and downloads only the resized frames. No fallback: without a CUDA GPU,
    NVDEC support in PyAV's FFmpeg, or NVDEC support for the codec it raises a VideoError saying so.
    Each thread keeps its NVDEC decoder for H.264 from clip to clip and never flushes it (a flush
    would set the hardware decoder up again; `_Continuous`); open-GOP clips and other codecs take
    a decoder per clip. Frame directories are read with PIL either way.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    path = _clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    kw = dict(nframes=nframes, fps=fps, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
              factor=factor, min_frames=min_frames, max_frames=max_frames)
    if path.is_dir():
        info = probe(path, source_fps=source_fps)
        plan = plan_sampling(info, **kw)
        arr = resize_frames(_load_images(path, plan.frame_indices, (info.height, info.width)),
                            plan.resized_height, plan.resized_width)
    else:
        info, plan, frames, _ = _sample_file(path, kw, threads=threads, sparse=sparse, decoder=decoder)
        arr = np.stack(frames)
    return VideoFrames(
        frames=arr,
        frame_indices=list(plan.frame_indices),
        timestamps=[i / info.fps for i in plan.frame_indices],
        fps=info.fps,
        total_frames=info.total_frames,
        resized_height=plan.resized_height,
        resized_width=plan.resized_width,
        path=str(path),
        notes=plan.notes,
        height=info.height,
        width=info.width,
    )


_SAMPLING_KEYS = ("nframes", "fps", "min_pixels", "max_pixels", "total_pixels", "factor", "min_frames", "max_frames")
_PLANAR_420 = ("yuv420p", "yuvj420p", "nv12")  # what DecodedVideo carries as planes (8-bit 4:2:0)
_PLANES_BATCH = 4  # frames converted and resized per call in DecodedVideo.finish (~60 MB per 1936x1220 frame on the GPU)


class _NotPlanar(Exception):
    """A picture `DecodedVideo` does not carry as planes: decode_video converts on the CPU instead."""


@dataclass
class DecodedVideo:
    """A video's sampled pictures as the decoder gave them, before colour conversion and resize.

    `decode_video` does `load_video`'s decoding only; `finish(device)` does the rest — swscale's
    exact YUV -> RGB conversion (avcap.video.colour) and qwen-vl-utils' resize — on any torch
    device. On the CPU the result equals `load_video`'s bit for bit; on a GPU the conversion is
    still exact and the resize within one level of the CPU's (torchvision's bicubic on CUDA).
    The point: colour conversion and resize are ~half of the CPU time `load_video` spends per
    clip, and a GPU does them in milliseconds — in the process whose CUDA context runs the model
    (NVDEC workers in other processes would otherwise convert in contexts of their own, which
    the GPU time-slices with the model's). `planes` is None when the video is not even-sized
    8-bit 4:2:0 (or a frame directory): `frames` then already holds `load_video`'s result.
    """

    video: VideoFrames  # every field final; `frames` is empty until finished when `planes` is set
    # T x (H*W*3/2) uint8: Y (H x W), then chroma: "i420" U, V (H/2 x W/2 each; the CPU decoder's),
    # "nv12" U and V interleaved (H/2 x W/2 x 2; NVDEC's); numpy, or a (pinned) torch tensor
    planes: Any = None
    colorspace: int = 2
    color_range: int = 0
    chroma: str = "i420"

    def finish(self, device: Any = "cpu") -> VideoFrames:
        """`load_video`'s VideoFrames, converted and resized on `device` (see class docstring)."""
        if self.planes is None:
            return self.video

        import torch

        v = self.video
        dev = torch.device(device)
        hh, ww, n = v.height, v.width, v.height * v.width
        out: list[np.ndarray] = []
        cuda = dev.type == "cuda"
        with torch.cuda.device(dev) if cuda else contextlib.nullcontext():
            with torch.cuda.stream(_conversion_stream()) if cuda else contextlib.nullcontext():
                for i in range(0, len(self.planes), _PLANES_BATCH):
                    p = torch.as_tensor(self.planes[i: i + _PLANES_BATCH]).to(dev, non_blocking=True)
                    pictures = [_NV12(f[:n].view(hh, ww), self._uv(f[n:], hh, ww),
                                      self.colorspace, self.color_range, hh, ww) for f in p]
                    out += _nv12_batch_resized(Path(v.path), pictures, lambda hw: (v.resized_height, v.resized_width),
                                               batch=_PLANES_BATCH)
        return VideoFrames(**{**v.__dict__, "frames": np.stack(out)})

    def _uv(self, chroma, hh: int, ww: int):
        """The H/2 x W/2 x 2 chroma of one flattened picture's bytes after its luma."""

        q = hh * ww // 4
        if self.chroma == "nv12":
            return chroma.view(hh // 2, ww // 2, 2)
        return interleave_uv(chroma[:q].view(hh // 2, ww // 2), chroma[q:].view(hh // 2, ww // 2))


def decode_video(path: str | os.PathLike, *, source_fps: Optional[float] = None, threads: int = 1,
                 sparse: bool = True, decoder: str = "cpu", **kw: Any) -> DecodedVideo:
    """`load_video(path, **kw)` up to the decoded pictures: a `DecodedVideo` whose `finish(device)`
    converts and resizes them. Takes load_video's sampling keywords (same defaults). `decoder`:
    "cpu", or "nvdec" (the sampled pictures are downloaded from the GPU as NVDEC made them, NV12,
    by FFmpeg's pitched copy: no kernel of ours runs in this process's CUDA context). A clip it
    cannot carry as planes is decoded again by `load_video` (rare: not 8-bit 4:2:0)."""

    path = _clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    params = inspect.signature(load_video).parameters
    sampling = {k: params[k].default for k in _SAMPLING_KEYS}
    unknown = set(kw) - set(sampling)
    if unknown:
        raise TypeError(f"decode_video() got unexpected keyword arguments {sorted(unknown)}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if path.is_dir():
        return DecodedVideo(load_video(path, source_fps=source_fps, threads=threads, sparse=sparse, **kw))
    sampling.update(kw)

    try:
        info, plan, planes, tags = _sample_file(path, sampling, threads=threads, sparse=sparse, decoder=decoder,
                                               planes=True)
        swscale_coefficients(*tags)
    except (_NotPlanar, UnsupportedColour):
        return DecodedVideo(load_video(path, threads=threads, sparse=sparse, decoder=decoder, **kw))
    video = VideoFrames(
        frames=np.empty((0, plan.resized_height, plan.resized_width, 3), dtype=np.uint8),
        frame_indices=list(plan.frame_indices), timestamps=[i / info.fps for i in plan.frame_indices], fps=info.fps,
        total_frames=info.total_frames, resized_height=plan.resized_height, resized_width=plan.resized_width,
        path=str(path), notes=plan.notes, height=info.height, width=info.width)
    return DecodedVideo(video, np.stack(planes), colorspace=tags[0], color_range=tags[1],
                        chroma="nv12" if decoder == "nvdec" else "i420")


def _sample_file(path: Path, kw: dict[str, Any], *, threads: int, sparse: bool, decoder: str,
                 planes: bool = False) -> tuple[VideoInfo, SamplePlan, list, Optional[tuple[int, int]]]:
    """Decode the sampled frames of a video file: (info, plan, frames, colour tags).

    frames: resized RGB (H x W x 3 uint8) per sampled index; with `planes=True` the decoded
    pictures instead, each flattened (Y, then U and V: I420 from the CPU decoder, NV12 from NVDEC),
    colour tags (colorspace, range) of the first one, and `_NotPlanar` raised for a picture that
    is not even-sized 8-bit 4:2:0 or whose tags differ."""
    hwaccel = _nvdec_hwaccel(path) if decoder == "nvdec" else None
    container = _open(path, hwaccel)
    tags: list[tuple[int, int]] = []
    try:
        stream = container.streams.video[0]
        _set_threads(stream, threads)
        index = _build_index(path, container, stream)
        info = _info_from(path, stream, index)
        plan = plan_sampling(info, **kw)
        sizes: dict[tuple[int, int], tuple[int, int]] = {}

        def size_of(hw: tuple[int, int]) -> tuple[int, int]:
            if hw not in sizes:
                try:
                    sizes[hw] = resized_size(hw[0], hw[1], len(plan.frame_indices), **_size_kw(kw))
                except ValueError as exc:  # a picture of another size than the stream's (mid-stream change)
                    raise VideoError(path, str(exc)) from None
            return sizes[hw]

        def convert(frame):
            # CPU: RGB, then resized at once (memory holds the output, not T full-size frames);
            # NVDEC: a copy of the NV12 planes, converted and resized in batches afterwards;
            # planes: the picture as decoded, I420 or (NVDEC) NV12 in system memory (converted and
            # resized by DecodedVideo.finish)
            size_of((frame.height, frame.width))
            if planes:
                fmt = frame.format.name if hwaccel is None else _nvdec_sw_format(path, frame)
                if fmt not in _PLANAR_420 or frame.height % 2 or frame.width % 2:
                    raise _NotPlanar(f"{fmt} {frame.width}x{frame.height}")
                tags.append((frame.colorspace, frame.color_range))
                if tags[-1] != tags[0]:
                    raise _NotPlanar("colour tags change within the clip")
                # NVDEC: FFmpeg downloads the visible picture (av_hwframe_transfer_data, pitched copies)
                return frame.to_ndarray().reshape(-1)
            if hwaccel is not None:
                return _nvdec_copy(path, frame)
            rgb = _to_rgb(frame)
            return resize_frames([rgb], *size_of(rgb.shape[:2]))[0]

        if sparse:
            got = _nvdec_continuous_or_none(path, container, stream, index, plan.frame_indices, convert) \
                if hwaccel is not None else None
            if got is None:
                got = _decode_sparse(path, container, stream, index, plan.frame_indices, convert=convert)
            missing = [i for i in plan.frame_indices if i not in got]
        else:
            missing = plan.frame_indices
    finally:
        container.close()
    if missing:
        if sparse:
            plan.notes.append(f"sparse decode missed frames {missing[:4]}; decoded the whole clip instead")
        frames = decode_frames_full(path, plan.frame_indices, threads=threads, convert=convert, hwaccel=hwaccel)
    else:
        frames = [got[i] for i in plan.frame_indices]
    if hwaccel is not None and not planes:
        frames = _resized_once(path, frames, size_of)
    if len(sizes) > 1:
        raise VideoError(path, f"frame size changes within the clip ({', '.join(f'{w}x{h}' for h, w in sizes)})")
    (src_hw, (plan.resized_height, plan.resized_width)), = sizes.items()
    if src_hw != (info.height, info.width):  # the stream header disagreed with the decoded frames
        info.height, info.width = src_hw
    return info, plan, frames, (tags[0] if tags else None)


def _nvdec_continuous_or_none(path: Path, container, stream, index: _Index, indices: Sequence[int],
                              convert: Callable) -> Optional[dict]:
    """The sampled frames by this thread's unflushed NVDEC decoder (`_Continuous`), or None: the
    caller then decodes them with flushes (a codec other than H.264, a group not starting at an IDR
    picture, or an FFmpeg error — the decoder is dropped then, and the usual path reports it)."""
    import av

    dec = _continuous_nvdec(path, stream)
    if dec is None:
        return None
    try:
        return dec.decode(container, stream, index, indices, convert)
    except av.error.FFmpegError:  # type: ignore[attr-defined]
        _forget_continuous(stream)
        return None


def _size_kw(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw[k] for k in ("factor", "min_pixels", "max_pixels", "total_pixels")}


def _resized_once(path: Path, frames: list[_NV12], size_of) -> list[np.ndarray]:
    """`_nv12_batch_resized` of the distinct pictures (a picture sampled twice is converted once)."""
    distinct = list({id(f): f for f in frames}.values())
    done = dict(zip((id(f) for f in distinct), _nv12_batch_resized(path, distinct, size_of)))
    return [done[id(f)] for f in frames]


def _load_images(directory: Path, indices: Sequence[int], size: tuple[int, int]) -> list[np.ndarray]:
    from PIL import Image

    files = _frame_files(directory)
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in indices:
        if i not in cache:
            try:
                with Image.open(files[i]) as im:
                    arr = np.array(im.convert("RGB"))
            except Exception as exc:
                raise VideoError(files[i], f"not a readable image ({exc.__class__.__name__}: {exc})") from None
            if arr.shape[:2] != size:
                raise VideoError(files[i], f"frame size {arr.shape[1]}x{arr.shape[0]} differs from the first frame's {size[1]}x{size[0]}")
            cache[i] = arr
        out.append(cache[i])
    return out


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
