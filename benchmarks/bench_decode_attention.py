"""Decode-step attention kernels at real size (one new token per row over a static KV cache).

The engine's decode step (avcap.engines.hf.fast_generate.text_forward, q length 1) attends over the
whole static cache of S slots with a boolean mask of the slots each row may see: rows are
right-aligned, so padding sits inside the cache. This script times, for the 8B and 2B attention
shapes at the caption batch (64 rows, S = 3,328 slots):

- `masked_sdpa`: what text_forward does today (query heads of a KV head folded into the query
  length, boolean mask, torch's backend choice: the memory-efficient kernel);
- `masked_cudnn`: the same call with only cuDNN's attention allowed;
- `split_kv_cN`: the cache split into N chunks along the slots, the chunks laid out as extra heads
  (a free view), the memory-efficient kernel with log-sum-exp per chunk, then combined — flash-
  decoding built from torch's own kernel;
- `flex`: torch's flex_attention (compiled; its decoding kernel splits the slots) with the valid
  mask read inside the kernel;
- `flash_nomask` (bound, not usable with padding): flash attention over all slots, no mask;
- `triton_pN` / `triton_auto`: avcap's split-KV kernel (avcap.engines.hf.triton_decode, N stretches
  per row and KV head, or its own choice), each KV head read once for its query heads;
  `triton_auto_nB_wW_sS`: its other launch settings (B slots per block, W warps, S pipeline stages);
- `*_engine_view`: sdpa and the Triton kernel on the first slots of a longer cache, as the engine's
  decode step reads it (a strided view of the layer's (B, KV, S_total, D) cache, S_total = slots + 256).

Each variant's output is compared with a float32 reference on the valid slots; time per call is
the median of CUDA-event timings; bandwidth = K + V bytes read / time.

It also times the token choice that follows every decode step on (64, 151,936) float32 logits
with the recipe's caption sampling (temperature 0.7, top-k 20, top-p 0.8, presence penalty 1.5,
min_tokens) and greedy: `transformers_warpers` (transformers' warpers over the whole vocabulary, the
engine's way until 2026-11-24) against avcap.engines.hf.fast_generate.Chooser (top-k candidates only).

    python3 benchmarks/bench_decode_attention.py --out $OUT
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import REPO, ensure_deps, write_result  # noqa: E402


def make_inputs(b: int, heads: int, kv: int, d: int, s: int, filled: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, heads, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, kv, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, kv, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
    valid = torch.zeros(b, s, dtype=torch.bool, device="cuda")
    gen = torch.Generator().manual_seed(seed)
    for r in range(b):  # [pad | prefix][pad | suffix][new tokens]: two pads per row, like the engine
        p1 = int(torch.randint(0, 40, (1,), generator=gen))
        p2 = int(torch.randint(0, 12, (1,), generator=gen))
        valid[r, p1:2800] = True
        valid[r, 2800 + p2:filled] = True
    return q, k, v, valid


def reference(q, k, v, valid, scale):
    g = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(g, 1)
    vf = v.float().repeat_interleave(g, 1)
    sc = (q.float() @ kf.transpose(-1, -2)) * scale
    sc = sc.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(sc, -1) @ vf


def masked_sdpa(q, k, v, valid, scale, backend=None):
    b, heads, n, d = q.shape
    kv = k.shape[1]
    g = heads // kv
    qg = q.reshape(b, kv, g * n, d)
    m = valid[:, None, None, :].expand(b, 1, n, valid.shape[-1]).repeat(1, 1, g, 1)
    if backend is None:
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=m, scale=scale)
    else:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(qg, k, v, attn_mask=m, scale=scale)
    return o.reshape(b, heads, n, d)


def split_bias(valid, kv: int, g: int, chunks: int, dtype):
    """Additive bias (B, kv * chunks, g, S / chunks): 0 where valid, a large negative elsewhere
    (finite: a chunk with no valid slot gets a tiny log-sum-exp instead of NaN)."""
    b, s = valid.shape
    sc = s // chunks
    bias = torch.zeros(b, s, dtype=dtype, device=valid.device).masked_fill_(~valid, -30000.0)
    return bias.view(b, 1, chunks, 1, sc).expand(b, kv, chunks, g, sc).reshape(b, kv * chunks, g, sc)


def split_kv(q, k, v, bias, scale, chunks: int):
    b, heads, n, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    g = heads // kv
    sc = s // chunks
    qg = q.reshape(b, kv, 1, g, d).expand(b, kv, chunks, g, d).reshape(b, kv * chunks, g, d)
    kk = k.view(b, kv * chunks, sc, d)  # free view: (kv, chunk) merge into one head axis
    vv = v.view(b, kv * chunks, sc, d)
    o, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qg, kk, vv, bias, True, scale=scale)[:2]
    o = o.view(b, kv, chunks, g, d).float()
    lse = lse[..., :g].reshape(b, kv, chunks, g)
    w = torch.softmax(lse, dim=2).unsqueeze(-1)
    return (o * w).sum(2).reshape(b, heads, 1, d).to(q.dtype)


def time_call(fn, iters: int = 50, repeats: int = 5) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    meds = []
    for _ in range(repeats):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        for _ in range(iters):
            fn()
        en.record()
        torch.cuda.synchronize()
        meds.append(st.elapsed_time(en) / iters)
    return statistics.median(meds) / 1000.0


def time_choosers(batch: int, vocab: int = 151936) -> dict:
    from avcap.engines.hf.fast_generate import Chooser, SamplingSpec

    def warpers_way(spec, seen):
        def run(logits):
            x = logits - spec.presence_penalty * seen.to(logits.dtype)
            for w in spec.warpers():
                x = w(None, x)
            return torch.multinomial(torch.softmax(x, dim=-1), num_samples=1).squeeze(1)
        return run

    out = {}
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(batch, vocab, device="cuda", generator=g) * 3
    caption = SamplingSpec(temperature=0.7, top_k=20, top_p=0.8, presence_penalty=1.5, min_new_tokens=256)
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device="cuda")
    seen[:, :200] = True
    ch = Chooser(caption, batch, vocab, eos=[151645, 151643], pad=151643, device="cuda")
    greedy = Chooser(SamplingSpec(), batch, vocab, eos=[151645, 151643], pad=151643, device="cuda")
    ways = {"caption_transformers_warpers": lambda: warpers_way(caption, seen)(logits),
            "caption_chooser": lambda: ch(logits.clone(), 0),
            "greedy_chooser": lambda: greedy(logits.clone(), 0),
            "clone_only": lambda: logits.clone()}
    for name, fn in ways.items():
        out[name] = {"ms": round(time_call(fn) * 1e3, 4)}
        print("chooser", name, out[name], flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slots", type=int, default=3328)
    ap.add_argument("--no-chooser", action="store_true", help="skip the token-choice timings")
    args = ap.parse_args(argv)
    ensure_deps(REPO / ".whl")
    from avcap.engines.hf.triton_decode import decode_attention, stretches
    from torch.nn.attention import SDPBackend
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    flex = torch.compile(flex_attention)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "shapes": {}}
    for name, heads, kv in (("8B", 32, 8), ("2B", 16, 8)):
        d, b, s = 128, args.batch, args.slots
        q, k, v, valid = make_inputs(b, heads, kv, d, s, filled=2824 + 128)
        scale = d ** -0.5
        ref = reference(q, k, v, valid, scale)
        kv_bytes = 2 * k.numel() * k.element_size()
        variants = {
            "masked_sdpa": lambda: masked_sdpa(q, k, v, valid, scale),
            "masked_cudnn": lambda: masked_sdpa(q, k, v, valid, scale, SDPBackend.CUDNN_ATTENTION),
            "flash_nomask": lambda: F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True),
        }
        for c in (2, 4, 8, 13):
            if s % c == 0:
                bias = split_bias(valid, kv, heads // kv, c, q.dtype)
                variants[f"split_kv_c{c}"] = (lambda c=c, bias=bias: split_kv(q, k, v, bias, scale, c))
        nb = s // 128
        kv_num = torch.full((b, 1, 1), nb, dtype=torch.int32, device="cuda")
        kv_idx = torch.arange(nb, dtype=torch.int32, device="cuda").view(1, 1, 1, nb).expand(b, 1, 1, nb).contiguous()

        def mask_mod(bi, h, qi, ki):
            return valid[bi, ki]

        bm = BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=128, mask_mod=mask_mod, seq_lengths=(1, s))
        variants["flex"] = lambda: flex(q, k, v, block_mask=bm, scale=scale, enable_gqa=True)
        for parts in (None, 1, 2, 4, 8):
            variants[f"triton_p{parts}" if parts else "triton_auto"] = (
                lambda parts=parts: decode_attention(q, k, v, valid, scale, parts))
        for bn, warps, stages in ((128, 4, 2), (64, 8, 2), (64, 4, 3), (128, 8, 3), (32, 4, 3)):
            variants[f"triton_auto_n{bn}_w{warps}_s{stages}"] = (
                lambda bn=bn, warps=warps, stages=stages: decode_attention(q, k, v, valid, scale, block_n=bn,
                                                                           num_warps=warps, num_stages=stages))
        # the engine's layout: the step attends over the first `s` slots of a longer cache
        kl = torch.zeros(b, kv, s + 256, d, dtype=k.dtype, device="cuda")
        vl = torch.zeros_like(kl)
        kl[:, :, :s].copy_(k)
        vl[:, :, :s].copy_(v)
        kview, vview = kl[:, :, :s], vl[:, :, :s]
        valid_long = torch.zeros(b, s + 256, dtype=torch.bool, device="cuda")
        valid_long[:, :s] = valid
        variants["masked_sdpa_engine_view"] = lambda: masked_sdpa(q, kview, vview, valid, scale)
        variants["triton_auto_engine_view"] = lambda: decode_attention(q, kview, vview, valid_long, scale)
        out = {}
        for vn, fn in variants.items():
            try:
                o = fn()
                err = None if vn == "flash_nomask" else float((o.float() - ref).abs().max())
                t = time_call(fn)
                out[vn] = {"ms": round(t * 1e3, 4), "tb_per_s": round(kv_bytes / t / 1e12, 3), "max_abs_err": err}
            except Exception as exc:  # a backend that refuses these inputs
                out[vn] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(name, vn, out[vn], flush=True)
        res["shapes"][name] = {"batch": b, "heads": heads, "kv_heads": kv, "slots": s, "kv_gb": round(kv_bytes / 1e9, 3),
                               "triton_auto_stretches": stretches(b, kv, s, torch.cuda.get_device_properties(0).multi_processor_count),
                               "variants": out}
        del kl, vl
    if not args.no_chooser:
        res["chooser"] = time_choosers(args.batch)
    write_result(args.out, "bench_decode_attention", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
