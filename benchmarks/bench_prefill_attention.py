"""Prompt-side attention kernels at real size: which of torch's SDPA backends is fastest for the
shapes avcap's prefill and training run, forward and (for training) forward + backward.

The shapes (avcap.models.qwen3_vl.cost.ARCHS, the recipe's 448×736 × 16-frame samples: 8 temporal
groups of 28×46 = 1,288 patches per video):

- `vision_2B_train`: the 2B vision tower's packed attention in a training micro-batch (4 samples =
  32 groups of 1,288 tokens, 16 heads of 64), forward + backward: ~0.46 s of a 4.4 s SFT step in
  run 60's profile, at ~320 TFLOP/s;
- `vision_8B_prefill`: the 8B vision tower in a caption prefill call (8 videos = 64 groups, 16 heads
  of 72 — an unusual head size), forward;
- `text_2B_train`: the 2B text layers' causal attention in a training micro-batch (4 rows of
  3,037 tokens, 16 query / 8 key-value heads of 128), forward + backward;
- `text_8B_prefill`: the 8B text layers' causal attention in a caption prefill call (8 rows of
  2,819 tokens, 32 / 8 heads of 128), forward.

Each is run under every backend torch offers here (cuDNN, flash, memory-efficient; the math
backend on the CPU) and under torch's own choice; the table gives the median time per call of
CUDA-event timings, TFLOP/s (forward 4·B·H·L²·d, half of it causal; backward 2.5 × forward) and the
largest difference of each backend's output (and gradients) from torch's choice, in the inputs'
dtype. The layouts are avcap's: vision q/k/v are strided views of packed (tokens, heads, dim)
tensors (avcap.models.qwen3_vl.compile._groups); text ones are (B, heads, L, d) with the key-value
heads repeated for the query heads, as transformers' sdpa path does (run 60's profile: cuDNN kernels).

    python3 benchmarks/bench_prefill_attention.py --out $OUT        # on the GPU, ~1 minute
    python3 benchmarks/bench_prefill_attention.py --smoke --out /tmp/pa   # CPU: tiny shapes, the math backend
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CASES = {  # name: (groups or rows, tokens, query heads, kv heads, head dim, causal, backward)
    "vision_2B_train": (32, 1288, 16, 16, 64, False, True),
    "vision_8B_prefill": (64, 1288, 16, 16, 72, False, False),
    "text_2B_train": (4, 3037, 16, 8, 128, True, True),
    "text_8B_prefill": (8, 2819, 32, 8, 128, True, False),
}
SMOKE = {  # the same kinds at a size the CPU runs in a second
    "vision_2B_train": (4, 40, 2, 2, 16, False, True),
    "text_2B_train": (2, 48, 4, 2, 16, True, True),
}
GPU_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
CPU_BACKENDS = {"math": SDPBackend.MATH}


def inputs(case, device, dtype, seed: int = 0):
    """(the tensors gradients flow to, q/k/v as the attention call gets them), in avcap's layouts."""
    b, n, h, kvh, d, causal, backward = case
    g = torch.Generator(device="cpu").manual_seed(seed)
    if not causal:  # vision: (tokens, heads, dim) packed, viewed as (groups, heads, tokens, dim)
        leaves = [torch.randn(b * n, h, d, generator=g).to(device, dtype).requires_grad_(backward) for _ in range(3)]
        return leaves, [x.view(b, n, h, d).transpose(1, 2) for x in leaves]
    leaves = [torch.randn(b, heads, n, d, generator=g).to(device, dtype).requires_grad_(backward)
              for heads in (h, kvh, kvh)]
    q, k, v = leaves  # key-value heads repeated for the query heads, as transformers' sdpa path does
    return leaves, [q, k.repeat_interleave(h // kvh, 1), v.repeat_interleave(h // kvh, 1)]


def inputs_like(leaves, heads: int):
    """Text q, k, v from the leaf tensors: key-value heads repeated up to `heads`, as in a forward."""
    q, k, v = leaves
    return q, k.repeat_interleave(heads // k.shape[1], 1), v.repeat_interleave(heads // v.shape[1], 1)


def flops(case) -> tuple[float, float]:
    """(forward, backward) FLOPs of one call."""
    b, n, h, _, d, causal, _ = case
    fwd = 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)
    return fwd, 2.5 * fwd


def timed(fn: Callable[[], Any], device, repeats: int) -> float:
    """Median seconds per call: CUDA events on the GPU, the wall clock on the CPU."""
    fn()  # warm-up (kernel selection, plan building)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(name: str, case, backends: dict[str, Any], device, dtype, repeats: int) -> list[dict[str, Any]]:
    causal, backward = case[5], case[6]
    leaves, (q, k, v) = inputs(case, device, dtype)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype) if backward else None

    def call():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def call_and_backward():  # the repeated key-value heads are rebuilt each time, as in a forward
        for x in leaves:
            x.grad = None
        qq, kk, vv = inputs_like(leaves, q.shape[1]) if causal else (q, k, v)
        out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
        out.backward(grad_out)
        return out

    fwd_flops, bwd_flops = flops(case)
    rows, ref = [], None
    for label, backend in [("torch's choice", None), *backends.items()]:
        row: dict[str, Any] = {"case": name, "backend": label}
        try:
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                with torch.no_grad():
                    out = call()
                    row["forward_s"] = timed(call, device, repeats)
                grads = None
                if backward:
                    call_and_backward()
                    grads = [x.grad.clone() for x in leaves]
                    row["forward_backward_s"] = timed(call_and_backward, device, repeats)
        except RuntimeError as exc:  # this backend does not take this shape, dtype or GPU
            row["error"] = str(exc).splitlines()[0][:160]
            rows.append(row)
            continue
        row["forward_tflops"] = fwd_flops / row["forward_s"] / 1e12
        if backward:
            row["forward_backward_tflops"] = (fwd_flops + bwd_flops) / row["forward_backward_s"] / 1e12
        if ref is None:
            ref = (out, grads)
        else:
            row["max_diff_out"] = float((out.float() - ref[0].float()).abs().max())
            if grads is not None:
                row["max_diff_grad"] = max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads, ref[1]))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'case':20s} {'backend':15s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'f+b ms':>8s} {'TFLOP/s':>8s} "
             f"{'diff out':>9s} {'diff grad':>9s}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:20s} {r['backend']:15s} not available: {r['error']}")
            continue

        def ms(k):
            return f"{r[k] * 1e3:8.3f}" if k in r else f"{'-':>8s}"

        def tf(k):
            return f"{r[k]:8.1f}" if k in r else f"{'-':>8s}"

        def diff(k):
            return f"{r[k]:9.2e}" if k in r else f"{'-':>9s}"

        lines.append(f"{r['case']:20s} {r['backend']:15s} {ms('forward_s')} {tf('forward_tflops')} "
                     f"{ms('forward_backward_s')} {tf('forward_backward_tflops')} {diff('max_diff_out')} "
                     f"{diff('max_diff_grad')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny shapes, the math backend")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    cases = CASES if gpu else SMOKE
    names = [n for n in args.cases.split(",") if n in cases]
    backends = GPU_BACKENDS if gpu else CPU_BACKENDS
    rows = []
    for name in names:
        rows += run_case(name, cases[name], backends, device, dtype, args.repeats if gpu else 2)
    env = {"device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version() if gpu else None, "dtype": str(dtype),
           "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_prefill_attention.json").write_text(json.dumps({"env": env, "cases": {n: cases[n] for n in names},
                                                                   "rows": rows}, indent=1) + "\n")
    text = table(rows)
    (out / "bench_prefill_attention_table.txt").write_text(text + "\n")
    print(json.dumps(env))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
