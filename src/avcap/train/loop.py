"""`avcap train --config FILE` — supervised fine-tuning from the recipe TOML, without cosmos-rl.

The recipe's keys keep cosmos-rl's meaning (avcap.core.config): one optimizer step consumes
`train_batch_per_replica` samples on every data-parallel rank, in micro-batches of
`train_policy.mini_batch`; AdamW (`optm_lr`, `optm_weight_decay`, `optm_betas`); warmup and decay
per avcap.train.schedule; gradient-norm clipping `optm_grad_norm_clip` (0: off); `epoch` passes
of the blend (avcap.data.blend: an epoch is the sum of the weighted sources' sizes, rounded up to
whole global batches), capped by `max_num_steps`.

Loss: token-level cross-entropy on the assistant tokens only (avcap.train.data), averaged over
every assistant token of the global batch (all micro-batches, all ranks), so 1 rank and N ranks
with the same global batch compute the same update. A sample that cannot be used — longer than
`policy.model_max_length` tokens (never truncated), a missing or malformed conversation file, a
meta.json entry without one, an unreadable video or one [custom.vision] cannot resize — is skipped
with one warning naming file and field, and counted by reason (avcap.train.data.SKIP_REASONS) in
`train_log.jsonl` and the checkpoint state.

Master weights (`[train] master_dtype`, avcap.train.optim): fp32 with torch's AdamW, or bf16 with an
AdamW that rounds stochastically (8 instead of 16 bytes a parameter); "auto" takes fp32 wherever
avcap.models.qwen3_vl.cost.sft_memory's estimate fits the GPU and says so in one line, bf16 with a
warning where it does not; the choice is in every train_log.jsonl record and the checkpoint state,
and a resume that would change it is refused.

Runs: CPU (fp32) or GPU (bf16 autocast, or with `[avcap.train] mixed_precision = "copy"` a bf16 copy of
the fp32 masters: avcap.train.precision; FSDP2 mixed precision with `train.param_dtype`). Several
processes via `torchrun --nproc-per-node N -m avcap.train --config FILE` (or `avcap train`
under torchrun): PyTorch FSDP2 (`fully_shard`) over `dp_shard_size` ranks (-1: all), NCCL on
GPU, gloo on CPU; each rank takes a disjoint slice of every global batch. Video decoding and the
processor run in `dataloader_num_workers` DataLoader worker processes, prefetching ahead; with
`[avcap.train] decoder = "nvdec"` they decode on the rank's GPU (NVDEC), started with "spawn" (a
forked child cannot use CUDA). `data_wait_s` in train_log.jsonl is the time a step waited for them.

Checkpoints every `[train.ckpt] save_freq` steps (and at the end with `save_final`) as
`<output_dir>/checkpoints/step_<N>/` (avcap.train.checkpoint). `resume = true` continues from
the latest one (a path: from that one) with the same data order — the blend order is a function
of (seed, step) — and the saved optimizer, scheduler and RNG state; `train_log.jsonl` is first cut
back to the checkpoint's steps, so the steps redone after it are logged once. DataLoader workers
exit as soon as the training process dies (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from avcap.core.compile_cache import require_compiler, use_compile_cache, workload_id
from avcap.core.config import ConfigError, RecipeConfig, load_config
from avcap.core.records import (
    RecordError,
    RecordWriter,
    is_user_fs_error,
    iter_records,
    os_error_line,
    write_records_atomic,
)
from avcap.data.blend import BlendPlan
from avcap.data.sources import CurateError
from avcap.train import checkpoint as ckpt
from avcap.train.checkpoint import latest_checkpoint, read_state
from avcap.train.data import (
    SKIP_REASONS,
    Collator,
    SFTDataset,
    StepBatches,
    conversation_sizes,
    index_sources,
)
from avcap.train.precision import ComputeCopy
from avcap.train.profile import StepProfiler
from avcap.train.schedule import build_scheduler

if TYPE_CHECKING:  # avcap.train.host_inputs imports torch (through the vision tower's compile module)
    from avcap.train.host_inputs import HostInputs

# Heavy libraries (torch, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


class TrainError(ValueError):
    """A problem the user can fix (config, data, resume mismatch): exit 2, one line."""


# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    mesh: Any = None  # DeviceMesh when world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: RecipeConfig) -> Dist:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    par = cfg.policy.parallelism
    for key in ("tp_size", "cp_size", "pp_size"):
        if getattr(par, key) != 1:
            raise TrainError(f"policy.parallelism.{key} = {getattr(par, key)}: avcap train shards data-parallel "
                             "only (FSDP2); use cosmos-rl for tensor/context/pipeline parallelism")
    replicate = par.dp_replicate_size
    shard = world // replicate if par.dp_shard_size == -1 else par.dp_shard_size
    if shard * replicate != world:
        raise TrainError(f"policy.parallelism: dp_shard_size {par.dp_shard_size} x dp_replicate_size {replicate} "
                         f"!= {world} processes (WORLD_SIZE); launch with torchrun --nproc-per-node {shard * replicate}")
    d = Dist(rank, world, local, device)
    if world > 1:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if use_cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        shape, names = ((replicate, shard), ("dp_replicate", "dp_shard")) if replicate > 1 else ((shard,), ("dp_shard",))
        d.mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    return d


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if d.world_size == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- model


def _model_source(cfg: RecipeConfig) -> str:
    name = cfg.policy.model_name_or_path
    local = cfg.resolve(name)
    return str(local) if local.exists() else name


def load_model(src: str, cfg: RecipeConfig, d: Dist, *, init_random: bool = False, dtype: str = "float32"):
    """The model to train, its weights in `dtype` (the master weights' dtype), sharded with FSDP2
    over several ranks. `init_random`: only `src`'s config.json is read; the model is built on the
    meta device, sharded, then materialised on this rank's device and given transformers' initial
    weights (each rank initialises only its shards), so a real-size architecture needs no weights
    file and no full copy on any rank."""
    import torch
    from transformers import AutoModelForImageTextToText

    if init_random:
        from transformers import AutoConfig

        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(src), dtype=getattr(torch, dtype))
    else:
        model = AutoModelForImageTextToText.from_pretrained(src, dtype=getattr(torch, dtype))
    model.config.use_cache = False
    if cfg.policy.model_gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if d.world_size > 1:
        import warnings

        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # the loss only reads the logits (no in-place op on the root's output view)
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

        mp = None
        if d.device.type == "cuda":
            mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.train.param_dtype), reduce_dtype=torch.float32)
        kw = {"mesh": d.mesh, **({"mp_policy": mp} if mp else {})}
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, **kw)
        fully_shard(model, **kw)
    if init_random:
        model.to_empty(device=d.device)
        _init_random_weights(model)
    else:
        model.to(d.device)
    model.train()
    return model


def _init_random_weights(model) -> None:
    """transformers' initial weights (and non-persistent buffers: rotary frequencies) for a model
    materialised with `to_empty`; ties tied weights again."""
    import torch

    if not hasattr(model, "initialize_weights"):
        raise TrainError("--init-random needs transformers >= 5 (PreTrainedModel.initialize_weights)")
    for obj in (*model.modules(), *model.parameters(), *model.buffers()):
        obj.__dict__.pop("_is_hf_initialized", None)  # to_empty left memory, not initialised values
    with torch.no_grad():
        model.init_weights()


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "pixel_values_videos", "image_grid_thw",
               "video_grid_thw", "mm_token_type_ids", "second_per_grid_ts")


def loss_units(labels, per_sample: bool) -> int:
    """What the loss averages over in a micro-batch: labelled tokens, or samples with a labelled token."""
    target = labels[:, 1:] != -100
    return int(target.any(1).sum()) if per_sample else int(target.sum())


def right_padded(mask) -> bool:
    """Whether every row of a (B, L) 0/1 attention mask is its real tokens followed by padding (the
    Collator's layout). Then the model needs no mask: attention is causal, so no real token sees a
    pad, mRoPE numbers the real tokens the same, and pads carry no label. Without one transformers
    runs sdpa's causal kernel instead of a masked one that computes every tile."""
    m = mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all()) if m.dim() == 2 and m.shape[1] > 1 else m.dim() == 2


def micro_batch_loss(model, batch: dict[str, Any], device, *, slice_logits: bool, per_sample: bool = False,
                     host: Optional["HostInputs"] = None):
    """(sum of token cross-entropies over the labelled tokens, number of labelled tokens); with
    `per_sample`, (sum over samples of each sample's mean token cross-entropy, number of samples).
    Nothing here waits for `device`: the inputs are copied with `non_blocking` (from the DataLoader's
    pinned memory on CUDA: the copy is queued behind the GPU's work, not waited for), and which
    positions and samples count is read from the labels on the host, before they are copied; with
    `host`, the model's positions and vision inputs come from the host too (avcap.train.host_inputs)."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()
              if k in _MODEL_KEYS and not (k == "attention_mask" and right_padded(v))}
    inputs, context = host.prepare(batch, inputs, device) if host is not None else (inputs, contextlib.nullcontext())
    if slice_logits:
        keep = (labels != -100).any(0).nonzero().squeeze(1)  # positions whose next token is labelled
        with context:
            out = model(**inputs, logits_to_keep=keep.to(device, non_blocking=True), use_cache=False)  # no KV cache in training
        target = labels[:, keep]
    else:
        with context:
            out = model(**inputs, use_cache=False)
        target = labels
        out.logits = out.logits[:, :-1]
    logits = out.logits.float()
    labelled = target != -100  # on the host
    target = target.to(device, non_blocking=True)
    if not per_sample:
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=-100, reduction="sum")
        return loss, int(labelled.sum())
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                          reduction="none").view(target.shape)
    n = (target != -100).sum(1)
    rows = labelled.any(1).nonzero().squeeze(1)  # samples with a labelled token (an index: no mask on the device)
    on_device = rows.to(device, non_blocking=True)
    return (tok.sum(1)[on_device] / n[on_device]).sum(), len(rows)


# ----------------------------------------------------------------------------- logging


class Logger:
    """Console always; `train_log.jsonl` in the output dir; wandb when listed and importable.
    The log starts as the run's history up to `start_step` (see `trim_log`): a resumed run
    appends the steps it redoes after its checkpoint once, not a second time."""

    def __init__(self, cfg: RecipeConfig, out: Path, d: Dist, echo: Callable[[str], None], start_step: int = 0):
        self.echo, self.main, self.wandb = echo, d.main, None
        self.writer = None
        if d.main:
            dropped = trim_log(out / "train_log.jsonl", start_step)
            if dropped:
                echo(f"warning: {out / 'train_log.jsonl'}: this run starts at step {start_step}: kept one record per "
                     f"step up to it, removed {dropped} (later steps are logged again as they are redone)")
            self.writer = RecordWriter(out / "train_log.jsonl")
        if d.main and "wandb" in cfg.logging.logger:
            try:
                import wandb  # noqa: F401
            except ImportError:
                echo("warning: [logging] lists wandb but it is not installed (pip install 'avcap[wandb]'); console only")
            else:
                mode = cfg.logging.wandb_mode or os.environ.get("WANDB_MODE") or "online"
                try:
                    self.wandb = wandb.init(project=cfg.logging.project_name, name=cfg.logging.experiment_name,
                                            dir=str(out), mode=mode, resume="allow",
                                            id="avcap-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12],
                                            config=cfg.model_dump(mode="json"))
                    echo(f"logging to wandb ({mode}): project {cfg.logging.project_name}, run {cfg.logging.experiment_name}")
                except Exception as exc:  # no login / no network: keep training
                    echo(f"warning: wandb.init failed ({type(exc).__name__}: {exc}); console only "
                         "(set [logging] wandb_mode = \"offline\" to log without a network)")

    def step(self, rec: dict[str, Any]) -> None:
        if not self.main:
            return
        self.echo(
            f"step {rec['step']}/{rec['total_steps']} epoch {rec['epoch']} loss {rec['loss']:.4f} "
            f"lr {rec['lr']:.3e} grad_norm {rec['grad_norm']:.3f} tokens/s {rec['tokens_per_s']:.0f} "
            f"step_time {rec['step_time_s']:.2f}s data_wait {rec['data_wait_s']:.2f}s skipped {rec['samples_skipped_total']}"
        )
        assert self.writer is not None
        self.writer.append({"key": str(rec["step"]), **rec})
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=rec["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def trim_log(path: Path, start_step: int) -> int:
    """Make `path` (train_log.jsonl) hold one record per step 1..`start_step` — the last one written
    for each — and nothing after; rewritten atomically, only when that changes it. Returns how
    many records were removed."""

    try:
        records = list(iter_records(path))
    except RecordError as exc:
        raise TrainError(f"{exc}: cannot continue this log; move it aside") from None
    latest: dict[int, dict[str, Any]] = {}
    for rec in records:
        try:
            step = int(rec["key"])
        except (KeyError, TypeError, ValueError):
            raise TrainError(f"{path}: a record without a step number in 'key' ({str(rec)[:80]}); "
                             "cannot continue this log; move it aside") from None
        if step <= start_step:
            latest[step] = rec
    keep = [latest[k] for k in sorted(latest)]
    if keep != records:
        write_records_atomic(path, keep)
    return len(records) - len(keep)


# ----------------------------------------------------------------------------- the run


def _resume_point(cfg: RecipeConfig, out: Path) -> Optional[Path]:
    r = cfg.train.resume
    if r is False:
        return None
    if r is True:
        return latest_checkpoint(out)
    p = cfg.resolve(str(r))
    try:
        read_state(p)
    except FileNotFoundError as exc:
        raise TrainError(f"train.resume: {exc}") from None
    return p


def master_weights(cfg: RecipeConfig, model_src: str, d: Dist):
    """`[train] master_dtype` resolved (avcap.train.optim.choose_master_dtype): for "auto" on a GPU,
    sft_memory's worst-case estimate for this config, model and shard count against the GPU's memory."""
    import torch

    from avcap.train.optim import choose_master_dtype, sft_estimates

    t = cfg.train
    estimates = capacity = None
    if t.master_dtype == "auto" and d.device.type == "cuda":
        from transformers import AutoConfig

        capacity = torch.cuda.get_device_properties(d.device).total_memory
        shards = d.world_size // cfg.policy.parallelism.dp_replicate_size
        estimates = sft_estimates(AutoConfig.from_pretrained(model_src), cfg, shards)
    return choose_master_dtype(t.master_dtype, estimates=estimates, capacity_bytes=capacity, param_dtype=t.param_dtype)


def _plan_summary(plan) -> dict[str, Any]:
    return {"names": list(plan.names), "sizes": list(plan.sizes), "weights": [round(w, 12) for w in plan.weights],
            "seed": plan.seed, "global_batch": plan.global_batch}


def train(cfg: RecipeConfig, *, echo: Callable[[str], None] = print, init_random: bool = False) -> list[Path]:
    """Run SFT as configured; returns the checkpoint directories written by this call.
    `init_random`: start from random weights with `policy.model_name_or_path`'s architecture
    (its config.json; no weights are read) unless resuming from a checkpoint — for throughput
    and memory runs of real-size models (benchmarks/bench_multi_gpu.py)."""
    import torch

    with torch.enable_grad():  # whatever this process did to autograd before (an inference engine turns it off)
        return _train(cfg, echo, init_random)


def _train(cfg: RecipeConfig, echo: Callable[[str], None], init_random: bool = False) -> list[Path]:
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoProcessor

    from avcap.train.optim import build_optimizer

    t = cfg.train
    d = setup_distributed(cfg)
    decoder = cfg.avcap.train.decoder
    if decoder == "nvdec":
        require_nvdec(d.device)
    out = cfg.resolve(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed + d.rank)

    resume_from = _resume_point(cfg, out)
    if resume_from is None and ckpt.list_checkpoints(out) and d.main:
        echo(f"warning: train.resume = {t.resume}: starting from step 0; checkpoints in {ckpt.checkpoints_dir(out)} "
             "will be overwritten as the new run reaches their steps")
    model_src = str(resume_from) if resume_from else _model_source(cfg)
    processor = AutoProcessor.from_pretrained(model_src)

    ds_cfg = cfg.custom.dataset
    try:
        index = index_sources(cfg.resolve(ds_cfg.dataset_root), ds_cfg.subdirectories, ds_cfg.meta_file, skip_bad=True)
        plan = BlendPlan(tuple(index.sizes), tuple(ds_cfg.normalized_weights()), t.seed,
                         t.train_batch_per_replica * d.world_size,
                         names=tuple(index.names))
    except (CurateError, ValueError) as exc:
        raise TrainError(f"[custom.dataset]: {exc}") from None
    total_steps = t.epoch * plan.steps_per_epoch
    if t.max_num_steps is not None:
        total_steps = min(total_steps, t.max_num_steps)

    master = master_weights(cfg, model_src, d)
    if resume_from is not None:
        saved = read_state(resume_from).get("master_dtype", "float32")  # checkpoints before the key: fp32
        if saved != master.dtype:
            raise TrainError(f"train.resume: {resume_from} was trained with {saved} master weights; this run's "
                             f"[train] master_dtype = {master.setting} gives {master.dtype} ({master.reason}). Resume "
                             f"needs the same master weights: set master_dtype = \"{saved}\" (or resume = false)")
    if d.main:
        echo(master.line)
    model = load_model(model_src, cfg, d, init_random=init_random and resume_from is None, dtype=master.dtype)
    if t.compile:  # regional torch.compile of the repeated blocks, packed vision attention
        from avcap.models.qwen3_vl.compile import compile_blocks  # [train] compile only

        try:
            require_compiler(d.device.type, "[train] compile")
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        # compiled graphs kept across processes, one folder per versions; the workload's shape profile with them
        use_compile_cache(d.device.type, workload_id("train", model.config.to_dict()))
        compile_blocks(model, activation_memory_budget=cfg.avcap.train.activation_memory_budget,
                       tuning=cfg.avcap.train.compile_tuning)
    optimizer = build_optimizer(model.parameters(), master.dtype, lr=t.optm_lr, betas=t.optm_betas,
                                weight_decay=t.optm_weight_decay, device_type=d.device.type)
    scheduler = build_scheduler(optimizer, t, total_steps)
    start_step, skipped_total, samples_seen = 0, 0, 0
    saved_rng = None  # a resumed run's RNG state, restored where the uninterrupted run was when it saved it
    skipped_by_reason = dict.fromkeys(SKIP_REASONS, 0)  # skipped draws of the run so far, by reason
    if resume_from is not None:
        state, saved_rng = ckpt.load_training_state(model, optimizer, scheduler, resume_from, rank=d.rank)
        if state.get("plan") != _plan_summary(plan) or state.get("total_steps") != total_steps:
            raise TrainError(
                f"train.resume: {resume_from} was trained with blend {state.get('plan')} for "
                f"{state.get('total_steps')} steps; this config gives {_plan_summary(plan)} for {total_steps} "
                "steps. Resume needs the same dataset, weights, seed and global batch (or set resume = false)."
            )
        start_step, skipped_total, samples_seen = state["step"], state.get("samples_skipped", 0), state.get("samples_seen", 0)
        skipped_by_reason.update({k: v for k, v in (state.get("samples_skipped_by_reason") or {}).items()
                                  if k in skipped_by_reason})
        if d.main:
            echo(f"resuming from {resume_from} at step {start_step}/{total_steps}")

    copy = None  # [avcap.train] mixed_precision = "copy": a param_dtype copy computes, the model's weights are masters
    if (cfg.avcap.train.mixed_precision == "copy" and d.world_size == 1 and master.dtype == "float32"
            and t.param_dtype != "float32"):
        copy = ComputeCopy(model, getattr(torch, t.param_dtype))
    params = copy.masters if copy else list(model.parameters())
    # how the forward computes, for the log: a param_dtype copy, FSDP2's mixed precision, autocast or fp32
    precision = ("copy" if copy else "fsdp2" if d.world_size > 1 and d.device.type == "cuda"
                 else "autocast" if d.device.type == "cuda" else "float32")
    accum = t.grad_accumulation
    dataset = SFTDataset(index, processor, vision=cfg.custom.vision, model_max_length=cfg.policy.model_max_length,
                         decoder=decoder)
    workers = t.train_policy.dataloader_num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatches(plan, rank=d.rank, world_size=d.world_size, mini_batch=t.train_policy.mini_batch,
                                  start_step=start_step, end_step=total_steps,
                                  lengths=conversation_sizes(index.files) if accum > 1 else None),
        collate_fn=Collator(processor.tokenizer.pad_token_id),
        **loader_options(workers, t.train_policy.dataloader_prefetch_factor, d.device, decoder),
    )
    slice_logits = _accepts(type(model).forward, "logits_to_keep")
    per_sample = cfg.avcap.train.loss_reduction == "sample"
    from avcap.train.host_inputs import HostInputs  # imports torch: the CLI imports this module for every verb

    host = HostInputs(model, enabled=cfg.avcap.train.host_inputs)
    warned: set[str] = set()  # host-input fallback reasons said once

    def autocast():  # bf16 (param_dtype) on GPU, fp32 on CPU
        if d.device.type == "cuda":
            return torch.autocast("cuda", dtype=getattr(torch, t.param_dtype))
        return contextlib.nullcontext()

    fsdp = d.world_size > 1 and hasattr(model, "set_requires_gradient_sync")
    log = Logger(cfg, out, d, echo, start_step=start_step)
    profiler = StepProfiler(cfg.profiler, out, rank=d.rank, start_step=start_step, total_steps=total_steps,
                            device_type=d.device.type, echo=echo)
    if d.main:
        mix = ", ".join(f"{n} {w:.0%} ({s})" for n, w, s in zip(plan.names, plan.weights, plan.sizes))
        init = " (random weights, --init-random)" if init_random and resume_from is None else ""
        echo(f"training {model_src}{init} on {d.world_size} x {d.device.type}: {total_steps} steps "
             f"({plan.steps_per_epoch}/epoch), global batch {plan.global_batch} = {d.world_size} ranks x "
             f"{accum} micro-batches x {t.train_policy.mini_batch}; blend {mix}; videos decoded by "
             f"{'NVDEC' if decoder == 'nvdec' else 'the CPU'} ([avcap.train] decoder) in "
             f"{f'{workers} DataLoader worker processes' if workers else 'the training process'}; computing with "
             f"{precision} ([avcap.train] mixed_precision); positions and vision inputs from "
             f"{'the host' if host.on else f'the GPU ({host.error})'} ([avcap.train] host_inputs)"
             + (f"; compiled with {cfg.avcap.train.compile_tuning} kernel tuning ([avcap.train] compile_tuning)"
                if t.compile else ""))

    written: list[Path] = []
    fallback = None  # a batch kept for ranks whose micro-batch was entirely skipped (collectives must match)
    batches = iter(loader)  # draws the DataLoader's base seed from the global RNG, as it did at step 0
    ckpt.restore_rng(saved_rng)  # so the saved state, taken after that draw, is restored after it too
    try:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            micro, data_wait = [], 0.0  # data_wait: seconds blocked on the DataLoader this step
            for _ in range(accum):
                w0 = time.perf_counter()
                micro.append(next(batches))
                data_wait += time.perf_counter() - w0
            skipped = [s for mb in micro for s in mb["skipped"]]
            for i, reason, why in skipped:  # why: names the file and field
                echo(f"warning: rank {d.rank} step {step + 1}: skipped sample {i} ({reason}): {why}")
            local_units = sum(loss_units(mb["labels"], per_sample) for mb in micro if "labels" in mb)
            local_tokens = sum(loss_units(mb["labels"], False) for mb in micro if "labels" in mb)
            n_units, n_tokens, n_skipped, n_input, *n_by_reason = all_reduce_sum(
                [local_units, local_tokens, len(skipped),
                 sum(int(mb["attention_mask"].sum()) for mb in micro if "attention_mask" in mb),
                 *(sum(r == reason for _, r, _ in skipped) for reason in SKIP_REASONS)], d)
            step_by_reason = {r: int(n) for r, n in zip(SKIP_REASONS, n_by_reason) if n}
            if n_tokens == 0:
                raise TrainError(f"step {step + 1}: every sample of the global batch was skipped "
                                 f"({_reasons_text(step_by_reason)}; the warnings above name each file)")
            losses = []  # each counted micro-batch's loss, left on the device until the optimizer step is queued
            for k, mb in enumerate(micro):
                scale = d.world_size / n_units  # FSDP averages gradients over ranks
                if "labels" not in mb:
                    if d.world_size == 1:
                        continue
                    if fallback is None:
                        fallback = _first_usable(dataset, loader.collate_fn)
                    mb, scale = fallback, 0.0
                else:
                    fallback = mb
                if fsdp:
                    model.set_requires_gradient_sync(k == accum - 1)
                with autocast():
                    loss, _ = micro_batch_loss(model, mb, d.device, slice_logits=slice_logits, per_sample=per_sample,
                                               host=host)
                (loss * scale).backward()
                if scale:
                    losses.append(loss.detach())
            for reason in host.fallbacks.keys() - warned:
                warned.add(reason)
                echo(f"warning: rank {d.rank} step {step + 1}: a micro-batch's positions and vision inputs came from "
                     f"the GPU, not the host ({reason}); counted in train_log.jsonl's host_inputs")
            max_norm = t.optm_grad_norm_clip if t.optm_grad_norm_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            if copy is not None:
                copy.refresh()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # the step's one wait for the device: its losses and gradient norm, read once everything is queued
            loss_sum = sum(torch.stack(losses).tolist(), 0.0) if losses else 0.0  # summed in order, as floats
            grad_norm = float(grad_norm)
            (loss_total,) = all_reduce_sum([loss_sum], d)
            skipped_total += int(n_skipped)
            for r, n in step_by_reason.items():
                skipped_by_reason[r] += n
            samples_seen += plan.global_batch
            done = step + 1
            dt = time.perf_counter() - t0
            log.step({
                "step": done, "total_steps": total_steps, "epoch": step // plan.steps_per_epoch + 1,
                "loss": loss_total / n_units, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": n_input / dt, "step_time_s": dt, "data_wait_s": data_wait,
                "assistant_tokens": int(n_tokens),
                "samples_skipped": int(n_skipped), "samples_skipped_total": skipped_total,
                "samples_skipped_by_reason": step_by_reason,
                "samples_skipped_by_reason_total": {r: n for r, n in skipped_by_reason.items() if n},
                "batch": plan.step_indices(step).tolist(),  # the global batch (sample indices), for audits
                "master_dtype": master.dtype, "decoder": decoder, "mixed_precision": precision,
                "host_inputs": host.record(),
            })
            if t.ckpt.enable_checkpoint and (done % t.ckpt.save_freq == 0 or (done == total_steps and t.ckpt.save_final)):
                state = {"total_steps": total_steps, "epoch": step // plan.steps_per_epoch + 1,
                         "steps_per_epoch": plan.steps_per_epoch, "samples_seen": samples_seen,
                         "samples_skipped": skipped_total, "seed": t.seed, "world_size": d.world_size,
                         "samples_skipped_by_reason": {r: n for r, n in skipped_by_reason.items() if n},
                         "plan": _plan_summary(plan), "base_model": _model_source(cfg),
                         "loss": loss_total / n_units, "config": cfg.source,
                         "master_dtype": master.dtype, "master_dtype_choice": master.record(), "decoder": decoder,
                         "mixed_precision": precision}
                with copy.masters_installed() if copy else contextlib.nullcontext():  # saved: the fp32 masters
                    path = ckpt.save(model, optimizer, scheduler, processor, output_dir=out, step=done, state=state,
                                     rank=d.rank, world_size=d.world_size, max_keep=t.ckpt.max_keep,
                                     weights_dtype=master.dtype)
                written.append(path)
                if d.main:
                    echo(f"saved checkpoint {path}")
            profiler.step()
    finally:
        profiler.close()
        log.close()
    if d.main:
        why = f" ({_reasons_text(skipped_by_reason)})" if skipped_total else ""
        echo(f"done: {total_steps} steps, {skipped_total} sample(s) skipped{why}; checkpoints in {ckpt.checkpoints_dir(out)}")
    return written


def _reasons_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{r} {n}" for r, n in counts.items() if n) or "none"


def _first_usable(dataset, collate) -> dict[str, Any]:
    """Some trainable sample, as a micro-batch (for a zero-weight pass that keeps FSDP ranks in step)."""
    for i in range(len(dataset)):
        sample = dataset[i]
        if "skipped" not in sample:
            return collate([sample])
    raise TrainError("no sample of the dataset can be trained on (the warnings above say why)")


def require_nvdec(device) -> None:
    """`[avcap.train] decoder = "nvdec"` needs this run on a CUDA GPU and NVDEC in PyAV's FFmpeg: one line if not."""
    if device.type != "cuda":
        raise TrainError(f'[avcap.train] decoder = "nvdec" decodes the videos on the GPU, and this run is on '
                         f'{device.type} (torch sees no CUDA device); set decoder = "cpu"')
    import av

    try:
        from av.codec.hwaccel import hwdevices_available
    except ImportError:
        raise TrainError(f'[avcap.train] decoder = "nvdec" needs PyAV >= 18 (CUDA hwaccel); PyAV {av.__version__} '
                         'is installed; set decoder = "cpu"') from None
    if "cuda" not in hwdevices_available():
        raise TrainError(f'[avcap.train] decoder = "nvdec": PyAV {av.__version__}\'s FFmpeg has no CUDA device '
                         f'support (it has: {", ".join(hwdevices_available()) or "none"}); set decoder = "cpu"')


def loader_options(workers: int, prefetch_factor: Optional[int], device, decoder: str) -> dict[str, Any]:
    """The DataLoader's process settings: `workers` worker processes (`[train.train_policy]
    dataloader_num_workers`; 0: load in this process), `prefetch_factor` micro-batches ahead each
    (default 2), page-locked batches on CUDA (copied to the GPU without waiting for it). NVDEC
    workers are started with "spawn" — a forked child cannot use CUDA once this process has — and
    decode on `device` (this rank's GPU)."""
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda", "prefetch_factor": None}
    if workers > 0:
        gpu = device.index if decoder == "nvdec" else None
        opts.update(prefetch_factor=prefetch_factor or 2,
                    worker_init_fn=functools.partial(_worker_init, os.getpid(), gpu))
        if decoder == "nvdec":
            opts["multiprocessing_context"] = "spawn"
    return opts


def _worker_init(parent: int, gpu: Optional[int], _: int) -> None:
    """DataLoader worker set-up: one thread; `gpu` (NVDEC workers): the CUDA device to decode on;
    and exit when the training process dies — at once (Linux: SIGKILL from the kernel via
    PR_SET_PDEATHSIG, sent when the thread that started the worker ends: the one that iterates the
    loader), not at PyTorch's next 5-second check."""
    import torch

    torch.set_num_threads(1)
    if gpu is not None:
        torch.cuda.set_device(gpu)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    try:
        os.kill(parent, 0)  # the training process died before prctl took effect
    except ProcessLookupError:
        os._exit(1)


# ----------------------------------------------------------------------------- CLI


def main(
    config: Path = typer.Option(..., "--config", "-c", help="Recipe TOML (\\[custom.*], \\[train], \\[policy], \\[logging])."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Override \\[train] max_num_steps."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Override \\[train] output_dir."),
    init_random: bool = typer.Option(False, "--init-random", help="Random weights with the architecture of "
                                     "model_name_or_path's config.json (no weights read): throughput and memory runs."),
) -> None:
    """Supervised fine-tuning from the recipe TOML (torchrun for several GPUs/processes)."""
    overrides: dict[str, Any] = {}
    if max_steps is not None:
        overrides.setdefault("train", {})["max_num_steps"] = max_steps
    if output_dir is not None:
        overrides.setdefault("train", {})["output_dir"] = str(output_dir.resolve())
    try:
        cfg = load_config(config, overrides=overrides or None)
        train(cfg, echo=lambda s: typer.echo(s, err=s.startswith("warning")), init_random=init_random)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    except TrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except OSError as exc:  # a full disk, a read-only output directory: one line (also under torchrun)
        if not is_user_fs_error(exc):
            raise
        typer.echo(f"error: {os_error_line(exc)}", err=True)
        raise typer.Exit(2)
    finally:
        shutdown()


def shutdown() -> None:
    """Destroy the process group, if any (the end of a torchrun rank)."""
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # torchrun --nproc-per-node N -m avcap.train --config FILE
    typer.run(main)
