"""Hugging Face transformers: any Qwen3-VL-family directory or hub id (Cosmos-Reason2, Qwen3-VL,
Qwen2.5-VL for Cosmos-Reason1), batched `generate` with left padding.

Frames come from `avcap.video` (via `FrameLoader`: decoded on a thread pool ahead of the model,
shared by the requests that use the same video) with the config's vision settings and the model's
resize factor (vision patch size x spatial merge, read from the model config). The processor gets
exactly those frames and must not touch them again:

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    processor(text=texts, videos=[vf.frames, ...], video_metadata=[vf.metadata(), ...],
              do_sample_frames=False,   # keep avcap.video's frames (else it resamples at 2 fps)
              do_resize=False,          # keep avcap.video's qwen-vl-utils size (else it re-resizes
                                        #   by its own T*H*W budget)
              padding=True, return_tensors="pt")     # tokenizer.padding_side = "left"

`video_metadata` (source fps, sampled frame indices, total frames) gives the right "<t seconds>"
timestamps (Qwen3-VL) and second_per_grid_ts (Qwen2.5-VL); without it transformers assumes 24 fps.
The number of video tokens per request is reported in `Result.extra["num_video_tokens"]` and equals
`avcap.video.num_video_tokens(T, H, W, patch, merge, temporal)`.

Qwen3-VL models take the fast path (`[avcap.engine] fast_generate = true`, the default;
avcap.engines.hf.fast_generate): the processor runs once per distinct video of a batch (the other
requests of that video get its tokens up to the end of the video plus their own text), one prefill
per video prefix shared by its questions, a static KV cache and, on CUDA, a graph-captured decode
step. Greedy outputs equal plain `generate`'s (tests/test_engine_fast.py); in bf16 the logits
differ by bf16 rounding only. `repetition_penalty != 1` and other models use plain `generate`.
On CUDA the video processor normalises and patchifies on the GPU, and the vision patch embedding
(a Conv3d with stride = kernel) runs as one GEMM. `Result.extra["path"]` says which path ran.
`generate(..., min_tokens=N)` forbids end-of-sequence before N new tokens (vLLM's min_tokens;
benchmarks use it so that every row generates all its tokens). The engine also takes a built
model object (`model=<nn.Module>`, with `processor=`), e.g. random-weight real-size architectures.

Sampling (`avcap.core.config.Sampling`, vLLM names) maps onto a fresh `GenerationConfig` with every
field set, so nothing is inherited from the checkpoint's generation_config.json:
temperature 0 -> greedy; otherwise multinomial sampling with temperature, top_k (-1 -> off), top_p;
repetition_penalty -> HF's (same definition as vLLM: prompt and output tokens);
presence_penalty -> `PresencePenaltyLogitsProcessor` below, vLLM/OpenAI semantics: subtract the
penalty once from the logit of every token already generated (output tokens only, not the prompt),
applied before temperature/top-k/top-p. HF's repetition_penalty is NOT a substitute (it scales
logits multiplicatively and counts the prompt). seed -> `torch.manual_seed(seed)` before each
batch: reproducible for the same batches, not per request.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import threading
import time
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from avcap.core.compile_cache import (compile_context, compile_counters, dynamo_compile_seconds, require_compiler,
                                      use_compile_cache, workload_id)
from avcap.core.config import Engine as EngineConfig
from avcap.core.config import Sampling, Vision
from avcap.core.imports import heavy_imports
from avcap.engines.base import ModelLoadError, Request, Result, final_answer, video_parts
from avcap.engines.frames import FrameLoader, load_request_frames, vision_factor
from avcap.engines.hf.weights import EarlyWeights, from_state_dict

# run_record's "batches": the first this many batches, and of the fast path's running totals these
BATCHES_RECORDED = 256
BATCH_PHASES = ("layer_check_s", "step_builds", "step_build_s", "prefix_s", "suffix_s", "decode_s", "decode_steps")

# Heavy libraries (torch, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


def model_config(model: str | os.PathLike) -> Any:
    """The model's config, for its vision factor before anything heavy is imported: a local
    directory's config.json read as JSON when it names the vision patch size, else transformers'
    AutoConfig (hub ids, configs that leave it to the class default). The loaded model's own
    config is checked against it (`_setup`)."""
    f = Path(model) / "config.json"
    if f.is_file():
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError):
            cfg = None  # AutoConfig says what is wrong with it
        if isinstance(cfg, dict) and isinstance((cfg.get("vision_config") or {}).get("patch_size"), int):
            return cfg
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def readahead(model_dir: Path) -> int:
    """Ask the kernel to read a model directory's weight files into the page cache in the background
    (posix_fadvise WILLNEED; nothing to do where they are cached already). Returns the bytes asked for."""
    n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        try:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                n += os.fstat(fd).st_size
            finally:
                os.close(fd)
        except (OSError, AttributeError):  # no fadvise on this platform, or an unreadable file: the load says
            continue
    return n


def resolve_device(device: str) -> str:
    """"auto": "cuda" where torch would find a CUDA device, else "cpu"; anything else as given."""
    if device != "auto":
        return device
    known = cuda_devices_without_torch()
    if known is not None:
        return "cuda" if known else "cpu"
    import torch  # a build this cannot read (ROCm, unusual layouts): torch answers

    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_devices_without_torch() -> Optional[bool]:
    """Whether torch.cuda.is_available() would be true, without importing torch (2.6 s on the GPU
    box, before the decoders could start): False for a torch built without CUDA (no libtorch_cuda in
    its lib/) or no CUDA driver; else the driver's own device count (libcuda's cuInit and
    cuDeviceGetCount, which honour CUDA_VISIBLE_DEVICES as torch's cudaGetDeviceCount does). None
    where it cannot tell: not Linux, torch not found, a ROCm build, or torch's NVML-based check asked for."""
    import ctypes
    import importlib.util

    if sys.platform != "linux" or os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1":
        return None
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if any(lib.glob("libtorch_hip*")) or not lib.is_dir():
        return None
    if not any(lib.glob("libtorch_cuda*")):
        return False  # a CPU build
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False  # no driver
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False  # CUDA_ERROR_NO_DEVICE and the like: torch finds none either
    return count.value > 0


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def generation_config(s: Sampling, base: Any, *, min_new_tokens: int = 0):
    """A GenerationConfig with every sampling field set from `s` (nothing left to the checkpoint)."""
    from transformers import GenerationConfig

    sample = s.temperature > 0
    return GenerationConfig(
        max_new_tokens=s.max_tokens,
        min_new_tokens=min_new_tokens or None,
        do_sample=sample,
        num_beams=1,
        temperature=s.temperature if sample else 1.0,
        top_k=(s.top_k if s.top_k > 0 else 0) if sample else 50,  # 0 = off; 50 = HF's default, unused when greedy
        top_p=s.top_p if sample else 1.0,
        repetition_penalty=s.repetition_penalty,
        bos_token_id=base.bos_token_id,
        eos_token_id=base.eos_token_id,
        pad_token_id=base.pad_token_id,
    )


def presence_penalty_processor(penalty: float, prompt_len: int):
    """vLLM/OpenAI presence penalty: logits of tokens generated so far (after `prompt_len`) minus `penalty`."""
    import torch
    from transformers import LogitsProcessor

    class PresencePenaltyLogitsProcessor(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            generated = input_ids[:, prompt_len:]
            if generated.shape[1] == 0:
                return scores
            seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
            return scores - penalty * seen.to(scores.dtype)

    return PresencePenaltyLogitsProcessor()


def model_stream(device: str):
    """A high-priority, non-blocking CUDA stream for the engine's model.

    NVDEC decoding in the engine's process (`[avcap.engine] decoder = "nvdec"`, threads) has
    FFmpeg copy every decoded picture on the legacy default stream, which waits for all work queued
    on the default stream and holds back what is queued after it. With the model on a stream of its
    own that does not synchronise with the default stream, decoding and the model do not wait for
    each other; the priority gives the model's kernels the SMs first when the decoders' colour and
    resize kernels run beside them."""
    import torch

    dev = torch.device(device)
    high = torch.cuda.Stream.priority_range()[1] if hasattr(torch.cuda.Stream, "priority_range") else -1
    stream = torch.cuda.Stream(dev, priority=high)
    stream.wait_stream(torch.cuda.current_stream(dev))  # the weights were put there on the default stream
    return stream


# from_pretrained patches torch module-wide while it builds a model (its meta-device initialisation):
# two loads at once in one process (two engines, each loading in the background) corrupt each other
_LOAD_LOCK = threading.Lock()


# files whose bytes must be equal for `reload` to keep the engine's processor
RELOAD_PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                          "merges.txt", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
                          "video_preprocessor_config.json", "processor_config.json")
# config fields that name or place a checkpoint rather than define the model
_CONFIG_NOISE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
                 "_attn_implementation_autoset", "_commit_hash", "architectures"}


def _file_bytes(path: Path) -> Optional[bytes]:
    return path.read_bytes() if path.is_file() else None


def _config_difference(a: dict[str, Any], b: dict[str, Any], where: str = "config") -> Optional[str]:
    """The first field in which two model configs (to_dict) differ, noise fields left out; None if equal."""
    for k in sorted((set(a) | set(b)) - _CONFIG_NOISE):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _config_difference(x, y, f"{where}.{k}")
            if inner:
                return inner
        elif x != y:
            return f"{where}.{k} {x!r} -> {y!r}"
    return None


class _Loaded:
    """An attribute the background load sets (as `_<name>`): reading it waits for the load."""

    def __set_name__(self, owner, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, engine, owner=None):
        if engine is None:
            return self
        engine._model_ready()
        return getattr(engine, self.attr)


class TransformersEngine:
    name = "transformers"
    # set by the background load; reading one waits for it (and raises its ModelLoadError)
    model = _Loaded()
    processor = _Loaded()
    share_vision = _Loaded()
    fast = _Loaded()  # the fast path's generator, None when off

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        vision: Vision,
        model: Any,
        processor: Any = None,
        device: Optional[str] = None,
        decode_workers: Optional[int] = None,
        decode_processes: Optional[bool] = None,
    ):
        """`model`: a directory / hub id, or an already built model object (then `processor` — a
        path or a processor object — is required, and the model keeps its dtype; it is moved to
        the device). `decode_workers` / `decode_processes` override `[avcap.engine]`.

        A directory loads on a background thread: the constructor reads the vision factor from the
        config, starts the frame decoders and returns, so the first batch's videos decode while
        torch and transformers are imported (the later batches' once the imports are done), and
        while the processor and the weights load and the compiled graphs are set up; `generate` (and `model`, `processor`, `fast`) wait for the load, which
        raises `ModelLoadError` if it failed."""
        self._t0 = time.perf_counter()
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.first_batch = cfg.first_batch
        self.device = resolve_device(device or cfg.device)  # "auto" asks the CUDA driver, not torch
        from_path = isinstance(model, (str, os.PathLike))
        if from_path:
            config = model_config(model)
        else:
            if processor is None:
                raise ValueError("a model object needs its processor (a path or a processor object)")
            config = model.config
        self.patch, self.merge, self.temporal = vision_factor(config)
        self.factor = self.patch * self.merge
        cuda = self.device.startswith("cuda")
        if cfg.compile:  # a setting that cannot work fails here, not in the background load
            require_compiler("cuda" if cuda else "cpu", "[avcap.engine] compile")
        workers = decode_workers if decode_workers is not None else cfg.decode_workers
        processes = decode_processes if decode_processes is not None else cfg.decode_processes
        if cfg.decoder != "cpu" and not processes and cuda:
            warnings.warn(f"[avcap.engine] decoder = {cfg.decoder!r} with decode_processes = false decodes on NVDEC in "
                          f"the model's process: measured beside a 2B model on an H100 it slowed the model 1.7-2.4x "
                          f"(benchmarks/RESULTS.md); set decode_processes = true", stacklevel=2)
        self.frames = FrameLoader(vision, self.factor, workers=workers, processes=processes,
                                  capacity=max(32, 4 * self.batch_size), decoder=cfg.decoder,
                                  nvdec_workers=cfg.nvdec_workers,
                                  finish_device=self.device if cfg.resize_on_gpu and cuda else None)
        decoders_at = self._since_start()
        self.prefetch_videos = self.frames.lookahead
        self._prefetched = False  # whether `prefetch` was called yet (the first call is the first batch)
        # the fast path prefills `prefill_batch` prefixes per call and captures decode steps per row count:
        # the inference loop plans row counts that are multiples of it (avcap.eval.infer.batch_sizes)
        self.batch_multiple = cfg.prefill_batch if cfg.fast_generate else None
        self._stream = None  # the model's CUDA stream, made once torch is imported (see `_load`)
        # set once the background load has the processor (or has failed): a first `generate` call then builds
        # its batches' inputs while the weights load and the model is set up
        self._processor_loaded = threading.Event()
        self.compile_cache: dict[str, Any] = {}
        self._recompile_limit: Optional[int] = None  # with compile: set, like compile_cache, by the load
        self._fast = None
        # the fast path's processor work for the next prefetched request list runs on this thread
        # while the model works on the current one (see `prefetch`)
        self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix="avcap-prep") if cfg.fast_generate else None
        self._prep_lock = threading.Lock()  # the processor is not thread-safe (inputs_for toggles it)
        self._pending: deque[list[Request]] = deque(maxlen=64)  # prefetched lists not generated yet
        self._prep: Optional[tuple[tuple[str, ...], Future]] = None
        self._paths: Counter[str] = Counter()  # requests per generation path ("fast" / "generate")
        self._counts: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()  # requests per fallback reason
        self._batch_failures: Counter[str] = Counter()  # failed batches (then run request by request) per error
        self._batches: list[dict[str, Any]] = []  # where each batch's time went (the first BATCHES_RECORDED)
        self._call_waited_s = 0.0  # what the current generate call waited for its frames and inputs
        self._warned: set[str] = set()
        # seconds from the start of the constructor (the frames' own times from the decoders' start)
        self.startup: dict[str, Any] = {"decoders_started_at_s": decoders_at, "constructed_at_s": self._since_start()}
        if from_path and Path(model).is_dir():  # a cold disk reads the weights while the imports run
            threading.Thread(target=readahead, args=(Path(model),), name="avcap-readahead", daemon=True).start()
        self.load_timings: dict[str, Any] = {}
        self._loading: Optional[Future] = None
        if from_path:
            # while the load imports torch and transformers (CPU- and GIL-bound: 8 s idle, 14 s beside 16 busy
            # decoders on the 16-CPU H100 box, run 63), decode only what the first batch needs
            self.frames.hold(self.first_batch or self.batch_size)
            self._loader = ThreadPoolExecutor(1, thread_name_prefix="avcap-load")
            self._loading = self._loader.submit(self._load, model, processor or model)
        else:
            self.dtype = next(model.parameters()).dtype
            self._load_processor(processor)
            self._setup(model.to(self.device))
            self.startup["model_ready_at_s"] = self._since_start()

    def _since_start(self) -> float:
        return round(time.perf_counter() - self._t0, 3)

    def _load(self, path: str | os.PathLike, processor: Any) -> None:
        """Imports, the processor, the weights from `path` onto the device, then `_setup` (the
        background load)."""
        t0 = time.perf_counter()
        # imported (and timed) here, used by _read_weights and _load_processor: the imports are a large
        # part of a start; the frame loader's finisher threads do not import beside them (avcap.core.imports).
        # The weights need only torch and safetensors: they are read during transformers' imports
        try:
            try:
                with heavy_imports():
                    import safetensors.torch  # noqa: F401
                    import torch
                self.dtype = resolve_dtype(self.cfg.dtype, self.device)
                early, why_not = EarlyWeights.start(path, self.device, self.dtype)
                with heavy_imports():
                    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401
            finally:
                self.frames.release()
            self.load_timings["imports_s"] = round(time.perf_counter() - t0, 3)
            if self.device.startswith("cuda"):  # before the processor: inputs built early are on it too
                self._stream = model_stream(self.device)
            self._load_processor(processor)
        finally:
            self._processor_loaded.set()
        t0 = time.perf_counter()
        model, direct = self._read_weights(path, direct=True, early=early)
        self.load_timings["early_weights"] = (
            {"used": True, "read_s": early.read_s, "waited_s": early.waited_s,
             "reader": "avcap" if early.chunked and not early.fallback else "safetensors",
             **({"fallback": early.fallback} if early.fallback else {})} if early is not None
            else {"used": False, "why_not": why_not})
        t1 = time.perf_counter()
        model = model.to(self.device)
        t2 = time.perf_counter()
        self.load_timings.update(weights_s=round(t1 - t0, 3), to_device_s=round(t2 - t1, 3), direct_to_device=direct)
        self._setup(model)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)  # the model's stream does not wait for this thread's work
        self.startup["model_ready_at_s"] = self._since_start()

    def _read_weights(self, path: str | os.PathLike, *, direct: bool, early: Optional[EarlyWeights] = None):
        """(model read from `path` with transformers' loading, whether its tensors were read straight
        onto the GPU): `direct` asks for that, which transformers 5 does as it reads each tensor (4.x
        needs accelerate for a device_map); otherwise they stay on the host. With `early`, the
        tensors it read (on the device) are the state dict: the same loading, without the reading."""
        import transformers
        from transformers import AutoModelForImageTextToText

        kwargs: dict[str, Any] = dict(dtype=self.dtype, attn_implementation=self.cfg.attn_implementation)
        direct = direct and self.device.startswith("cuda") and int(transformers.__version__.split(".")[0]) >= 5
        if direct:
            kwargs["device_map"] = self.device
        if early is not None:
            tensors = early.result()
            with _LOAD_LOCK:
                return from_state_dict(path, tensors, **kwargs), direct  # read early only under transformers 5
        with _LOAD_LOCK:
            return AutoModelForImageTextToText.from_pretrained(path, **kwargs), direct

    def _load_processor(self, processor: Any) -> None:
        """The processor (a path or an object), set up to take avcap.video's frames as they are."""
        from transformers import AutoProcessor

        t0 = time.perf_counter()
        self._processor_src = str(processor) if isinstance(processor, (str, os.PathLike)) else None
        if isinstance(processor, (str, os.PathLike)):
            processor = AutoProcessor.from_pretrained(processor)
        processor.tokenizer.padding_side = "left"
        vp = processor.video_processor
        if isinstance(vp, _OncePerVideo):
            vp = vp._inner
        got = (vp.patch_size, vp.merge_size, vp.temporal_patch_size)
        if got != (self.patch, self.merge, self.temporal):
            raise ValueError(f"video processor patch/merge/temporal {got} disagree with the model config "
                             f"{(self.patch, self.merge, self.temporal)}")
        processor.video_processor = _OncePerVideo(vp, pixel_dtype=self._pixel_dtype())
        self._video_kwargs: dict[str, Any] = {"do_sample_frames": False, "do_resize": False}
        if "cap_pixels_per_frame" in getattr(vp.valid_kwargs, "__annotations__", {}):
            self._video_kwargs["cap_pixels_per_frame"] = False  # no resize at all; silences its warning
        if self.device.startswith("cuda") and "device" in getattr(vp.valid_kwargs, "__annotations__", {}):
            self._video_kwargs["device"] = self.device  # normalise + patchify on the GPU
        self.video_token_id = getattr(processor, "video_token_id", None)
        self._processor = processor
        self.load_timings["processor_s"] = round(time.perf_counter() - t0, 3)

    def _pixel_dtype(self):
        """The dtype pixels are cast to as they are made: the model's when it is a 16-bit float
        (see `_OncePerVideo`), else None (kept as the processor makes them)."""
        import torch

        return self.dtype if self.dtype in (torch.bfloat16, torch.float16) else None

    def _setup(self, model: Any) -> None:
        """CUDA patches, compilation and the fast path for the loaded `model`."""
        t0 = time.perf_counter()
        cfg = self.cfg
        model.eval()
        cuda = self.device.startswith("cuda")
        if not cuda:
            self._stream = None
        elif self._stream is None:
            self._stream = model_stream(self.device)
        else:  # made by `_load` before the weights came: its later work waits for them
            import torch

            self._stream.wait_stream(torch.cuda.current_stream(torch.device(self.device)))
        if cuda:
            from avcap.models.qwen3_vl.compile import pack_vision_attention  # CUDA only
            from avcap.models.qwen3_vl.text import linear_patch_embed  # CUDA only

            linear_patch_embed(model)  # cuDNN's Conv3d for the patch embedding can be very slow
            pack_vision_attention(model)  # one attention call per block, not one per frame group
        if cfg.compile:
            from avcap.models.qwen3_vl.compile import compile_blocks  # [avcap.engine] compile only

            self.compile_cache = use_compile_cache("cuda" if cuda else "cpu",
                                                   workload_id("infer", model.config.to_dict()))
            counts = compile_blocks(model, linear_patch_embed=cuda)
            # transformers' DynamicCache makes each decoder layer's compiled forward guard on that layer's
            # cache entry, so the library's prefill compiles once per layer (the inductor cache makes the
            # repeats cheap); at torch's default limit of 8 the other layers would silently run eagerly
            self._recompile_limit = 2 * sum(counts.values()) + 8
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self._processor.tokenizer.pad_token_id
        got = vision_factor(model.config)
        if got != (self.patch, self.merge, self.temporal):
            raise ValueError(f"the loaded model's patch/merge/temporal {got} disagree with its config "
                             f"{(self.patch, self.merge, self.temporal)}")
        # transformers 5.25 (not 5.17, not 4.57) takes pre-encoded vision features: a video shared by several
        # requests of a batch (the MCQ questions of one clip) then goes through the vision tower once
        self._share_vision = "mm_encoder_outputs" in inspect.signature(model.forward).parameters and hasattr(
            model, "get_video_features"
        )
        # transformers 4.5x replaces every field of a passed GenerationConfig that equals the global
        # default by the checkpoint's (greedy do_sample=False would sample with its temperature 0.7);
        # use_model_defaults=False keeps ours. transformers 5 fills only unset fields and has no such flag
        self._generate_kwargs: dict[str, Any] = (
            {"use_model_defaults": False} if "use_model_defaults" in inspect.signature(model.generate).parameters
            else {})
        if cfg.fast_generate:
            from avcap.engines.hf.fast_generate import (  # fast_generate only
                FastGenerator,
                supports,
            )

            if supports(model):
                gc = model.generation_config
                eos = gc.eos_token_id if isinstance(gc.eos_token_id, (list, tuple)) else [gc.eos_token_id]
                self._fast = FastGenerator(model, pad_token_id=gc.pad_token_id,
                                          eos_token_ids=[e for e in eos if e is not None],
                                          prefill_batch=cfg.prefill_batch, cuda_graphs=cfg.cuda_graphs,
                                          compile=cfg.compile, decode_attention=cfg.decode_attention,
                                          prefix=cfg.prefix_layers)
            else:
                self._note_fallback(f"fast path off: {type(model).__name__} is not a Qwen3-VL model it "
                                    "supports; every request uses generate", requests=0)
        self._model = model
        self.load_timings["setup_s"] = round(time.perf_counter() - t0, 3)

    def reload(self, model: str | os.PathLike, processor: Any = None) -> None:
        """Put another checkpoint of the same model into this engine, in place: the parameters are
        overwritten, so the compiled graphs, the captured decode steps and the caches stay valid
        (they take the parameters as inputs, at the same addresses) and a checkpoint sweep pays only
        for reading weights. The checkpoint is read with transformers' own loading; a different
        architecture, config, generation ids or processor files raise ValueError naming the
        difference (the caller then builds a new engine); weights that cannot be read raise
        ModelLoadError, and the engine keeps the ones it had. The run record starts again."""
        import torch

        self._model_ready()
        t0 = time.perf_counter()
        src = str(processor or model)
        if self._processor_src is None or not Path(src).is_dir():
            raise ValueError(f"{src}: only a local checkpoint directory can replace the weights of an engine "
                             "built from one")
        differ = [f for f in RELOAD_PROCESSOR_FILES if _file_bytes(Path(src) / f) != _file_bytes(
            Path(self._processor_src) / f)]
        if differ:
            raise ValueError(f"{src}: processor files differ from {self._processor_src}'s: {', '.join(differ)}")
        size = sum(t.numel() * t.element_size() for t in self._model.parameters())
        # a second copy on the GPU where it fits next to the engine's caches, else read on the host
        fits = self.device.startswith("cuda") and torch.cuda.mem_get_info(self.device)[0] > 1.1 * size
        try:
            fresh, direct = self._read_weights(model, direct=fits)
        except Exception as exc:  # the engine keeps the weights it had
            raise ModelLoadError(f"cannot load the model: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                                 ) from exc
        t1 = time.perf_counter()
        try:
            old, new = self._model, fresh
            why = _config_difference(old.config.to_dict(), new.config.to_dict())
            for ids in ("eos_token_id", "pad_token_id", "bos_token_id"):
                a, b = getattr(old.generation_config, ids, None), getattr(new.generation_config, ids, None)
                if b is not None and a != b:
                    why = why or f"generation_config.{ids} {a} -> {b}"
            mine = dict(old.named_parameters()) | {k: v for k, v in old.named_buffers()}
            theirs = dict(new.named_parameters()) | {k: v for k, v in new.named_buffers()}
            if not why and set(mine) != set(theirs):
                why = f"parameters differ: {sorted(set(mine) ^ set(theirs))[:5]}"
            if not why:
                bad = [k for k in mine if mine[k].shape != theirs[k].shape or mine[k].dtype != theirs[k].dtype]
                why = f"parameter shapes or dtypes differ: {bad[:5]}" if bad else None
            if why:
                raise ValueError(f"{model}: another model than the engine's ({why})")
            with torch.no_grad():
                for k, t in mine.items():
                    t.copy_(theirs[k])
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)
        finally:
            del fresh
        self.new_run()
        self.load_timings = {"reloaded_from": str(model), "weights_s": round(t1 - t0, 3),
                             "copy_s": round(time.perf_counter() - t1, 3), "direct_to_device": direct}
        self.startup = {"reloaded": True}

    def new_run(self) -> None:
        """Start the run record again (`run_record`'s paths, counts, fallbacks and batch failures; warnings
        once more)."""
        self._paths.clear()
        self._counts.clear()
        self._fallbacks.clear()
        self._batch_failures.clear()
        self._batches.clear()
        self._warned.clear()

    def _model_ready(self) -> None:
        """Wait for the background load; its error as `ModelLoadError` (every call after it too)."""
        if self._loading is None:
            return
        t0 = time.perf_counter()
        try:
            self._loading.result()
        except Exception as exc:
            raise ModelLoadError(f"cannot load the model: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                                 ) from exc
        self.load_timings["waited_s"] = round(self.load_timings.get("waited_s", 0) + time.perf_counter() - t0, 3)
        self._loading = None
        self._loader.shutdown(wait=False)

    # ------------------------------------------------------------------ interface

    def prefetch(self, requests: list[Request]) -> None:
        """Decode the videos of `requests` ahead; on the fast path also run the processor for
        them in the background during the next `generate` call, when that call is for other
        requests (`avcap infer` prefetches the next batches while one runs)."""
        if not self._prefetched:  # the first batch's videos: held for while the imports run, all of them
            self._prefetched = True
            self.frames.widen_hold(len({p["video"] for r in requests for p in video_parts(r.messages)}))
        self.frames.prefetch(requests)
        if self._prep_pool is not None:
            self._pending.append(list(requests))

    def generate(self, requests: list[Request], sampling: Sampling, *, min_tokens: int = 0) -> list[Result]:
        """Results in request order. `min_tokens`: no end-of-sequence before that many new tokens
        (vLLM's `min_tokens`; for throughput measurements, every row then really generates)."""
        self.frames.prefetch(requests)
        first = None if "first_call" in self.startup else {"called_at_s": self._since_start()}
        t0 = time.perf_counter()
        prepared = self._take_prepared(requests)
        if prepared is None:
            prepared = self._prepare(requests, shared=self._inputs_while_loading())
        self.frame_wait_s = time.perf_counter() - t0
        self._call_waited_s = self.frame_wait_s  # recorded with this call's first batch
        if first is not None:
            first["frames_ready_at_s"] = self._since_start()
        self._model_ready()
        if first is not None:
            first["model_ready_at_s"] = self._since_start()
            before = self._first_call_costs()
        with self._on_model_stream():
            self._start_next_prep(requests)
            results, chunks = prepared
            for chunk, inputs in chunks:
                for res in self._generate_safely(chunk, sampling, min_tokens, inputs):
                    results[res.key] = res
        if first is not None:
            after = self._first_call_costs()
            first.update(requests=len(requests), done_at_s=self._since_start(),
                         **{k: round(after[k] - v, 3) for k, v in before.items() if v is not None and after[k] is not None})
            if self._fast is not None:  # the fast path's self-checks: "ran" or "remembered" from an earlier process
                first.update({k: v for k in ("layer_check", "host_vision_check")
                              if (v := getattr(self._fast, k)) is not None})
            self.startup["first_call"] = first
        return [results[r.key] for r in requests]

    def _first_call_costs(self) -> dict[str, Optional[float]]:
        """Running totals whose growth over the first call says where its one-off time went: torch.compile's
        (tracing, and loading or compiling graphs) and the fast path's phases (its layer check, new decode
        steps built and captured, prompts, decoding)."""
        fast = self._fast.timings if self._fast is not None else {}
        return {"compile_s": dynamo_compile_seconds() if self.cfg.compile else None,
                **{k: fast.get(k) for k in ("layer_check_s", "step_build_s", "prefix_s", "decode_s")}}

    def _on_model_stream(self):
        """Every model and processor kernel of this engine runs on its own CUDA stream (see
        `model_stream`); on the CPU nothing changes."""
        if self._stream is None:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.stream(self._stream)

    def close(self) -> None:
        """Stop the decoders and the background work. A load in progress is waited for: transformers
        builds a model under process-wide settings (torch's default dtype and device, its init functions
        replaced by no-ops) that a load left running would keep changing under whatever the caller
        builds next, and one interleaved with another thread's build can leave them changed for good."""
        if self._loading is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
        if self._prep_pool is not None:
            self._prep_pool.shutdown(wait=True, cancel_futures=True)
        self.frames.close()

    # ------------------------------------------------------------------ preparation

    def _prepare(self, requests: list[Request], shared: bool = False):
        """Frames of every request (errors as Results) and the batches; with `shared` also each
        batch's fast-path inputs (`shared_inputs_for`), else None."""
        with self._on_model_stream():  # also on the background thread: same stream, same order
            return self._prepare_on_stream(requests, shared)

    def _prepare_on_stream(self, requests: list[Request], shared: bool):
        results: dict[str, Result] = {}
        ready: list[tuple[Request, list]] = []
        for req in requests:
            frames, error = load_request_frames(self.frames, req)
            if error is not None:
                results[req.key] = Result(key=req.key, text=None, error=error)
            else:
                ready.append((req, frames))
        chunks = []
        for i in range(0, len(ready), self.batch_size):
            chunk = ready[i : i + self.batch_size]
            inputs = None
            if shared:
                try:
                    with self._prep_lock:
                        inputs = self.shared_inputs_for(chunk)
                except Exception as exc:  # the batch then prepares (and fails request by request) inline
                    inputs = None
                    self._note_fallback(f"inputs prepared ahead failed ({type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:120]}); prepared when the batch ran", len(chunk))
            chunks.append((chunk, inputs))
        return results, chunks

    def _inputs_while_loading(self) -> bool:
        """Whether this call builds its batches' fast-path inputs now, while the background load puts the
        weights on the device and sets the model up (~0.9 s of an 8B start on an H100, gpu_run71): on the
        fast path, during the load, once the load has the processor. Had the load failed, False (the call
        then raises its ModelLoadError)."""
        if self._prep_pool is None or self._loading is None:
            return False
        self._processor_loaded.wait()
        return hasattr(self, "_processor")

    def _take_prepared(self, requests: list[Request]):
        if self._prep is None:
            return None
        keys, fut = self._prep
        self._prep = None
        if keys != tuple(r.key for r in requests):  # the caller went another way: drop it
            fut.cancel()
            return None
        try:
            return fut.result()
        except Exception:
            return None

    def _start_next_prep(self, current: list[Request]) -> None:
        """Prepare the first prefetched request list that is not `current`, if none is in flight."""
        if self._prep_pool is None or self._prep is not None or self.fast is None:
            return
        keys = tuple(r.key for r in current)
        while self._pending and tuple(r.key for r in self._pending[0]) == keys:
            self._pending.popleft()
        if self._pending:
            nxt = self._pending.popleft()
            self._prep = (tuple(r.key for r in nxt), self._prep_pool.submit(self._prepare, nxt, True))

    # ------------------------------------------------------------------ batches

    def _generate_safely(self, chunk: list[tuple[Request, list]], sampling: Sampling, min_tokens: int = 0,
                         inputs=None) -> list[Result]:
        """One batch; if it fails, each request alone, so only the culprit gets the error.
        `inputs`: the batch's `shared_inputs_for`, when prepared ahead."""
        try:
            return self._generate_batch(chunk, sampling, min_tokens, inputs)
        except Exception as exc:
            if len(chunk) == 1:
                req = chunk[0][0]
                return [Result(key=req.key, text=None, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")]
            self._note_batch_failure(len(chunk), exc)
            out_of_memory = _out_of_memory(exc)
        # out of the except block: the failed attempt's frames, and the tensors they held, are gone
        # (retried inside it, a batch of 96 found 19 GiB still taken and failed again: gpu_run66 call 1)
        self._free_memory()
        if out_of_memory:  # memory the last batch held is free now: the whole batch once more
            try:
                out = self._generate_batch(chunk, sampling, min_tokens, inputs)
                self._counts["batch_retried_whole"] += 1
                return out
            except Exception as again:  # noqa: BLE001 — then request by request, said and counted
                self._note_batch_failure(len(chunk), again)
            self._free_memory()
        return [r for item in chunk for r in self._generate_safely([item], sampling, min_tokens)]

    def _note_batch_failure(self, requests: int, exc: Exception) -> None:
        """A batch failed: out of memory it is tried once more whole, otherwise (and if that fails
        too) its requests go one at a time (slow: a new shape each, one row per step). Count it by
        error, and say so the first time each error occurs in this engine."""
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        self._batch_failures[error] += 1
        self._counts["batch_failure_requests"] += requests
        if self._batch_failures[error] == 1:
            then = ("trying it once more whole after freeing the KV cache, then one request at a time"
                    if _out_of_memory(exc) else "generating its requests one at a time")
            warnings.warn(f"avcap transformers engine: a batch of {requests} requests failed ({error}); {then} "
                          f"(counted in run.json's engine_run.batch_failures)", stacklevel=3)

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()  # a failed call's frames can sit in reference cycles
        if self._fast is not None:
            self._fast.release()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def inputs_for(self, chunk: list[tuple[Request, list]], *, expand_videos: bool = True):
        """Processor outputs for a batch of (request, [VideoFrames...]) — exactly what generate gets.

        `expand_videos=False` (the fast path): a video shown by several requests keeps one copy of
        its pixels; `video_unique_index` then maps each request video to its copy."""
        texts = [
            self._processor.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
            for req, _ in chunk
        ]
        videos = [vf for _, frames in chunk for vf in frames]
        for vf in videos:
            h, w = vf.frames.shape[1:3]
            if h % self.factor or w % self.factor:
                raise ValueError(f"{vf.path}: frames are {h}x{w}, not multiples of the model's factor {self.factor}")
        kwargs: dict[str, Any] = dict(text=texts, padding=True, return_tensors="pt")
        if videos:
            kwargs.update(
                videos=[vf.frames for vf in videos],
                video_metadata=[vf.metadata() for vf in videos],
                **self._video_kwargs,
            )
        self._processor.video_processor.expand = expand_videos
        try:
            return self._processor(**kwargs)
        finally:
            self._processor.video_processor.expand = True

    def shared_inputs_for(self, chunk: list[tuple[Request, list]]):
        """`inputs_for` (expanded ids, mask, mm_token_type_ids, grid) plus the pixels per request
        video, with the processor run once per distinct video: each other request that shows the
        same videos gets the first one's tokens up to the end of its last video and its own
        tokenized text after it (`splice_after_videos`). Tokenizers split at special tokens (the
        video placeholder ends with one), so this is the processor's own result (checked against
        it in tests/test_engine_fast.py). A request whose text before its last video differs, or
        a processor whose expansion does not keep the text around the placeholder, falls back to
        running the processor on the whole batch — counted with its reason (`run_record`)."""
        import torch

        keys = [tuple(id(vf) for vf in frames) for _, frames in chunk]
        first: dict[tuple, int] = {}
        for r, k in enumerate(keys):
            if k:
                first.setdefault(k, r)
        reps = sorted(set(first.values()) | {r for r, k in enumerate(keys) if not k})
        if len(reps) == len(chunk):
            return self._processor_inputs(chunk)
        rep_in = self.inputs_for([chunk[r] for r in reps])
        tok = self._processor.tokenizer
        rep_rows = {r: j for j, r in enumerate(reps)}
        rep_mask = rep_in["attention_mask"].bool()
        x = [rep_in["input_ids"][j][rep_mask[j]].tolist() for j in range(len(reps))]
        types_in = rep_in.get("mm_token_type_ids")
        xt = [types_in[j][rep_mask[j]].tolist() for j in range(len(reps))] if types_in is not None else None
        rep_pix = _video_pixels(rep_in) or []
        rep_grid = rep_in.get("video_grid_thw")
        starts, n = [], 0
        for r in reps:
            starts.append(n)
            n += len(chunk[r][1])
        others = [r for r in range(len(chunk)) if r not in rep_rows]
        sharing = sorted({first[keys[r]] for r in others})
        texts = [self._processor.apply_chat_template(chunk[r][0].messages, tokenize=False, add_generation_prompt=True)
                 for r in others + sharing]
        enc = tok(texts)["input_ids"]
        u_other = dict(zip(others, enc[: len(others)]))
        u_rep = dict(zip(sharing, enc[len(others):]))
        media = {t for t in (self.video_token_id, getattr(self._processor, "image_token_id", None)) if t is not None}
        ids_rows: list[list[int]] = [[] for _ in chunk]
        type_rows: list[list[int]] = [[] for _ in chunk]
        pixels: list[Any] = []
        grids: list[Any] = []
        for r in range(len(chunk)):
            j = rep_rows.get(r, rep_rows.get(first.get(keys[r], -1)))
            nv = len(chunk[r][1])
            pixels += rep_pix[starts[j]: starts[j] + nv]
            if nv:
                grids.append(rep_grid[starts[j]: starts[j] + nv])
            if r in rep_rows:
                ids_rows[r] = x[j]
                type_rows[r] = xt[j] if xt is not None else []
                continue
            spliced = splice_after_videos(u_rep[reps[j]], x[j], u_other[r], self.video_token_id, media)
            if isinstance(spliced, str):
                self._note_fallback(f"shared inputs: {spliced}; the processor ran on the whole batch")
                return self._processor_inputs(chunk)
            cut, tail = spliced
            ids_rows[r] = x[j][:cut] + tail
            if xt is not None:
                type_rows[r] = xt[j][:cut] + [0] * len(tail)
        self._counts["shared_inputs_spliced"] += len(others)
        length = max(len(v) for v in ids_rows)
        pad = tok.pad_token_id
        b = len(chunk)
        out = {"input_ids": torch.full((b, length), pad, dtype=rep_in["input_ids"].dtype),
               "attention_mask": torch.zeros((b, length), dtype=rep_in["attention_mask"].dtype)}
        if xt is not None:
            out["mm_token_type_ids"] = torch.zeros((b, length), dtype=types_in.dtype)
        for r in range(b):
            k = len(ids_rows[r])
            out["input_ids"][r, length - k:] = torch.tensor(ids_rows[r])
            out["attention_mask"][r, length - k:] = 1
            if xt is not None:
                out["mm_token_type_ids"][r, length - k:] = torch.tensor(type_rows[r])
        if grids:
            out["video_grid_thw"] = torch.cat(grids)
        return out, (pixels or None)

    def _processor_inputs(self, chunk: list[tuple[Request, list]]):
        inputs = self.inputs_for(chunk, expand_videos=False)
        return ({k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_unique_index")},
                _video_pixels(inputs))

    # ------------------------------------------------------------------ run record

    def _note_fallback(self, reason: str, requests: int = 1) -> None:
        """Count a fallback by reason; warn the first time each reason occurs in this engine."""
        self._fallbacks[reason] += requests
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(f"avcap transformers engine: {reason} (counted in run.json's engine_run)", stacklevel=3)

    def run_record(self) -> dict[str, Any]:
        return {
            "representation": {"kind": "frames", "via": "processor", "factor": self.factor,
                               # no video kwargs when the model failed to load before its processor did
                               "video_kwargs": {k: v for k, v in getattr(self, "_video_kwargs", {}).items()
                                                if k != "device"}},
            "fast_generate": self._fast is not None,
            "load": dict(self.load_timings),
            "startup": {**self.startup, "frames": self.frames.startup()},
            "decode_attention": self._fast.decode_attention if self._fast is not None else None,
            "decode_attention_used": self._fast.decode_attention_used if self._fast is not None else None,
            "decode_attention_fallback": self._fast.decode_attention_error if self._fast is not None else None,
            "prefix_layers": self._fast.prefix if self._fast is not None else None,
            "compile_cache": ({**{k: v for k, v in self.compile_cache.items() if k != "key"},
                               "counters": compile_counters()} if self.cfg.compile else None),
            "paths": dict(self._paths),
            "counts": dict(self._counts),
            "fallbacks": dict(self._fallbacks),
            "batch_failures": dict(self._batch_failures),
            "batches": list(self._batches),
        }

    def _generate_batch(self, chunk: list[tuple[Request, list]], sampling: Sampling, min_tokens: int = 0,
                        inputs=None) -> list[Result]:
        import torch

        # the compile settings apply here, on the thread that runs (and so compiles) the model
        with torch.inference_mode(), compile_context(self.compile_cache, self._recompile_limit):
            return self._generate_batch_nograd(chunk, sampling, min_tokens, inputs)

    def fast_spec(self, sampling: Sampling, min_tokens: int):
        """The fast path's sampling spec, or None with the reason it cannot serve these settings."""
        if self.fast is None:
            return None, ""
        from avcap.engines.hf.fast_generate import NotSupported, SamplingSpec  # torch: imported by the load

        try:
            return SamplingSpec.from_sampling(sampling, min_tokens), ""
        except NotSupported as exc:
            return None, f"fast path: sampling with {exc} is not supported; generate answered"

    def _generate_batch_nograd(self, chunk: list[tuple[Request, list]], sampling: Sampling, min_tokens: int = 0,
                               inputs=None) -> list[Result]:
        import torch

        t0 = time.perf_counter()
        started_at = self._since_start()
        compiled_before = dynamo_compile_seconds() if self.cfg.compile else None
        spec, why_not = self.fast_spec(sampling, min_tokens)
        new = None
        path = "fast"
        ahead = inputs is not None
        phases: dict[str, float] = {}
        if spec is not None:
            from avcap.engines.hf.fast_generate import NotSupported  # the fast path only

            if inputs is None:
                inputs = self._inputs_beside_cache(chunk)
            batch, video_pixels = inputs
            ids = batch["input_ids"]
            mask = batch["attention_mask"]
            row_videos = [[id(vf) for vf in frames] for _, frames in chunk]
            t_prep = time.perf_counter() - t0
            t1 = time.perf_counter()
            before = dict(self.fast.timings)
            if sampling.seed is not None and sampling.temperature > 0:
                torch.manual_seed(sampling.seed)
            try:
                new = self.fast.generate(batch, row_videos, spec, max_new_tokens=sampling.max_tokens,
                                         video_pixels=video_pixels, device=self.device)
            except NotSupported as exc:
                new = None
                why_not = f"fast path: {exc}; generate answered"
            if new is not None and batch.get("video_grid_thw") is not None and self.fast.host_vision is False:
                self._note_fallback(f"fast path: vision inputs from the host kept off ({self.fast.host_vision_error}); "
                                    "the vision tower derived them on the device", len(chunk))
            t_gen = time.perf_counter() - t1
            phases = {k: round(v - before.get(k, 0), 3) for k, v in self.fast.timings.items()
                      if k in BATCH_PHASES and v != before.get(k, 0)}
        if new is None:
            path = "generate"
            if self.fast is not None:
                self._note_fallback(why_not, len(chunk))
            t0 = time.perf_counter()
            with self._prep_lock:
                inputs = self.inputs_for(chunk)
            inputs = inputs.to(self.device)
            videos = [id(vf) for _, frames in chunk for vf in frames]  # the loader shares one object per video
            if len(set(videos)) < len(videos):
                if self.share_vision:
                    inputs = self._encode_videos_once(inputs, videos)
                else:  # e.g. transformers 4.57, 5.17: the forward takes no pre-encoded features (same outputs, slower)
                    import transformers

                    self._note_fallback(f"generate: a video shared by several requests went through the vision "
                                        f"tower once per request ({type(self.model).__name__}.forward takes no "
                                        f"mm_encoder_outputs in transformers {transformers.__version__})", len(chunk))
            t_prep = time.perf_counter() - t0
            prompt_len = inputs["input_ids"].shape[1]
            processors = []
            if sampling.presence_penalty:
                processors.append(presence_penalty_processor(sampling.presence_penalty, prompt_len))
            if sampling.seed is not None and sampling.temperature > 0:
                torch.manual_seed(sampling.seed)
            t1 = time.perf_counter()
            out = self.model.generate(
                **inputs,
                generation_config=generation_config(sampling, self.model.generation_config, min_new_tokens=min_tokens),
                logits_processor=processors or None,
                **self._generate_kwargs,
            )
            t_gen = time.perf_counter() - t1
            new = out[:, prompt_len:].cpu()
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
        self._paths[path] += len(chunk)
        if len(self._batches) < BATCHES_RECORDED:
            compiled_after = dynamo_compile_seconds() if compiled_before is not None else None
            if compiled_after is not None:  # the process's, any thread's: what torch.compile took during this batch
                phases["compile_s"] = round(compiled_after - compiled_before, 3)
            self._batches.append({"rows": len(chunk), "path": path, "started_at_s": started_at,
                                  "prepared_ahead": ahead and path == "fast", "prep_s": round(t_prep, 3),
                                  "inputs_waited_s": round(self._call_waited_s, 3),
                                  "generate_s": round(t_gen, 3), **phases})
        self._call_waited_s = 0.0
        n_out = _output_lengths(new, self.model.generation_config.eos_token_id, self.model.generation_config.pad_token_id)
        texts = self.processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        mask = mask.cpu()
        ids = ids.cpu()
        results = []
        for row, (req, frames) in enumerate(chunk):
            raw = texts[row]
            extra: dict[str, Any] = {
                "batch_size": len(chunk),
                "path": path,
                "prep_s": round(t_prep / len(chunk), 4),
                "prepared_ahead": ahead and path == "fast",
                "generate_s": round(t_gen / len(chunk), 4),
            }
            if frames:
                extra["num_frames"] = [int(vf.frames.shape[0]) for vf in frames]
                extra["frame_size"] = [[int(vf.frames.shape[1]), int(vf.frames.shape[2])] for vf in frames]
                if self.video_token_id is not None:
                    extra["num_video_tokens"] = int((ids[row] == self.video_token_id).sum())
            results.append(
                Result(
                    key=req.key,
                    text=final_answer(raw),
                    raw_text=raw,
                    num_input_tokens=int(mask[row].sum()),
                    num_output_tokens=n_out[row],
                    extra=extra,
                )
            )
        return results

    def _inputs_beside_cache(self, chunk: list[tuple[Request, list]]):
        """The fast path's inputs for a batch, built now. A KV cache of another row count is freed
        first; one of this row count is kept for the batch to reuse (with its captured decode
        steps) unless the inputs do not fit beside it: then it goes and they are built again
        (a fallback, warned and counted)."""
        self.fast.release(unless_rows=len(chunk))
        try:
            with self._prep_lock:
                return self.shared_inputs_for(chunk)
        except Exception as exc:
            if not (_out_of_memory(exc) and self.fast.holds_cache):
                raise
        self._note_fallback("fast path: a batch's inputs did not fit beside the kept KV cache (out of memory); "
                            "the cache was freed and built again after them", len(chunk))
        self._free_memory()
        with self._prep_lock:
            return self.shared_inputs_for(chunk)

    def _encode_videos_once(self, inputs, videos: list[int]):
        """Replace `pixel_values_videos` by the vision tower's output, computed once per distinct video
        and repeated for every request that shows it (`mm_encoder_outputs`, as generate would build)."""
        import torch

        grid = inputs["video_grid_thw"]
        chunks = torch.split(inputs.pop("pixel_values_videos"), grid.prod(-1).tolist())
        first: dict[int, int] = {}
        for n, v in enumerate(videos):
            first.setdefault(v, n)
        uniq = list(first.values())
        out = self.model.get_video_features(torch.cat([chunks[n] for n in uniq]), grid[uniq], return_dict=True)
        slot = {videos[n]: j for j, n in enumerate(uniq)}
        order = [slot[v] for v in videos]
        out.pooler_output = tuple(out.pooler_output[j] for j in order)
        if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL; Qwen2.5-VL has none
            out.deepstack_features = [tuple(level[j] for j in order) for level in out.deepstack_features]
        inputs["mm_encoder_outputs"] = {"video": out}
        return inputs


class _OncePerVideo:
    """Wraps the processor's video processor: a batch that shows the same frames array several
    times (the MCQ questions of one clip) normalises and patchifies it once; the outputs are
    repeated per request, so the processor builds exactly the prompts it would otherwise.
    With `expand = False` the pixels stay one copy per distinct video and `video_unique_index`
    (one entry per request video) says which copy each request video uses.

    The inner processor sees at most `videos_per_call` distinct videos at a time and each call's
    pixels are cast to `pixel_dtype` (the model's, when it is a 16-bit float) before the next
    call: it stacks a call's videos in float32 and copies them twice (normalise, patchify,
    concatenate), ~3x the float32 pixels at once — at 8B, 96 caption videos needed ~17 GB beside
    the KV cache and ran an H100 out of memory (benchmarks/runs/gpu_run66, call 1). The vision tower casts its
    input to its own dtype before anything else reads it (patch embedding, Conv3d or
    avcap's linear one), so casting here first gives the same numbers."""

    def __init__(self, inner: Any, *, pixel_dtype: Any = None, videos_per_call: int = 8):
        self.__dict__["_inner"] = inner
        self.__dict__["expand"] = True
        self.__dict__["pixel_dtype"] = pixel_dtype
        self.__dict__["videos_per_call"] = max(1, int(videos_per_call))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, videos, video_metadata=None, **kwargs):
        import torch

        if not isinstance(videos, (list, tuple)):
            return self._inner(videos, video_metadata=video_metadata, **kwargs)
        first: dict[int, int] = {}
        for n, v in enumerate(videos):
            first.setdefault(id(v), n)
        uniq = list(first.values())
        meta = None if video_metadata is None else [video_metadata[n] for n in uniq]
        out = self._in_calls([videos[n] for n in uniq], meta, kwargs)
        if len(uniq) == len(videos):
            return out
        slot = {id(videos[n]): j for j, n in enumerate(uniq)}
        order = [slot[id(v)] for v in videos]
        grid = torch.as_tensor(out["video_grid_thw"])
        if self.expand:
            chunks = torch.split(torch.as_tensor(out["pixel_values_videos"]), grid.prod(-1).tolist())
            out["pixel_values_videos"] = torch.cat([chunks[j] for j in order])
        else:
            out["video_unique_index"] = torch.tensor(order, dtype=torch.long)
        out["video_grid_thw"] = grid[order]
        if "video_metadata" in out:
            out["video_metadata"] = [out["video_metadata"][j] for j in order]
        return out

    def _in_calls(self, videos: list, meta: Optional[list], kwargs: dict[str, Any]):
        """The inner processor's output for `videos`, `videos_per_call` at a time, pixels cast
        per call; the calls' outputs joined (tensors concatenated, lists extended)."""
        import torch

        k = self.videos_per_call
        outs = []
        for lo in range(0, max(1, len(videos)), k):
            out = self._inner(videos[lo:lo + k], video_metadata=None if meta is None else meta[lo:lo + k], **kwargs)
            pix = out.get("pixel_values_videos")
            if self.pixel_dtype is not None and isinstance(pix, torch.Tensor) and pix.is_floating_point():
                out["pixel_values_videos"] = pix.to(self.pixel_dtype)
            outs.append(out)
        if len(outs) == 1:
            return outs[0]
        joined = outs[0]
        for key, value in list(joined.items()):
            parts = [o[key] for o in outs]
            if isinstance(value, torch.Tensor):
                joined[key] = torch.cat(parts)
            elif isinstance(value, list):
                joined[key] = [x for part in parts for x in part]
        return joined


def splice_after_videos(u_rep: list[int], x_rep: list[int], u_row: list[int], video_token_id: Optional[int],
                        media: set[int]) -> "tuple[int, list[int]] | str":
    """Where a row's expanded prompt comes from another row's that shows the same videos.

    `u_rep` / `u_row`: the two rows' prompts tokenized as written (one placeholder token per
    video); `x_rep`: the representative's prompt as the processor expanded it. The videos end at
    the representative's last placeholder token, so everything after it (`u_rep[k:]`) is text the
    processor leaves as is, and `x_rep` ends with exactly those tokens: the videos' expansion ends
    at `cut = len(x_rep) - len(u_rep[k:])`, whatever markers the processor puts around each video
    (transformers 5.17 keeps the template's outer vision start/end pair, 5.25 collapses it). The
    row then expands to `x_rep[:cut] + u_row[k:]` when its tokens up to and including the last
    placeholder equal the representative's and no media token follows. Returns `(cut, u_row[k:])`,
    or why the row cannot be spliced."""
    if video_token_id is None:
        return "the processor has no video token"
    pads = [i for i, t in enumerate(u_rep) if t == video_token_id]
    if not pads:
        return "no video placeholder in the prompt"
    k = pads[-1] + 1
    after = u_rep[k:]
    cut = len(x_rep) - len(after)
    if cut <= k or x_rep[cut:] != after:
        return "the processor's expanded prompt does not end with the text after the video"
    if u_row[:k] != u_rep[:k]:
        return "the text before a shared video differs between requests"
    if any(t in media for t in u_row[k:]):
        return "a request has media after the shared videos"
    return cut, u_row[k:]


def _out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device running out of memory (torch's OutOfMemoryError or its message)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _video_pixels(inputs) -> Optional[list]:
    """Per request video (in order), its pixel patches — views into `pixel_values_videos`, which
    holds one copy per distinct video when `video_unique_index` is present."""
    import torch

    grid = inputs.get("video_grid_thw")
    if grid is None or inputs.get("pixel_values_videos") is None:
        return None
    pixels = inputs["pixel_values_videos"]
    uniq = inputs.get("video_unique_index")
    if uniq is None:
        return list(torch.split(pixels, grid.prod(-1).tolist()))
    first: dict[int, int] = {}
    for n, j in enumerate(uniq.tolist()):
        first.setdefault(j, n)
    sizes = [int(grid[first[j]].prod()) for j in range(len(first))]
    copies = torch.split(pixels, sizes)
    return [copies[j] for j in uniq.tolist()]


def _output_lengths(new, eos, pad) -> list[int]:
    """Generated tokens per row, up to and including the first end-of-sequence token."""
    import torch

    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    stop = torch.zeros_like(new, dtype=torch.bool)
    for e in eos_ids:
        stop |= new == e
    lengths = []
    for row in range(new.shape[0]):
        hits = torch.nonzero(stop[row]).flatten()
        if len(hits):
            lengths.append(int(hits[0]) + 1)
        elif pad is not None and pad not in eos_ids:
            lengths.append(int((new[row] != pad).sum()))
        else:
            lengths.append(int(new.shape[1]))
    return lengths
