"""Does this torch skip dynamo's tracing in a fresh process? A probe for issue 26's warm start.

    python3 benchmarks/probe_precompile.py --out $OUT/precompile     # ~1 min; CPU or GPU

Not a test. A warm `avcap infer` spends 2-3 s of its first batch in dynamo re-tracing graphs that it
then finds in inductor's cache (GPU runs 68-72). torch's experimental "caching precompile"
(`torch._dynamo.config.caching_precompile`, env TORCH_CACHING_PRECOMPILE=1) keeps dynamo's own
output (bytecode and guards) in a DynamoCache once `torch.compiler.save_cache_artifacts()` is
called, and a later process loads it instead of tracing. This probe compiles one small function
(30 matmul + GELU + sin layers, fullgraph) in fresh child processes sharing one cache folder, each
mode twice after a filling run: `plain` (today's path: trace, then inductor's cache) and
`precompile` (the same with caching precompile, saving after the first call). It reports the first
call's seconds, the dynamo-cache and FX-graph counters, whether the outputs match the eager
function, and which APIs this torch has. Writes probe_precompile.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time
import torch
from torch._dynamo.utils import counters

def layers(x, w):
    for _ in range(30):
        x = torch.nn.functional.gelu(x @ w) + x.sin()
    return x

dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
x, w = torch.randn(256, 256, device=dev) / 16, torch.randn(256, 256, device=dev) / 16
f = torch.compile(layers, fullgraph=True)
t = time.perf_counter()
y = f(x, w)
if dev == "cuda":
    torch.cuda.synchronize()
first = time.perf_counter() - t
saved = None
if os.environ.get("TORCH_CACHING_PRECOMPILE") == "1":
    try:
        torch.compiler.save_cache_artifacts()
        saved = True
    except Exception as exc:  # noqa: BLE001 - the probe reports it
        saved = f"{type(exc).__name__}: {exc}"
same = bool(torch.allclose(y, layers(x, w), rtol=1e-3, atol=1e-3))
print(json.dumps({"first_call_s": round(first, 3), "same_as_eager": same, "saved": saved,
                  "counters": {k: dict(v) for k, v in counters.items() if k in ("dynamo_cache", "inductor")}}))
"""


def apis() -> dict:
    import torch
    import torch._dynamo.config as dc

    return {"torch": torch.__version__,
            "caching_precompile": hasattr(dc, "caching_precompile"),
            "save_cache_artifacts": hasattr(torch.compiler, "save_cache_artifacts"),
            "load_compiled_function": hasattr(torch.compiler, "load_compiled_function"),
            "compiled_fn_aot_compile": hasattr(torch.compile(lambda x: x, fullgraph=True), "aot_compile")}


def child(env: dict[str, str]) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD], check=False, capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        return {"rc": p.returncode, "stderr_tail": p.stderr[-1500:]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["dropped_guards"] = p.stderr.count("is dropped with caching_precompile")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    result: dict = {"apis": apis(), "modes": {}}
    print(json.dumps(result["apis"]), flush=True)
    for mode in ("plain", "precompile"):
        with tempfile.TemporaryDirectory(prefix=f"probe-{mode}-") as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
            env.pop("TORCH_CACHING_PRECOMPILE", None)
            if mode == "precompile":
                env["TORCH_CACHING_PRECOMPILE"] = "1"
            runs = [child(env) for _ in range(1 + a.repeats)]  # the first fills the cache
        result["modes"][mode] = runs
        for i, r in enumerate(runs):
            print(f"{mode:10s} {'fill' if i == 0 else 'warm'} {json.dumps(r)}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "probe_precompile.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
