"""How fast a checkpoint's tensors reach the GPU: avcap's chunked reader against safetensors' own.

`avcap.engines.hf.weights.read_checkpoint` (threads reading byte ranges into pinned buffers, copies on
their own streams) against safetensors' `safe_open(device=...)` tensor by tensor (what EarlyWeights did
before), alternating, the page cache warm after a first untimed pass of each; every tensor compared.

    python3 benchmarks/bench_weights_read.py --model /tmp/avcap-first-caption/models/8B --out $OUT/wr
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import REPO, ensure_deps, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a directory of safetensors files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="4,8", help="read_checkpoint's reader threads, comma-separated")
    args = ap.parse_args(argv)
    ensure_deps(REPO / ".whl")
    import torch
    from safetensors import safe_open

    from avcap.engines.hf.weights import checkpoint_files, read_checkpoint

    files = checkpoint_files(Path(args.model))
    size = sum(f.stat().st_size for f in files)
    dev = "cuda:0"

    def by_safetensors():
        out = {}
        for f in files:
            with safe_open(str(f), framework="pt", device=dev) as sf:
                for k in sf.keys():
                    out[k] = sf.get_tensor(k)
        return out

    ways = {"safetensors": by_safetensors,
            **{f"avcap_{n}": (lambda n=int(n): read_checkpoint(files, dev, threads=n)) for n in args.threads.split(",")}}
    times: dict[str, list[float]] = {k: [] for k in ways}
    ref = None
    for rep in range(args.repeats + 1):
        for name, fn in ways.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            got = fn()
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if rep:  # the first pass of each warms the page cache
                times[name].append(dt)
            if ref is None:
                ref = got
            elif rep == 0:
                bad = [k for k in ref if not (got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
                                              and torch.equal(got[k], ref[k]))]
                assert not bad and got.keys() == ref.keys(), f"{name}: {len(bad)} tensors differ"
            del got
            torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "model": args.model, "files": len(files), "bytes": size, "tensors": len(ref),
              "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
              "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
              "gb_per_s": {k: round(size / statistics.median(v) / 1e9, 2) for k, v in times.items()},
              "identical": True}
    write_result(args.out, "bench_weights_read", result)
    for k in ways:
        print(f"{k:>14}: median {result['median_s'][k]:.3f} s, {result['gb_per_s'][k]:.2f} GB/s ({times[k]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
