"""The scenario database at the recipe's training-set size (issue 23, item 5): ingest 1.1 million
scenario records on this CPU, then measure query latency. Not a test; figures in
benchmarks/RESULTS.md.

    python3 benchmarks/bench_scale.py --data /work/scratch/scenarios/m1100k --scenes 30000 \
        --records 1100000 --db /work/scratch/scale/db --out result.json
    # develop on less:
    python3 benchmarks/bench_scale.py --data /work/scratch/scenarios/m74k --scenes 2000 --records 74000 ...

1. Data: `benchmarks/scenario_data.py` writes (or reuses, cached) a label output directory of
   `--records` records from `--scenes` distinct synthetic scenes (caption variants give the rest,
   each with its own clip id). Generation is not part of the ingest time.
2. Ingest: a new database, `ScenarioDB.ingest([data])`, timed end to end (parsing and validating
   every line, embedding, table writes, index builds). The split: reading + embedding + writing
   (everything before the index builds; parsing runs in a thread beside the embedding and the
   writes run in another, so their times overlap), index builds (the ingest report's
   `index_seconds`), and within the first, the time spent in the embedder (wall, the embedder
   wrapped in a timer). The process's CPU seconds (all threads) and the load average before and
   after are kept, since other jobs share the cores. Parsing and checking alone (ingest's block
   reader, reader.py) is also timed on one partition.
3. Size on disk of the database directory.
4. Latency after warm-up, one query at a time, p50/p95 over `--queries` queries of each kind:
   filter-only (1-2 attribute filters, no text), full-text (BM25), vector, and hybrid with 1-2
   attribute filters; every query returns the top 10 as `Hit`s (what `avcap search` prints).
5. Incremental ingest of `--increment` new records (another seed range and clip-id prefix) onto
   the full database: time, row count, and whether full-text search finds the new rows (each of
   20 new captions searched as text must return its own clip in the top 10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_queries import QUERIES
from scenario_data import generate

import avcap
from avcap.scenarios.db import open_db
from avcap.scenarios.embed import Embedder, load_embedder
from avcap.scenarios.ingest import CHUNK_BYTES
from avcap.scenarios.reader import RecordReader
from avcap.scenarios.record import questions_for, read_questions, scan_scenarios, scenario_files

# free-text pieces the latency queries are made of (people's words and the captions' words)
PHRASES = [
    "pedestrian crossing", "at night", "in the rain", "heavy fog", "highway", "city street", "rural road",
    "turns left", "turns right", "changes lanes", "stopped at a red light", "cyclist", "child",
    "ambulance with flashing lights", "police car", "fire truck", "construction zone with workers",
    "cars parked on the right", "bus ahead", "truck", "wet road", "dusk", "overcast sky", "stop sign",
    "vehicle cuts in", "brakes suddenly", "intersection", "accelerates from a stop", "slow traffic",
    "downpour", "motorway", "kid on foot", "squad car", "roadworks", "after dark", "sunny day",
]
# (attribute, letter) pairs the filters are drawn from: common and rare answers
FILTERS = [("weather", "A"), ("weather", "C"), ("weather", "D"), ("lighting", "D"), ("lighting", "C"),
           ("area", "A"), ("area", "D"), ("area", "C"), ("pedestrian_crossing", "A"), ("ego_maneuver", "B"),
           ("ego_maneuver", "D"), ("emergency_vehicle", "B"), ("special_zone", "A"), ("cyclist", "A"),
           ("road_surface", "B"), ("lane_change_other", "A"), ("ego_turn", "A"), ("traffic_light", "A")]


class TimedEmbedder(Embedder):
    """The database's embedder, with the time spent embedding added up (the ingest split)."""

    def __init__(self, inner: Embedder):
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.seconds = 0.0
        self.texts = 0

    def embed(self, texts):
        t = time.perf_counter()
        v = self.inner.embed(texts)
        self.seconds += time.perf_counter() - t
        self.texts += len(texts)
        return v


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_rate(files: list[Path]) -> dict:
    """Records/s of parsing and checking one partition alone, as ingest reads it (reader.py)."""
    f = files[0]
    reader = RecordReader([a.name for a in read_questions(questions_for(f)).attributes], questions_for)
    t, c = time.perf_counter(), cpu_seconds()
    n = sum(b.count for b in reader.blocks(f, CHUNK_BYTES))
    s, cpu = time.perf_counter() - t, cpu_seconds() - c
    return {"file": str(f), "records": n, "seconds": s, "cpu_seconds": cpu, "records_per_s": n / s,
            "cpu_us_per_record": 1e6 * cpu / n}


def percentiles(ms: list[float]) -> dict:
    a = np.array(ms)
    return {"n": len(ms), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def latency(db, n: int, warmup: int, seed: int) -> dict:
    rng = random.Random(seed)
    texts = [q["text"] for q in QUERIES]

    def text():
        if rng.random() < 0.3:
            return rng.choice(texts)
        return " ".join(rng.sample(PHRASES, rng.randint(1, 3)))

    def where():
        picks = rng.sample(FILTERS, rng.randint(1, 2))
        while len({a for a, _ in picks}) < len(picks):
            picks = rng.sample(FILTERS, rng.randint(1, 2))
        return [f"{a}={letter}" for a, letter in picks]

    kinds = {
        "filter-only": lambda: {"query": "", "where": where()},
        "full-text": lambda: {"query": text(), "mode": "text"},
        "vector": lambda: {"query": text(), "mode": "vector"},
        "hybrid+filter": lambda: {"query": text(), "where": where(), "mode": "hybrid"},
    }
    out = {}
    for name, make in kinds.items():
        for _ in range(warmup):
            db.search(limit=10, **make())
        ms, empty, runs = [], 0, []
        for _ in range(n):
            args = make()
            t = time.perf_counter()
            hits = db.search(limit=10, **args)
            ms.append(1000 * (time.perf_counter() - t))
            empty += not hits
            runs.append({**args, "ms": ms[-1], "hits": len(hits)})
        slowest = sorted(runs, key=lambda r: -r["ms"])[:10]
        out[name] = {**percentiles(ms), "empty_results": empty, "slowest": slowest}
        print(f"  {name:14s} p50 {out[name]['p50_ms']:7.1f} ms  p95 {out[name]['p95_ms']:7.1f} ms  "
              f"({n} queries, {empty} empty)", file=sys.stderr)
    return out


def fts_sees(db, label_dir: Path, k: int = 20, seed: int = 1) -> dict:
    """Each of k new records' captions searched as full text: is the record in the top 10?"""
    recs = [r for f in scenario_files(label_dir) for r in scan_scenarios(f) if not isinstance(r, Exception)]
    picks = random.Random(seed).sample(recs, k)
    found = 0
    for r in picks:
        hits = db.search(r.caption, mode="text", limit=10)
        found += any(h.clip_id == r.clip_id for h in hits)
    return {"searched": k, "found_in_top10": found}


def device() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = next((int(x.split()[1]) for x in meminfo if x.startswith("MemTotal")), 0)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "mem_gib": round(mem / 2**20, 1),
            "loadavg_at_start": load, "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("lancedb", "pylance", "pyarrow", "wordllama", "numpy", "avcap"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="label output directory (generated when absent)")
    ap.add_argument("--scenes", type=int, default=30000)
    ap.add_argument("--records", type=int, default=1_100_000)
    ap.add_argument("--workers", type=int, default=2, help="processes generating the data")
    ap.add_argument("--db", type=Path, required=True, help="the database directory (replaced)")
    ap.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--increment", type=int, default=10000, help="records of the incremental ingest (0: none)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--commit", help="the avcap commit measured (recorded in the output)")
    a = ap.parse_args(argv)

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device(),
              "versions": versions(), "commit": a.commit, "avcap_source": str(Path(avcap.__file__).parent), "data": str(a.data), "scenes": a.scenes, "records": a.records}
    generate(a.data, a.scenes, a.records, a.workers, quiet=False)
    files = scenario_files(a.data)
    result["data_bytes"] = sum(f.stat().st_size for f in files)
    result["parse_only"] = parse_rate(files)
    print(f"parse+validate alone: {result['parse_only']['records_per_s']:,.0f} records/s", file=sys.stderr)

    if a.db.exists():
        subprocess.run(["rm", "-rf", str(a.db)], check=True)
    emb = TimedEmbedder(load_embedder())
    db = open_db(a.db, embedder=emb, create=True)
    last = [0.0]

    def progress(n, s):
        if s - last[0] >= 30:
            last[0] = s
            print(f"  {n:,} records in {s:.0f} s ({n / s:,.0f}/s; embedding {emb.seconds:.0f} s)", file=sys.stderr)

    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), cpu_seconds()
    rep = db.ingest([a.data], progress=progress)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    ingest = {"seconds": total, "records": rep.records_read, "rows": rep.total,
              "records_per_s": rep.records_read / total, "cpu_seconds": cpu,
              "read_embed_write_s": total - rep.index_seconds, "index_build_s": rep.index_seconds,
              "embedding_s": emb.seconds,
              "embedding_records_per_s": emb.texts / emb.seconds if emb.seconds else None,
              "loadavg_before": load0, "loadavg_after": os.getloadavg(),
              "report": rep.to_json(), "vector_index": db.meta.get("vector_index"),
              "indices": sorted(i.index_type for i in db.table().list_indices()),
              "fragments": db.table().stats()["fragment_stats"]["lengths"]}
    result["ingest"] = ingest
    print(f"ingest: {rep.summary()}", file=sys.stderr)
    print(f"  {ingest['records_per_s']:,.0f} records/s; reading+embedding+writing "
          f"{ingest['read_embed_write_s']:.0f} s (in the embedder {emb.seconds:.0f} s), indexes "
          f"{rep.index_seconds:.0f} s; {cpu:.0f} s of CPU; load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}",
          file=sys.stderr)
    result["disk_bytes"] = du(a.db)
    print(f"  on disk {result['disk_bytes'] / 2**30:.2f} GiB (input JSONL {result['data_bytes'] / 2**30:.2f} GiB)",
          file=sys.stderr)

    result["latency"] = latency(db, a.queries, a.warmup, seed=0)
    result["loadavg_after_latency"] = os.getloadavg()

    if a.increment:
        inc_dir = a.data.parent / f"{a.data.name}-inc{a.increment}"
        scenes = max(1, a.increment // 10)
        generate(inc_dir, scenes, a.increment, a.workers, seed0=9_000_000, prefix="inc", quiet=True)
        emb.seconds, emb.texts = 0.0, 0
        load0 = os.getloadavg()
        t, c = time.perf_counter(), cpu_seconds()
        rep2 = db.ingest([inc_dir])
        s, cpu = time.perf_counter() - t, cpu_seconds() - c
        result["increment"] = {"records": rep2.records_read, "added": rep2.added, "seconds": s,
                               "records_per_s": rep2.records_read / s, "cpu_seconds": cpu,
                               "embedding_s": emb.seconds, "index_update_s": rep2.index_seconds,
                               "rows_after": rep2.total, "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                               "fragments": db.table().stats()["fragment_stats"]["lengths"],
                               "unindexed_rows": {i.name: db.table().index_stats(i.name).num_unindexed_rows
                                                  for i in db.table().list_indices()},
                               "fts": fts_sees(db, inc_dir)}
        print(f"increment: {rep2.summary()}; FTS finds {result['increment']['fts']['found_in_top10']}/20 new "
              "captions", file=sys.stderr)
        result["disk_bytes_after_increment"] = du(a.db)
        result["latency_after_increment"] = latency(db, max(50, a.queries // 4), a.warmup, seed=1)
        result["loadavg_after_latency_after_increment"] = os.getloadavg()

    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ingest", "disk_bytes", "latency")}, indent=1))


if __name__ == "__main__":
    main()
