"""`avcap bench review` and `avcap bench apply`: the review queue as an editable file, and the
final verified set.

The review file (CSV, or JSONL when its name ends in .jsonl) has one row per disputed pair: the
question, the four choices, both answers (letters, and what each answerer said), why it is
disputed, the annotation excerpt (the question's `depends_on` fields), the video path, the world
truth when the dataset has one, and an empty `decision` column to fill with one of

    keep_annotation   keep the annotation answerer's letter
    keep_video        keep the video answerer's letter
    set:X             the answer is X (A, B, C or D)
    remove            drop the pair from the benchmark

`apply` checks the whole file first — every queued pair decided exactly once, no unknown pairs, no
invalid decisions, answers unchanged since the file was written — and refuses with one message per
bad line, writing nothing. Otherwise it writes DIR/vqa.jsonl in one atomic replace: agreed pairs
(`provenance: "agreed"`) and kept reviewed pairs (`provenance: "reviewed"`, with the decision).

`--auto` decides every queued pair from the synthetic world's truth (`set:X`, marked
`by: "auto:world-truth"` in vqa.jsonl and in the stats); it writes those decisions to
DIR/bench/review.auto.csv first and applies that file, so it passes the same checks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from avcap.bench.answerers import WorldTruth
from avcap.bench.build import bench_dir, read_pairs
from avcap.bench.errors import BenchError
from avcap.core.records import write_records_atomic, write_text_atomic

LETTERS = ("A", "B", "C", "D")
DECISIONS = "keep_annotation | keep_video | set:A..D | remove"
COLUMNS = [
    "item", "category", "question", "A", "B", "C", "D",
    "annotation_answer", "video_answer", "reason", "annotation_said", "video_said",
    "annotation_excerpt", "video", "world_truth", "decision", "note",
]
AUTO_BY = "auto:world-truth"


def _one_line(text: Optional[str], limit: int = 400) -> str:
    if not text:
        return ""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _excerpt(pair: dict, dataset: Path) -> str:
    ann = pair.get("annotation")
    if not ann:
        return ""
    path = bench_dir(dataset) / ann
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"(annotation not readable: {path})"
    if not isinstance(obj, dict):
        return json.dumps(obj, ensure_ascii=False)
    fields = pair.get("depends_on") or list(obj)
    return json.dumps({f: obj.get(f) for f in fields if f in obj}, ensure_ascii=False)


def world_truth(pair: dict, dataset: Path, world: Optional[WorldTruth]) -> Optional[str]:
    """The world's letter for a pair (None without a world truth, or when the dataset has no usable
    world record for it, or no rule for its question)."""
    if world is None or not pair.get("world") or pair["question_id"] not in world.questions:
        return None
    try:
        return world.answer(bench_dir(dataset) / pair["world"], pair["question_id"])
    except (OSError, ValueError, KeyError):
        return None


def review_rows(dataset: Path, pairs: list[dict], out_dir: Path, world: Optional[WorldTruth] = None) -> list[dict[str, Any]]:
    rows = []
    for p in pairs:
        if p["status"] != "review":
            continue
        video = (bench_dir(dataset) / p["video"]).resolve()
        rows.append(
            {
                "item": p["key"],
                "category": p["category"],
                "question": p["question"],
                **{k: p["choices"][k] for k in LETTERS},
                "annotation_answer": p.get("annotation_letter") or "",
                "video_answer": p.get("video_letter") or "",
                "reason": p["reason"],
                "annotation_said": _one_line(p.get("annotation_error") or p.get("annotation_text")),
                "video_said": _one_line(p.get("video_error") or p.get("video_text")),
                "annotation_excerpt": _excerpt(p, dataset),
                "video": os.path.relpath(video, out_dir.resolve()),
                "world_truth": world_truth(p, dataset, world) or "",
                "decision": "",
                "note": "",
            }
        )
    return rows


def _dump(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> str:
    if path.suffix.lower() == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_review_file(dataset: str | Path, out: Optional[str | Path] = None, *, force: bool = False,
                      world: Optional[WorldTruth] = None) -> tuple[Path, int]:
    """Write the review queue to `out` (default DIR/bench/review.csv); returns (path, rows).

    Refuses to overwrite a file that already holds decisions unless `force`."""
    dataset = Path(dataset)
    path = Path(out) if out else bench_dir(dataset) / "review.csv"
    if path.exists() and not force:
        try:
            decided = [r for _, r in read_review_file(path) if str(r.get("decision") or "").strip()]
        except BenchError:
            decided = [None]
        if decided:
            raise BenchError([f"{path}: already exists and holds decisions; apply it, move it, or pass --force to overwrite"])
    rows = review_rows(dataset, read_pairs(dataset), path.parent, world)
    write_text_atomic(path, _dump(rows, path))
    return path, len(rows)


def read_review_file(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every row of a review file (CSV or JSONL)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BenchError([f"{path}: no such review file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError([f"{path}: cannot read ({exc})"]) from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchError([f"{path}:{n}: not valid JSON ({exc.msg})"]) from None
            if not isinstance(obj, dict):
                raise BenchError([f"{path}:{n}: expected a JSON object"])
            rows.append((n, obj))
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("item", "decision") if c not in (reader.fieldnames or [])]
    if missing:
        raise BenchError([f"{path}:1: the header has no {' or '.join(repr(c) for c in missing)} column"])
    line = 1
    for row in reader:
        start = line + 1
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        rows.append((start, row))
    return rows


_SET = re.compile(r"set\s*:\s*([A-Za-z])$")


def parse_decision(text: str) -> tuple[str, Optional[str]]:
    """'keep_annotation' | 'keep_video' | 'remove' | 'set:X' -> (kind, letter or None); ValueError if bad."""
    d = text.strip().lower()
    if d in ("keep_annotation", "keep_video", "remove"):
        return d, None
    m = _SET.match(d)
    if m:
        letter = m.group(1).upper()
        if letter not in LETTERS:
            raise ValueError(f"set:{letter}: {letter} is not a choice (A, B, C or D)")
        return "set", letter
    if not d:
        raise ValueError(f"no decision ({DECISIONS})")
    raise ValueError(f"unknown decision {text.strip()!r} ({DECISIONS})")


def _check_decisions(path: Path, rows: list[tuple[int, dict]], queue: dict[str, dict]) -> tuple[dict, list[str]]:
    problems: list[str] = []
    decided: dict[str, tuple[str, Optional[str], int, str]] = {}
    first_line: dict[str, int] = {}
    for n, row in rows:
        where = f"{path}:{n}"
        item = str(row.get("item") or "").strip()
        if not item:
            problems.append(f"{where}: no item")
            continue
        if item not in queue:
            problems.append(f"{where}: item {item!r} is not in the review queue (unknown, or already agreed)")
            continue
        if item in first_line:
            problems.append(f"{where}: item {item!r} is decided twice (first on line {first_line[item]})")
            continue
        first_line[item] = n
        pair = queue[item]
        for role in ("annotation", "video"):
            col = f"{role}_answer"
            if col in row and str(row[col] or "").strip().upper() != (pair.get(f"{role}_letter") or ""):
                problems.append(
                    f"{where}: item {item!r}: the {role} answer changed since this file was written "
                    f"(file {str(row[col] or '-').strip() or '-'}, now {pair.get(f'{role}_letter') or '-'}); "
                    "write a new review file"
                )
                break
        else:
            try:
                kind, letter = parse_decision(str(row.get("decision") or ""))
            except ValueError as exc:
                problems.append(f"{where}: item {item!r}: {exc}")
                continue
            if kind in ("keep_annotation", "keep_video"):
                letter = pair.get(f"{kind.split('_')[1]}_letter")
                if not letter:
                    problems.append(
                        f"{where}: item {item!r}: {kind}, but that answer has no letter "
                        f"({pair['reason']}); use set:X or remove"
                    )
                    continue
            by = str(row.get("by") or "").strip() or "reviewer"
            decided[item] = (kind, letter, n, by)
    for key in queue:
        if key not in first_line:
            problems.append(f"{path}: item {key!r} has no row (every queued pair needs a decision)")
    return decided, problems


def apply_reviews(dataset: str | Path, reviews: Optional[str | Path] = None, *, auto: bool = False,
                  world: Optional[WorldTruth] = None) -> dict:
    """Validate the decisions and write DIR/vqa.jsonl atomically; returns counts. BenchError if refused."""
    dataset = Path(dataset)
    pairs = read_pairs(dataset)
    queue = {p["key"]: p for p in pairs if p["status"] == "review"}
    if auto:
        if reviews is not None:
            raise BenchError(["use either --reviews FILE or --auto, not both"])
        reviews = write_auto_reviews(dataset, pairs, world)
    if reviews is None:
        if queue:
            raise BenchError([
                f"{len(queue)} pair(s) await review: write the file with `avcap bench review --dataset {dataset}`, "
                "fill its decision column, then pass it with --reviews (or use --auto on a synthetic dataset)"
            ])
        rows, path = [], Path("<none>")
    else:
        path = Path(reviews)
        rows = read_review_file(path)
    decided, problems = _check_decisions(path, rows, queue)
    if problems:
        raise BenchError(problems + [f"{path}: refused ({len(problems)} problem(s)); nothing was written"])
    out = []
    for p in pairs:
        rec = {k: p[k] for k in ("key", "video_id", "question_id", "category", "question", "choices")}
        if p["status"] == "agreed":
            out.append({**rec, "answer": p["annotation_letter"], "provenance": "agreed"})
            continue
        kind, letter, _, by = decided[p["key"]]
        if kind == "remove":
            continue
        out.append({**rec, "answer": letter, "provenance": "reviewed", "review": {"decision": kind, "by": by}})
    vqa = dataset / "vqa.jsonl"
    write_records_atomic(vqa, out)
    outcomes: dict[str, int] = {}
    for kind, _, _, _ in decided.values():
        outcomes[kind] = outcomes.get(kind, 0) + 1
    return {"vqa": str(vqa), "pairs": len(out), "queued": len(queue), "outcomes": outcomes, "reviews": str(path)}


def write_auto_reviews(dataset: Path, pairs: list[dict], world: Optional[WorldTruth]) -> Path:
    """Decide every queued pair from the world truth; refuse if any pair has none."""
    rows, problems = [], []
    out = bench_dir(dataset) / "review.auto.csv"
    for row in review_rows(dataset, pairs, out.parent, world):
        if not row["world_truth"]:
            problems.append(f"{dataset}: item {row['item']!r} has no world truth (world/<video>.json); --auto needs the synthetic world")
            continue
        rows.append({**row, "decision": f"set:{row['world_truth']}", "note": "decided from the world truth", "by": AUTO_BY})
    if problems:
        raise BenchError(problems + ["--auto refused; nothing was written"])
    write_text_atomic(out, _dump(rows, out, COLUMNS + ["by"]))
    return out
