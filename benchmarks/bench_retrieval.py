"""Retrieval quality of the scenario database on the synthetic world, whose truth is known (issue 23,
item 4). Not a test; figures in benchmarks/RESULTS.md.

    # (a) the ceiling of the search itself: reference captions + world-truth attributes
    python3 benchmarks/bench_retrieval.py --scenes 3000 --work /work/scratch/retrieval --out result.json
    # (b) end to end: what a model labelled (`avcap label` output, clip_id = the video id) against
    #     the truth SceneRecords of those videos (<demo workdir>/data/eval/AV_CAPTION/world)
    python3 benchmarks/bench_retrieval.py --label-dir DIR --world-dir DIR --work ... --out result.json

The queries (benchmarks/retrieval_queries.py, or a module named by --queries) are natural-language
scenario descriptions in wording the caption generators do not use, each with a predicate over the
world-truth attribute answers: a clip is relevant when its truth satisfies the predicate. Every
query runs in the four modes of `ScenarioDB.search` (text = BM25 only, vector = embedding only,
hybrid-plain = both fused by reciprocal rank, hybrid = query understanding: the clips matching more
of the facets read in the query first, each tier ranked by hybrid-plain on the expanded query) on
the same database, free text only (no --where). Per query:

    recall@10 = |relevant ∩ top 10| / min(10, |relevant|)
    MRR       = 1 / rank of the first relevant clip in the top 100 (0 if none)

averaged over the queries with at least one relevant clip, for all queries and per split ("dev":
may be looked at while improving the search; "heldout": only measured) and kind (single attribute,
conjunction, rare). Also reported per query: the query's words that occur in the indexed captions
(the wording overlap), the facets understood, and the top-10 clips for inspection in the JSON.

A query module loaded with --queries PATH (a list QUERIES of {"id", "text", "where", and optionally
"split", "kind"}; its own `matches` if it has one) is treated as blind: its query texts, their
words and what was understood from them are neither printed nor written, only ids, counts and
scores. --split keeps the queries of one split (e.g. dev while developing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import shutil
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import retrieval_queries
from scenario_data import (
    generate,
    question_set,
    read_truth,
    simulated_labels,
    truth_attributes,
)

from avcap.demo.synth.scene import SceneRecord
from avcap.scenarios.db import open_db
from avcap.scenarios.record import scan_scenarios, scenario_files

MODES = ("text", "vector", "hybrid-plain", "hybrid")
DEPTH = 100  # ranks looked at for MRR
K = 10


def metrics(ranking: list[str], relevant: set[str]) -> dict:
    top = ranking[:K]
    recall = len(relevant & set(top)) / min(K, len(relevant))
    rr = next((1.0 / (i + 1) for i, c in enumerate(ranking[:DEPTH]) if c in relevant), 0.0)
    return {"recall@10": recall, "rr": rr}


def world_truth(label_dir: Path, world_dir: Path) -> dict[str, dict[str, str]]:
    """clip_id -> world-truth letters for every labelled clip (clip_id = video id = world/<id>.json)."""
    qs = question_set()
    out = {}
    missing = []
    for f in scenario_files(label_dir):
        for rec in scan_scenarios(f):
            if isinstance(rec, Exception) or rec.error:
                continue
            wf = world_dir / f"{rec.clip_id}.json"
            if not wf.is_file():
                missing.append(rec.clip_id)
                continue
            out[rec.clip_id] = truth_attributes(SceneRecord.model_validate_json(wf.read_bytes()), qs)
    if missing:
        raise SystemExit(f"{world_dir}: no world record for {len(missing)} labelled clips "
                         f"(e.g. {missing[0]}.json); --world-dir must hold <clip_id>.json")
    return out


def label_agreement(label_dir: Path, truth: dict[str, dict[str, str]]) -> dict:
    """How often the labels' attribute letters equal the truth (context for the (b) figures)."""
    right = total = 0
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for f in scenario_files(label_dir):
        for rec in scan_scenarios(f):
            if isinstance(rec, Exception) or rec.error or rec.clip_id not in truth:
                continue
            for name, a in rec.attributes.items():
                t = truth[rec.clip_id].get(name)
                if t is None:
                    continue
                ok = int(a.letter == t)
                right += ok
                total += 1
                per[name][0] += ok
                per[name][1] += 1
    return {"answers": total, "agree": right / total if total else None,
            "per_attribute": {k: v[0] / v[1] for k, v in sorted(per.items())}}


def caption_vocabulary(label_dir: Path) -> set[str]:
    words: set[str] = set()
    for f in scenario_files(label_dir):
        for rec in scan_scenarios(f):
            if not isinstance(rec, Exception) and rec.caption:
                words |= set(re.findall(r"[a-z]+", rec.caption.lower()))
    return words


_STOP = {"a", "an", "the", "of", "in", "on", "at", "to", "with", "and", "or", "so", "you", "we", "our", "us",
         "its", "it", "is", "as", "from", "by", "while", "during", "behind", "into", "near", "off", "goes", "can",
         "like", "something"}


def load_queries(path: Path | None):
    """(QUERIES, matches) of benchmarks/retrieval_queries.py or of the module at `path`."""
    if path is None:
        return retrieval_queries.QUERIES, retrieval_queries.matches
    spec = importlib.util.spec_from_file_location("queries_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot be loaded as a Python module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    queries = getattr(mod, "QUERIES", None)
    if not isinstance(queries, list) or not queries:
        raise SystemExit(f"{path}: QUERIES: expected a non-empty list")
    for i, q in enumerate(queries):
        for key in ("id", "text", "where"):
            if not isinstance(q, dict) or key not in q:
                raise SystemExit(f"{path}: QUERIES[{i}]: {key}: missing")
    return queries, getattr(mod, "matches", retrieval_queries.matches)


def run(label_dir: Path, truth: dict[str, dict[str, str]], db_dir: Path, tag: str, queries: list[dict],
        matches, blind: bool = False) -> dict:
    if db_dir.exists():
        shutil.rmtree(db_dir)
    db = open_db(db_dir, create=True)
    t0 = time.perf_counter()
    rep = db.ingest([label_dir])
    ingest_s = time.perf_counter() - t0
    print(f"[{tag}] {rep.summary()}", file=sys.stderr)
    indexed = set(truth) & {h for h in _all_ids(db)}
    vocab = caption_vocabulary(label_dir)
    per_query = []
    for q in queries:
        relevant = {c for c in indexed if matches(q["where"], truth[c])}
        row = {"id": q["id"], "split": q.get("split", "blind" if blind else "?"), "kind": q.get("kind", "?"),
               "relevant": len(relevant)}
        if not blind:
            u = db.understand(q["text"])
            row.update(query=q["text"], where=q["where"],
                       overlap=sorted({w for w in re.findall(r"[a-z]+", q["text"].lower()) if w in vocab and w not in _STOP}),
                       understood={"text": u.text, "facets": {f.name: list(f.letters) for f in u.facets},
                                   "phrases": {f.name: f.phrase for f in u.facets}})
        # a random ranking's expected recall@10: each relevant clip is in the top 10 with p = 10 / N
        n = len(indexed)
        row["random@10"] = (len(relevant) * min(K, n) / n / min(K, len(relevant))) if relevant else None
        if relevant:
            for mode in MODES:
                t = time.perf_counter()
                ranking = [h.clip_id for h in db.search(q["text"], mode=mode, limit=DEPTH)]
                ms = 1000 * (time.perf_counter() - t)
                row[mode] = {**metrics(ranking, relevant), "ms": ms}
                if not blind:
                    row[mode]["top10"] = [[c, c in relevant] for c in ranking[:K]]
        per_query.append(row)
    return {"tag": tag, "label_dir": str(label_dir), "clips": len(indexed), "ingest_s": ingest_s,
            "ingest": rep.to_json(), "queries": per_query, "summary": summarise(per_query)}


def _all_ids(db) -> list[str]:
    tbl = db.table()
    if tbl is None:
        return []
    return tbl.search().select(["clip_id"]).limit(tbl.count_rows()).to_arrow().column("clip_id").to_pylist()


def summarise(rows: list[dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["relevant"] == 0:
            continue
        for g in ("all", f"split={r['split']}", f"kind={r['kind']}"):
            groups[g].append(r)
    out = {}
    for g, rs in groups.items():
        out[g] = {"queries": len(rs), "random@10": sum(r["random@10"] for r in rs) / len(rs)}
        for mode in MODES:
            out[g][mode] = {"recall@10": sum(r[mode]["recall@10"] for r in rs) / len(rs),
                            "mrr": sum(r[mode]["rr"] for r in rs) / len(rs),
                            "ms_p50": sorted(r[mode]["ms"] for r in rs)[len(rs) // 2]}
    out["skipped_no_relevant"] = [r["id"] for r in rows if r["relevant"] == 0]
    return out


def table(res: dict, modes=MODES) -> str:
    s = res["summary"]
    head = " | ".join(f"{m} R@10 | {m} MRR" for m in modes)
    lines = [f"**{res['tag']}** — {res['clips']} clips indexed ({res['label_dir']})", "",
             f"| queries | n | random R@10 | {head} |", "|---|---:|---:|" + "---:|" * (2 * len(modes))]
    order = ["all", "split=dev", "split=heldout", "kind=single", "kind=conjunction", "kind=rare"]
    order += sorted(g for g in s if g not in order and g != "skipped_no_relevant")
    for g in order:
        if g not in s:
            continue
        cells = [f"{s[g][m][k]:.3f}" for m in modes for k in ("recall@10", "mrr")]
        lines.append(f"| {g} | {s[g]['queries']} | {s[g]['random@10']:.3f} | " + " | ".join(cells) + " |")
    if s.get("skipped_no_relevant"):
        lines.append(f"\nNo relevant clip (skipped): {', '.join(s['skipped_no_relevant'])}")
    return "\n".join(lines)


def query_table(res: dict) -> str:
    modes = MODES
    blind = "query" not in (res["queries"][0] if res["queries"] else {})
    extra = [] if blind else ["query", "words also in captions", "facets understood"]
    lines = ["| id | split | kind | relevant | " + " | ".join([f"{m} R@10 / RR" for m in modes] + extra) + " |",
             "|---|---|---|---:|" + "---|" * (len(modes) + len(extra))]
    for r in res["queries"]:
        cells = [f"{r[m]['recall@10']:.1f} / {r[m]['rr']:.2f}" if m in r else "–" for m in modes]
        if not blind:
            cells += [r["query"], ", ".join(r["overlap"]) or "–",
                      ", ".join(f"{k}={''.join(v)} ({r['understood']['phrases'][k]})"
                                for k, v in r["understood"]["facets"].items()) or "–"]
        lines.append(f"| {r['id']} | {r['split']} | {r['kind']} | {r['relevant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_commit() -> str | None:
    """The commit measured, with "+dirty" when the scenario search's files differ from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/avcap/scenarios", "benchmarks/bench_retrieval.py"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.processor() or platform.machine()}
    for p in ("lancedb", "pylance", "pyarrow", "wordllama", "avcap"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/work/scratch/retrieval", help="generated data and databases (not the repo)")
    ap.add_argument("--scenes", type=int, default=3000, help="(a): synthetic clips indexed (one caption each)")
    ap.add_argument("--label-dir", type=Path, help="(b): an `avcap label` output directory")
    ap.add_argument("--world-dir", type=Path, help="(b): the world/<video_id>.json truth records of those clips")
    ap.add_argument("--simulate-b", type=int, default=0, metavar="N",
                    help="(b) without a model's labels: N clips labelled by the world truth with --error-rate wrong answers")
    ap.add_argument("--error-rate", type=float, default=0.25)
    ap.add_argument("--skip-a", action="store_true", help="only (b)")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    ap.add_argument("--per-query", action="store_true", help="also print the per-query table")
    ap.add_argument("--queries", type=Path, help="a query module to load by path (blind: its texts are never printed)")
    ap.add_argument("--split", help="only the queries of this split (e.g. dev)")
    a = ap.parse_args(argv)
    queries, matches = load_queries(a.queries)
    blind = a.queries is not None
    if a.split:
        queries = [q for q in queries if q.get("split") == a.split]
        if not queries:
            ap.error(f"--split {a.split}: no query of that split")
    if (a.label_dir is None) != (a.world_dir is None):
        ap.error("--label-dir and --world-dir go together")
    work = Path(a.work)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
              "commit": git_commit(), "query_module": str(a.queries or "benchmarks/retrieval_queries.py"),
              "split": a.split, "queries": len(queries), "runs": []}
    if not a.skip_a:
        data = generate(work / f"data-s{a.scenes}", a.scenes, quiet=True)
        res = run(data, read_truth(data), work / "db-a", f"(a) reference captions + world-truth attributes, {a.scenes} scenes",
                  queries, matches, blind)
        result["runs"].append(res)
    if a.simulate_b:
        a.label_dir, a.world_dir = simulated_labels(work / f"simulated-b{a.simulate_b}-e{a.error_rate:g}",
                                                    a.simulate_b, a.error_rate)
    if a.label_dir is not None:
        truth = world_truth(a.label_dir, a.world_dir)
        tag = (f"(b) simulated labels: world truth with {a.error_rate:.0%} wrong answers, {a.simulate_b} clips"
               if a.simulate_b else "(b) model labels")
        res = run(a.label_dir, truth, work / "db-b", tag, queries, matches, blind)
        res["label_agreement"] = label_agreement(a.label_dir, truth)
        result["runs"].append(res)
    for res in result["runs"]:
        print(table(res))
        if a.per_query:
            print()
            print(query_table(res))
        print()
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
