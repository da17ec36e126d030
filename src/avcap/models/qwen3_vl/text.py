"""Qwen3-VL's text decoder as avcap's fast path runs it (`avcap.engines.hf.fast_generate`): the same
modules, weights and math as transformers' `Qwen3VLTextDecoderLayer`, over a static KV cache.
`check_layer_against_library` compares the transcription with the library's own layer before the
fast path serves anything. Also the model-level helpers the engine and the trainer share: which
models the transcription supports, the vision patch embedding as one GEMM, host-to-device copies."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Optional

# Heavy libraries (torch, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


class NotSupported(Exception):
    """This batch or model needs plain `generate` (the engine falls back)."""


def supports(model: Any) -> bool:
    """A Qwen3-VL conditional-generation model with the module layout `text_forward` transcribes."""
    try:
        base = model.model
        lm = base.language_model
        layer = lm.layers[0]
        attn = layer.self_attn
        ok = all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"))
        ok = ok and hasattr(base, "get_rope_index") and hasattr(model, "lm_head") and hasattr(lm, "rotary_emb")
        return bool(ok) and getattr(model.config, "model_type", "") == "qwen3_vl"
    except (AttributeError, IndexError, TypeError):
        return False


def linear_patch_embed(model) -> bool:
    """Run the vision patch embedding (a Conv3d whose stride equals its kernel) as one GEMM.

    Same function: each output is the dot product of one flattened (C, T, P, P) patch with the
    flattened kernel. cuDNN has no good algorithm for this degenerate convolution on some
    GPU/dtype/version combinations (transformers #45750, vLLM and SGLang made the same change);
    cuBLAS has. Returns whether the model was changed."""
    import torch
    import torch.nn.functional as F

    pe = getattr(getattr(getattr(model, "model", None), "visual", None), "patch_embed", None)
    proj = getattr(pe, "proj", None)
    if not isinstance(proj, torch.nn.Conv3d) or getattr(pe, "_avcap_linear", False):
        return False
    if (tuple(proj.kernel_size) != tuple(proj.stride) or any(proj.padding) or proj.groups != 1
            or any(d != 1 for d in proj.dilation)):
        return False

    def forward(hidden_states):
        w = proj.weight
        x = hidden_states.reshape(-1, w[0].numel()).to(w.dtype)
        return F.linear(x, w.reshape(w.shape[0], -1), proj.bias)

    pe.forward = forward
    pe._avcap_linear = True
    return True


@contextlib.contextmanager
def replaced(*changes):
    """Set instance attributes (`(obj, name, value)` triples) for the calls made inside, then put
    back what each object had (or remove the attribute, so the class's is found again)."""
    saved = [(obj, name, obj.__dict__.get(name)) for obj, name, _ in changes]
    for obj, name, value in changes:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, before in saved:
            if before is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, before)


def to_device(t, device):
    """A host tensor on `device` without waiting for the device's queue (pinned, asynchronous copy)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def attention_inputs(layer, hidden, cos, sin):
    """q, k, v (B, heads, L, D) of one Qwen3-VL text decoder layer: norm, projections, q/k norms, RoPE."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

    a = layer.self_attn
    b, n, _ = hidden.shape
    d = a.head_dim
    x = layer.input_layernorm(hidden)
    q = a.q_norm(a.q_proj(x).view(b, n, -1, d)).transpose(1, 2)
    k = a.k_norm(a.k_proj(x).view(b, n, -1, d)).transpose(1, 2)
    v = a.v_proj(x).view(b, n, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def attention_output_and_mlp(layer, hidden, o):
    """The rest of the layer after attention: `o` (B, heads, L, D) -> o_proj, residual, norm, MLP, residual."""
    b, heads, n, d = o.shape
    hidden = hidden + layer.self_attn.o_proj(o.transpose(1, 2).reshape(b, n, heads * d))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def text_forward(model, hidden, cos, sin, kc, vc, slots, mask, pieces=(attention_inputs, attention_output_and_mlp),
                 attend=None):
    """Qwen3-VL's text decoder over the static cache: `hidden` (B, L, H) at cache `slots` (L,),
    attending where `mask` (B, 1, L, S) is true. Writes the new keys/values into kc/vc
    (layers, B, kv_heads, S, D) and returns the final-normed hidden states (B, L, H).
    `pieces`: the two halves of a layer around the cache write and attention (torch.compile'd
    ones with `[avcap.engine] compile`; the cache write stays outside: in place, no copies).
    `attend(q, kc, vc, scale)`: the attention to use instead of `mask`ed sdpa (a decode step's)."""
    lm = model.model.language_model
    m = None
    for i, layer in enumerate(lm.layers):
        hidden, m = layer_forward(layer, hidden, cos, sin, kc[i], vc[i], slots, mask, m, pieces, attend)
    return lm.norm(hidden)


def layer_forward(layer, hidden, cos, sin, kc, vc, slots, mask, folded=None,
                  pieces=(attention_inputs, attention_output_and_mlp), attend=None):
    """One decoder layer of `text_forward` over its cache kc/vc (B, kv_heads, S, D); returns the
    hidden states and the mask folded for grouped-query attention (reused by the next layer).
    `attend(q, kc, vc, scale)` -> (B, heads, L, D), when given, replaces the masked sdpa."""
    import torch.nn.functional as F

    pre, post = pieces
    b, n, _ = hidden.shape
    q, k, v = pre(layer, hidden, cos, sin)
    kc.index_copy_(2, slots, k)
    vc.index_copy_(2, slots, v)
    if attend is not None:
        return post(layer, hidden, attend(q, kc, vc, layer.self_attn.scaling)), folded
    heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[3]
    g = heads // kv_heads
    if folded is None:  # query heads h = kv * g + j share KV head kv: fold j into the query length
        folded = mask if g == 1 else mask.expand(b, 1, n, mask.shape[-1]).repeat(1, 1, g, 1)
    o = F.scaled_dot_product_attention(q.reshape(b, kv_heads, g * n, d), kc, vc, attn_mask=folded,
                                       scale=layer.self_attn.scaling)
    return post(layer, hidden, o.reshape(b, heads, n, d)), folded


def layer_difference(model, pieces=(attention_inputs, attention_output_and_mlp), device=None) -> tuple[float, float]:
    """(max abs difference, tolerance) between `layer_forward` (the transcription) and transformers'
    own first text decoder layer on a few random tokens; the tolerance is the dtype's rounding
    (fp32: 1e-4, bf16/fp16: 3e-2, times 1 + the largest output). Raises what the layers raise."""
    import torch

    lm = model.model.language_model
    layer = lm.layers[0]
    p = next(layer.parameters())
    device = device or p.device
    dtype = p.dtype
    n = 5
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, n, model.config.get_text_config().hidden_size, generator=g).to(device, dtype)
    positions = torch.arange(n, device=device).view(1, 1, n).expand(3, 1, n)
    cos, sin = rotary(model, hidden, positions)
    # the library's layer as written: compiled (compile_blocks), this 5-token call would trace and
    # compile a graph used by nothing else (the prompt runs the transcription) on every first call
    library = getattr(layer, "_avcap_eager_forward", layer)
    with torch.no_grad():
        ref = library(hidden, position_embeddings=(cos, sin), attention_mask=None, position_ids=positions[0])
        ref = ref[0] if isinstance(ref, tuple) else ref
        a = layer.self_attn
        kv_heads = a.k_proj.out_features // a.head_dim
        kc = torch.zeros(1, kv_heads, n, a.head_dim, device=device, dtype=dtype)
        vc = torch.zeros_like(kc)
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril().view(1, 1, n, n)
        ours, _ = layer_forward(layer, hidden, cos, sin, kc, vc, torch.arange(n, device=device), causal, pieces=pieces)
    diff = float((ours.float() - ref.float()).abs().max())
    tol = (1e-4 if dtype == torch.float32 else 3e-2) * (1.0 + float(ref.float().abs().max()))
    return diff, tol


def check_layer_against_library(model, pieces=(attention_inputs, attention_output_and_mlp), device=None) -> Optional[str]:
    """None when `layer_forward` (the transcription) gives what transformers' own first text
    decoder layer gives on a few random tokens, within the dtype's rounding (`layer_difference`);
    else why not. Run once before the fast path serves anything: a transformers release that
    changes the layer (a new norm, another RoPE) turns the fast path off instead of changing its
    answers."""
    try:
        diff, tol = layer_difference(model, pieces, device)
    except Exception as exc:  # noqa: BLE001 — a layer we cannot even call is a layer we do not match
        return f"{type(exc).__name__}: {exc}"
    if not diff <= tol:
        layer = model.model.language_model.layers[0]
        return (f"its text decoder layer differs from transformers' {type(layer).__name__} "
                f"(max abs diff {diff:.3g}, tolerance {tol:.3g})")
    return None


def layer_check_key(model, pieces=(attention_inputs, attention_output_and_mlp), device=None) -> Optional[dict[str, Any]]:
    """What `check_layer_against_library`'s answer depends on, for remembering a pass across
    processes (avcap.core.verdicts): the library versions, the GPU, the source of both layers
    (this file and each piece's code; transformers' modeling file), the text configuration and
    attention implementation, the dtype. Not the weights: both layers run on the same weights, so
    they decide nothing about whether the code agrees. None where some source cannot be read (the
    check then runs every time)."""
    import inspect

    import torch

    from avcap.core.compile_cache import cache_key_fields
    from avcap.core.verdicts import source_digest

    layer = model.model.language_model.layers[0]
    p = next(layer.parameters())
    device = torch.device(device or p.device)
    try:
        sources = {"transcription": source_digest(inspect.getmodule(layer_difference)),
                   "library_layer": source_digest(inspect.getmodule(type(layer))),
                   **{f"piece:{f.__module__}.{f.__qualname__}": source_digest(f) for f in pieces}}
    except (OSError, TypeError):
        return None
    text_config = model.config.get_text_config()
    return {**cache_key_fields(device.type), "device": device.type, "dtype": str(p.dtype),
            "layer_class": f"{type(layer).__module__}.{type(layer).__qualname__}",
            "attn_implementation": getattr(text_config, "_attn_implementation", None),
            "text_config": text_config.to_dict(), "sources": sources}


def rotary(model, hidden, positions):
    """cos, sin for mRoPE `positions` (3, B, L)."""
    return model.model.language_model.rotary_emb(hidden, positions)


def causal_attention(q, k, v, att, scale: float):
    """Causal attention of a block of new tokens over its own keys: q (B, heads, L, D), k/v (B,
    kv_heads, L, D), `att` (B, L) true at real tokens of left-padded rows (None: no padding).
    Padded queries attend to themselves only, so their keys and values stay finite."""
    import torch
    import torch.nn.functional as F

    g = q.shape[1] // k.shape[1]
    if att is None and _has_gqa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    if g > 1:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    if att is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    n = q.shape[2]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    mask = (eye.cumsum(0).bool() & att[:, None, None, :]) | eye  # cumsum of the identity: lower triangle
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@functools.cache
def _has_gqa() -> bool:
    import torch

    return tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # sdpa's enable_gqa


def prefix_layers(model, hidden, position_ids, attention_mask, cache, visual_pos_masks=None,
                  deepstack_visual_embeds=None, pieces=(attention_inputs, attention_output_and_mlp), padded=True):
    """Qwen3-VL's language model over a prompt block with the transcribed layer: what
    `Qwen3VLTextModel.forward` computes for `inputs_embeds` = `hidden` (B, L, H) — mRoPE
    `position_ids` (3 or 4, B, L), causal attention within the block (`attention_mask` (B, L): the
    left padding; `padded` false: the caller knows there is none), the deepstack features added after the first layers through the model's own
    `_deepstack_process` — with each layer's keys and values stored in `cache` (`update(k, v, i)`).
    Returns the final-normed hidden states. One compiled graph serves every layer (the library's
    layers guard on their cache entry and compile once per layer)."""
    lm = model.model.language_model
    pre, post = pieces
    if position_ids.shape[0] == 4:  # text positions first (transformers 5's layout), then the 3 mRoPE axes
        position_ids = position_ids[1:]
    att = attention_mask.bool() if padded and attention_mask is not None else None
    cos, sin = rotary(model, hidden, position_ids)
    for i, layer in enumerate(lm.layers):
        q, k, v = pre(layer, hidden, cos, sin)
        cache.update(k, v, i)
        hidden = post(layer, hidden, causal_attention(q, k, v, att, layer.self_attn.scaling))
        if deepstack_visual_embeds is not None and i < len(deepstack_visual_embeds):
            hidden = lm._deepstack_process(hidden, visual_pos_masks, deepstack_visual_embeds[i])
    return lm.norm(hidden)
