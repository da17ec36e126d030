"""`avcap report`: every metric, model and checkpoint of an outputs directory as one Markdown file.

Reads every `<outputs_dir>/<model>/<label>/<dataset>/metrics.json` (docs/formats.md; label `base` |
`ckpt-<step>`) and writes:
1. a headline table (per fine-tuned model: zero-shot vs best checkpoint per metric);
2. the zero-shot MCQ-VQA comparison (categories × models + overall, the recipe's section 2.1) with
   its evaluation details (total predictions, videos evaluated, parseable rate, mean per-video
   accuracy ± std, clustered standard error);
3. LingoQA and BLEU per model (zero-shot);
4. per fine-tuned model, the checkpoint sweep: every checkpoint's metrics, the best checkpoint per
   metric and its change from zero-shot, the per-category accuracy of every checkpoint, a note
   where a metric falls after its peak (overfitting), and the plots (drawn by `avcap.report.plot` into
   `plots/` next to the report);
5. how each number was computed (the implementation names recorded in metrics.json) and the list of
   metrics.json files read.
Every table ends with a "Source" line linking the metrics.json files its numbers come from.
A value computed over fewer records than its dataset holds is marked "(n/N)" (metrics.json
`coverage`), a task whose requests all failed shows "all failed" (never 0), and a table whose
numbers come from different engines or frame representations (run.json `engine` and
`engine_run.representation`, read beside each metrics.json) says so: an Engine column where rows
are output sets, a note under the table otherwise.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import typer

from avcap import __version__
from avcap.core.config import CATEGORIES
from avcap.core.records import RecordError, write_text_atomic
from avcap.eval.score import METRIC_TASK, TASK_NOUN, coverage_text, engine_summary
from avcap.report.plot import (
    CHANCE_4_CHOICES,
    LINGOQA_DATASET,
    METRIC_TITLES,
    METRICS,
    PlotError,
    Series,
    collect_series,
    discover,
    falls_after_peak,
    fmt_delta,
    fmt_value,
    label_step,
    metric_value,
    read_metrics,
    render,
)


@dataclass
class Entry:
    model: str
    label: str
    dataset: str
    path: Path
    metrics: dict[str, Any]

    @property
    def step(self) -> Optional[int]:
        return label_step(self.label)

    @cached_property
    def engine(self) -> str:
        """'<engine name>; <representation>' from the run.json beside metrics.json (else the copy
        `avcap score` put in metrics.json); says "not recorded" for what neither holds."""
        info = None
        run = self.path.parent / "run.json"
        if run.is_file():
            try:
                data = json.loads(run.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            info = engine_summary(data) if isinstance(data, dict) else None
        if info is None and isinstance(self.metrics.get("engine"), dict):
            info = self.metrics["engine"]
        info = info or {}
        name, rep = info.get("name"), info.get("representation")
        rep_txt = _rep_text(rep) if rep not in (None, "", {}, []) else "representation not recorded"
        return f"{name or 'engine not recorded'}; {rep_txt}"


def _rep_text(v: Any, limit: int = 200) -> str:
    """A representation (any JSON value) as short text: 'kind=frames, factor=32, size=256x448'."""
    def fmt(x: Any) -> str:
        if isinstance(x, dict):
            return ", ".join(f"{k}=" + (f"({fmt(y)})" if isinstance(y, dict) else fmt(y)) for k, y in sorted(x.items()))
        if isinstance(x, (list, tuple)):
            if x and all(isinstance(y, (int, float)) and not isinstance(y, bool) for y in x):
                return "x".join(str(y) for y in x)
            return "[" + ", ".join(fmt(y) for y in x) + "]"
        return str(x)

    text = " ".join(fmt(v).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Headline:
    """Zero-shot vs best checkpoint of one metric of one fine-tuned model (values in metrics.json units)."""

    model: str
    metric: str
    zero_shot: Optional[float]
    best_label: Optional[str]
    best: Optional[float]
    last_label: Optional[str] = None
    last: Optional[float] = None

    @property
    def change(self) -> Optional[float]:
        if self.zero_shot is None or self.best is None:
            return None
        return self.best - self.zero_shot


@dataclass
class Summary:
    outputs_dir: Path
    entries: list[Entry]
    headlines: list[Headline] = field(default_factory=list)
    series: dict[tuple[str, str], Series] = field(default_factory=dict)  # (model, metric)

    def models(self) -> list[str]:
        return sorted({e.model for e in self.entries})

    def finetuned_models(self) -> list[str]:
        return sorted({e.model for e in self.entries if e.step is not None})


# ----------------------------------------------------------------------------- collecting


def collect(outputs_dir: str | Path) -> Summary:
    """Read every metrics.json under outputs_dir and compute the checkpoint series (no writing)."""
    root = Path(outputs_dir)
    if not root.is_dir():
        raise PlotError(f"{root}: no such outputs directory")
    entries = [Entry(m, lab, ds, p, read_metrics(p)) for m, lab, ds, p in discover(root)]
    entries = [e for e in entries if e.label == "base" or e.step is not None]
    if not entries:
        raise PlotError(f"{root}: no <model>/<label>/<dataset>/metrics.json files (run `avcap score` first)")
    summary = Summary(outputs_dir=root, entries=entries)
    for model in summary.finetuned_models():
        for metric in METRICS:
            ds = _dataset_with(summary, model, metric)
            if ds is None:
                continue
            try:
                s = collect_series(root, ds, model, metric)
            except PlotError:
                continue
            if not s.checkpoints:
                continue
            summary.series[(model, metric)] = s
            best = s.best
            last = s.checkpoints[-1]
            summary.headlines.append(
                Headline(
                    model=model,
                    metric=metric,
                    zero_shot=s.base.value if s.base else None,
                    best_label=best.label,
                    best=best.value,
                    last_label=last.label,
                    last=last.value,
                )
            )
    return summary


def _dataset_with(summary: Summary, model: str, metric: str) -> Optional[str]:
    """The dataset whose metrics.json files hold `metric` for `model` (AV_CAPTION / LINGOQA first)."""

    found = sorted({e.dataset for e in summary.entries if e.model == model and metric_value(e.metrics, metric) is not None})
    for preferred in ("AV_CAPTION", LINGOQA_DATASET):
        if preferred in found:
            return preferred
    return found[0] if found else None


# ----------------------------------------------------------------------------- Markdown helpers


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _table(header: list[str], rows: list[list[str]], align: Optional[list[str]] = None) -> str:
    align = align or (["l"] + ["r"] * (len(header) - 1))
    sep = ["---:" if a == "r" else (":---:" if a == "c" else "---") for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sources(entries: list[Entry], report_dir: Path, what: str = "") -> str:
    links = ", ".join(f"[{e.model}/{e.label}/{e.dataset}]({_rel(e.path, report_dir)})" for e in entries)
    return f"<sub>Source{' (' + what + ')' if what else ''}: {links}</sub>"


def _pct(v: Any, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}%" if isinstance(v, (int, float)) else "—"


def _bold_max(cells: list[Optional[float]], fmt) -> list[str]:
    vals = [c for c in cells if c is not None]
    top = max(vals) if vals else None
    out = []
    for c in cells:
        s = fmt(c)
        out.append(f"**{s}**" if c is not None and top is not None and c == top and len(vals) > 1 else s)
    return out


def _categories(entries: list[Entry], key: str = "vqa_accuracy") -> list[str]:
    seen = set()
    for e in entries:
        seen |= set((e.metrics.get(key) or {}).get("per_category") or {})
    return [c for c in CATEGORIES if c in seen] + sorted(seen - set(CATEGORIES))


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|")


def _coverage(metrics: dict[str, Any], metric: str) -> Optional[dict[str, Any]]:
    c = (metrics.get("coverage") or {}).get(METRIC_TASK.get(metric, "")) if isinstance(metrics.get("coverage"), dict) else None
    return c if isinstance(c, dict) else None


def _failed(metrics: dict[str, Any], metric: str) -> bool:
    b = metrics.get(metric)
    return isinstance(b, dict) and b.get("status") == "all_failed"


def _mark(metrics: dict[str, Any], metric: str) -> str:
    """' (38/40)' after a value computed over fewer records than the dataset holds."""
    c = _coverage(metrics, metric)
    if c and c.get("status") == "partial":
        return f" ({c.get('scored')}/{c.get('planned')})"
    return ""


def _coverage_cell(metrics: dict[str, Any], metric: str) -> str:
    c = _coverage(metrics, metric)
    return coverage_text(c, TASK_NOUN[METRIC_TASK[metric]]) if c else "not recorded"


def _value_cell(metrics: dict[str, Any], metric: str, fmt) -> str:
    """The value with its coverage mark, or 'all failed' (no score), or '—'."""
    if _failed(metrics, metric):
        return "all failed"

    key = {"vqa_accuracy_caption_mode": "vqa_accuracy"}.get(metric, metric)
    block = metrics.get(metric)
    v = metric_value({key: block}, key) if isinstance(block, dict) else None
    return "—" if v is None else fmt(v) + _mark(metrics, metric)


def _mixed(entries: list[Entry]) -> bool:
    return len({e.engine for e in entries}) > 1


def _engine_note(items: list[tuple[str, Entry]]) -> list[str]:
    """A note under a table whose numbers come from different engines or representations."""
    by: dict[str, list[str]] = {}
    for name, e in items:
        by.setdefault(e.engine, [])
        if name not in by[e.engine]:
            by[e.engine].append(name)
    if len(by) < 2:
        return []
    return ["", "**Different engines or frame representations in this table** (the numbers are not like for like): "
            + "; ".join(f"`{lab}`: {', '.join(names)}" for lab, names in by.items())]


def _legend(entries: list[Entry]) -> list[str]:
    partial = any(_mark(e.metrics, m) for e in entries for m in METRIC_TASK)
    failed = any(_failed(e.metrics, m) for e in entries for m in METRIC_TASK)
    out = []
    if partial:
        out.append("A value marked (n/N) was computed over n of the N records its dataset holds for that task "
                   "(the others failed or are missing: `coverage` in its metrics.json).")
    if failed:
        out.append("\"all failed\": every request of that task failed, so there is no score (not a score of 0).")
    return out + [""] if out else []


# ----------------------------------------------------------------------------- sections


def _headline_section(summary: Summary) -> list[str]:
    if not summary.headlines:
        return []
    out = ["## Headline", ""]
    rows = []
    by_path = {e.path: e for e in summary.entries}
    mixed_notes = []
    for h in summary.headlines:
        s = summary.series.get((h.model, h.metric))
        base_e = by_path.get(s.base.path) if s and s.base else None
        best_e = by_path.get(s.best.path) if s and s.best else None
        title = METRIC_TITLES[h.metric]
        if base_e and best_e and base_e.engine != best_e.engine:
            title += " †"
            mixed_notes.append(f"{h.model} {METRIC_TITLES[h.metric]}: zero-shot `{base_e.engine}`, "
                               f"{h.best_label} `{best_e.engine}`")
        rows.append([
            h.model,
            title,
            fmt_value(h.metric, h.zero_shot) + (_mark(base_e.metrics, h.metric) if base_e else ""),
            h.best_label or "—",
            fmt_value(h.metric, h.best) + (_mark(best_e.metrics, h.metric) if best_e else ""),
            fmt_delta(h.metric, h.change, h.zero_shot),
        ])
    out.append(_table(["Model", "Metric", "Zero-shot", "Best checkpoint", "Best value", "Change"], rows,
                      ["l", "l", "r", "l", "r", "r"]))
    if mixed_notes:
        out += ["", "† zero-shot and best checkpoint come from different engines or frame representations: "
                + "; ".join(mixed_notes) + "."]
    if any(h.metric == "vqa_accuracy" for h in summary.headlines):
        out += ["", f"MCQ chance level (4 choices): {100 * CHANCE_4_CHOICES:.0f}%."]
    out += ["", "<sub>Sources: the checkpoint sweep tables below.</sub>", ""]
    return out


def _zero_shot_mcq_section(summary: Summary, report_dir: Path) -> list[str]:
    out: list[str] = []
    datasets = sorted({e.dataset for e in summary.entries if e.label == "base" and isinstance(e.metrics.get("vqa_accuracy"), dict)})
    for ds in datasets:
        es = sorted((e for e in summary.entries if e.label == "base" and e.dataset == ds and isinstance(e.metrics.get("vqa_accuracy"), dict)),
                    key=lambda e: e.model)
        out += [f"## Zero-shot MCQ-VQA accuracy ({ds})", ""]
        models = [e.model for e in es]
        rows = []
        for cat in _categories(es):
            cells = [(e.metrics["vqa_accuracy"].get("per_category") or {}).get(cat) for e in es]
            rows.append([cat] + _bold_max(cells, _pct))
        overall = [e.metrics["vqa_accuracy"].get("overall") for e in es]
        cells = _bold_max(overall, _pct)
        cells = [_value_cell(e.metrics, "vqa_accuracy", lambda v, c=c: c) for e, c in zip(es, cells)]
        rows.append(["**Overall**"] + cells)
        out.append(_table(["Category"] + models, rows))
        out += _engine_note([(e.model, e) for e in es])
        out += ["", _sources(es, report_dir), "", "**Evaluation details**", ""]
        det = []

        def row(name, fn):
            det.append([name] + [fn(e.metrics["vqa_accuracy"]) for e in es])

        det.append(["Questions scored / in the dataset"] + [_coverage_cell(e.metrics, "vqa_accuracy") for e in es])
        if _mixed(es):
            det.append(["Engine; representation"] + [_cell_text(e.engine) for e in es])
        row("Total predictions", lambda v: f"{v['total_predictions']:,}" if "total_predictions" in v else "—")
        row("Videos evaluated", lambda v: f"{v['videos_evaluated']:,}" if "videos_evaluated" in v else "—")
        row("Parseable rate", lambda v: _pct(v.get("parseable_rate")))
        row("Mean per-video accuracy (± std)",
            lambda v: f"{_pct(v.get('mean_per_video'))} (±{_pct(v.get('std_per_video'))})" if v.get("mean_per_video") is not None else "—")
        row("Clustered standard error of overall", lambda v: f"±{_pct(v.get('clustered_se'), 2)}" if v.get("clustered_se") is not None else "—")
        row("Answer mode", lambda v: str(v.get("mode", "—")))
        out.append(_table([""] + models, det))
        out += ["", "Unparseable answers count as wrong (the parseable rate says how many there were). "
                "Questions of one video are correlated, hence the per-video mean ± std and the "
                "standard error clustered by video.", ""]
    return out


def _zero_shot_simple(summary: Summary, report_dir: Path, metric: str) -> list[str]:
    es = sorted((e for e in summary.entries if e.label == "base" and isinstance(e.metrics.get(metric), dict)),
                key=lambda e: (e.model, e.dataset))
    if not es:
        return []
    mixed = _mixed(es)
    eng_h, eng_a = (["Engine; representation"], ["l"]) if mixed else ([], [])
    if metric == "lingoqa":
        out = ["## Zero-shot LingoQA", ""]
        rows = []
        for e in es:
            v = e.metrics["lingoqa"]
            cr = f"{v.get('correct', '—')} / {v.get('rows', '—')}" if not _failed(e.metrics, "lingoqa") else "—"
            score = _value_cell(e.metrics, "lingoqa", lambda x: f"{x:.3f} ({_pct(x)})")
            rows.append([e.model, e.dataset, score, cr, _coverage_cell(e.metrics, "lingoqa")]
                        + ([_cell_text(e.engine)] if mixed else []))
        out.append(_table(["Model", "Dataset", "LingoQA score", "Correct / rows", "Questions scored / in the dataset"] + eng_h,
                          rows, ["l", "l", "r", "r", "r"] + eng_a))
        out += ["", "LingoQA score = evaluated questions whose answer the judge accepts (best of the two references) "
                "/ evaluated questions (`rows`, 500 on the full benchmark), as the official evaluate.py."]
    else:
        out = ["## Zero-shot BLEU (captions)", ""]
        rows = []
        for e in es:
            v = e.metrics["bleu"]
            sb = v.get("sacrebleu") or {}
            caps = _coverage_cell(e.metrics, "bleu") if _coverage(e.metrics, "bleu") else str(v.get("n", "—"))
            rows.append([e.model, e.dataset, _value_cell(e.metrics, "bleu", lambda x: f"{x:.3f}"), caps,
                         f"{sb['score']:.1f}" if isinstance(sb.get("score"), (int, float)) else "—"]
                        + ([_cell_text(e.engine)] if mixed else []))
        out.append(_table(["Model", "Dataset", "BLEU-4 (0–1)", "Captions", "sacreBLEU (0–100, cross-check)"] + eng_h, rows,
                          ["l", "l", "r", "r", "r"] + eng_a))
    out += _engine_note([(f"{e.model}/{e.dataset}", e) for e in es])
    out += ["", _sources(es, report_dir), ""]
    return out


def _sweep_section(summary: Summary, model: str, report_dir: Path, plots: dict[str, Path]) -> list[str]:
    out = [f"## Checkpoint sweep: {model}", ""]
    series = {m: summary.series[(model, m)] for m in METRICS if (model, m) in summary.series}
    labels: dict[str, Optional[int]] = {}
    for s in series.values():
        if s.base:
            labels["base"] = None
        for p in s.checkpoints:
            labels[p.label] = p.step
    by_path = {e.path: e for e in summary.entries}
    # checkpoints whose requests all failed for a metric have no value (and no point in the series)
    failed = {(e.label, m): e for e in summary.entries if e.model == model for m in METRICS if _failed(e.metrics, m)}
    for (lab, _), e in failed.items():
        labels.setdefault(lab, e.step)
    ordered = sorted(labels, key=lambda l: -1 if labels[l] is None else labels[l])
    # main table: one row per checkpoint, one column per metric
    cols = [m for m in METRICS if m in series or any(fm == m for _, fm in failed)]
    values = {m: {("base" if s.base and p is s.base else p.label): p
                  for p in ([s.base] if s.base else []) + s.checkpoints} for m, s in series.items()}
    used = [(f"{p.label} ({p.path.parent.name})", by_path[p.path]) for m in cols for p in values.get(m, {}).values()
            if p.path in by_path]
    used += [(f"{lab} ({e.dataset})", e) for (lab, _), e in failed.items()]
    parse = {}
    mcq = series.get("vqa_accuracy")
    if mcq:
        for p in ([mcq.base] if mcq.base else []) + mcq.checkpoints:
            parse[p.label] = read_metrics(p.path)["vqa_accuracy"].get("parseable_rate")
    rows = []
    bests = {m: (s.best.label if s.best else None) for m, s in series.items()}
    for lab in ordered:
        r = ["zero-shot (base)" if lab == "base" else lab, "—" if lab == "base" else str(labels[lab])]
        for m in cols:
            pt = values.get(m, {}).get(lab)
            cell = fmt_value(m, pt.value if pt else None)
            if pt is not None:
                e = by_path.get(pt.path)
                cell = f"[{cell}]({_rel(pt.path, report_dir)})" + (_mark(e.metrics, m) if e else "")
            elif (lab, m) in failed:
                cell = f"[all failed]({_rel(failed[(lab, m)].path, report_dir)})"
            if lab == bests.get(m):
                cell = f"**{cell}**"
            r.append(cell)
        if mcq:
            r.append(_pct(parse.get(lab)))
        rows.append(r)
    header = ["Checkpoint", "Step"] + [METRIC_TITLES[m] for m in cols] + (["MCQ parseable"] if mcq else [])
    out.append(_table(header, rows, ["l", "r"] + ["r"] * (len(header) - 2)))
    out += _engine_note(used)
    out += ["", "Bold: the best checkpoint of each metric. Every value links to the metrics.json it comes from.", ""]

    # best checkpoint per metric
    out += ["**Best checkpoint per metric**", ""]
    rows = []
    for m, s in series.items():
        b = s.best
        z = s.base.value if s.base else None
        rows.append([METRIC_TITLES[m], fmt_value(m, z), b.label, fmt_value(m, b.value),
                     fmt_delta(m, (b.value - z) if z is not None else None, z)])
    out.append(_table(["Metric", "Zero-shot", "Best checkpoint", "Value", "Change from zero-shot"], rows,
                      ["l", "r", "l", "r", "r"]))
    out.append("")

    # overfitting notes
    notes = []
    for m, s in series.items():
        f = falls_after_peak(s)
        if f is None:
            continue
        peak, last, drop = f
        noise = _noise(m, last)
        if noise is not None and drop <= noise[0]:
            notes.append(
                f"- {METRIC_TITLES[m]} peaks at {peak.label} ({fmt_value(m, peak.value)}) and ends at "
                f"{fmt_value(m, last.value)} by {last.label} ({fmt_delta(m, -drop)}), within {noise[1]}: "
                "no clear sign of overfitting."
            )
            continue
        why = f", more than {noise[1]} ({fmt_delta(m, noise[0]).lstrip('+')})" if noise else ""
        notes.append(
            f"- **{METRIC_TITLES[m]}** peaks at {peak.label} ({fmt_value(m, peak.value)}) and falls to "
            f"{fmt_value(m, last.value)} by {last.label} ({fmt_delta(m, -drop)}){why}: training past "
            f"{peak.label} overfits for this metric; select that checkpoint rather than the last one."
        )
    if notes:
        out += ["**Overfitting** (a metric that falls after its peak)", ""] + notes + [""]
    else:
        out += ["No metric falls after its peak: the last checkpoint is the best (or tied) for every metric; "
                "training longer may still help.", ""]

    # per-category accuracy per checkpoint
    if mcq:
        pts = ([mcq.base] if mcq.base else []) + mcq.checkpoints
        cats = []
        for p in pts:
            cats += [c for c in p.per_category if c not in cats]
        from avcap.core.config import CATEGORIES

        cats = [c for c in CATEGORIES if c in cats] + [c for c in cats if c not in CATEGORIES]
        hdr = ["Category"] + ["zero-shot" if p.label == "base" else p.label for p in pts]
        rows = []
        for c in cats:
            cells = [p.per_category.get(c) for p in pts]
            rows.append([c] + _bold_max(cells, _pct))
        rows.append(["**Overall**"] + _bold_max([p.value for p in pts], _pct))
        out += ["**MCQ-VQA accuracy per category and checkpoint** (bold: best per row)", "",
                _table(hdr, rows)]
        out += _engine_note([(p.label, by_path[p.path]) for p in pts if p.path in by_path])
        out += ["",
                "<sub>Source: " + ", ".join(f"[{p.label}]({_rel(p.path, report_dir)})" for p in pts) + "</sub>", ""]

    # plots
    if plots:
        out += ["**Plots**", ""]
        for m, p in plots.items():
            out += [f"![{model}: {METRIC_TITLES[m]} across checkpoints]({_rel(p, report_dir)})", ""]
    return out


def _noise(metric: str, pt) -> Optional[tuple[float, str]]:
    """(threshold, description) below which a fall after the peak is treated as noise."""
    m = read_metrics(pt.path).get(metric) or {}
    if metric == "vqa_accuracy":
        se = m.get("clustered_se")
        if isinstance(se, (int, float)) and se > 0:
            return 2 * se, "two clustered standard errors"
    if metric == "lingoqa":
        rows = m.get("rows")
        if isinstance(rows, int) and rows > 1:
            p = pt.value
            # rows = evaluated questions (one verdict each, the official evaluate.py denominator)
            se = (p * (1 - p) / rows) ** 0.5
            return 2 * se, "two binomial standard errors"
    if metric == "bleu":
        return 0.05 * pt.value, "5% of the value"
    return None


def _short(p: Path, root: Path) -> str:
    try:
        return Path(p).resolve().relative_to(Path(root).resolve()).parent.as_posix()
    except ValueError:
        return Path(p).parent.as_posix()


def _methods_section(summary: Summary) -> list[str]:
    impls: dict[str, set[str]] = {}

    def add(k, v):
        if v:
            impls.setdefault(k, set()).add(str(v))

    for e in summary.entries:
        b = e.metrics.get("bleu") or {}
        add("BLEU", b.get("implementation"))
        add("BLEU tokenization", b.get("tokenization"))
        sb = b.get("sacrebleu") or {}
        add("sacreBLEU (cross-check) signature", sb.get("signature"))
        for key in ("vqa_accuracy", "vqa_accuracy_caption_mode"):
            v = e.metrics.get(key) or {}
            add(f"MCQ letter parser ({key})", v.get("parser"))
            add(f"MCQ answer mode ({key})", v.get("mode"))
        lq = e.metrics.get("lingoqa") or {}
        add("LingoQA implementation", lq.get("implementation"))
        add("LingoQA judge", lq.get("judge"))
    if not impls:
        return []
    out = ["## How the numbers were computed", "",
           "As recorded in the metrics.json files (fractions stored in [0, 1]; accuracies shown as percentages, "
           "BLEU as coco-caption BLEU-4 in [0, 1]).", ""]
    for k, vs in impls.items():
        out.append(f"- {k}: " + "; ".join(f"`{v}`" for v in sorted(vs)))
    out.append("")
    return out


def _caption_mode_section(summary: Summary, report_dir: Path) -> list[str]:
    es = sorted((e for e in summary.entries if isinstance(e.metrics.get("vqa_accuracy_caption_mode"), dict)),
                key=lambda e: (e.model, -1 if e.step is None else e.step))
    if not es:
        return []
    mixed = _mixed(es)
    answerers = {str(e.metrics["vqa_accuracy_caption_mode"].get("answerer")) for e in es}
    rows = [[e.model, "zero-shot" if e.label == "base" else e.label,
             _value_cell(e.metrics, "vqa_accuracy_caption_mode", _pct),
             _pct(e.metrics["vqa_accuracy_caption_mode"].get("parseable_rate")),
             _coverage_cell(e.metrics, "vqa_accuracy_caption_mode")]
            + ([_cell_text(str(e.metrics["vqa_accuracy_caption_mode"].get("answerer")))] if len(answerers) > 1 else [])
            + ([_cell_text(e.engine)] if mixed else []) for e in es]
    header = (["Model", "Checkpoint", "Accuracy", "Parseable", "Questions scored / in the dataset"]
              + (["Answerer"] if len(answerers) > 1 else []) + (["Caption engine; representation"] if mixed else []))
    return ["## MCQ-VQA answered from the generated captions", "",
            "The MCQs answered by a separate answerer reading only each model's caption (how useful the captions are).", "",
            _table(header, rows), *_engine_note([(f"{e.model}/{e.label}", e) for e in es]), "",
            _sources(es, report_dir), ""]


# ----------------------------------------------------------------------------- writing


def write_report(
    outputs_dir: str | Path,
    out: str | Path | None = None,
    *,
    title: str = "avcap evaluation report",
    intro: Optional[list[str]] = None,
    plot_format: str = "png",
) -> Path:
    """Write the Markdown report (and its plots under `plots/` beside it); returns the report path."""
    return build_report(outputs_dir, out, title=title, intro=intro, plot_format=plot_format)[0]


def build_report(
    outputs_dir: str | Path,
    out: str | Path | None = None,
    *,
    title: str = "avcap evaluation report",
    intro: Optional[list[str]] = None,
    plot_format: str = "png",
) -> tuple[Path, Summary]:
    """`write_report`, also returning the collected `Summary` (headline numbers for callers)."""
    summary = collect(outputs_dir)
    out = Path(out) if out is not None else Path(outputs_dir) / "report.md"
    report_dir = out.parent
    report_dir.mkdir(parents=True, exist_ok=True)

    lines = [f"# {title}", "",
             f"Outputs: `{_rel(summary.outputs_dir, report_dir)}` · {len(summary.entries)} metrics.json files · "
             f"generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by avcap {__version__}", ""]
    if intro:
        lines += intro + [""]
    lines += _legend(summary.entries)
    lines += _headline_section(summary)
    lines += _zero_shot_mcq_section(summary, report_dir)
    lines += _zero_shot_simple(summary, report_dir, "lingoqa")
    lines += _zero_shot_simple(summary, report_dir, "bleu")
    for model in summary.finetuned_models():
        plots = {}
        for metric in METRICS:
            s = summary.series.get((model, metric))
            if s is None:
                continue
            p = report_dir / "plots" / f"{model}_{metric}.{plot_format}"
            plots[metric] = render(s, p)
        lines += _sweep_section(summary, model, report_dir, plots)
    lines += _caption_mode_section(summary, report_dir)
    lines += _methods_section(summary)
    lines += ["## metrics.json files read", ""]
    lines += [f"- [{_short(e.path, summary.outputs_dir)}]({_rel(e.path, report_dir)})" for e in summary.entries]
    lines.append("")

    write_text_atomic(out, "\n".join(lines))
    return out, summary


def main(
    outputs_dir: Path = typer.Option(Path("outputs"), "--outputs-dir", help="Inference outputs root (holds <model>/<label>/<dataset>/metrics.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report file. Default: <outputs-dir>/report.md; plots go to plots/ beside it."),
    svg: bool = typer.Option(False, "--svg", help="Draw the embedded plots as SVG instead of PNG."),
) -> None:
    """Markdown report: zero-shot tables, checkpoint sweeps with the best checkpoint per metric, plots."""

    try:
        path, summary = build_report(outputs_dir, out, plot_format="svg" if svg else "png")
    except (PlotError, RecordError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote {path}")
    by_path = {e.path: e for e in summary.entries}

    def mark(pt, metric: str) -> str:  # ' (n/N)' for a value over fewer records than the dataset holds
        e = by_path.get(pt.path) if pt is not None else None
        return _mark(e.metrics, metric) if e else ""

    for h in summary.headlines:
        s = summary.series.get((h.model, h.metric))
        base, best = (s.base, s.best) if s else (None, None)
        typer.echo(
            f"  {h.model} {h.metric}: zero-shot {fmt_value(h.metric, h.zero_shot)}{mark(base, h.metric)} -> best "
            f"{h.best_label} {fmt_value(h.metric, h.best)}{mark(best, h.metric)} "
            f"({fmt_delta(h.metric, h.change, h.zero_shot)})"
        )
