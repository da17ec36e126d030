"""Decoding on NVIDIA's hardware decoder: PyAV's CUDA hwaccel set up in torch's context, the NV12
surfaces copied out and converted to RGB exactly as swscale does on the CPU (avcap.video.colour),
resized there with qwen-vl-utils' torchvision call, and the continuous decoders.

`hwaccel(path)` gives PyAV's CUDA hwaccel with frames kept on the GPU, or a VideoError saying why
NVDEC cannot be used (no CUDA GPU, no NVDEC in PyAV's FFmpeg). `copy_frame` copies a decoded
picture's visible NV12 planes out of the decoder's surface (`NV12`), `nv12_batch_resized` converts
and resizes copies, on this thread's own CUDA stream (`conversion_stream`). `Continuous` is a
decoder fed clip after clip without a flush (a flush would set the hardware decoder up again);
each thread keeps one per H.264 stream format (`continuous_decoder`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from avcap.video.colour import (
    UnsupportedColour,
    crop_nv12,
    nv12_to_rgb,
    nv12_to_rgb_fast,
    swscale_coefficients,
)
from avcap.video.discard import mark_discard
from avcap.video.index import Index, h264_is_idr, nal_length_size, seek_groups
from avcap.video.sampling import VideoError, resize_nchw

# Heavy libraries (av, torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


def hwaccel(path: Path):
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


def cropped_nv12(path: Path, y, uv, height: int, width: int):
    """`colour.crop_nv12` (views of the visible planes), its refusal a VideoError naming `path`."""

    try:
        return crop_nv12(y, uv, height, width)
    except UnsupportedColour as exc:
        raise VideoError(path, f"decoder='nvdec': {exc}; use decoder='cpu'") from None


def rgb_from_nv12(path: Path, y, uv, colorspace: int, color_range: int, height: int, width: int):
    """3 x height x width uint8 RGB (torch, planes' device) from possibly padded NV12 planes, as swscale
    converts the software decoder's frame (avcap.video.colour)."""

    coeffs = _colour_coefficients(path, colorspace, color_range)
    y, uv = cropped_nv12(path, y, uv, height, width)
    return nv12_to_rgb(y, uv, coeffs)


def surface_format(path: Path, frame) -> str:
    """The pixel format of a CUDA frame's surface (nv12, p010le, ...); a VideoError for a frame NVDEC
    did not decode."""
    sw = getattr(frame, "sw_format", None)
    if frame.format.name != "cuda" or sw is None:
        raise VideoError(path, f"decoder='nvdec': NVDEC did not decode this stream (it gave {frame.format.name} frames)")
    return sw.name


def surface_planes(path: Path, frame):
    """(y, uv) of a CUDA frame: torch views of the decoder's NV12 surface (no copy)."""
    import torch

    sw = surface_format(path, frame)
    if sw != "nv12":
        raise VideoError(path, f"decoder='nvdec': only 8-bit 4:2:0 video (NV12 surfaces) is converted, "
                         f"NVDEC gave {sw}; use decoder='cpu'")
    # FFmpeg's copy into the surface is on the legacy default stream: `conversion_stream` waits for it
    y, uv = (torch.from_dlpack(p.__dlpack__(stream=None)) for p in frame.planes[:2])
    return y, uv


@dataclass
class NV12:
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
NV12_BATCH = 1


def nv12_batch_resized(path: Path, frames: Sequence[NV12],
                        size_of: Callable[[tuple[int, int]], tuple[int, int]],
                        batch: int = NV12_BATCH) -> list[np.ndarray]:
    """NV12 copies -> RGB -> resized, `batch` frames at a time with the same size and colour tags, on
    their device (CUDA: this thread's conversion stream); H x W x 3 uint8 numpy each. Frame by frame
    the same as converting and resizing each alone."""

    import torch

    out: list[np.ndarray] = []
    cuda = bool(frames) and frames[0].y.is_cuda
    with torch.cuda.stream(conversion_stream()) if cuda else contextlib.nullcontext():
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


def nv12_resized(path: Path, y, uv, colorspace: int, color_range: int, height: int, width: int,
                  size_of: Callable[[tuple[int, int]], tuple[int, int]]) -> np.ndarray:
    """Possibly padded NV12 planes (torch, any device) -> RGB -> resized on their device -> H x W x 3 uint8."""
    y, uv = cropped_nv12(path, y, uv, height, width)
    return nv12_batch_resized(path, [NV12(y, uv, colorspace, color_range, height, width)], size_of)[0]


_conversion = threading.local()


def conversion_stream():
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


def copy_frame(path: Path, frame) -> NV12:
    """The visible NV12 planes of an NVDEC frame copied out of the decoder's surface, which goes back
    to the decoder when this returns (the copy has finished by then)."""
    import torch

    y, uv = cropped_nv12(path, *surface_planes(path, frame), frame.height, frame.width)
    stream = conversion_stream()
    with torch.cuda.stream(stream):
        y = torch.empty_like(y, memory_format=torch.contiguous_format).copy_(y)
        uv = torch.empty_like(uv, memory_format=torch.contiguous_format).copy_(uv)
    stream.synchronize()
    return NV12(y, uv, frame.colorspace, frame.color_range, frame.height, frame.width)


class Continuous:
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

    def decode(self, container, stream, index: Index, indices: Sequence[int],
               convert: Callable) -> Optional[dict[int, Any]]:
        """index -> convert(frame) for `indices`; None (nothing converted) where this clip cannot be
        decoded this way (a group not starting at an IDR picture, pictures held back beyond the
        pushes): the caller decodes it the usual way. FFmpeg errors propagate."""
        import av

        targets, groups = seek_groups(index, indices)
        pos_of_pts = {p: d for d, p in enumerate(index.pts)}
        nal_len = nal_length_size(stream.codec_context.extradata)
        want: dict[int, list[int]] = {}
        got: dict[int, Any] = {}

        def feed(data: bytes, ticket: int) -> None:
            packet = av.Packet(data)
            packet.pts = ticket
            if ticket not in want:
                mark_discard(packet)
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
                    if d != start or not h264_is_idr(memoryview(packet), nal_len):
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


_continuous = threading.local()  # each decoding thread's Continuous decoders, by stream format


def continuous_decoder(path: Path, stream) -> Optional[Continuous]:
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
        cc = av.CodecContext.create("h264", "r", hwaccel=hwaccel(path))
        cc.extradata = cc0.extradata
        if len(cache) >= 2:  # a couple of formats at a time: each holds its surfaces on the GPU
            cache.pop(next(iter(cache)))
        cache[key] = Continuous(cc)
    return cache[key]


def _stream_format(stream) -> tuple:
    """What a decoder kept from clip to clip must share with the stream: its headers and size."""
    cc0 = stream.codec_context
    return bytes(cc0.extradata or b""), cc0.width, cc0.height


def _forget_continuous(stream) -> None:
    getattr(_continuous, "decoders", {}).pop(_stream_format(stream), None)


def decode_continuous_or_none(path: Path, container, stream, index: Index, indices: Sequence[int],
                              convert: Callable) -> Optional[dict]:
    """The sampled frames by this thread's unflushed NVDEC decoder (`Continuous`), or None: the
    caller then decodes them with flushes (a codec other than H.264, a group not starting at an IDR
    picture, or an FFmpeg error — the decoder is dropped then, and the usual path reports it)."""
    import av

    dec = continuous_decoder(path, stream)
    if dec is None:
        return None
    try:
        return dec.decode(container, stream, index, indices, convert)
    except av.error.FFmpegError:  # type: ignore[attr-defined]
        _forget_continuous(stream)
        return None


def resized_once(path: Path, frames: list[NV12], size_of) -> list[np.ndarray]:
    """`nv12_batch_resized` of the distinct pictures (a picture sampled twice is converted once)."""
    distinct = list({id(f): f for f in frames}.values())
    done = dict(zip((id(f) for f in distinct), nv12_batch_resized(path, distinct, size_of)))
    return [done[id(f)] for f in frames]
