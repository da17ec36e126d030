"""What query understanding costs: `ScenarioDB.search` in mode hybrid (understanding) against
hybrid-plain, without and with an attribute filter, on one database (e.g. bench_scale.py's 1.1M
records). Not a test; figures in benchmarks/RESULTS.md.

    python3 benchmarks/bench_understanding_latency.py --db /work/scratch/scale/db1100k --queries 80 \\
        --out benchmarks/runs/scenario_db/understanding_latency_1100k.json

Queries are drawn as bench_scale.py draws its hybrid+filter queries (a retrieval query's text 30%
of the time, else 1-3 caption phrases; 1-2 attribute filters); each query runs in the four
variants back to back, so that the machine's load (shared 2-core box) weighs on all alike. Wall
and process CPU milliseconds (LanceDB's threads included), p50 / p95; the load average before and
after; how many facet groups the queries had and how many tiers hybrid searched.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import FILTERS, PHRASES
from retrieval_queries import QUERIES

from avcap.scenarios import open_db
from avcap.scenarios.db import ScenarioDB


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    db = open_db(a.db)
    rng = random.Random(a.seed)
    texts = [q["text"] for q in QUERIES]

    def text() -> str:
        return rng.choice(texts) if rng.random() < 0.3 else " ".join(rng.sample(PHRASES, rng.randint(1, 3)))

    def where() -> list[str]:
        picks = rng.sample(FILTERS, rng.randint(1, 2))
        while len({n for n, _ in picks}) < len(picks):
            picks = rng.sample(FILTERS, rng.randint(1, 2))
        return [f"{n}={letter}" for n, letter in picks]

    fused_calls = [0]
    fused = ScenarioDB._fused

    def counting(self, *args, **kw):
        fused_calls[0] += 1
        return fused(self, *args, **kw)

    ScenarioDB._fused = counting
    for _ in range(a.warmup):
        db.search(text(), where=where())
        db.search(text(), mode="hybrid-plain")
    kinds = [f"{m}{f}" for m in ("hybrid-plain", "hybrid") for f in ("", "+filter")]
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    tiers: dict[str, list[int]] = {"hybrid": [], "hybrid+filter": []}
    groups = []
    load = [os.getloadavg()]
    for _ in range(a.queries):
        q, w = text(), where()
        groups.append(len(db.understand(q).groups))
        for mode in ("hybrid-plain", "hybrid"):
            for suffix, ww in (("", []), ("+filter", w)):
                fused_calls[0] = 0
                t, c = time.perf_counter(), time.process_time()
                db.search(q, where=ww, mode=mode, limit=10)
                wall[mode + suffix].append(1000 * (time.perf_counter() - t))
                cpu[mode + suffix].append(1000 * (time.process_time() - c))
                if mode == "hybrid":
                    tiers[mode + suffix].append(fused_calls[0])
    load.append(os.getloadavg())

    def pct(x: list[float]) -> dict:
        return {"p50_ms": round(float(np.percentile(x, 50)), 1), "p95_ms": round(float(np.percentile(x, 95)), 1)}

    res = {"db": str(a.db), "rows": db.count(), "queries": a.queries, "seed": a.seed,
           "load_before_after": [list(x) for x in load], "facet_groups_mean": float(np.mean(groups)),
           "tiers_searched": {k: {str(n): v.count(n) for n in sorted(set(v))} for k, v in tiers.items()},
           "wall": {k: pct(v) for k, v in wall.items()}, "cpu": {k: pct(v) for k, v in cpu.items()}}
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
