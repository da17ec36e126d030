"""The fast path's layer self-check at real size on a GPU (issue 22): does
`avcap.models.qwen3_vl.text.check_layer_against_library` accept the transcribed decoder layer
against transformers' own in bf16 for the real 2B and 8B shapes, and does it refuse a layer that
differs (one residual left out)? Random weights (`realsize_config`, one text layer, one vision
block: the check only reads layer 0). Prints one JSON line per case.

    python benchmarks/check_layer_gpu.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from avcap.models.qwen3_vl import text
from avcap.models.qwen3_vl.cost import realsize_config


def no_mlp_residual(layer, hidden, o):
    b, heads, n, d = o.shape
    hidden = hidden + layer.self_attn.o_proj(o.transpose(1, 2).reshape(b, n, heads * d))
    return layer.mlp(layer.post_attention_layernorm(hidden))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the lines to DIR/check_layer_gpu.jsonl")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = []
    for name in ("2B", "8B"):
        cfg = realsize_config(name)
        cfg.text_config.num_hidden_layers = 1
        cfg.vision_config.depth = 1
        cfg.vision_config.deepstack_visual_indexes = []
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            model = transformers.Qwen3VLForConditionalGeneration(cfg).to(device=device, dtype=dtype).eval()
            t0 = time.perf_counter()
            diff, tol = text.layer_difference(model)
            ok = text.check_layer_against_library(model)
            bad = text.check_layer_against_library(model, (text.attention_inputs, no_mlp_residual))
            lines.append({"model": name, "dtype": str(dtype).removeprefix("torch."), "device": torch.cuda.get_device_name()
                          if device == "cuda" else "cpu", "max_abs_diff": diff, "tolerance": tol, "transcription": ok or "agrees", "one residual left out": bad,
                          "seconds": round(time.perf_counter() - t0, 3), "torch": torch.__version__,
                          "transformers": transformers.__version__})
            print(json.dumps(lines[-1]), flush=True)
            del model
            torch.cuda.empty_cache() if device == "cuda" else None
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "check_layer_gpu.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


if __name__ == "__main__":
    main()
