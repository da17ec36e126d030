"""The demo's last recipe step: the scenario database the captioner serves.

The best checkpoint (MCQ accuracy) labels the held-out evaluation clips (`avcap label`: a caption
and the demo pool's questions as attributes), `avcap index` puts them in a scenario database, and a
few example searches run on it; their results (with thumbnails) go into the report, and
`searches.json` keeps them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from avcap.label.run import label_clips
from avcap.scenarios.db import open_db

# (title, query, where): free text, a filter on an attribute, and both at once. Only attributes
# of the quick run's pool too (lighting, weather), so both runs search the same way.
EXAMPLE_SEARCHES: list[tuple[str, str, list[str]]] = [
    ("Free text, hybrid ranking", "a wet road in the rain", []),
    ("Attribute filter only", "", ["lighting=night"]),
    ("Free text within a filter", "a car ahead brakes", ["weather=rain"]),
]
SHOWN = 3  # hits per search in the report


def best_checkpoint(evaluate_result: dict[str, Any], checkpoints: list[Path]) -> Optional[Path]:
    """The checkpoint with the highest MCQ accuracy (ties: the later one)."""
    scores = evaluate_result.get("checkpoints") or {}
    ranked = [(scores.get(p.name, {}).get("mcq_accuracy") or 0.0, i, p) for i, p in enumerate(checkpoints)]
    return max(ranked)[2] if ranked else None


def build_scenarios(cfg, workdir: Path, checkpoint: Optional[Path], log: Callable[[str], None]) -> dict[str, Any]:
    """Label AV_CAPTION's clips with `checkpoint`, index them, run the example searches."""
    labels, db_dir = workdir / "scenarios" / "labels", workdir / "scenarios" / "db"
    summary = label_clips(cfg, clips="AV_CAPTION", out=labels, checkpoint=str(checkpoint) if checkpoint else None,
                          progress=True, log=log)
    db = open_db(db_dir, create=True)
    report = db.ingest([labels])
    log(f"  avcap index: {report.summary()}")
    searches = []
    for title, query, where in EXAMPLE_SEARCHES:
        hits = db.search(query, where=where, limit=SHOWN)
        total = db.count(where=where)
        searches.append({"title": title, "query": query, "where": where, "matching_filter": total,
                         "hits": [h.to_json() for h in hits]})
        log(f"  avcap search {query!r}" + "".join(f" --where {w}" for w in where) + f": {len(hits)} shown of {total}")
    return {"labels": str(labels), "db": str(db_dir), "checkpoint": str(checkpoint) if checkpoint else None,
            "label": {k: v for k, v in summary.items() if k != "records"}, "index": report.to_json(),
            "searches": searches}


def _cell(text: Optional[str], limit: int = 160) -> str:
    s = " ".join((text or "").split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def section_lines(result: dict[str, Any], report_dir: Path, pictures_dir: Optional[Path] = None) -> list[str]:
    """The report's scenario-database section. Thumbnails are linked relative to `report_dir`; with
    `pictures_dir` they are copied there first (a published report carries its own)."""
    if not result:
        return []
    lab, idx = result["label"], result["index"]
    ck = Path(result["checkpoint"]).name if result.get("checkpoint") else "the base model"
    lines = [
        "## The scenario database",
        "",
        f"What the recipe serves: {ck} labelled the {lab['clips']} held-out evaluation clips with `avcap label` "
        f"(a caption and the demo pool's questions as attributes; {lab['labelled']} labelled, {lab['errors']} "
        f"errors, {lab['seconds']:.0f} s), `avcap index` put them into a LanceDB scenario database "
        f"({idx['total']} clips, full-text and vector indexes), and `avcap search` ran these queries "
        "(top hits shown):",
        "",
    ]
    for s in result["searches"]:
        flags = "".join(f" --where {w}" for w in s["where"])
        q = f' "{s["query"]}"' if s["query"] else ""
        lines += [f"**{s['title']}**: `avcap search{q}{flags}` ({s['matching_filter']} clips pass the filter)", ""]
        if not s["hits"]:
            lines += ["(no hit)", ""]
            continue
        lines += ["| # | Clip | Score | Attributes | Caption |", "| ---: | --- | ---: | --- | --- |"]
        for h in s["hits"]:
            pic = h.get("thumbnail")
            if pic and pictures_dir is not None:
                target = pictures_dir / f"{h['clip_id'].replace('/', '_')}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(pic, target)
                pic = str(target)
            img = f"![{h['clip_id']}]({os.path.relpath(pic, report_dir)})<br>" if pic and Path(pic).is_file() else ""
            attrs = ", ".join(f"{k}: {v.get('answer') or '—'}" for k, v in h["attributes"].items())
            score = "—" if h["score"] is None else f"{h['score']:.3f}"
            lines.append(f"| {h['rank']} | {img}`{h['clip_id']}` | {score} | {_cell(attrs, 200)} | {_cell(h['caption'])} |")
        lines.append("")
    return lines
