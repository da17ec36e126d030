"""MCQ-VQA accuracy statistics; letters are read by `avcap.bench.parse.parse_choice`.

Scores (`mcq_scores`): unparseable and failed requests count as wrong. Standard errors:

- `std_per_video` is the *sample* standard deviation (n - 1) of the per-video accuracies;
- `clustered_se` is the cluster-robust (CR1) standard error of the overall accuracy with videos as
  clusters: for the mean p = sum(y)/N of N answers y_i in G videos,
      CR0^2 = sum_g (sum_{i in g} (y_i - p))^2 / N^2,   CR1^2 = G / (G - 1) * CR0^2
  (Liang-Zeger sandwich for an intercept-only regression; CR1 is Stata's `vce(cluster)` small-sample
  factor G/(G-1) * (N-1)/(N-k) with k = 1). With equal questions per video CR1 equals
  std_per_video / sqrt(G). `clustered_se_cr0` is reported beside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional

from avcap.bench.parse import PARSER, parse_choice

__all__ = ["PARSER", "clustered_se", "mcq_scores", "parse_choice", "sample_std"]


def mcq_scores(records: Iterable[Mapping[str, Any]], *, mode: str = "direct") -> dict[str, Any]:
    """The `vqa_accuracy` block of metrics.json from mcq records (`video_id`, `category`, `choices`,
    `answer` = ground truth letter, `text` = the model's output, `error`)."""
    rows: list[tuple[str, str, bool, bool]] = []  # video, category, parsed, correct
    errors = 0
    for r in records:
        choices = r.get("choices") or {}
        letter = None if r.get("error") else parse_choice(r.get("text"), choices)
        if r.get("error"):
            errors += 1
        truth = str(r.get("answer") or "").strip().upper()
        rows.append((str(r.get("video_id")), str(r.get("category") or "Uncategorized"), letter is not None, letter == truth))
    n = len(rows)
    out: dict[str, Any] = {"mode": mode, "parser": PARSER, "total_predictions": n}
    if n == 0:
        out.update(overall=None, per_category={}, parseable_rate=None, mean_per_video=None, std_per_video=None,
                   clustered_se=None, clustered_se_cr0=None, videos_evaluated=0, correct=0, unparseable=0,
                   engine_errors=0)
        return out
    correct = sum(c for *_, c in rows)
    by_cat: dict[str, list[bool]] = defaultdict(list)
    by_video: dict[str, list[bool]] = defaultdict(list)
    for v, cat, _, c in rows:
        by_cat[cat].append(c)
        by_video[v].append(c)
    per_video = [sum(x) / len(x) for x in by_video.values()]
    out.update(
        overall=correct / n,
        per_category={k: sum(v) / len(v) for k, v in sorted(by_cat.items())},
        per_category_n={k: len(v) for k, v in sorted(by_cat.items())},
        parseable_rate=sum(p for _, _, p, _ in rows) / n,
        mean_per_video=sum(per_video) / len(per_video),
        std_per_video=sample_std(per_video),
        std_per_video_ddof=1,
        clustered_se=clustered_se([[float(c) for c in v] for v in by_video.values()], kind="CR1"),
        clustered_se_cr0=clustered_se([[float(c) for c in v] for v in by_video.values()], kind="CR0"),
        clustered_se_formula="CR1: sqrt(G/(G-1) * sum_g (sum_i (y_gi - p))^2) / N, videos as clusters",
        videos_evaluated=len(by_video),
        correct=correct,
        unparseable=n - sum(p for _, _, p, _ in rows),
        engine_errors=errors,
    )
    return out


def sample_std(values: list[float]) -> Optional[float]:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1))


def clustered_se(clusters: list[list[float]], *, kind: str = "CR1") -> Optional[float]:
    """Cluster-robust standard error of the overall mean of all values (see the module docstring)."""
    n = sum(len(c) for c in clusters)
    g = sum(1 for c in clusters if c)
    if n == 0:
        return None
    p = sum(sum(c) for c in clusters) / n
    meat = sum(sum(y - p for y in c) ** 2 for c in clusters if c)
    var = meat / n**2
    if kind == "CR1":
        if g < 2:
            return None
        var *= g / (g - 1)
    elif kind != "CR0":
        raise ValueError(f"kind must be CR0 or CR1, got {kind!r}")
    return math.sqrt(var)
