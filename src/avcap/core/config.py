"""The recipe config: one TOML file drives every step.

The recipe's own tables (`[custom.*]`, `[train]`, `[policy]`, `[logging]`) load verbatim with the
meaning cosmos-rl gives them; avcap's own settings live under `[avcap.*]` in the same file.

cosmos-rl semantics kept here:
- `train_batch_per_replica` samples per optimizer step per data-parallel rank, consumed in
  micro-batches of `mini_batch` samples (gradient accumulation = train_batch_per_replica / mini_batch);
- `optm_warmup_steps` written as a float <= 1.0 is a fraction of the total optimizer steps, an
  integer a step count (so `1` is one step and `1.0` all of them, as in cosmos-rl);
- `optm_decay_type` is one of sqrt | cosine | linear | none;
- `[custom.vision]` takes `nframes` or `fps`, never both (qwen-vl-utils asserts the same).
"""

from __future__ import annotations

import difflib
import math
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import json
import re
import typing

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# The recipe's training config exactly as published (placeholders filled in), shipped with avcap.
RECIPE_PATH = Path(__file__).parent / "recipes" / "uber_sft_blended.toml"

# ----------------------------------------------------------------------------- base


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, v: Any, info: Any) -> Any:
        """Refuse a TOML string or boolean where a number belongs (pydantic's lax mode would take
        "2e-7" and true as numbers)."""
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is None:
            return v
        kind = _numeric_kind(field.annotation)
        bad = (str, bool)
        if kind == "scalar" and isinstance(v, bad):
            raise ValueError(f"expected a number, not a {'boolean' if isinstance(v, bool) else 'string'}")
        if kind == "sequence" and isinstance(v, (list, tuple)):
            for x in v:
                if isinstance(x, bad):
                    raise ValueError(f"expected numbers, got {type(x).__name__} {x!r}")
        return v


def _numeric_kind(ann: Any) -> Optional[str]:
    """"scalar" for int/float (optionally Optional), "sequence" for list/tuple of them, else None."""

    args = [a for a in (typing.get_args(ann) if typing.get_origin(ann) is Union else (ann,)) if a is not type(None)]
    if args and all(a in (int, float) for a in args):
        return "scalar"
    if len(args) == 1 and typing.get_origin(args[0]) in (list, tuple):
        inner = [a for a in typing.get_args(args[0]) if a is not Ellipsis]
        if inner and all(a in (int, float) for a in inner):
            return "sequence"
    return None


NonNeg = Field(ge=0)

# ----------------------------------------------------------------------------- recipe tables


class CustomDataset(_Model):
    dataset_root: str = "data/train"
    subdirectories: list[str] = Field(default_factory=lambda: ["cv_annotated", "human_annotated", "reason1_sft"])
    weights: Optional[list[float]] = None
    meta_file: str = "meta.json"

    @field_validator("weights")
    @classmethod
    def _weights_ok(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        if v is None:
            return v
        for w in v:
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weights must be finite and >= 0, got {w}")
        if sum(v) <= 0:
            raise ValueError("weights must not all be zero")
        return v

    @model_validator(mode="after")
    def _lengths_match(self) -> "CustomDataset":
        if not self.subdirectories:
            raise ValueError("subdirectories must name at least one source")
        if len(set(self.subdirectories)) != len(self.subdirectories):
            raise ValueError(f"subdirectories has duplicates: {self.subdirectories}")
        if self.weights is not None and len(self.weights) != len(self.subdirectories):
            raise ValueError(
                f"weights has {len(self.weights)} entries but subdirectories has "
                f"{len(self.subdirectories)}; they must match one to one"
            )
        return self

    def normalized_weights(self) -> list[float]:
        w = self.weights if self.weights is not None else [1.0] * len(self.subdirectories)
        total = float(sum(w))
        return [x / total for x in w]


class Vision(_Model):
    """Frame sampling and resizing, qwen-vl-utils semantics (see avcap.video)."""

    min_pixels: int = Field(3136, gt=0)
    max_pixels: int = Field(360000, gt=0)
    total_pixels: Optional[int] = Field(None, gt=0)
    nframes: Optional[int] = Field(None, gt=0)
    fps: Optional[float] = Field(None, gt=0)
    min_frames: int = Field(4, gt=0)
    max_frames: int = Field(768, gt=0)

    @model_validator(mode="after")
    def _nframes_xor_fps(self) -> "Vision":
        if self.nframes is not None and self.fps is not None:
            raise ValueError("use only one of nframes or fps, not both (qwen-vl-utils semantics)")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) is larger than max_frames ({self.max_frames})")
        return self

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for avcap.video (fps defaults to 2.0 when neither is set)."""
        d: dict[str, Any] = dict(min_pixels=self.min_pixels, max_pixels=self.max_pixels, total_pixels=self.total_pixels)
        if self.nframes is not None:
            d["nframes"] = self.nframes
        else:
            d["fps"] = self.fps if self.fps is not None else 2.0
            d["min_frames"] = self.min_frames
            d["max_frames"] = self.max_frames
        return d


class Custom(_Model):
    dataset: CustomDataset = Field(default_factory=CustomDataset)
    vision: Vision = Field(default_factory=lambda: Vision(nframes=16))


class TrainPolicy(_Model):
    type: Literal["sft"] = "sft"
    mini_batch: int = Field(4, ge=1)
    dataloader_num_workers: int = Field(4, ge=0)
    dataloader_prefetch_factor: Optional[int] = Field(None, ge=1)


class Ckpt(_Model):
    enable_checkpoint: bool = True
    save_freq: int = Field(20, ge=1)
    save_final: bool = True
    max_keep: Optional[int] = Field(None, ge=1)


class Train(_Model):
    output_dir: str = "outputs/train"
    resume: Union[bool, str] = True
    compile: bool = False
    epoch: int = Field(1, ge=1)
    max_num_steps: Optional[int] = Field(None, ge=1)
    train_batch_per_replica: int = Field(8, ge=1)
    optm_name: Literal["AdamW"] = "AdamW"
    optm_lr: float = Field(2e-7, ge=0)
    optm_weight_decay: float = Field(0.01, ge=0)
    optm_betas: tuple[float, float] = (0.9, 0.999)
    optm_warmup_steps: Union[int, float] = Field(0.03, ge=0)
    optm_decay_type: Literal["sqrt", "cosine", "linear", "none"] = "cosine"
    optm_min_lr_factor: float = Field(0.0, ge=0, le=1)
    optm_grad_norm_clip: float = Field(1.0, ge=0)
    param_dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    # cosmos-rl's key: the dtype the optimizer keeps the weights in. "float32" (cosmos-rl's default) or
    # "bfloat16" (avcap: AdamW with stochastic rounding, avcap.train.optim); avcap's default "auto" is
    # float32 wherever its memory estimate fits the GPU, bfloat16 (with a warning) where it does not
    master_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    seed: int = 42
    train_policy: TrainPolicy = Field(default_factory=TrainPolicy)
    ckpt: Ckpt = Field(default_factory=Ckpt)

    @model_validator(mode="after")
    def _batch_divides(self) -> "Train":
        if self.train_batch_per_replica % self.train_policy.mini_batch:
            raise ValueError(
                f"train_batch_per_replica ({self.train_batch_per_replica}) must be a multiple of "
                f"train_policy.mini_batch ({self.train_policy.mini_batch})"
            )
        if self.master_dtype == "bfloat16" and self.param_dtype != "bfloat16":
            raise ValueError(f"master_dtype = \"bfloat16\" computes in bfloat16: param_dtype must be \"bfloat16\", "
                             f"not {self.param_dtype!r}")
        w = self.optm_warmup_steps
        if isinstance(w, float) and w > 1 and not w.is_integer():
            raise ValueError(
                f"optm_warmup_steps={self.optm_warmup_steps}: a float <= 1.0 is a fraction of the "
                "total steps, a larger value a whole number of steps"
            )
        return self

    def warmup_steps(self, total_steps: int) -> int:
        """cosmos-rl: a float in [0, 1] is a fraction of the total optimizer steps, truncated
        (`int(fraction * total)`), an int a step count; never more than the total."""
        if isinstance(self.optm_warmup_steps, float) and self.optm_warmup_steps <= 1.0:
            return min(total_steps, int(self.optm_warmup_steps * total_steps))
        return min(total_steps, int(self.optm_warmup_steps))

    @property
    def grad_accumulation(self) -> int:
        return self.train_batch_per_replica // self.train_policy.mini_batch


class SubProfiler(_Model):
    """cosmos-rl's `[profiler.sub_profiler_config]`: which steps avcap train records (avcap.train.profile)."""

    wait_steps: int = Field(1, ge=0)  # steps run first without recording (the first step compiles)
    warmup_steps: int = Field(1, ge=0)  # steps recorded and thrown away (the profiler's start-up)
    active_steps: int = Field(1, ge=1)  # steps kept in the trace
    rank_filter: list[int] = Field(default_factory=list)  # ranks that record; empty: every rank
    record_shape: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    with_modules: bool = False


class Profiler(_Model):
    """cosmos-rl's `[profiler]`: a torch.profiler trace of chosen training steps."""

    enable_profiler: bool = False
    sub_profiler_config: SubProfiler = Field(default_factory=SubProfiler)


class Parallelism(_Model):
    tp_size: int = Field(1, ge=1)
    cp_size: int = Field(1, ge=1)
    dp_shard_size: int = Field(-1, ge=-1)  # -1: every rank (cosmos-rl)
    dp_replicate_size: int = Field(1, ge=1)
    pp_size: int = Field(1, ge=1)

    @field_validator("dp_shard_size")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("dp_shard_size must be >= 1, or -1 for all ranks")
        return v


class Policy(_Model):
    model_name_or_path: str = "nvidia/Cosmos-Reason2-8B"
    model_max_length: int = Field(4096, ge=1)
    model_gradient_checkpointing: bool = True
    parallelism: Parallelism = Field(default_factory=Parallelism)


class Logging(_Model):
    logger: list[Literal["console", "wandb"]] = Field(default_factory=lambda: ["console"])
    project_name: str = "avcap"
    experiment_name: str = "sft"
    wandb_mode: Optional[Literal["online", "offline", "disabled"]] = None


# ----------------------------------------------------------------------------- avcap tables

CATEGORIES = (
    "Scene Description",
    "Key Objects",
    "Characters & Interactions",
    "Actions & Motion",
    "Ego Vehicle Behavior",
    "Spatial & Temporal",
)

REASONING_SUFFIX = (
    "Answer the question using the following format:\n\n<think>\nYour reasoning.\n</think>\n\n"
    "Write your final answer immediately after the </think> tag."
)

CAPTION_PROMPT = (
    "You are looking at the front dash-cam video of an autonomous vehicle (the ego vehicle). "
    "Describe the driving scene as a JSON object with the keys: weather, lighting, road_conditions, "
    "traffic_light, traffic_sign, additional_traffic_rules, road_type, junction_type, lane_type, "
    "additional_map_rules, interactive_expanded_metaaction, noninteractive_expanded_metaaction, "
    "safety_analysis, driving_difficulty, rule_violation, interesting_scenario, critical_object. "
    "In safety_analysis, describe what the ego vehicle does, the environment and the key road users. "
    "Only state what is visible in the video."
)


class Prompts(_Model):
    system: str = "You are a helpful assistant."
    caption: str = CAPTION_PROMPT
    mcq_suffix: str = "Answer with the option's letter from the given choices directly."
    lingoqa: str = "Answer the question about the driving video in one short sentence."
    reasoning_suffix: str = REASONING_SUFFIX


class Sampling(_Model):
    """Generation settings, engine-neutral (vLLM / OpenAI names)."""

    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)  # -1: off
    presence_penalty: float = 0.0
    repetition_penalty: float = Field(1.0, gt=0)
    max_tokens: int = Field(256, ge=1)
    seed: Optional[int] = None


def _caption_sampling() -> Sampling:
    # Reason 2 recommended non-reasoning sampling (design.md)
    return Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5, max_tokens=4096, seed=0)


class SamplingTable(_Model):
    caption: Sampling = Field(default_factory=_caption_sampling)
    mcq: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=10))
    lingoqa: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=128))


class Engine(_Model):
    """Which engine answers and how (one table serves infer and the benchmark answerers)."""

    name: Literal["transformers", "openai", "vllm"] = "transformers"
    model: Optional[str] = None  # HF dir / hub id (transformers, vllm) or served model name (openai)
    # transformers / vllm
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: str = "sdpa"
    batch_size: int = Field(8, ge=1)
    # the run's first batch holds this many requests (default batch_size): the first records come
    # sooner (a fresh process waits for fewer videos and less compute), at the cost of one more batch
    # shape to compile (transformers engine); every engine
    first_batch: Optional[int] = Field(None, ge=1)
    reasoning: bool = False
    # transformers: Qwen3-VL fast path (avcap.engines.hf.fast_generate) and video decoding
    fast_generate: bool = True  # shared video prefixes, static KV cache, graph-captured decode
    prefill_batch: int = Field(8, ge=1)  # distinct video prefixes per prefill call (fast path)
    cuda_graphs: bool = True  # capture the fast path's decode step on CUDA
    # a decode step's attention over the cache: "sdpa" (masked scaled_dot_product_attention, grouped
    # query heads folded into the query length), "flex" (FlexAttention's split-KV decoding kernel,
    # compiled on CUDA) or "triton" (avcap's split-KV kernel reading each KV head once for its query
    # heads, avcap.engines.hf.triton_decode; CUDA only, elsewhere sdpa with a warning) or "auto" (triton on
    # a CUDA device, sdpa elsewhere without a warning; the default: on an H100 its first decode step is as
    # near float32 as sdpa's, benchmarks/runs/gpu_run65); the same math, bf16 sums in another order
    decode_attention: Literal["auto", "sdpa", "flex", "triton"] = "auto"
    # the prompt's decoder layers in the fast path's prefill: "transcribed" (avcap's transcription of the
    # layer, checked against the library's at start; with compile one graph for every layer, so a fresh
    # process traces one layer, not all of them) or "library" (transformers' own layers)
    prefix_layers: Literal["transcribed", "library"] = "transcribed"
    decode_workers: Optional[int] = Field(None, ge=1)  # video decode workers (default: min(8, CPUs))
    decode_processes: bool = False  # decode in worker processes instead of threads
    # "nvdec": decode on the GPU (PyAV's CUDA hwaccel), colour conversion and resize there too, same
    # pixels as "cpu" (avcap.video.load_video); in threads (decode_processes = false) in the
    # model's CUDA context, in processes one context per worker. "nvdec+cpu": nvdec_workers NVDEC
    # workers and decode_workers CPU decoders at once (avcap.engines.frames)
    decoder: Literal["cpu", "nvdec", "nvdec+cpu"] = "cpu"
    nvdec_workers: Optional[int] = Field(None, ge=1)  # NVDEC workers of "nvdec+cpu" (default 8)
    # decoders hand the decoded YUV pictures to the engine's process, which converts them to RGB
    # (exactly as on the CPU) and resizes them on the model's GPU: for CPU decoders about half the
    # CPU time per clip, for NVDEC worker processes no conversion kernels in CUDA contexts of their
    # own; resized pixels within one level of the CPU's (avcap.video.DecodedVideo). No effect on a
    # CPU device or on NVDEC threads (they convert in the model's context already)
    resize_on_gpu: bool = False
    # torch.compile the repeated blocks (vision blocks, decoder layers) that the prefill runs: fused
    # RMSNorm/RoPE/SwiGLU (avcap.models.qwen3_vl.compile); the first batches of each shape pay the compile time
    compile: bool = False
    # openai-compatible HTTP
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable only
    # which server answers: "openai" sends standard chat-completions fields only; "vllm" and
    # "transformers-serve" also their own sampling fields (top_k, repetition_penalty) and the
    # frames' size hint (avcap.engines.openai_engine); a setting a server cannot take is warned
    # about and recorded in run.json's engine_run
    server: Literal["openai", "vllm", "transformers-serve"] = "openai"
    video_mode: Literal["frames", "video_url"] = "frames"
    image_format: Literal["jpeg", "png"] = "jpeg"
    image_detail: Literal["auto", "low", "high"] = "auto"  # each frame's image_url detail (server = "openai")
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    # vllm
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: Optional[int] = Field(None, ge=1)


class Dataset(_Model):
    kind: Literal["av_caption", "lingoqa", "clips"]
    root: str
    # clips (a fleet's clip set, labelled by `avcap label`): every video under root (recursively),
    # or the clips a manifest file lists (.txt: a path per line; .jsonl / .csv: `path` and an
    # optional `clip_id`; relative paths are relative to the manifest)
    manifest: Optional[str] = None
    # lingoqa: the parquet (relative to root) and where the frame files are
    parquet: str = "val.parquet"
    images_root: Optional[str] = None
    # av_caption: verified MCQ set written by `avcap bench apply` (relative to root)
    vqa: str = "vqa.jsonl"


def _default_datasets() -> dict[str, Dataset]:
    return {
        "AV_CAPTION": Dataset(kind="av_caption", root="data/eval/AV_CAPTION"),
        "LINGOQA": Dataset(kind="lingoqa", root="data/eval/LINGOQA"),
    }


class Answerer(_Model):
    """A benchmark answerer: any avcap engine, or the synthetic world's ground truth."""

    kind: Literal["engine", "truth"] = "engine"
    engine: Engine = Field(default_factory=Engine)
    reads: Literal["annotation", "video"] = "video"


class Bench(_Model):
    pool: Optional[str] = None  # a user's question-pool file; None: the packaged 50-question pool
    questions_per_video: int = Field(12, ge=1)
    required_per_video: int = Field(6, ge=0)
    seed: int = 0
    annotation_answerer: Answerer = Field(default_factory=lambda: Answerer(reads="annotation"))
    video_answerer: Answerer = Field(default_factory=lambda: Answerer(reads="video"))

    @model_validator(mode="after")
    def _required_fits(self) -> "Bench":
        if self.required_per_video > self.questions_per_video:
            raise ValueError(
                f"required_per_video ({self.required_per_video}) exceeds questions_per_video "
                f"({self.questions_per_video})"
            )
        return self


class CurateSource(_Model):
    kind: Literal["human_annotated", "cv_annotated", "reason1_sft", "vqa"]
    path: str  # raw source directory (videos + annotation JSONs, or a vqa.jsonl's directory)
    # vqa only: "per_question" = one single-turn conversation per record; "per_video" = one
    # multi-turn conversation per video holding all its questions (in an order seeded by the video id)
    turns: Literal["per_question", "per_video"] = "per_question"

    @model_validator(mode="after")
    def _turns_for_vqa_only(self) -> "CurateSource":
        if self.turns != "per_question" and self.kind != "vqa":
            raise ValueError(f"turns = {self.turns!r} applies to kind = \"vqa\" sources only (this one is {self.kind!r})")
        return self


class Curate(_Model):
    sources: dict[str, CurateSource] = Field(default_factory=dict)  # key = output subdirectory
    preview_seed: int = 0


class Metrics(_Model):
    lingoqa_judge: str = "wayveai/Lingo-Judge"  # local dir or hub id
    lingoqa_judge_batch_size: int = Field(32, ge=1)
    caption_mode_answerer: Optional[Engine] = None  # answers MCQs from generated captions


class AvcapTrain(_Model):
    """avcap's additions to [train]: how the SFT loss averages (cosmos-rl: over the batch's tokens), what
    the compiler recomputes, where the videos are decoded."""

    # "token": mean over every labelled token of the global batch (cosmos-rl, transformers' Trainer);
    # "sample": mean over samples of each sample's token mean, so a one-letter answer weighs as much as
    # a 600-token caption in a blend of both
    loss_reduction: Literal["token", "sample"] = "token"
    # with [train] compile = true: keep about this fraction of each block's activations for backward and
    # let the compiler recompute the cheapest rest, instead of gradient checkpointing's recompute of
    # every whole block (avcap.models.qwen3_vl.compile); None: policy.model_gradient_checkpointing as set
    activation_memory_budget: Optional[float] = Field(None, gt=0, le=1)
    # with [train] compile = true, how long the compiler searches for faster kernels (once per block
    # shape; kept in the compile cache): "default" (inductor's heuristics); "kernels" (inductor's
    # coordinate-descent tuning of its fused kernels — norms, RoPE, activations, residuals, ~20 % of a 2B
    # step on an H100, benchmarks/runs/gpu_run63); "max-autotune" (also benchmarks its own GEMM kernels
    # against cuBLAS: minutes more at the first step). Results within bf16 rounding of "default"
    compile_tuning: Literal["default", "kernels", "max-autotune"] = "default"
    # where the DataLoader decodes the training videos (avcap.video.load_video): "cpu", or "nvdec" — the
    # GPU's hardware decoder, colour conversion and resize on the GPU too (frames as the CPU's; the resize
    # within one level), in `dataloader_num_workers` worker processes started with "spawn", each with a
    # CUDA context of its own on the rank's GPU. Not the data: a resume may change it
    decoder: Literal["cpu", "nvdec"] = "cpu"
    # one process with fp32 master weights: "autocast" runs the fp32 weights under torch.autocast (cast
    # at every use; activations and the residual stream fp32); "copy" computes with a [train] param_dtype
    # copy of the weights, refreshed after each optimizer step, gradients summed into the fp32 masters —
    # what FSDP2's mixed precision does on several ranks (avcap.train.precision). Nothing to do with
    # several ranks, bf16 master weights or param_dtype = "float32". A resume may change it
    mixed_precision: Literal["autocast", "copy"] = "autocast"
    # compute each micro-batch's mRoPE positions and the vision tower's grid-derived inputs on the host
    # (avcap.train.host_inputs) so the forward never waits for the GPU to read a size back; the same
    # loss and gradients bit for bit. false: transformers' forward derives them on the GPU
    host_inputs: bool = True


class Label(_Model):
    """`avcap label`: the attribute questions each clip is asked, and its pictures."""

    # question ids or attribute names of the [avcap.bench] pool; None: every question of the pool
    attributes: Optional[list[str]] = None
    thumbnail_width: int = Field(320, ge=32)  # the middle sampled frame, this wide (never upscaled)
    preview_frames: int = Field(4, ge=2)  # frames of the preview strip
    preview_height: int = Field(90, ge=16)  # each frame of the strip this high


class Avcap(_Model):
    seed: int = 0
    model_name: str = "Cosmos-Reason2-8B"
    outputs_dir: str = "outputs"
    prompts: Prompts = Field(default_factory=Prompts)
    engine: Engine = Field(default_factory=Engine)
    sampling: SamplingTable = Field(default_factory=SamplingTable)
    vision: Optional[Vision] = None  # evaluation frames; None: the same as [custom.vision]
    datasets: dict[str, Dataset] = Field(default_factory=_default_datasets)
    bench: Bench = Field(default_factory=Bench)
    curate: Curate = Field(default_factory=Curate)
    metrics: Metrics = Field(default_factory=Metrics)
    train: AvcapTrain = Field(default_factory=AvcapTrain)
    label: Label = Field(default_factory=Label)


class RecipeConfig(_Model):
    custom: Custom = Field(default_factory=Custom)
    train: Train = Field(default_factory=Train)
    policy: Policy = Field(default_factory=Policy)
    logging: Logging = Field(default_factory=Logging)
    profiler: Profiler = Field(default_factory=Profiler)
    avcap: Avcap = Field(default_factory=Avcap)

    # paths in the file are relative to the file's directory; `source` remembers it
    source: Optional[str] = Field(default=None, exclude=True)

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def resolve(self, p: str | Path) -> Path:
        """A path from the config, made absolute relative to the config file's directory."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def eval_vision(self) -> Vision:
        return self.avcap.vision or self.custom.vision

    def dataset(self, name: str) -> Dataset:
        try:
            return self.avcap.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.avcap.datasets)) or "none"
            hint = _suggest(name, list(self.avcap.datasets))
            raise ConfigError(
                [f"{self.source or '<config>'}: dataset {name!r} is not defined under [avcap.datasets] "
                 f"(defined: {known}){hint}"]
            ) from None


# ----------------------------------------------------------------------------- loading and errors


class ConfigError(ValueError):
    """Config problems, one line each, naming the file and the key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _suggest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model reached by following `loc` from `model` (best effort)."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int) or cur is None:
            return []
        info = getattr(cur, "model_fields", {}).get(part)
        if info is None:
            # dict-valued field (e.g. datasets.<name>): step into the value type
            return []
        cur = _model_type(info.annotation)
        if cur is dict:
            return []
    return list(getattr(cur, "model_fields", {}).keys()) if cur is not None else []


def _model_type(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin is None:
        return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    for arg in typing.get_args(ann):
        t = _model_type(arg)
        if t is not None:
            return t
    return None


def _dict_value_model(model: type[BaseModel], loc: tuple) -> Optional[type[BaseModel]]:
    cur: Any = model
    i = 0
    while i < len(loc):
        info = getattr(cur, "model_fields", {}).get(loc[i])
        if info is None:
            return None
        ann = info.annotation
        if typing.get_origin(ann) is dict:
            value_t = typing.get_args(ann)[1]
            i += 2  # skip the dict key
            cur = value_t
        else:
            cur = _model_type(ann)
            i += 1
        if cur is None:
            return None
    return cur


def _format_errors(exc: ValidationError, source: str) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        path = ".".join(str(p) for p in loc) or "<top>"
        if err["type"] == "extra_forbidden":
            parent = loc[:-1]
            options = _fields_at(RecipeConfig, parent)
            if not options:
                m = _dict_value_model(RecipeConfig, parent)
                options = list(getattr(m, "model_fields", {}).keys()) if m else []
            hint = _suggest(str(loc[-1]), options)
            problems.append(f"{source}: {path}: unknown key{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
            problems.append(f"{source}: {path}: {msg}{shown}")
    return problems


def load_config(path: str | Path | None = None, overrides: Optional[dict[str, Any]] = None) -> RecipeConfig:
    """Load and validate a recipe TOML. `None` gives the defaults. Raises ConfigError."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError([f"{p}: no such config file"]) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{p}: not valid TOML ({exc})"]) from None
    if overrides:
        data = deep_merge(data, overrides)
    try:
        cfg = RecipeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    if path is not None:
        cfg.source = str(Path(path).resolve())
    return cfg


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def to_toml(cfg: RecipeConfig) -> str:
    """The normalized config as TOML (every key, defaults filled in)."""
    return _dump_toml(cfg.model_dump(mode="json", exclude_none=True))


def toml_value(v: Any) -> str:
    """One TOML value (bool, number, string, list)."""

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = []
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {toml_value(v)}")
    if lines:
        lines.append("")
    for k, v in tables.items():
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        lines.append(_dump_toml(v, name))
    return "\n".join(lines)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else f'"{k}"'
