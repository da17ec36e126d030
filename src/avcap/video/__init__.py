"""The video layer: the only code in avcap that decodes, samples, resizes or encodes video.

Its modules, by concern (each imports only those listed before it; no cycles):

* `sampling` — qwen-vl-utils 0.0.14's maths (`smart_nframes`, `sample_indices`, `smart_resize`,
  the per-frame pixel cap), `plan_sampling`, token counts, the resize call, and the types handed
  out: `VideoInfo`, `SamplePlan`, `VideoFrames`, `VideoError`.
* `discard` — AV_PKT_FLAG_DISCARD on packets decoded only as references (`mark_discard`,
  `set_enabled`).
* `colour` — YUV 4:2:0 -> RGB on any torch device, bit for bit swscale's.
* `index` — opening and probing (`open_video`, `probe`), the demux pass and packet index
  (`build_index`, `Index`, `info_from`), H.264 NAL parsing, the seek groups of a sparse decode.
* `cpu` — sparse and full decoding with PyAV (`decode_sparse`, `decode_frames`, `decode_all`),
  frame directories, `write_video`.
* `nvdec` — NVDEC: the CUDA hwaccel (`hwaccel`), NV12 surface copies, conversion and resize on
  the GPU, the continuous (never flushed) decoders.
* `load` — `load_video` and `decode_video` (`DecodedVideo`), which put the above together.

This package re-exports what avcap's other packages use; the submodules' public names are the
lower-level API (the benchmarks use it).
"""

from __future__ import annotations

from avcap.video.cpu import decode_all, decode_frames, decode_frames_full, write_video
from avcap.video.index import probe
from avcap.video.load import DECODERS, DecodedVideo, decode_video, load_video
from avcap.video.sampling import (
    DEFAULT_MIN_PIXELS,
    FPS,
    FPS_MAX_FRAMES,
    FPS_MIN_FRAMES,
    FRAME_FACTOR,
    IMAGE_SUFFIXES,
    MAX_RATIO,
    MODEL_SEQ_LEN,
    SPATIAL_MERGE_SIZE,
    VIDEO_MAX_TOKEN_NUM,
    VIDEO_MIN_TOKEN_NUM,
    VIDEO_SUFFIXES,
    SamplePlan,
    VideoError,
    VideoFrames,
    VideoInfo,
    ceil_by_factor,
    floor_by_factor,
    frame_pixel_range,
    is_video_path,
    num_video_tokens,
    plan_sampling,
    resize_chw,
    resize_frames,
    resize_nchw,
    resized_size,
    round_by_factor,
    sample_indices,
    smart_nframes,
    smart_resize,
)

__all__ = [
    "DECODERS",
    "DEFAULT_MIN_PIXELS",
    "FPS",
    "FPS_MAX_FRAMES",
    "FPS_MIN_FRAMES",
    "FRAME_FACTOR",
    "IMAGE_SUFFIXES",
    "MAX_RATIO",
    "MODEL_SEQ_LEN",
    "SPATIAL_MERGE_SIZE",
    "VIDEO_MAX_TOKEN_NUM",
    "VIDEO_MIN_TOKEN_NUM",
    "VIDEO_SUFFIXES",
    "DecodedVideo",
    "SamplePlan",
    "VideoError",
    "VideoFrames",
    "VideoInfo",
    "ceil_by_factor",
    "decode_all",
    "decode_frames",
    "decode_frames_full",
    "decode_video",
    "floor_by_factor",
    "frame_pixel_range",
    "is_video_path",
    "load_video",
    "num_video_tokens",
    "plan_sampling",
    "probe",
    "resize_chw",
    "resize_frames",
    "resize_nchw",
    "resized_size",
    "round_by_factor",
    "sample_indices",
    "smart_nframes",
    "smart_resize",
    "write_video",
]
