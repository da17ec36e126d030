"""`load_video` and `decode_video`: a clip's sampled frames, decoded on the CPU or on NVDEC,
converted and resized the way qwen-vl-utils 0.0.14 does.

They open the file, index it (avcap.video.index), plan the sampling (avcap.video.sampling), decode
only what the samples need (avcap.video.cpu's sparse decode, or for NVDEC this thread's continuous
decoder first, avcap.video.nvdec), and fall back to a full decode where the sparse one missed a
frame (with a note). `decode_video` stops before colour conversion and resize: its `DecodedVideo`
finishes on any torch device.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from avcap.video import nvdec
from avcap.video.colour import UnsupportedColour, interleave_uv, swscale_coefficients
from avcap.video.cpu import (
    decode_frames_full,
    decode_sparse,
    load_images,
    set_threads,
    to_rgb,
)
from avcap.video.index import build_index, clean_path, info_from, open_video, probe
from avcap.video.sampling import (
    DEFAULT_MIN_PIXELS,
    FPS_MIN_FRAMES,
    SamplePlan,
    VideoError,
    VideoFrames,
    VideoInfo,
    plan_sampling,
    resize_frames,
    resized_size,
)

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


DECODERS = ("cpu", "nvdec")


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
    would set the hardware decoder up again; `nvdec.Continuous`); open-GOP clips and other codecs take
    a decoder per clip. Frame directories are read with PIL either way.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    path = clean_path(path)
    if not path.exists():
        raise VideoError(path, "no such file or directory")
    kw = dict(nframes=nframes, fps=fps, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
              factor=factor, min_frames=min_frames, max_frames=max_frames)
    if path.is_dir():
        info = probe(path, source_fps=source_fps)
        plan = plan_sampling(info, **kw)
        arr = resize_frames(load_images(path, plan.frame_indices, (info.height, info.width)),
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
            with torch.cuda.stream(nvdec.conversion_stream()) if cuda else contextlib.nullcontext():
                for i in range(0, len(self.planes), _PLANES_BATCH):
                    p = torch.as_tensor(self.planes[i: i + _PLANES_BATCH]).to(dev, non_blocking=True)
                    pictures = [nvdec.NV12(f[:n].view(hh, ww), self._uv(f[n:], hh, ww),
                                      self.colorspace, self.color_range, hh, ww) for f in p]
                    out += nvdec.nv12_batch_resized(Path(v.path), pictures, lambda hw: (v.resized_height, v.resized_width),
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

    path = clean_path(path)
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
    hwaccel = nvdec.hwaccel(path) if decoder == "nvdec" else None
    container = open_video(path, hwaccel)
    tags: list[tuple[int, int]] = []
    try:
        stream = container.streams.video[0]
        set_threads(stream, threads)
        index = build_index(path, container, stream)
        info = info_from(path, stream, index)
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
                fmt = frame.format.name if hwaccel is None else nvdec.surface_format(path, frame)
                if fmt not in _PLANAR_420 or frame.height % 2 or frame.width % 2:
                    raise _NotPlanar(f"{fmt} {frame.width}x{frame.height}")
                tags.append((frame.colorspace, frame.color_range))
                if tags[-1] != tags[0]:
                    raise _NotPlanar("colour tags change within the clip")
                # NVDEC: FFmpeg downloads the visible picture (av_hwframe_transfer_data, pitched copies)
                return frame.to_ndarray().reshape(-1)
            if hwaccel is not None:
                return nvdec.copy_frame(path, frame)
            rgb = to_rgb(frame)
            return resize_frames([rgb], *size_of(rgb.shape[:2]))[0]

        if sparse:
            got = nvdec.decode_continuous_or_none(path, container, stream, index, plan.frame_indices, convert) \
                if hwaccel is not None else None
            if got is None:
                got = decode_sparse(path, container, stream, index, plan.frame_indices, convert=convert)
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
        frames = nvdec.resized_once(path, frames, size_of)
    if len(sizes) > 1:
        raise VideoError(path, f"frame size changes within the clip ({', '.join(f'{w}x{h}' for h, w in sizes)})")
    (src_hw, (plan.resized_height, plan.resized_width)), = sizes.items()
    if src_hw != (info.height, info.width):  # the stream header disagreed with the decoded frames
        info.height, info.width = src_hw
    return info, plan, frames, (tags[0] if tags else None)


def _size_kw(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw[k] for k in ("factor", "min_pixels", "max_pixels", "total_pixels")}
