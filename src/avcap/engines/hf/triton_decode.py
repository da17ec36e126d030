"""Decode-step attention as a Triton split-KV kernel (flash-decoding) that reads each KV head once
for all the query heads sharing it.

A decode step has one query token per row against a long cache: the work is reading K and V.
torch's kernels for this shape read a cache at 2.54 TB/s (the masked memory-efficient sdpa) and 2.80
(FlexAttention's decoding kernel) on an H100, where a copy reaches ~2.96; this one at 2.93
(benchmarks/RESULTS.md, "Decode attention kernels alone", run 64). Here each program takes one
(row, KV head) and one stretch of the cache's slots, loads each block of keys and values once, and
scores it against all `groups` query heads of that KV head with one tensor-core product (the heads
padded to 16 rows). Slots where `valid` (B, S) is false count for nothing (the cache's padding, the
block's not yet written slots), exactly as the boolean mask of the sdpa path does. With more than
one stretch per (row, KV head) a second kernel combines them by their log-sum-exp; with one, the
first kernel writes the output itself.

Scores and softmax run in float32, the probabilities meet V in the cache's dtype (as in flash
attention), so results agree with sdpa's within the dtype's rounding (tests: Triton's interpreter on
the CPU; the GPU in benchmarks/bench_decode_attention.py).

    attend = triton_decode(valid)          # the engine's decode step: attend(q, kc, vc, scale)
    o = decode_attention(q, kc, vc, valid, scale)   # q (B, H, 1, D), kc/vc (B, KV, S, D) -> (B, H, 1, D)
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # cache slots per loaded block
MIN_ROWS = 16  # tensor-core products need 16 rows: a KV head's query heads are padded to this
# stretches per (row, KV head) are chosen to give about this many programs per SM: at 64 rows x 8 KV heads
# (512 programs on 132 SMs) one stretch read 2.93 TB/s, three 2.83 (H100, benchmarks/runs/gpu_run64)
PROGRAMS_PER_SM = 3


@triton.jit
def _stretch_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, o_ptr, lse_ptr, kv_len, stretch, scale_log2,
                    q_sb, q_sh, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, valid_sb, o_sb, o_sh, o_ss, l_sb, l_sh,
                    KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, BLOCK_G: tl.constexpr,
                    BLOCK_N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, WHOLE: tl.constexpr):
    """One (row, KV head) x one stretch of slots: partial output (float32) and its log2-sum-exp2;
    WHOLE (one stretch covers every slot): the output itself, in o_ptr's dtype, and no log-sum-exp."""
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = bh // KV_HEADS
    kvh = bh % KV_HEADS
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    head = kvh * GROUPS + g
    g_ok = g < GROUPS
    d_ok = d < D
    q = tl.load(q_ptr + b * q_sb + head[:, None] * q_sh + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    lo = part * stretch
    hi = tl.minimum(lo + stretch, kv_len)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    k_base = k_ptr + b * k_sb + kvh * k_sh
    v_base = v_ptr + b * v_sb + kvh * v_sh
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        ok = tl.load(valid_ptr + b * valid_sb + n, mask=n_ok, other=0) != 0
        k = tl.load(k_base + n[:, None] * k_ss + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing valid yet: no NaN
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * v_ss + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    seen = l_i > 0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(o_ptr + b * o_sb + head[:, None] * o_sh + part * o_ss + d[None, :], o.to(o_ptr.dtype.element_ty),
             mask=g_ok[:, None] & d_ok[None, :])
    if not WHOLE:
        tl.store(lse_ptr + b * l_sb + head * l_sh + part, lse, mask=g_ok)


@triton.jit
def _combine_kernel(o_part_ptr, lse_ptr, out_ptr, parts, p_sb, p_sh, p_ss, l_sb, l_sh, out_sb, out_sh,
                    HEADS: tl.constexpr, BLOCK_P: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (row, query head): the stretches' outputs weighted by their share of the softmax."""
    bh = tl.program_id(0)
    b = bh // HEADS
    h = bh % HEADS
    i = tl.arange(0, BLOCK_P)
    d = tl.arange(0, BLOCK_D)
    i_ok = i < parts
    d_ok = d < D
    lse = tl.load(lse_ptr + b * l_sb + h * l_sh + i, mask=i_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(i_ok & (lse > float("-inf")), tl.exp2(lse - m), 0.0)
    o = tl.load(o_part_ptr + b * p_sb + h * p_sh + i[:, None] * p_ss + d[None, :],
                mask=i_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + b * out_sb + h * out_sh + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def stretches(rows: int, kv_heads: int, kv_len: int, sms: int, block_n: int = BLOCK_N) -> int:
    """How many stretches each (row, KV head)'s slots are split into: enough programs to keep
    every SM busy with several loads in flight, none shorter than one block."""
    want = max(1, math.ceil(PROGRAMS_PER_SM * sms / max(1, rows * kv_heads)))
    return max(1, min(want, math.ceil(kv_len / block_n)))


def _sm_count(device) -> int:
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else 1


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def decode_attention(q, kc, vc, valid, scale: float, parts: int | None = None, *, block_n: int = BLOCK_N,
                     num_warps: int = 4, num_stages: int = 2):
    """softmax(q k^T * scale, over slots where valid) v for one query token per row.

    q (B, H, 1, D); kc, vc (B, KV, N, D), N <= valid's S (a prefix of the cache's slots); valid
    (B, S) bool. Every query head h attends with KV head h // (H / KV). Returns (B, H, 1, D) in
    q's dtype. `parts`: stretches per (row, KV head), default `stretches(...)`; `block_n`, `num_warps`,
    `num_stages`: the kernel's launch settings (benchmarks/bench_decode_attention.py compares them)."""
    b, heads, one, d = q.shape
    _, kv_heads, n, _ = kc.shape
    if one != 1:
        raise ValueError(f"decode_attention: one query token per row, got {one}")
    if heads % kv_heads:
        raise ValueError(f"decode_attention: {heads} query heads do not share {kv_heads} KV heads evenly")
    if valid.dim() != 2 or valid.shape[0] != b or valid.shape[1] < n:
        raise ValueError(f"decode_attention: valid must be (rows {b}, at least {n} slots), got {tuple(valid.shape)}")
    if kc.stride(-1) != 1 or vc.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("decode_attention: the head dimension must be contiguous")
    groups = heads // kv_heads
    parts = parts or stretches(b, kv_heads, n, _sm_count(q.device), block_n)
    stretch = math.ceil(math.ceil(n / parts) / block_n) * block_n
    parts = math.ceil(n / stretch)
    out = torch.empty((b, heads, 1, d), dtype=q.dtype, device=q.device)
    if parts == 1:  # the stretch is the whole cache: its output is the answer (no partials, no combine)
        o_part, lse = out, out
    else:
        o_part = torch.empty((b, heads, parts, d), dtype=torch.float32, device=q.device)
        lse = torch.empty((b, heads, parts), dtype=torch.float32, device=q.device)
    valid_bytes = valid.view(torch.uint8) if valid.dtype == torch.bool else valid
    block_d = triton.next_power_of_2(d)
    _stretch_kernel[(b * kv_heads, parts)](
        q, kc, vc, valid_bytes, o_part, lse, n, stretch, scale * math.log2(math.e),
        q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1),
        vc.stride(2), valid_bytes.stride(0), o_part.stride(0), o_part.stride(1), o_part.stride(2),
        lse.stride(0), lse.stride(1),
        KV_HEADS=kv_heads, GROUPS=groups, BLOCK_G=max(MIN_ROWS, triton.next_power_of_2(groups)),
        BLOCK_N=block_n, D=d, BLOCK_D=block_d, WHOLE=parts == 1, num_warps=num_warps, num_stages=num_stages)
    if parts == 1:
        return out
    _combine_kernel[(b * heads,)](
        o_part, lse, out, parts, o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0),
        lse.stride(1), out.stride(0), out.stride(1),
        HEADS=heads, BLOCK_P=triton.next_power_of_2(parts), D=d, BLOCK_D=block_d, num_warps=4)
    return out


def triton_decode(valid):
    """`attend(q, kc, vc, scale)` for the engine's decode step (avcap.models.qwen3_vl.text.layer_forward)."""

    def attend(q, kc, vc, scale):
        return decode_attention(q, kc, vc, valid, scale)

    return attend
