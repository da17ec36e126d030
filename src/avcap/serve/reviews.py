"""The benchmark's review queue as the review page sees it: the review file that `avcap bench review`
wrote (DIR/bench/review.csv by default, or a .jsonl one), read afresh on every request and written
back one decision at a time, atomically, in the same format, for `avcap bench apply` to read.

Each save re-reads the file, changes the `decision` (and `note`) of one row and replaces the file in
one rename, so a reviewer may stop at any time, resume later, or edit the file by hand in between.
Only the rows' decision, note and (when the file has one) `by` columns are ever written.

The videos come from the benchmark's pairs (DIR/bench/pairs.jsonl), by item key: the review file's
own `video` column is never used to open a file.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from avcap.bench.build import bench_dir, read_pairs
from avcap.bench.errors import BenchError
from avcap.bench.review import LETTERS, parse_decision, read_review_file
from avcap.core.records import write_text_atomic

NOTE_LIMIT = 2000
REVIEWER = "reviewer"


class DecisionError(ValueError):
    """A decision the review file cannot take (one line, shown to the reviewer as is)."""


@dataclass
class ReviewItem:
    index: int  # 1-based position in the review file
    item: str
    row: dict[str, Any]
    in_queue: bool  # still a queued pair of the benchmark (else `apply` refuses the file)

    @property
    def decision(self) -> str:
        return str(self.row.get("decision") or "").strip()

    def field(self, name: str) -> str:
        return str(self.row.get(name) or "").strip()

    @property
    def choices(self) -> dict[str, str]:
        return {k: self.field(k) for k in LETTERS}

    @property
    def excerpt(self) -> Optional[dict]:
        try:
            obj = json.loads(self.field("annotation_excerpt"))
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None


def normalise(decision: str) -> str:
    """The decision as `avcap bench apply` spells it (`set:B`, `keep_video`), or "" to clear one."""
    if not decision.strip():
        return ""
    kind, letter = parse_decision(decision)
    return f"set:{letter}" if kind == "set" else kind


class ReviewQueue:
    """One benchmark's review file, for the review page."""

    def __init__(self, dataset: str | Path, path: Optional[str | Path] = None):
        self.dataset = Path(dataset)
        self.path = Path(path) if path is not None else bench_dir(self.dataset) / "review.csv"
        pairs = read_pairs(self.dataset)
        base = bench_dir(self.dataset)
        self.queue = {p["key"]: p for p in pairs if p.get("status") == "review"}
        self._videos = {k: (base / p["video"]).resolve() for k, p in self.queue.items() if p.get("video")}
        self._lock = threading.Lock()
        if not self.path.is_file():
            raise BenchError([f"{self.path}: no review file; write it first with "
                              f"`avcap bench review --dataset {self.dataset}`"
                              + (f" --out {self.path}" if path is not None else "")])
        self.items()  # refuse an unreadable file at start-up, not on the first page

    def _read(self) -> tuple[list[dict[str, Any]], Optional[list[str]]]:
        rows = [r for _, r in read_review_file(self.path)]
        columns = None
        if self.path.suffix.lower() != ".jsonl":
            columns = list(rows[0]) if rows else None
            for n, r in enumerate(rows, start=2):
                if None in r:
                    raise BenchError([f"{self.path}: a row (about line {n}) has more fields than the header"])
        return rows, columns

    def items(self) -> list[ReviewItem]:
        rows, _ = self._read()
        return [ReviewItem(i, str(r.get("item") or "").strip(), r, str(r.get("item") or "").strip() in self.queue)
                for i, r in enumerate(rows, start=1)]

    def video(self, item: str) -> Optional[Path]:
        """The pair's video file (registered by the benchmark build), or None."""
        p = self._videos.get(item)
        return p if p is not None and p.is_file() else None

    def progress(self, items: list[ReviewItem]) -> dict[str, int]:
        decided = sum(1 for it in items if it.decision)
        return {"decided": decided, "total": len(items), "left": len(items) - decided}

    def decide(self, item: str, decision: str, note: Optional[str] = None) -> tuple[ReviewItem, list[ReviewItem]]:
        """Record one decision ("" clears it); returns the item and every item after the write."""
        try:
            value = normalise(decision)
        except ValueError as exc:
            raise DecisionError(f"item {item!r}: {exc}") from None
        if note is not None and len(note) > NOTE_LIMIT:
            raise DecisionError(f"item {item!r}: the note is {len(note)} characters (at most {NOTE_LIMIT})")
        with self._lock:
            rows, columns = self._read()
            at = next((i for i, r in enumerate(rows) if str(r.get("item") or "").strip() == item), None)
            if at is None:
                raise DecisionError(f"unknown item {item!r}: not a row of {self.path}")
            row = rows[at]
            if value in ("keep_annotation", "keep_video"):
                role = value.split("_")[1]
                if not str(row.get(f"{role}_answer") or "").strip():
                    raise DecisionError(f"item {item!r}: {value}, but the {role} side gave no letter "
                                        f"({str(row.get('reason') or 'no answer').strip()}); use set:X or remove")
            row["decision"] = value
            if note is not None:
                if columns is not None and "note" not in columns:
                    raise DecisionError(f"item {item!r}: {self.path} has no note column")
                row["note"] = " ".join(note.split())
            if "by" in row:
                row["by"] = REVIEWER if value else ""
            write_text_atomic(self.path, _dump(rows, self.path, columns))
        items = self.items()
        return items[at], items


def _dump(rows: list[dict[str, Any]], path: Path, columns: Optional[list[str]]) -> str:
    """The file's text in its own format: JSONL objects, or CSV under its original header."""
    if path.suffix.lower() == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns or ["item", "decision"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()

