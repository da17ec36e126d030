"""Decoding on the CPU (PyAV, whose wheels bundle FFmpeg) and encoding (`write_video`).

`decode_sparse` decodes only what the sampled frames need: for each group of targets
(avcap.video.index.seek_groups) it seeks to the keyframe before them and decodes forward to the
last target, sending the decoder only the keyframe, the reference pictures and the targets
themselves. A non-reference picture is, by the H.264 definition, never used to predict another
picture, so leaving it out changes no pixel of the frames we keep; tests check frame-for-frame
equality with a full decode (`decode_frames_full`). The reference pictures that are not targets go
in flagged AV_PKT_FLAG_DISCARD (avcap.video.discard). The decoder fed is the stream's own unless
the caller passes another (`cc`: NVDEC's, benchmarks' parsers), and `convert` turns each kept
frame into what the caller wants (RGB by default, NV12 copies for NVDEC).

Frame directories (JPEG/PNG) are read with PIL (`load_images`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np

from avcap.video.discard import mark_discard
from avcap.video.index import (
    Index,
    build_index,
    clean_path,
    frame_files,
    open_video,
    seek_groups,
)
from avcap.video.sampling import VideoError

# swscale's thread count is a reformat argument from PyAV 17 on; before, it ran on the calling thread anyway
_ONE_THREAD = {"threads": 1} if int(metadata.version("av").split(".")[0]) >= 17 else {}

# Heavy libraries (PIL, av) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


def reformat(frame, pix_fmt: str):
    """`frame` in `pix_fmt` (swscale), by a reformatter of its own on the calling thread alone.

    Not `frame.reformat(...)`/`to_ndarray(format=...)`: PyAV 18.1.1 converts every frame of a thread with
    one shared reformatter, whose swscale worker threads (one per core by default) a forked process
    inherits without the threads themselves; a DataLoader worker forked after its parent had converted
    a frame then waited forever in its first conversion (the suite hung on `avcap train` this way). A
    reformatter per call, as PyAV < 18.1.1 made one per frame, and one thread: avcap decodes videos in
    parallel, one core each. The same pixels (tests compare)."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter().reformat(frame, format=pix_fmt, **_ONE_THREAD)


def to_rgb(frame) -> np.ndarray:
    """A decoded PyAV frame as H x W x 3 uint8 RGB (swscale, the conversion avcap.video.colour repeats)."""
    return reformat(frame, "rgb24").to_ndarray()


def set_threads(stream, threads: int) -> None:
    """1: decode on the calling core only; 0: FFmpeg picks; n: n threads (frame + slice threading)."""
    cc = stream.codec_context
    cc.thread_count = threads
    if threads != 1:
        cc.thread_type = "AUTO"


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
                frame = reformat(av.VideoFrame.from_ndarray(arr, format="rgb24"), pix_fmt)
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


def decode_all(path: str | os.PathLike, *, threads: int = 1) -> np.ndarray:
    """Every frame of a video file, in presentation order (T x H x W x 3 uint8). For tests and baselines."""
    path = clean_path(path)
    frames = decode_frames_full(path, None, threads=threads)
    return np.stack(frames)


def decode_frames_full(path: Path, indices: Optional[Sequence[int]], *, threads: int = 1,
                       convert: Callable = to_rgb, hwaccel=None) -> list[np.ndarray]:
    """Decode the whole clip sequentially, keeping (converted to RGB) only `indices` (None: all)."""
    import av

    container = open_video(path, hwaccel)
    try:
        stream = container.streams.video[0]
        set_threads(stream, threads)
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


def decode_sparse(path: Path, container, stream, index: Index, indices: Sequence[int],
                   stats: Optional[dict] = None, convert: Callable = to_rgb, cc=None) -> dict[int, np.ndarray]:
    """Decode only what `indices` (presentation order) need; returns index -> RGB frame.

    `stats`, when given, receives counts: groups (seeks), packets_decoded, packets_skipped.
    `cc`: the decoder to feed (default: the stream's own; benchmarks/bench_cuvid.py passes others).
    """
    import av

    pos_of_pts = {p: d for d, p in enumerate(index.pts)}
    targets, groups = seek_groups(index, indices)

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
                        mark_discard(packet)  # decoded as a reference only: its frame never comes out
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
    path = clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    if not sparse:
        return decode_frames_full(path, indices, threads=threads)
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        set_threads(stream, threads)
        index = build_index(path, container, stream)
        total = len(index.pts)
        bad = [i for i in indices if not 0 <= i < total]
        if bad:
            raise VideoError(path, f"frame index {bad[0]} out of range (clip has {total} frames)")
        got = decode_sparse(path, container, stream, index, indices)
    finally:
        container.close()
    if any(i not in got for i in indices):
        return decode_frames_full(path, indices, threads=threads)
    return [got[i] for i in indices]


def load_images(directory: Path, indices: Sequence[int], size: tuple[int, int]) -> list[np.ndarray]:
    """Frames `indices` of a frame directory as RGB arrays, each read once; a VideoError naming the
    file for an unreadable image or one whose (height, width) is not `size`."""
    from PIL import Image

    files = frame_files(directory)
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
