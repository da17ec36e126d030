"""Master weights for `avcap train`: fp32 (torch's AdamW) or bf16 with stochastic rounding, and
which one `[train] master_dtype = "auto"` picks.

cosmos-rl's `[train] master_dtype` ("float32", its default, or "bfloat16") names the dtype the
optimizer keeps the weights in. With bf16 master weights cosmos-rl's AdamW (torch's) rounds each
update to the nearest bf16 value; with the recipe's lr 2e-7 an update is ~1e-5 of a weight and bf16
keeps 8 significant bits (a step of ~4e-3 of the value), so every update rounds back to the old
weight and training silently does nothing. avcap's bf16 mode (`StochasticRoundingAdamW`) computes
torch's AdamW update in fp32 and writes the weight and both moments back to bf16 with *stochastic
rounding*: up with probability equal to how far the fp32 result lies towards the next bf16 value,
so the stored value equals the fp32 result in expectation (unbiased). A weight then moves by whole
bf16 steps, rarely; averaged over steps and weights it follows the fp32 trajectory, with noise
(per weight after n steps of size u with bf16 step q: drift n*u, spread ~sqrt(n*u*q)). Memory per
parameter: 8 bytes (bf16 weight, gradient, exp_avg, exp_avg_sq) instead of 16 — what lets the 8B
model train on one 80 GB GPU.

`choose_master_dtype` is the pure decision for "auto": fp32 master weights when
avcap.models.qwen3_vl.cost.sft_memory's estimate for them fits the GPU, bf16 otherwise; on CPU
(no device memory to fit) fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

MASTER_DTYPES = ("float32", "bfloat16")
GIB = 2**30
CHUNK = 1 << 24  # elements per fp32 scratch pass of a tensor: ~6 fp32 buffers of 64 MiB at once


def stochastic_round_bf16(x: torch.Tensor) -> torch.Tensor:
    """`x` (float32) as bfloat16, rounded at random: the upper 16 bits of x plus one step away from
    zero with probability (lower 16 bits of x) / 2^16 — so E[result] == x exactly for every finite
    x within bf16's range. Values bf16 holds exactly come back unchanged. Uses the default
    generator of x's device (the training loop saves and restores its state in checkpoints)."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_bf16 takes float32, got {x.dtype}")
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    bits = (x.contiguous().view(torch.int32) + noise).bitwise_and_(-65536)  # -65536 = 0xFFFF0000
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the lower 16 bits are zero


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor (same storage), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _store(dst: torch.Tensor, value: torch.Tensor) -> None:
    dst.copy_(stochastic_round_bf16(value) if dst.dtype == torch.bfloat16 else value)


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update — decoupled weight decay, bias-corrected moments, the same
    formula in the same order — computed in fp32 for parameters and moments kept in their own dtype:
    a bf16 parameter, exp_avg and exp_avg_sq are each written back with `stochastic_round_bf16`; an
    fp32 one exactly (on fp32 parameters this is torch's AdamW: tested). Moments take the
    parameter's dtype, as in torch. Large tensors are updated in chunks of `chunk` elements, so the
    fp32 scratch stays small (the 8B embedding alone would need 2.5 GB per fp32 copy). Works on
    FSDP2's sharded parameters (each rank updates its shard)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, chunk: int = CHUNK):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamW: lr {lr}, betas {betas}, eps {eps}, weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.chunk = int(chunk)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StochasticRoundingAdamW does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                tensors = [_local(x) for x in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
                if all(x.is_contiguous() for x in tensors):
                    pieces = zip(*(x.view(-1).split(self.chunk) for x in tensors))
                else:
                    pieces = [tensors]
                for w, g, m, v in pieces:
                    _adamw_update(w, g, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps, wd=wd,
                                  bias1=1 - beta1**t, bias2_sqrt=math.sqrt(1 - beta2**t))
        return loss


def _adamw_update(w, g, m, v, *, lr, beta1, beta2, eps, wd, bias1, bias2_sqrt) -> None:
    """torch.optim.adamw's single-tensor step on fp32 copies, stored back (stochastically rounded
    where the storage is bf16)."""
    g32, w32, m32, v32 = (x.float() for x in (g, w, m, v))  # fp32 storage: the tensor itself, updated in place
    w32.mul_(1 - lr * wd)
    m32.lerp_(g32, 1 - beta1)
    v32.mul_(beta2).addcmul_(g32, g32, value=1 - beta2)
    denom = (v32.sqrt() / bias2_sqrt).add_(eps)
    w32.addcdiv_(m32, denom, value=-(lr / bias1))
    for dst, value in ((w, w32), (m, m32), (v, v32)):
        if dst is not value:
            _store(dst, value)


def build_optimizer(params, master_dtype: str, *, lr: float, betas, weight_decay: float, device_type: str):
    """The trainer's AdamW: torch's (fused on CUDA) for fp32 master weights, the stochastic-rounding
    one for bf16 master weights."""
    if master_dtype == "bfloat16":
        return StochasticRoundingAdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                             **({"fused": True} if device_type == "cuda" else {}))


# ----------------------------------------------------------------------------- "auto"


@dataclass(frozen=True)
class MasterChoice:
    """What `[train] master_dtype` resolved to, and why (kept in the checkpoint state)."""

    setting: str  # as configured: auto | float32 | bfloat16
    dtype: str  # float32 | bfloat16
    reason: str  # one line
    estimate_gib: Optional[dict[str, float]] = None  # per-GPU SFT memory estimate by master dtype
    capacity_gib: Optional[float] = None  # this GPU's memory

    def record(self) -> dict[str, Any]:
        return {"setting": self.setting, "dtype": self.dtype, "reason": self.reason,
                "estimate_gib": self.estimate_gib, "capacity_gib": self.capacity_gib}

    @property
    def line(self) -> str:
        """The console line: a warning when "auto" left fp32 (cosmos-rl's default) behind."""
        what = ("bfloat16 master weights (AdamW with stochastic rounding; bf16 weights, gradients and moments)"
                if self.dtype == "bfloat16" else "float32 master weights (AdamW, fp32 weights, gradients and moments)")
        text = f"[train] master_dtype = {self.setting}: {what}; {self.reason}"
        return ("warning: " + text) if self.setting == "auto" and self.dtype == "bfloat16" else text


def choose_master_dtype(setting: str, *, estimates: Optional[dict[str, float]], capacity_bytes: Optional[float],
                        param_dtype: str = "bfloat16") -> MasterChoice:
    """Resolve `[train] master_dtype`. `estimates`: bytes per GPU by master dtype (sft_memory's
    totals; None when the model's architecture has no estimate); `capacity_bytes`: the GPU's memory
    (None on CPU). "auto": float32 when its estimate fits (or nothing can be checked), else bfloat16."""
    if setting not in ("auto", *MASTER_DTYPES):
        raise ValueError(f"master_dtype {setting!r}: auto, float32 or bfloat16")
    gib = {k: round(v / GIB, 1) for k, v in estimates.items()} if estimates else None
    cap = round(capacity_bytes / GIB, 1) if capacity_bytes else None

    def choice(dtype: str, reason: str) -> MasterChoice:
        return MasterChoice(setting, dtype, reason, gib, cap)

    if setting != "auto":
        return choice(setting, "as set")
    if capacity_bytes is None:
        return choice("float32", "no GPU memory to fit (CPU)")
    if param_dtype != "bfloat16":
        return choice("float32", f"[train] param_dtype = {param_dtype}: bf16 master weights need bfloat16 compute")
    if not estimates:
        return choice("float32", "no memory estimate for this architecture")
    if estimates["float32"] <= capacity_bytes:
        return choice("float32", f"estimated {gib['float32']} GiB per GPU fits this GPU's {cap} GiB")
    tail = "" if estimates["bfloat16"] <= capacity_bytes else " (over capacity too: may run out of memory)"
    return choice("bfloat16", f"fp32 master weights would need ~{gib['float32']} GiB per GPU, more than this GPU's "
                              f"{cap} GiB; bf16 ~{gib['bfloat16']} GiB{tail} (avcap.models.qwen3_vl.cost.sft_memory, "
                              "worst case); set master_dtype = \"float32\" to refuse")


def sft_estimates(model_config, cfg, gpus: int) -> Optional[dict[str, float]]:
    """sft_memory's per-GPU totals (bytes) for both master dtypes, worst case of this config:
    micro-batches of `mini_batch` samples of `model_max_length` tokens, each with the largest video
    [custom.vision] allows (nframes x max_pixels; with fps, as many vision tokens as fit the
    sequence). None for an architecture the cost model does not describe."""
    from avcap.models.qwen3_vl.cost import Shape, sft_memory

    try:
        shape = Shape.from_config(model_config)
    except AttributeError:
        return None
    seq = cfg.policy.model_max_length
    most = seq * shape.merge**2  # patches of a video that fills the whole sequence
    vis = cfg.custom.vision
    if vis.nframes is not None:
        groups = max(1, math.ceil(vis.nframes / shape.tpatch))
        patches = min(most, groups * (vis.max_pixels // shape.patch**2))
    else:
        patches = most
    t = cfg.train
    kw = dict(gpus=gpus, micro_batch=t.train_policy.mini_batch, seq_len=seq, video_patches=patches,
              grad_accumulation=t.grad_accumulation, gradient_checkpointing=cfg.policy.model_gradient_checkpointing)
    return {d: sft_memory(shape, master_dtype=d, **kw).total for d in MASTER_DTYPES}
