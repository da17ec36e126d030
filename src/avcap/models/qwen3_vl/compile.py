"""`[train] compile = true`: regional torch.compile of the repeated blocks, and packed vision attention.

Regional compilation: each decoder layer and each vision block (the classes a model lists in
`_no_split_modules`, the same units FSDP2 shards and gradient checkpointing recomputes) gets its
`forward` replaced by a torch.compile'd one. Blocks of one class share their compiled code (the
parameters are graph inputs), so a 28-layer decoder compiles one layer, not 28, and the code
outside the blocks (embedding, mRoPE positions, deepstack merge, logits, loss) stays eager. Only
`forward` is compiled, not `__call__`: hooks (FSDP2's all-gather, gradient checkpointing in
transformers' `GradientCheckpointingLayer.__call__`) run eagerly around the compiled body, so
checkpointing recomputes the compiled forward. What inductor fuses inside a block: RMSNorm/LayerNorm
with their fp32 casts, RoPE, SiLU·up, residual adds, autocast's weight casts.

Packed vision attention (`pack_vision_attention`): Qwen-VL vision towers attend within each frame
group (`cu_seqlens`); with sdpa transformers calls attention once per group in a Python loop (32
calls per block for 4 videos of 8 groups). Here consecutive groups of equal length become one
batched `scaled_dot_product_attention` call (one per run of equal lengths: one per block when all
videos of the micro-batch share a resolution). The same function, to rounding. In training that call
is compiler-disabled (the run lengths are host ints; autograd differentiates it), which splits each
compiled vision block around it; without gradients it is a custom operator (`avcap::packed_sdpa`)
inside the block's one graph.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

from avcap.models.qwen3_vl.text import linear_patch_embed as _linear_pe

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

_LENGTHS_ATTR = "_avcap_equal_length_runs"


def _block_forward(self, *args, **kwargs):
    return type(self).forward(self, *args, **kwargs)


def block_forward(cls: type) -> types.FunctionType:
    """What torch.compile traces for a block of class `cls`: a function of its own that calls the
    class's `forward`. Not the bound `forward` itself: transformers 5 wraps each block class's forward
    in a closure (`GradientCheckpointingLayer.__init_subclass__`), and torch's profile of dynamic
    shapes keys a closure's frames by a hash of the code objects it closes over, which Python's hash
    randomisation changes in every process — so the profile was never found again, and every process
    compiled each block once static and again dynamic at its second size. One code object per class
    (named after it) also keeps the classes' dynamic-shape records and recompile counts apart."""
    name = f"_block_forward_{cls.__name__}"
    code = _block_forward.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, _block_forward.__globals__, name)


def block_modules(model) -> list[Any]:
    """The repeated blocks: instances of the classes named in `model._no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


# [avcap.train] compile_tuning: torch.compile's arguments for each choice (inductor's search for faster kernels)
TUNING: dict[str, dict[str, Any]] = {
    "default": {},
    "kernels": {"options": {"coordinate_descent_tuning": True}},
    "max-autotune": {"mode": "max-autotune-no-cudagraphs"},
}


def compile_blocks(model, *, backend: str = "inductor", dynamic: bool | None = None, pack_vision: bool = True,
                   linear_patch_embed: bool = True, activation_memory_budget: float | None = None,
                   tuning: str = "default") -> dict[str, int]:
    """Compile every block's forward in place (regional compilation). First, with `pack_vision`,
    replace the vision attention's per-frame loop by packed calls, and with `linear_patch_embed`
    run the vision patch embedding (a Conv3d with stride = kernel) as one GEMM on the same weight
    (avcap.models.qwen3_vl.text.linear_patch_embed; cuDNN's Conv3d is ~20x slower here).

    `activation_memory_budget` (0 < b <= 1): turn the blocks' gradient checkpointing off and let the
    compiler's min-cut partitioner keep about this fraction of each block's activations for the
    backward pass, recomputing the cheapest rest (selective recompute) — instead of recomputing
    every block whole. Sets torch._functorch.config.activation_memory_budget for the process.

    `tuning`: a key of `TUNING` (inductor backend only): how long inductor searches for faster kernels.

    Returns counts per compiled block class. Idempotent: an already compiled block is left alone."""
    if tuning not in TUNING:
        raise ValueError(f"compile tuning {tuning!r}: one of {', '.join(TUNING)}")
    extra = TUNING[tuning] if backend == "inductor" else {}
    if activation_memory_budget is not None:
        if not 0 < activation_memory_budget <= 1:
            raise ValueError(f"activation_memory_budget = {activation_memory_budget}: must be in (0, 1]")
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = float(activation_memory_budget)
    if pack_vision:
        pack_vision_attention(model)
    if linear_patch_embed:

        _linear_pe(model)
    counts: dict[str, int] = {}
    traced: dict[type, types.FunctionType] = {}
    for m in block_modules(model):
        if activation_memory_budget is not None and hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = False
        if getattr(m, "_avcap_compiled", False):
            continue
        m._avcap_eager_forward = m.forward  # for checks that must not compile a graph of their own
        if type(m) not in traced:
            traced[type(m)] = block_forward(type(m))
        fn = traced[type(m)]
        m.forward = torch.compile(types.MethodType(fn, m), backend=backend, dynamic=dynamic, **extra)
        m._avcap_compiled = True
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    if not counts and not block_modules(model):
        raise ValueError(f"{type(model).__name__}: no repeated blocks to compile (no _no_split_modules)")
    return counts


# ----------------------------------------------------------------------------- packed vision attention


def equal_length_runs(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive groups of equal length: [(start offset, length, count)], zero lengths dropped."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for n in lengths:
        if n > 0:
            if runs and runs[-1][1] == n and runs[-1][0] + runs[-1][1] * runs[-1][2] == start:
                s, L, c = runs[-1]
                runs[-1] = (s, L, c + 1)
            else:
                runs.append((start, n, 1))
        start += n
    return runs


def _runs_of(cu_seqlens) -> list[tuple[int, int, int]]:
    """Runs of `cu_seqlens`, read to the host once per tensor (every block gets the same tensor)."""
    runs = getattr(cu_seqlens, _LENGTHS_ATTR, None)
    return runs if runs is not None else remember_runs(cu_seqlens, cu_seqlens)


def remember_runs(cu_seqlens, host_copy) -> list[tuple[int, int, int]]:
    """The runs of `host_copy` (equal to `cu_seqlens`, possibly on the host), kept on `cu_seqlens` so
    `packed_sdpa` never reads it back."""
    runs = equal_length_runs([int(n) for n in (host_copy[1:] - host_copy[:-1]).tolist()])
    try:
        setattr(cu_seqlens, _LENGTHS_ATTR, runs)
    except (AttributeError, RuntimeError):  # a tensor subclass that refuses attributes: read again next time
        pass
    return runs


def _groups(t, start: int, length: int, count: int):
    """Rows start .. start + length * count of (n, heads, dim) as (count, heads, length, dim)."""
    return t[start:start + length * count].view(count, length, t.shape[1], t.shape[2]).transpose(1, 2)


def _packed_sdpa(q, k, v, cu_seqlens, scale: float):
    """Attention of (n, heads, dim) q/k/v within the groups of `cu_seqlens`; (n, heads, dim), contiguous."""
    outs = []
    for start, length, count in _runs_of(cu_seqlens):
        qs, ks, vs = (_groups(t, start, length, count) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        outs.append(o.transpose(1, 2).reshape(length * count, q.shape[1], q.shape[2]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


# training: the run lengths are host ints, so the compiler stops before and resumes after this call
# (the block's graph is split around it) and autograd differentiates the sdpa calls as usual
packed_sdpa = torch.compiler.disable(_packed_sdpa, recursive=True)


@torch.library.custom_op("avcap::packed_sdpa", mutates_args=())
def packed_sdpa_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Inference: the same attention as one opaque operator the compiler keeps inside the block's
    graph (it has no backward). The graph passes `cu_seqlens` through, so the runs remembered on it
    are read without a device sync."""
    return _packed_sdpa(q, k, v, cu_seqlens, scale)


@packed_sdpa_op.register_fake
def _(q, k, v, cu_seqlens, scale):
    return q.new_empty(q.shape)


def _packed_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen3-VL vision attention (transformers' forward for sdpa/eager), groups batched."""
    n = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = self._avcap_rotary(q, k, cos, sin)
    if torch.is_grad_enabled() and q.requires_grad:
        out = packed_sdpa(q, k, v, cu_seqlens, self.scaling)
    else:
        out = packed_sdpa_op(q, k, v, cu_seqlens, self.scaling)
    return self.proj(out.reshape(n, -1))


def pack_vision_attention(model) -> int:
    """Replace the per-frame loop of Qwen-VL vision attention (`qkv`, `proj`, `num_heads`,
    `scaling` and the module-level `apply_rotary_pos_emb_vision` of its transformers module) by
    packed calls. Flash-attention models (varlen already) and unknown modules are left alone.
    Returns how many modules were patched."""
    n = 0
    for m in model.modules():
        if not type(m).__name__.endswith("VisionAttention") or getattr(m, "_avcap_packed", False):
            continue
        rotary = getattr(sys.modules.get(type(m).__module__), "apply_rotary_pos_emb_vision", None)
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
        if rotary is None or not all(hasattr(m, a) for a in ("qkv", "proj", "num_heads", "scaling")):
            continue
        if impl not in (None, "sdpa", "eager"):
            continue
        m._avcap_rotary = rotary
        m.forward = types.MethodType(_packed_forward, m)
        m._avcap_packed = True
        n += 1
    return n
