"""Real-size Qwen3-VL architectures and their hardware floor: FLOPs, bytes, MFU.

`realsize_config("8B")` builds the exact Cosmos-Reason2-8B / Qwen3-VL-8B architecture (design.md)
for random-weight benchmarks. The cost model below counts the matrix-multiply FLOPs of one forward
pass and the bytes a decode step must read, so a benchmark can print how far a measured rate is
from what the hardware allows. Pure arithmetic; checked against real parameter counts in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
                recompute: bool = False) -> float:
    """FLOPs of one training sample (forward + backward = 3x forward; +1 forward with activation
    checkpointing when `recompute`), for MFU the conventional 3x is used."""
    fwd = shape.vision_flops(patches_per_group, groups) + shape.text_flops(text_tokens, logits_tokens=text_tokens)
    return (4 if recompute else 3) * fwd


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    return flops / seconds / peak_flops
