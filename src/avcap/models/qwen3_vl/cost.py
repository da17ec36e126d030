"""Real-size Qwen3-VL architectures and their hardware floor: FLOPs, bytes, MFU.

`realsize_config("8B")` builds the exact Cosmos-Reason2-8B / Qwen3-VL-8B architecture (design.md)
for random-weight benchmarks. The cost model below counts the matrix-multiply FLOPs of one forward
pass and the bytes a decode step must read, so a benchmark can print how far a measured rate is
from what the hardware allows. Pure arithmetic; checked against real parameter counts in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Heavy libraries (transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

# Datasheet dense bf16 peak (the conventional MFU denominator) and HBM bandwidth.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
PEAK_HBM_BYTES = {"H100": 3.35e12, "H200": 4.8e12}

ARCHS: dict[str, dict[str, Any]] = {
    "8B": dict(
        text=dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, intermediate_size=12288, vocab_size=151936, rope_theta=5e6, tie=False),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                    deepstack_visual_indexes=[8, 16, 24]),
    ),
    "2B": dict(
        text=dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=6144, vocab_size=151936, rope_theta=5e6, tie=True),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                    deepstack_visual_indexes=[5, 11, 17]),
    ),
}


def realsize_config(name: str, *, vocab_size: int | None = None, attn_implementation: str = "sdpa"):
    """A `Qwen3VLConfig` with the real architecture of Cosmos-Reason2-<name> (2B or 8B)."""
    from transformers import Qwen3VLConfig

    a = ARCHS[name.upper()]
    t, v = a["text"], a["vision"]
    text = dict(
        hidden_size=t["hidden_size"], num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"], num_key_value_heads=t["num_key_value_heads"],
        head_dim=t["head_dim"], intermediate_size=t["intermediate_size"],
        vocab_size=vocab_size or t["vocab_size"], max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": t["rope_theta"],
                         "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        tie_word_embeddings=t["tie"],
    )
    vision = dict(
        depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
        num_heads=v["num_heads"], patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
        out_hidden_size=t["hidden_size"], num_position_embeddings=2304,
        deepstack_visual_indexes=v["deepstack_visual_indexes"],
    )
    cfg = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=t["tie"])
    cfg._attn_implementation = attn_implementation
    return cfg


@dataclass(frozen=True)
class Shape:
    """The numbers of a Qwen3-VL architecture that decide its cost."""

    h: int  # text hidden
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    vd: int  # vision hidden
    vdepth: int
    vffn: int
    deepstack: int
    patch: int = 16
    merge: int = 2
    tpatch: int = 2
    num_pos: int = 2304

    @classmethod
    def from_config(cls, cfg) -> "Shape":
        t, v = cfg.text_config, cfg.vision_config
        return cls(
            h=t.hidden_size, layers=t.num_hidden_layers, heads=t.num_attention_heads,
            kv_heads=t.num_key_value_heads, head_dim=t.head_dim, ffn=t.intermediate_size,
            vocab=t.vocab_size, tied=bool(cfg.tie_word_embeddings), vd=v.hidden_size, vdepth=v.depth,
            vffn=v.intermediate_size, deepstack=len(v.deepstack_visual_indexes), patch=v.patch_size,
            merge=v.spatial_merge_size, tpatch=v.temporal_patch_size, num_pos=v.num_position_embeddings,
        )

    # ---- parameter counts (exactly those of transformers' Qwen3VLForConditionalGeneration)
    def text_layer_linear(self) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return self.h * q + 2 * self.h * kv + q * self.h + 3 * self.h * self.ffn

    def text_params(self) -> int:
        per_layer = self.text_layer_linear() + 2 * self.h + 2 * self.head_dim
        emb = self.vocab * self.h
        return emb + self.layers * per_layer + self.h + (0 if self.tied else emb)

    def vision_block_linear(self) -> int:
        d = self.vd
        return 3 * d * d + d * d + 2 * d * self.vffn

    def merger_linear(self) -> int:
        m = self.vd * self.merge**2
        return m * m + m * self.h

    def vision_params(self) -> int:
        d, m = self.vd, self.vd * self.merge**2
        block = self.vision_block_linear() + 3 * d + d + self.vffn + d + 4 * d
        patch_embed = 3 * self.tpatch * self.patch**2 * d + d
        merger = lambda norm: 2 * norm + self.merger_linear() + m + self.h  # noqa: E731
        return (patch_embed + self.num_pos * d + self.vdepth * block
                + merger(d) + self.deepstack * merger(m))

    def total_params(self) -> int:
        return self.text_params() + self.vision_params()

    # ---- FLOPs
    def vision_flops(self, patches_per_group: int, groups: int) -> float:
        """Forward FLOPs of the vision tower for one video (attention is within each frame group)."""
        n = patches_per_group * groups
        per_patch = 2 * self.vision_block_linear() + 4 * self.vd * patches_per_group
        embed = 2 * 3 * self.tpatch * self.patch**2 * self.vd
        merged = n // self.merge**2
        return n * (self.vdepth * per_patch + embed) + merged * (1 + self.deepstack) * 2 * self.merger_linear()

    def text_flops(self, tokens: int, context: int = 0, *, logits_tokens: int = 1) -> float:
        """Forward FLOPs for `tokens` new tokens after `context` cached ones (causal attention)."""
        linear = 2 * self.layers * self.text_layer_linear() * tokens
        # each new token i attends to context + i + 1 keys: QK^T and AV, 2 FLOPs per MAC
        keys = tokens * context + tokens * (tokens + 1) / 2
        attn = 4 * self.layers * self.heads * self.head_dim * keys
        return linear + attn + 2 * self.h * self.vocab * logits_tokens

    # ---- bytes
    def decode_weight_bytes(self, dtype_bytes: int = 2) -> int:
        """Weights a decode step must read once per step (one embedding row is negligible)."""
        emb = self.vocab * self.h
        return dtype_bytes * (self.text_params() - emb + (emb if self.tied else 0))

    def kv_bytes(self, context: int, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * context * dtype_bytes


@dataclass
class Floor:
    prefill_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


def generation_floor(shape: Shape, *, batch: int, prompt_tokens: int, new_tokens: int,
                     patches_per_group: int, groups: int, peak_flops: float, peak_bytes: float,
                     dtype_bytes: int = 2) -> Floor:
    """Lower bound on the time to caption `batch` videos: prefill is compute bound, each decode
    step reads the weights once plus every sequence's KV cache (bandwidth bound)."""
    prefill = batch * (shape.vision_flops(patches_per_group, groups) + shape.text_flops(prompt_tokens))
    decode_bytes = 0.0
    decode_flops = 0.0
    for i in range(new_tokens):
        ctx = prompt_tokens + i
        decode_bytes += shape.decode_weight_bytes(dtype_bytes) + batch * shape.kv_bytes(ctx, dtype_bytes)
        decode_flops += batch * shape.text_flops(1, ctx)
    return Floor(prefill_s=prefill / peak_flops, decode_s=max(decode_bytes / peak_bytes, decode_flops / peak_flops))


def train_flops(shape: Shape, *, text_tokens: int, patches_per_group: int, groups: int,
                recompute: bool = False, logits_tokens: int | None = None) -> float:
    """FLOPs of one training sample (forward + backward = 3x forward; +1 forward with activation
    checkpointing when `recompute`), for MFU the conventional 3x is used. `logits_tokens`: positions
    whose logits are computed (avcap.train.loop computes them for the labelled positions only; default:
    every token)."""
    logits = text_tokens if logits_tokens is None else logits_tokens
    fwd = shape.vision_flops(patches_per_group, groups) + shape.text_flops(text_tokens, logits_tokens=logits)
    return (4 if recompute else 3) * fwd


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    return flops / seconds / peak_flops


# ----------------------------------------------------------------------------- SFT memory per GPU

GIB = 2**30


def text_block_params(shape: Shape) -> int:
    """Parameters of one text decoder layer (its linear layers and four norms)."""
    return shape.text_layer_linear() + 2 * shape.h + 2 * shape.head_dim


def vision_block_params(shape: Shape) -> int:
    """Parameters of one vision block (linear layers with biases, two LayerNorms)."""
    d = shape.vd
    return shape.vision_block_linear() + 3 * d + d + shape.vffn + d + 4 * d


def root_params(shape: Shape) -> int:
    """Parameters outside the decoder layers and vision blocks (avcap.train.loop's root FSDP unit:
    embeddings, lm_head, final norm, patch and position embeddings, mergers)."""
    return shape.total_params() - shape.layers * text_block_params(shape) - shape.vdepth * vision_block_params(shape)


def text_block_saved_bytes(shape: Shape) -> int:
    """Bytes one text decoder layer saves for backward per token, bf16 compute (transformers'
    Qwen3-VL layer as traced with saved-tensor hooks): the RMSNorms keep their fp32 input, bf16
    output and the next linear's input (8h bytes each, two norms); q/k norms the same for q and k;
    attention keeps rotated q, k, v, its output and the log-sum-exp; the MLP keeps gate, up,
    silu(gate) and the product (8 ffn bytes); plus rsqrt values and the cos/sin tables."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return (16 * shape.h + 10 * q + 10 * kv + 8 * shape.ffn
            + 8 + 8 * shape.heads + 4 * shape.kv_heads + 4 * shape.head_dim)


def vision_block_saved_bytes(shape: Shape, heads: int = 16) -> int:
    """Bytes one vision block saves for backward per patch, bf16 (same tracing): LayerNorm outputs
    and statistics, the qkv output (6 vd), rotated q and k, attention output, projection input,
    residual, fc1 output and GELU output (4 vffn), the fp32 cos/sin tables and log-sum-exp.
    `heads`: the vision tower's attention heads (16 in every Qwen3-VL size)."""
    return 20 * shape.vd + 4 * shape.vffn + 8 * (shape.vd // heads) + 4 * heads + 8


@dataclass(frozen=True)
class SFTMemory:
    """Bytes per GPU of avcap.train.loop's full-parameter SFT at its peak (the start of the last
    micro-batch's backward), by part. `total` is an estimate, not a bound: the allocator's
    fragmentation comes on top and is not modelled."""

    gpus: int
    # master weights + gradients + AdamW exp_avg and exp_avg_sq, / gpus: 16 bytes a parameter with fp32
    # master weights, 8 with bf16 ones ([train] master_dtype, avcap.train.optim)
    sharded_states: float
    accumulated_grads: float  # FSDP2 keeps unsharded fp32 gradients while gradient sync is off
    # bf16 copies in use: root unit + 2 blocks (FSDP2); 1 GPU: autocast's weight cache (fp32 master
    # weights only: bf16 ones are used as they are)
    gathered_params: float
    checkpoints: float  # saved block inputs (gradient checkpointing) or every block's saved tensors
    block_backward: float  # one block recomputed and its gradients, the largest of text and vision
    logits: float  # labelled positions x vocab: bf16 logits, their fp32 copy, fp32 log-softmax
    overhead: float  # CUDA context, cuBLAS workspace, NCCL buffers (a fixed allowance)
    master_dtype: str = "float32"

    @property
    def total(self) -> float:
        return (self.sharded_states + self.accumulated_grads + self.gathered_params + self.checkpoints
                + self.block_backward + self.logits + self.overhead)

    def fits(self, capacity_bytes: float) -> bool:
        return self.total <= capacity_bytes

    def as_gib(self) -> dict[str, Any]:
        parts = ("sharded_states", "accumulated_grads", "gathered_params", "checkpoints", "block_backward",
                 "logits", "overhead")
        out: dict[str, Any] = {"gpus": self.gpus, "master_dtype": self.master_dtype}
        out.update({k: round(getattr(self, k) / GIB, 2) for k in parts})
        out["total"] = round(self.total / GIB, 2)
        return out


def sft_memory(shape: Shape, *, gpus: int, micro_batch: int, seq_len: int, video_patches: int,
               logits_tokens: int | None = None, grad_accumulation: int = 1, gradient_checkpointing: bool = True,
               vision_heads: int = 16, overhead_bytes: float = 2 * GIB, master_dtype: str = "float32") -> SFTMemory:
    """Memory per GPU of avcap.train.loop on `gpus` GPUs (FSDP2 when > 1, every decoder layer and vision
    block its own unit, mixed precision bf16 compute / fp32 reduce, AdamW) for micro-batches of
    `micro_batch` samples of `seq_len` tokens (padded length), each with one video of
    `video_patches` patches before merging; `logits_tokens`: labelled positions per sample
    (default: every token that is not a vision token, the most there can be). `master_dtype`:
    "float32" (fp32 weights, gradients and AdamW moments, bf16 autocast) or "bfloat16" (all of them
    bf16: avcap.train.optim's stochastic-rounding AdamW; its per-chunk fp32 scratch, ~0.4 GB, is
    used after the backward pass, when the activations counted here are freed).

    Pure arithmetic; the activation terms count exactly what transformers' Qwen3-VL blocks save
    (text_block_saved_bytes, vision_block_saved_bytes), the rest follows avcap.train.loop's setup."""
    p = shape.total_params()
    vision_tokens = video_patches // shape.merge**2
    if logits_tokens is None:
        logits_tokens = max(0, seq_len - vision_tokens)
    tokens = micro_batch * seq_len
    patches = micro_batch * video_patches
    if master_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"master_dtype {master_dtype!r}: float32 or bfloat16")
    sharded = (16 if master_dtype == "float32" else 8) * p / gpus
    accumulated = 4 * p if gpus > 1 and grad_accumulation > 1 else 0
    if gpus > 1:
        gathered = 2 * (root_params(shape) + 2 * max(text_block_params(shape), vision_block_params(shape)))
    else:
        gathered = 2 * p if master_dtype == "float32" else 0
    text_saved, vis_saved = text_block_saved_bytes(shape), vision_block_saved_bytes(shape, vision_heads)
    if gradient_checkpointing:
        checkpoints = (shape.layers * tokens * 2 * shape.h + shape.vdepth * patches * 2 * shape.vd
                       + shape.deepstack * micro_batch * vision_tokens * 2 * shape.h)
        # the recomputed block's saved tensors, plus gradients of its widest tensors in flight
        block = max(tokens * (text_saved + 2 * (2 * shape.ffn + shape.h)),
                    patches * (vis_saved + 2 * (2 * shape.vffn + shape.vd)))
    else:
        checkpoints = shape.layers * tokens * text_saved + shape.vdepth * patches * vis_saved
        block = max(tokens * 2 * (2 * shape.ffn + shape.h), patches * 2 * (2 * shape.vffn + shape.vd))
    logits = micro_batch * logits_tokens * shape.vocab * (2 + 4 + 4)
    return SFTMemory(gpus=gpus, sharded_states=sharded, accumulated_grads=accumulated, gathered_params=gathered,
                     checkpoints=checkpoints, block_backward=block, logits=logits, overhead=overhead_bytes,
                     master_dtype=master_dtype)
