"""Greedy tokens and the first decode step's logits of the fast path's decode with each decode attention, eager and graph-captured,
plain and compiled, against sdpa's (real 8B attention shapes, 2 text layers, random bf16 weights,
text-only rows of different lengths). Localises a difference to the kernel, the graphs or compile. On
a GPU each configuration's first decode step is also compared with the same weights in float32 (sdpa,
eager): its bf16 error, against which a kernel's difference from sdpa is judged.

    python3 benchmarks/check_decode_attention_gpu.py --out $OUT/check [--configs sdpa:compiled_graphs,triton:eager,...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import REPO, ensure_deps, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/check")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--configs", default="sdpa:compiled_graphs,triton:compiled_graphs,sdpa:eager,triton:eager,flex:compiled_graphs",
                    help="attention:compiled_graphs | compiled_eager | graphs | eager, the first the reference")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run (float32; Triton through TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    ensure_deps(REPO / ".whl")
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from avcap.engines.hf.fast_generate import FastGenerator, SamplingSpec
    from avcap.models.qwen3_vl.cost import realsize_config

    torch.manual_seed(0)
    cfg = realsize_config("8B")
    cfg.text_config.num_hidden_layers = 2
    dev = torch.device(args.device)
    model = Qwen3VLForConditionalGeneration(cfg).to(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(900, 1300, (args.rows,), generator=g).tolist() if dev.type == "cuda" else [20, 31, 17]
    n = max(lens)
    ids = torch.zeros(args.rows, n, dtype=torch.long)
    att = torch.zeros(args.rows, n, dtype=torch.long)
    for r, L in enumerate(lens):
        ids[r, n - L:] = torch.randint(1000, 100000, (L,), generator=g)
        att[r, n - L:] = 1
    inputs = {"input_ids": ids.to(dev), "attention_mask": att.to(dev)}
    res = {"rows": args.rows, "lengths": [min(lens), max(lens)], "runs": {}}

    def run(model, attn: str, how: str):
        """(greedy tokens, the first decode step's logits) of one configuration and its generator."""
        compile_, graphs = how.startswith("compiled"), how.endswith("graphs") and dev.type == "cuda"
        gen = FastGenerator(model, pad_token_id=0, eos_token_ids=[], compile=compile_, cuda_graphs=graphs,
                            decode_attention=attn)
        with torch.inference_mode():
            toks = gen.generate(inputs, [[] for _ in range(args.rows)], SamplingSpec(),
                                max_new_tokens=args.tokens, device=dev)
            # the first decode step's logits (the step as generate runs it: eager or the captured graph)
            logits, st = gen.prefill(inputs, [[] for _ in range(args.rows)], max_new_tokens=args.tokens,
                                     device=dev)
            b, s_len, p = st["batch"], st["slots"], st["prompt_slots"]
            step = gen._step_fn(b, s_len, dev, gen._kv_len(p, s_len))
            step["tok"].copy_(logits.argmax(-1))
            step["pos"].copy_(st["last_pos"] + 1)
            step["slot"].fill_(p)
            step_logits = step["run"]().float().cpu()
        return toks, step_logits, gen

    # what bf16 costs, whatever the kernel: the same weights in float32 (sdpa, eager) give the reference logits
    # of each row's first decode step; every configuration's distance to them is its bf16 error
    # (on the CPU the model is float32 already: the comparison only exercises this code)
    import copy

    _, fp32_logits, gen = run(copy.deepcopy(model).float(), "sdpa", "eager")
    del gen
    torch.cuda.empty_cache() if dev.type == "cuda" else None
    base = None
    for config in args.configs.split(","):
        attn, how = config.split(":")
        name = config
        toks, step_logits, gen = run(model, attn, how)
        if base is None:
            base, base_logits = toks, step_logits
        same = int((toks == base).all(dim=1).sum())
        first = int((toks[:, :2] == base[:, :2]).all(dim=1).sum())
        diff = float((step_logits - base_logits).abs().max())
        res["runs"][name] = {"rows_identical": same, "rows_first_two_identical": first,
                             "step_logits_max_abs_diff": round(diff, 5),
                             "step_logits_abs_max": round(float(base_logits.abs().max()), 3),
                             "step_argmax_equal": int((step_logits.argmax(-1) == base_logits.argmax(-1)).sum()),
                             "graph_error": gen.graph_error, "fallback": gen.decode_attention_error}
        err = (step_logits - fp32_logits).abs()
        res["runs"][name].update(fp32_max_abs_diff=round(float(err.max()), 5),
                                 fp32_mean_abs_diff=round(float(err.mean()), 6),
                                 fp32_argmax_equal=int((step_logits.argmax(-1) == fp32_logits.argmax(-1)).sum()))
        print(name, res["runs"][name], flush=True)
        del gen
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    write_result(args.out, "check_decode_attention_gpu", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
