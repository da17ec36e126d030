"""Frames for the engines: `avcap.video` with the config's vision settings, decoded once, ahead of use.

Every engine that sends pixels (transformers, vllm, openai in frames mode) asks a `FrameLoader`
for the frames of a request's video parts. The loader

- turns `[avcap.vision]` (or `[custom.vision]`) plus any per-part overrides (`nframes`, `fps`,
  `min_pixels`, ... on the video content part, cosmos-rl style) into `avcap.video.load_video`
  keyword arguments, with the model's resize factor (patch size x spatial merge: 32 for Qwen3-VL,
  28 for Qwen2.5-VL);
- decodes on a thread pool (PyAV and the resize release the GIL), or with `processes=True` in
  worker processes (spawned, one torch thread each: no GIL, no thread oversubscription; the frames
  come back pickled), so `prefetch(next_batch)` decodes the next batch's videos while the model
  works on this one; `decoder="nvdec"` has each worker decode on the GPU (`load_video(decoder=)`:
  same pixels, only the resized frames leave the GPU);
- keeps the last `capacity` decoded videos, so the 12 MCQ questions of one video decode it once
  even when they straddle two batches.

A video that cannot be decoded raises its error from `frames()` — the engine turns it into that
request's `Result.error`, and the other requests go on.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Mapping

from avcap.config import Vision
from avcap.engines.base import Request, video_parts

VIDEO_OPTIONS = ("nframes", "fps", "min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames")


def video_kwargs(vision: Vision, part: Mapping[str, Any], factor: int) -> dict[str, Any]:
    """`avcap.video.load_video` keyword arguments for one video part (part settings win)."""
    kw = vision.sampling()
    overrides = {k: part[k] for k in VIDEO_OPTIONS if part.get(k) is not None}
    if "nframes" in overrides:  # nframes XOR fps (qwen-vl-utils)
        for k in ("fps", "min_frames", "max_frames"):
            kw.pop(k, None)
    elif "fps" in overrides:
        kw.pop("nframes", None)
    kw.update(overrides)
    kw["factor"] = int(factor)
    return kw


def vision_factor(model_config: Any) -> tuple[int, int, int]:
    """(patch_size, spatial_merge_size, temporal_patch_size) of a Qwen-VL model config."""
    vc = getattr(model_config, "vision_config", None)
    if vc is None:
        raise ValueError(f"{type(model_config).__name__} has no vision_config: not a vision-language model")
    patch = int(vc.patch_size)
    merge = int(getattr(vc, "spatial_merge_size", 2))
    temporal = int(getattr(vc, "temporal_patch_size", 2))
    return patch, merge, temporal


def describe_error(exc: BaseException, path: str) -> str:
    """One line naming the video: avcap.video's VideoError already starts with the path."""
    from avcap.video import VideoError

    msg = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, VideoError):
        msg = f"{type(exc).__name__}: {msg}"
    return msg if msg.startswith(path) else f"{path}: {msg}"


class FrameLoader:
    """Decode videos on a thread pool; share and keep recent results (see module docstring)."""

    def __init__(self, vision: Vision, factor: int, *, workers: int | None = None, capacity: int = 32,
                 processes: bool = False, decoder: str = "cpu"):
        from avcap.video import DECODERS

        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.vision = vision
        self.decoder = decoder
        self.factor = int(factor)
        self.capacity = max(1, int(capacity))
        n = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
        if processes:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init)
        else:
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="avcap-frames")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, part: Mapping[str, Any]) -> tuple[str, dict[str, Any], tuple]:
        kw = video_kwargs(self.vision, part, self.factor)
        kw["decoder"] = self.decoder
        path = str(part["video"])
        return path, kw, (path, tuple(sorted(kw.items())))

    def _future(self, part: Mapping[str, Any]) -> Future:
        path, kw, key = self._key(part)
        with self._lock:
            fut = self._cache.get(key)
            if fut is None:
                fut = self._pool.submit(_load, path, kw)
                self._cache[key] = fut
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        return fut

    @property
    def lookahead(self) -> int:
        """Upcoming videos a caller may queue without evicting the ones in use (half the cache)."""
        return max(1, self.capacity // 2)

    def prefetch(self, requests: Iterable[Request]) -> None:
        """Start decoding the videos of `requests` in the background."""
        for req in requests:
            for part in video_parts(req.messages):
                self._future(part)

    def frames(self, part: Mapping[str, Any]):
        """The `avcap.video.VideoFrames` of one video part (blocks until decoded; raises its error)."""
        return self._future(part).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._cache.clear()


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _load(path: str, kw: dict[str, Any]):
    from avcap.video import load_video

    return load_video(path, **kw)


def load_request_frames(loader: FrameLoader, req: Request) -> tuple[list[Any], str | None]:
    """All frames of one request's videos, or (partial list, error message naming the video)."""
    out = []
    for part in video_parts(req.messages):
        try:
            out.append(loader.frames(part))
        except Exception as exc:  # one bad video fails only its own request
            return out, describe_error(exc, str(part["video"]))
    return out, None
