"""Frames for the engines: `avcap.video` with the config's vision settings, decoded once, ahead of use.

Every engine that sends pixels (transformers, vllm, openai in frames mode) asks a `FrameLoader`
for the frames of a request's video parts. The loader

- turns `[avcap.vision]` (or `[custom.vision]`) plus any per-part overrides (`nframes`, `fps`,
  `min_pixels`, ... on the video content part, cosmos-rl style) into `avcap.video.load_video`
  keyword arguments, with the model's resize factor (patch size x spatial merge: 32 for Qwen3-VL,
  28 for Qwen2.5-VL);
- decodes on worker threads (PyAV and the resize release the GIL), or with `processes=True` in
  worker processes (spawned, one torch thread each: no GIL, no thread oversubscription), so
  `prefetch(next_batch)` decodes the next batch's videos while the model works on this one.
  Workers take the oldest waiting video, so videos finish in the order asked;
- `decoder="nvdec"` decodes on the GPU (`load_video(decoder=)`: same sparse decode, exact colour
  conversion, resize on the GPU; only the resized frames leave it). In worker processes each worker
  holds its own CUDA context, and the GPU time-slices between contexts: the model loses some speed
  beside them (benchmarks/RESULTS.md). In threads NVDEC shares the model's context (the engine's
  model runs on a non-blocking stream of its own, the decoders convert on theirs, so neither waits
  for the other's queue), but the decoder threads' Python work competes with the model's launching
  thread: measured beside a 2B model it made the model 1.7-2.4x slower, so processes are the
  choice beside a model;
- `decoder="nvdec+cpu"` runs `nvdec_workers` NVDEC workers and `workers` CPU decoders side by
  side (both in processes or both in threads), all taking from one queue: for when neither alone
  keeps up. Which decoder gets a video depends on timing; the two give the same full-size pixels,
  and resized frames within one level on ~0.01 % of the values (GPU vs CPU resize). A video NVDEC
  cannot decode (codec, pixel format, no GPU) goes to the CPU decoders;
- with a `finish_device` (`[avcap.engine] resize_on_gpu`), decoders only decode
  (`avcap.video.decode_video`: CPU decoders' I420 pictures, NVDEC's NV12 pictures downloaded) and
  hand them to `FINISHERS` threads of this process, which convert and resize them there
  (`DecodedVideo.finish`); the decoders go on meanwhile;
- worker processes run at nice +`WORKER_NICE` and return their arrays through a tmpfs spool
  (`avcap.engines.spool`), not the pool's pipe;
- keeps the last `capacity` decoded videos, so the 12 MCQ questions of one video decode it once
  even when they straddle two batches.

A video that cannot be decoded raises its error from `frames()` — the engine turns it into that
request's `Result.error`, and the other requests go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterable, Mapping

from avcap.core.config import Vision
from avcap.core.imports import first_under_lock
from avcap.engines.base import Request, video_parts
from avcap.engines.spool import Spool, spooled, unspool
from avcap.video import DECODERS, VideoError, decode_video, load_video
from avcap.video.colour import eager_conversions

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

STARTUP_MILESTONES = frozenset({1, 8, 16, 32, 64, 128, 256})
NVDEC_AND_CPU = "nvdec+cpu"  # NVDEC workers and CPU decoders at once, one queue
FINISHERS = 3  # threads converting and resizing decoded pictures on the finish device
# with a finish device NVDEC worker processes download their pictures and the finishers convert
# them here, in the model's CUDA context, rather than in contexts of their own that the GPU
# time-slices with the model's (benchmarks/RESULTS.md, runs 43-44: less GPU time lost beside a
# fixed workload, the same 2B captions end to end); False: they convert and resize themselves
NVDEC_FINISHED_HERE = True
WORKER_NICE = 10  # decode worker processes yield the CPU to the engine's process

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
    """(patch_size, spatial_merge_size, temporal_patch_size) of a Qwen-VL model config (a config
    object, or config.json as a dict)."""
    vc = (model_config.get("vision_config") if isinstance(model_config, Mapping)
          else getattr(model_config, "vision_config", None))
    if vc is None:
        name = "config.json" if isinstance(model_config, Mapping) else type(model_config).__name__
        raise ValueError(f"{name} has no vision_config: not a vision-language model")
    get = vc.get if isinstance(vc, Mapping) else (lambda k, default=None: getattr(vc, k, default))
    patch = int(get("patch_size"))
    merge = int(get("spatial_merge_size", 2))
    temporal = int(get("temporal_patch_size", 2))
    return patch, merge, temporal


def describe_error(exc: BaseException, path: str) -> str:
    """One line naming the video: avcap.video's VideoError already starts with the path."""

    msg = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, VideoError):
        msg = f"{type(exc).__name__}: {msg}"
    return msg if msg.startswith(path) else f"{path}: {msg}"


class FrameLoader:
    """Decode videos on worker lanes; share and keep recent results (see module docstring)."""

    def __init__(self, vision: Vision, factor: int, *, workers: int | None = None, capacity: int = 32,
                 processes: bool = False, decoder: str = "cpu", nvdec_workers: int | None = None,
                 finish_device: Any = None):

        if decoder not in DECODERS + (NVDEC_AND_CPU,):
            raise ValueError(f"decoder must be one of {', '.join(DECODERS + (NVDEC_AND_CPU,))}, got {decoder!r}")
        self.vision = vision
        self.decoder = decoder
        self.factor = int(factor)
        self.capacity = max(1, int(capacity))
        n = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
        # (decoder, in worker processes?, workers); each lane of processes has its own pool, so
        # only NVDEC workers start a CUDA context
        if decoder == NVDEC_AND_CPU:
            lanes = [("nvdec", processes, max(1, nvdec_workers or 8)), ("cpu", processes, n)]
        else:
            lanes = [(decoder, processes, n)]
        self.lanes = lanes
        self.finish_device = finish_device
        # convert + resize CPU decoders' pictures on `finish_device` (a few videos at once: bounded
        # device memory), while the decoders go on with the next videos
        self._finishers = (ThreadPoolExecutor(FINISHERS, thread_name_prefix="avcap-frames-finish")
                           if finish_device is not None else None)
        self._pin = finish_device is not None and str(finish_device).startswith("cuda")
        self._spool = Spool.create() if any(proc for _, proc, _ in lanes) else None
        self._procs = {dec: self._new_pool(count) for dec, proc, count in lanes if proc}
        self._todo: deque[tuple[str, dict[str, Any], Future]] = deque()
        self._cpu_only: deque[tuple[str, dict[str, Any], Future]] = deque()  # NVDEC could not
        self.nvdec_fallbacks = 0
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(dec, proc), daemon=True,
                                          name=f"avcap-frames-{dec}-{i}")
                         for dec, proc, count in lanes for i in range(count)]
        for t in self._threads:
            t.start()
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded_by: dict[str, int] = {dec: 0 for dec, _, _ in lanes}
        self._t_created = time.perf_counter()
        self._decoded_at: dict[int, float] = {}  # n -> seconds from creation to the n-th decoded video
        self._allowance: int | None = None  # videos the workers may still start while held (`hold`); None: any
        self._held: dict[str, Any] = {}  # the hold's record (`startup()`)

    def _take(self, decoder: str) -> tuple[str, dict[str, Any], Future] | None:
        """The oldest waiting video (CPU workers first take the ones NVDEC could not decode);
        waits for one; None once closed."""
        with self._ready:
            while not self._closed and not (self._todo and self._allowance != 0) and not (decoder == "cpu" and self._cpu_only):
                self._ready.wait()
            if self._closed:
                return None
            if decoder == "cpu" and self._cpu_only:  # NVDEC's retries were counted when first taken
                return self._cpu_only.popleft()
            if self._allowance is not None:
                self._allowance -= 1
            return self._todo.popleft()

    def hold(self, videos: int) -> None:
        """Until `release()`, start decoding only the next `videos` queued videos (the first batch's,
        while a fresh process imports its libraries: see `TransformersEngine`). The workers' processes still start."""
        with self._ready:
            self._allowance = max(0, int(videos))
            self._held = {"videos": self._allowance}

    def widen_hold(self, videos: int) -> None:
        """While held, let the workers start up to `videos` in all (the first batch turned out larger
        than the hold: `avcap.eval.infer.batch_sizes` gives it the few items left over)."""
        with self._ready:
            if self._allowance is None or "released_at_s" in self._held or videos <= self._held["videos"]:
                return
            self._allowance += int(videos) - self._held["videos"]
            self._held["videos"] = int(videos)
            self._ready.notify_all()

    def release(self) -> None:
        """Decode every queued video again (after `hold`)."""
        with self._ready:
            if self._allowance is None:
                return
            self._allowance = None
            self._held["released_at_s"] = round(time.perf_counter() - self._t_created, 3)
            self._ready.notify_all()

    def _work(self, decoder: str, in_process_pool: bool) -> None:
        """One worker: decodes the videos it takes, here or in its lane's process pool. With a
        finish device the CPU decoders' pictures go to the finishers, and the worker goes on."""
        while (item := self._take(decoder)) is not None:
            path, kw, fut = item
            if not fut.running() and not fut.set_running_or_notify_cancel():
                continue
            kw = {**kw, "decoder": decoder}
            # NVDEC threads already convert in this process's context: no download and upload again
            planes = self._finishers is not None and (decoder == "cpu" or (NVDEC_FINISHED_HERE and in_process_pool))
            try:
                if in_process_pool:
                    result = unspool(self._in_worker_process(decoder, path, kw, planes), pin=self._pin)
                else:
                    result = _load(path, kw, planes)
            except Exception as exc:  # noqa: BLE001 — the error belongs to whoever asks for this video
                if decoder == "nvdec" and self.decoder == NVDEC_AND_CPU and _nvdec_specific(exc):
                    self._to_cpu(path, kw, fut, exc)
                else:
                    fut.set_exception(exc)
            else:
                if planes:
                    try:
                        self._finishers.submit(self._finish, decoder, result, fut)
                    except RuntimeError:  # closed meanwhile
                        fut.set_exception(RuntimeError("FrameLoader is closed"))
                else:
                    self._done(decoder, fut, result)

    def _finish(self, decoder: str, decoded, fut: Future) -> None:
        try:
            # the first finish imports torch, torchvision and the compiler: not beside an engine's imports
            frames = first_under_lock("frames.finish", decoded.finish, self.finish_device)
        except Exception as exc:  # noqa: BLE001 — e.g. out of GPU memory: this video's error
            fut.set_exception(exc)
        else:
            self._done(decoder, fut, frames)

    def _done(self, decoder: str, fut: Future, result) -> None:
        with self._ready:
            self.decoded_by[decoder] += 1
            n = sum(self.decoded_by.values())
            if n in STARTUP_MILESTONES:
                self._decoded_at[n] = round(time.perf_counter() - self._t_created, 3)
        fut.set_result(result)

    def _in_worker_process(self, decoder: str, path: str, kw: dict[str, Any], planes: bool):
        """Decode in the process pool. A worker that dies (killed, out of memory, a crash in FFmpeg)
        breaks the whole pool: start a new one and try this video once more there, so one bad
        video fails itself, not the rest of the run."""

        for attempt in range(2):
            pool = self._procs[decoder]
            try:
                return pool.submit(_load, path, kw, planes, self._spool and self._spool.path).result()
            except BrokenProcessPool as exc:
                self._renew_pool(decoder, pool)
                if attempt:
                    raise VideoError(path, f"the decoder process died twice while decoding this video ({exc})") from None

    def _renew_pool(self, decoder: str, broken) -> None:
        with self._ready:
            if self._closed:
                raise BrokenProcessPool("FrameLoader is closed")
            if self._procs[decoder] is broken:
                self._procs[decoder] = self._new_pool(broken._max_workers)
                broken.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _new_pool(workers: int):
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)

    def _to_cpu(self, path: str, kw: dict[str, Any], fut: Future, exc: BaseException) -> None:
        """A video NVDEC cannot decode (no GPU, codec or pixel format it lacks) goes to the CPU lane."""

        with self._ready:
            self.nvdec_fallbacks += 1
            first = self.nvdec_fallbacks == 1
            self._cpu_only.append((path, {k: v for k, v in kw.items() if k != "decoder"}, fut))
            self._ready.notify_all()
        if first:
            warnings.warn(f"decoder='nvdec+cpu': {' '.join(str(exc).split())} — this video and any others "
                          f"NVDEC cannot decode go to the CPU decoders", stacklevel=2)

    def startup(self) -> dict[str, Any]:
        """How fast the decoders got going: seconds from this loader's creation to its 1st, 8th,
        16th, ... decoded video, and any `hold` (run.json's engine_run.startup.frames); with a finish
        device, how many colour conversions of this process ran eagerly because another thread was
        compiling (avcap.video.colour.nv12_to_rgb_fast)."""
        with self._ready:
            out: dict[str, Any] = {"decoded_at_s": {str(n): t for n, t in sorted(self._decoded_at.items())}}
            if self._held:
                out["held"] = dict(self._held)
        if self.finish_device is not None:
            out["eager_conversions"] = eager_conversions()
        return out

    def worker_pids(self) -> list[int]:
        """The process ids of the decoder worker processes running now (none with threads)."""
        return [pid for pool in self._procs.values() for pid in list(getattr(pool, "_processes", None) or {})]

    def _key(self, part: Mapping[str, Any]) -> tuple[str, dict[str, Any], tuple]:
        kw = video_kwargs(self.vision, part, self.factor)
        path = str(part["video"])
        return path, kw, (path, tuple(sorted(kw.items())))

    def future(self, part: Mapping[str, Any]) -> Future:
        """The frames of one video part as a future (decoding starts now unless it already has)."""
        path, kw, key = self._key(part)
        with self._lock:
            fut = self._cache.get(key)
            if fut is None:
                fut = Future()
                with self._ready:
                    if self._closed:
                        raise RuntimeError("FrameLoader is closed")
                    self._todo.append((path, kw, fut))
                    self._ready.notify()
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
                self.future(part)

    def frames(self, part: Mapping[str, Any]):
        """The `avcap.video.VideoFrames` of one video part (blocks until decoded; raises its error)."""
        return self.future(part).result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            waiting = list(self._todo) + list(self._cpu_only)
            self._todo.clear()
            self._cpu_only.clear()
            self._ready.notify_all()
        for _, _, fut in waiting:
            fut.cancel()
        for pool in self._procs.values():
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            # nothing they still decode is wanted: without this the interpreter's exit waits for every
            # worker to finish its video and tear down (3-4 s after the last record, measured)
            for proc in workers:
                proc.terminate()
        with self._lock:
            self._cache.clear()
        if self._finishers is not None:
            self._finishers.shutdown(wait=False)  # videos being converted finish for whoever waits
        if self._spool is not None:
            self._spool.remove()


def _nvdec_specific(exc: BaseException) -> bool:
    """An error of NVDEC itself (avcap.video says "decoder='nvdec': ..."), not of the video."""

    return isinstance(exc, VideoError) and "decoder='nvdec'" in str(exc)


def _worker_init() -> None:
    # one thread for torch in a worker that imports it (a resize on the CPU; the CPU decoders that hand
    # pictures to the engine never do): set before the import, so starting a worker costs no torch import
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        # decoding ahead is background work: the engine's own threads (the one that launches the
        # model's kernels above all) get a core first when every core is busy. Measured beside a
        # 2B model on a 16-core H100 box: 15 decoders at the same priority stretched the model's
        # GPU time per batch ~12 % (benchmarks/RESULTS.md)
        os.nice(WORKER_NICE)
    except (AttributeError, OSError):  # no nice on this platform
        pass


def _load(path: str, kw: dict[str, Any], planes: bool = False, spool: str | None = None):
    """load_video, or with `planes` decode_video (conversion and resize left to the caller); with
    `spool` (a directory) the big arrays go back through files there (`spooled`)."""

    try:
        result = (decode_video if planes else load_video)(path, **kw)
        return spooled(result, spool) if spool else result
    except Exception as exc:
        # an error that cannot be unpickled in the parent would break the whole process pool
        import pickle

        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def load_request_frames(loader: FrameLoader, req: Request) -> tuple[list[Any], str | None]:
    """All frames of one request's videos, or (partial list, error message naming the video)."""
    out = []
    for part in video_parts(req.messages):
        try:
            out.append(loader.frames(part))
        except Exception as exc:  # one bad video fails only its own request
            return out, describe_error(exc, str(part["video"]))
    return out, None
