"""How many prompt tokens could ride along in a decode step's matmuls for free (chunked prefill).

A decode step at 64 rows is bandwidth-bound: each text layer's seven projections (q, k, v, o,
gate, up, down) read their weights once for 64 tokens, and the tensor cores mostly wait. Chunked
prefill would append C tokens of the next batch's prompts to those 64 rows. This script measures
the price before anyone builds it: the seven projections of every text layer (36 distinct layers,
so no weight stays in L2) at M = rows + C tokens, bf16, CUDA-event timed, and reports

- `ms`: the 36 layers' projections at each M;
- `free_tokens`: the largest C measured whose time stays within `--tolerance` of C = 0;
- `hidden_prefill_s_per_batch`: what riding along could save per batch: the free tokens × the
  decode steps of a caption (255) × the prompt's projection time per token measured here at the
  largest M (the upper bound of the lever: attention and the vision tower are not included).

    python3 benchmarks/bench_decode_piggyback.py --out $OUT/piggyback     # 8B, 64 rows
    python3 benchmarks/bench_decode_piggyback.py --size 2B --rows 96
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import REPO, ensure_deps, write_result  # noqa: E402

EXTRA = (0, 32, 64, 128, 192, 256, 384, 512, 1024, 2048)


def free_tokens(ms_by_extra: dict[int, float], tolerance: float) -> int:
    """The largest extra token count whose time is within `tolerance` (a fraction) of no extra
    tokens; the counts are read in increasing order and the first one over the line ends the search."""
    base = ms_by_extra[0]
    best = 0
    for c in sorted(ms_by_extra):
        if ms_by_extra[c] > base * (1 + tolerance):
            break
        best = c
    return best


def layer_shapes(text: dict) -> list[tuple[int, int]]:
    """(out, in) of one text layer's projections: q, k, v, o, gate, up, down."""
    h, d = text["hidden_size"], text["head_dim"]
    q, kv, ffn = text["num_attention_heads"] * d, text["num_key_value_heads"] * d, text["intermediate_size"]
    return [(q, h), (kv, h), (kv, h), (h, q), (ffn, h), (ffn, h), (h, ffn)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/piggyback")
    ap.add_argument("--size", default="8B")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=255, help="decode steps of a caption (256 new tokens)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--layers", type=int, default=None, help="default: the model's text layers")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself (tiny sizes)")
    args = ap.parse_args(argv)
    ensure_deps(REPO / ".whl")
    import torch

    from avcap.models.qwen3_vl.cost import ARCHS

    dev = torch.device(args.device)
    text = dict(ARCHS[args.size.upper()]["text"])
    layers = args.layers or text["num_hidden_layers"]
    extras = EXTRA
    if dev.type != "cuda":  # smoke: small widths, few layers
        text.update(hidden_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
        layers, extras = min(layers, 2), (0, 32, 64)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    shapes = layer_shapes(text)
    weights = [[torch.randn(o, i, device=dev, dtype=dtype) * 0.02 for o, i in shapes] for _ in range(layers)]
    weight_bytes = sum(w.numel() * w.element_size() for ws in weights for w in ws)

    def run(x_by_width):
        for ws in weights:
            for w in ws:
                torch.nn.functional.linear(x_by_width[w.shape[1]], w)

    def timed(m: int) -> float:
        xs = {i: torch.randn(m, i, device=dev, dtype=dtype) for i in {i for _, i in shapes}}
        run(xs)
        samples = []
        for _ in range(args.repeats):
            if dev.type == "cuda":
                st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                st.record()
                run(xs)
                en.record()
                torch.cuda.synchronize()
                samples.append(st.elapsed_time(en))
            else:
                t = time.perf_counter()
                run(xs)
                samples.append((time.perf_counter() - t) * 1e3)
        return statistics.median(samples)

    ms = {c: round(timed(args.rows + c), 4) for c in extras}
    free = free_tokens(ms, args.tolerance)
    top = max(extras)
    per_token_ms = (ms[top] - ms[0]) / top  # the prompt's projections, per token, at the largest chunk
    flops_per_token = 2 * sum(o * i for o, i in shapes) * layers
    res = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "size": args.size, "rows": args.rows, "layers": layers,
        "weight_gb": round(weight_bytes / 1e9, 3),
        "ms": ms,
        "weights_read_tb_per_s_at_rows": round(weight_bytes / (ms[0] / 1e3) / 1e12, 3),
        "prompt_tflops_per_s_at_largest_chunk": round(flops_per_token * top / ((ms[top] - ms[0]) / 1e3) / 1e12, 1),
        "tolerance": args.tolerance, "free_tokens": free,
        "hidden_prefill_s_per_batch": round(free * args.steps * per_token_ms / 1e3, 3),
    }
    print(json.dumps(res, indent=1), flush=True)
    write_result(args.out, "bench_decode_piggyback", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
