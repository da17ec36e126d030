"""`avcap bench stats`: the numbers the recipe reports about its benchmark.

From DIR/bench/pairs.jsonl (the build) and DIR/vqa.jsonl (after apply): verified pairs, videos,
per-category counts, agreement rate per category (agreed / built pairs), unparseable and error
counts per answerer, review outcomes, removed pairs per question; on a synthetic dataset also how
often the agreed answers match the world truth (the ground truth of the ground truth).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from avcap.bench.answerers import WorldTruth
from avcap.bench.build import bench_dir, read_pairs
from avcap.bench.review import world_truth
from avcap.core.config import CATEGORIES
from avcap.core.records import iter_records, write_json_atomic


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def bench_stats(dataset: str | Path, *, write: bool = True, world: Optional[WorldTruth] = None) -> dict[str, Any]:
    """Counts, agreement per category, outcomes; with `world`, how often agreed pairs match it."""
    dataset = Path(dataset)
    pairs = read_pairs(dataset)
    vqa_path = dataset / "vqa.jsonl"
    final = list(iter_records(vqa_path)) if vqa_path.is_file() else None

    cats = [c for c in CATEGORIES if any(p["category"] == c for p in pairs)]
    built = Counter(p["category"] for p in pairs)
    agreed = Counter(p["category"] for p in pairs if p["status"] == "agreed")
    reasons = Counter(p["reason"] for p in pairs if p["reason"])
    per_answerer = {
        role: {
            "unparseable": sum(1 for p in pairs if not p.get(f"{role}_error") and not p.get(f"{role}_letter")),
            "errors": sum(1 for p in pairs if p.get(f"{role}_error")),
        }
        for role in ("annotation", "video")
    }
    truth = [(p, world_truth(p, dataset, world)) for p in pairs if p["status"] == "agreed"]
    truth = [(p, t) for p, t in truth if t]
    out: dict[str, Any] = {
        "dataset": str(dataset),
        "built": {
            "pairs": len(pairs),
            "videos": len({p["video_id"] for p in pairs}),
            "agreed": sum(agreed.values()),
            "review": len(pairs) - sum(agreed.values()),
            "review_reasons": dict(sorted(reasons.items())),
            "agreement_rate": _rate(sum(agreed.values()), len(pairs)),
            "per_category": {
                c: {"pairs": built[c], "agreed": agreed[c], "agreement_rate": _rate(agreed[c], built[c])} for c in cats
            },
            "per_answerer": per_answerer,
        },
        "agreed_matches_world_truth": (
            {"checked": len(truth), "rate": _rate(sum(p["annotation_letter"] == t for p, t in truth), len(truth))}
            if truth else None
        ),
        "final": None,
    }
    if final is not None:
        keys = {r["key"] for r in final}
        queued = [p for p in pairs if p["status"] == "review"]
        removed = [p for p in queued if p["key"] not in keys]
        outcomes = Counter(r["review"]["decision"] for r in final if r.get("provenance") == "reviewed" and r.get("review"))
        by = Counter(r["review"].get("by", "reviewer") for r in final if r.get("review"))
        fcat = Counter(r["category"] for r in final)
        removed_q: dict[str, int] = defaultdict(int)
        for p in removed:
            removed_q[p["question_id"]] += 1
        stale = sorted(keys - {p["key"] for p in pairs})
        out["final"] = {
            "pairs": len(final),
            "videos": len({r["video_id"] for r in final}),
            "agreed": sum(r.get("provenance") == "agreed" for r in final),
            "reviewed": sum(r.get("provenance") == "reviewed" for r in final),
            "per_category": {c: fcat[c] for c in CATEGORIES if fcat[c]},
            "review_outcomes": {**dict(sorted(outcomes.items())), "remove": len(removed)},
            "decided_by": dict(sorted(by.items())),
            "removed": len(removed),
            "removed_per_question": dict(sorted(removed_q.items())),
            "answer_distribution": dict(sorted(Counter(r["answer"] for r in final).items())),
            "stale_pairs": len(stale),
        }
    if write:
        write_json_atomic(bench_dir(dataset) / "stats.json", out)
    return out


def format_stats(s: dict[str, Any]) -> str:
    b = s["built"]
    lines = [
        f"benchmark build: {b['pairs']} pairs over {b['videos']} videos; {b['agreed']} agreed "
        f"({_pct(b['agreement_rate'])}), {b['review']} to review "
        f"({', '.join(f'{k} {v}' for k, v in b['review_reasons'].items()) or 'none'})",
        "",
        f"{'category':<28}{'pairs':>7}{'agreed':>8}{'agreement':>11}" + (f"{'final':>8}" if s["final"] else ""),
    ]
    for c, v in b["per_category"].items():
        fin = f"{s['final']['per_category'].get(c, 0):>8}" if s["final"] else ""
        lines.append(f"{c:<28}{v['pairs']:>7}{v['agreed']:>8}{_pct(v['agreement_rate']):>11}{fin}")
    for role, v in b["per_answerer"].items():
        lines.append(f"{role} answerer: {v['unparseable']} unparseable, {v['errors']} errors")
    t = s.get("agreed_matches_world_truth")
    if t:
        lines.append(f"agreed answers matching the world truth: {_pct(t['rate'])} of {t['checked']}")
    f = s["final"]
    if f:
        lines += [
            "",
            f"verified set (vqa.jsonl): {f['pairs']} pairs over {f['videos']} videos "
            f"({f['agreed']} agreed, {f['reviewed']} reviewed, {f['removed']} removed)",
            "review outcomes: " + ", ".join(f"{k} {v}" for k, v in f["review_outcomes"].items())
            + (f"; decided by: {', '.join(f'{k} {v}' for k, v in f['decided_by'].items())}" if f["decided_by"] else ""),
        ]
        if f["removed_per_question"]:
            lines.append("removed per question: " + ", ".join(f"{k} {v}" for k, v in f["removed_per_question"].items()))
        if f["stale_pairs"]:
            lines.append(f"warning: vqa.jsonl holds {f['stale_pairs']} pair(s) the current build does not; run apply again")
    else:
        lines += ["", "no vqa.jsonl yet: run `avcap bench apply`"]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
