"""Opening, probing and indexing video: the demux pass, the packet index, H.264 NAL parsing and
the seek groups a sparse decode follows.

A demux pass (no decoding, `build_index`) indexes every packet — presentation timestamp, keyframe
flag and, for H.264, whether the picture is a reference picture. Frame index i is the i-th frame
in presentation order (the i-th smallest packet pts), which is what a full sequential decode
produces. Timestamps are `index / fps` with fps the stream's average rate, the convention
transformers uses for `video_metadata` (exact for constant-frame-rate video; for variable-frame-rate
video the index is still exact, the timestamp is then the nominal one). `seek_groups` turns sampled
indices into decode-order spans, each starting at a keyframe.

A directory of JPEG/PNG frames (as LingoQA ships) is a video too: frames in natural sort order,
fps from a `fps.txt` in the directory, else the caller's `source_fps`, else 1.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from avcap.video.sampling import IMAGE_SUFFIXES, VideoError, VideoInfo

# Heavy libraries (PIL, av) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


def clean_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, a `file://` prefix dropped."""
    s = os.fspath(path)
    if s.startswith("file://"):
        s = s[len("file://") :]
    return Path(s)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def frame_files(directory: Path) -> list[Path]:
    """A frame directory's JPEG/PNG files in natural sort order (frame 2 before frame 10)."""
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
class Index:
    """Every packet of the video stream, in decode order."""

    pts: list[int]
    dts: list[Optional[int]]
    key: list[bool]
    nonref: list[bool]
    header_frames: int

    @property
    def presentation(self) -> list[int]:
        return sorted(self.pts)


def nal_length_size(extradata: Optional[bytes]) -> Optional[int]:
    """4 (usually) for avcC (MP4/MKV) H.264, None for Annex B (start codes)."""
    if extradata and len(extradata) >= 7 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    return None


def h264_is_nonref(data: memoryview, nal_len: Optional[int]) -> bool:
    """True when the access unit's first slice NAL has nal_ref_idc == 0 (a non-reference picture)."""
    hdr = _h264_first_slice(data, nal_len)
    return hdr is not None and (hdr >> 5) & 3 == 0


def h264_is_idr(data: memoryview, nal_len: Optional[int]) -> bool:
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
# frames); the stream's decoder reads that from the bitstream itself. AVCAP_FULL_PROBE=1 (or
# `set_full_probe(True)`): FFmpeg's own probe, the benchmarks' A/B switch
_SKIP_PROBE = {"skip_frame": "all"}
_PROBE_OPTIONS = {} if os.environ.get("AVCAP_FULL_PROBE", "0") == "1" else dict(_SKIP_PROBE)


def set_full_probe(on: bool) -> None:
    """Let FFmpeg's stream probe decode the first picture when a video is opened (True; FFmpeg's
    default, ~50 ms of CPU per 1936x1220 clip) or not (False, avcap's default: the decoder reads
    the pixel format from the bitstream itself; the same frames either way). Applies in this
    process and in the processes it starts from now on: the setting also goes to the environment
    as AVCAP_FULL_PROBE ("1"/"0"), read when a process imports this module. For benchmarks."""
    global _PROBE_OPTIONS
    _PROBE_OPTIONS = {} if on else dict(_SKIP_PROBE)
    os.environ["AVCAP_FULL_PROBE"] = "1" if on else "0"


def full_probe() -> bool:
    """Whether opening a video lets FFmpeg's probe decode a picture (see `set_full_probe`)."""
    return not _PROBE_OPTIONS


def open_video(path: Path, hwaccel=None):
    """The container, its video stream decoded in software or (`hwaccel`: avcap.video.nvdec.hwaccel) on NVDEC."""
    import av

    if not path.exists():
        raise VideoError(path, "no such file or directory")
    if path.is_dir():
        raise VideoError(path, "is a directory (a frame directory is read with load_video/probe)")
    try:
        container = av.open(str(path), options=_PROBE_OPTIONS, hwaccel=hwaccel)
    except (av.error.FFmpegError, UnicodeDecodeError, NotImplementedError) as exc:  # type: ignore[attr-defined]
        if hwaccel is not None:  # a file software cannot open either gets the plain error
            open_video(path).close()
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


def build_index(path: Path, container, stream) -> Index:
    """Every packet of `stream` (of `container`, from `open_video`) by one demux pass, nothing decoded;
    a VideoError naming `path` for packets without timestamps, duplicate timestamps, or fewer packets
    than the header lists. Leaves the container at its end (the decoders seek)."""
    import av

    nonref_check = stream.codec_context.name == "h264"
    nal_len = nal_length_size(stream.codec_context.extradata) if nonref_check else None
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
            nonref.append(nonref_check and h264_is_nonref(memoryview(packet), nal_len))
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise VideoError(path, f"corrupt or truncated video: demuxing failed after {len(pts)} packets ({exc})") from None
    header = int(stream.frames or 0)
    if len(set(pts)) != len(pts):
        raise VideoError(path, "duplicate packet timestamps; cannot index frames")
    if header and len(pts) < header:
        raise VideoError(path, f"corrupt or truncated video: the header lists {header} frames, only {len(pts)} are present")
    return Index(pts=pts, dts=dts, key=key, nonref=nonref, header_frames=header)


def probe(path: str | os.PathLike, *, source_fps: Optional[float] = None) -> VideoInfo:
    """Frame count (exact: every packet is indexed, nothing decoded), fps, size and duration."""
    path = clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoError(path, f"directory holds zero frames (no {'/'.join(IMAGE_SUFFIXES)} files)")
        fps = _dir_fps(path, source_fps)
        h, w = _image_size(files[0])
        return VideoInfo(str(path), len(files), fps, h, w, len(files) / fps, codec="images", is_frame_dir=True)
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        index = build_index(path, container, stream)
        return info_from(path, stream, index)
    finally:
        container.close()


def info_from(path: Path, stream, index: Index) -> VideoInfo:
    """`probe`'s VideoInfo from an open stream and its index (a VideoError for zero frames, no frame
    rate or no frame size)."""
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


def seek_groups(index: Index, indices: Sequence[int]) -> tuple[dict[int, list[int]], list[list[int]]]:
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
