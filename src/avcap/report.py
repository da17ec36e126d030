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
   where a metric falls after its peak (overfitting), and the plots (drawn by `avcap.plot` into
   `plots/` next to the report);
5. how each number was computed (the implementation names recorded in metrics.json) and the list of
   metrics.json files read.
Every table ends with a "Source" line linking the metrics.json files its numbers come from.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from avcap.plot import (
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
    from avcap.plot import metric_value

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
    from avcap.config import CATEGORIES

    seen = set()
    for e in entries:
        seen |= set((e.metrics.get(key) or {}).get("per_category") or {})
    return [c for c in CATEGORIES if c in seen] + sorted(seen - set(CATEGORIES))


# ----------------------------------------------------------------------------- sections


def _headline_section(summary: Summary) -> list[str]:
    if not summary.headlines:
        return []
    out = ["## Headline", ""]
    rows = []
    for h in summary.headlines:
        rows.append([
            h.model,
            METRIC_TITLES[h.metric],
            fmt_value(h.metric, h.zero_shot),
            h.best_label or "—",
            fmt_value(h.metric, h.best),
            fmt_delta(h.metric, h.change, h.zero_shot),
        ])
    out.append(_table(["Model", "Metric", "Zero-shot", "Best checkpoint", "Best value", "Change"], rows,
                      ["l", "l", "r", "l", "r", "r"]))
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
        rows.append(["**Overall**"] + _bold_max(overall, _pct))
        out.append(_table(["Category"] + models, rows))
        out += ["", _sources(es, report_dir), "", "**Evaluation details**", ""]
        det = []

        def row(name, fn):
            det.append([name] + [fn(e.metrics["vqa_accuracy"]) for e in es])

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
    if metric == "lingoqa":
        out = ["## Zero-shot LingoQA", ""]
        rows = []
        for e in es:
            v = e.metrics["lingoqa"]
            cr = f"{v.get('correct', '—')} / {v.get('rows', '—')}"
            rows.append([e.model, e.dataset, f"{v['score']:.3f} ({_pct(v['score'])})", cr])
        out.append(_table(["Model", "Dataset", "LingoQA score", "Correct / rows"], rows, ["l", "l", "r", "r"]))
        out += ["", "LingoQA score = evaluated questions whose answer the judge accepts (best of the two references) "
                "/ evaluated questions (`rows`, 500 on the full benchmark), as the official evaluate.py."]
    else:
        out = ["## Zero-shot BLEU (captions)", ""]
        rows = []
        for e in es:
            v = e.metrics["bleu"]
            sb = v.get("sacrebleu") or {}
            rows.append([e.model, e.dataset, f"{v['value']:.3f}", str(v.get("n", "—")),
                         f"{sb['score']:.1f}" if isinstance(sb.get("score"), (int, float)) else "—"])
        out.append(_table(["Model", "Dataset", "BLEU-4 (0–1)", "Captions", "sacreBLEU (0–100, cross-check)"], rows,
                          ["l", "l", "r", "r", "r"]))
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
    ordered = sorted(labels, key=lambda l: -1 if labels[l] is None else labels[l])
    # main table: one row per checkpoint, one column per metric
    cols = list(series)
    values = {m: {("base" if s.base and p is s.base else p.label): p
                  for p in ([s.base] if s.base else []) + s.checkpoints} for m, s in series.items()}
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
            pt = values[m].get(lab)
            cell = fmt_value(m, pt.value if pt else None)
            if pt is not None:
                cell = f"[{cell}]({_rel(pt.path, report_dir)})"
            if lab == bests[m]:
                cell = f"**{cell}**"
            r.append(cell)
        if mcq:
            r.append(_pct(parse.get(lab)))
        rows.append(r)
    header = ["Checkpoint", "Step"] + [METRIC_TITLES[m] for m in cols] + (["MCQ parseable"] if mcq else [])
    out.append(_table(header, rows, ["l", "r"] + ["r"] * (len(header) - 2)))
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
        from avcap.config import CATEGORIES

        cats = [c for c in CATEGORIES if c in cats] + [c for c in cats if c not in CATEGORIES]
        hdr = ["Category"] + ["zero-shot" if p.label == "base" else p.label for p in pts]
        rows = []
        for c in cats:
            cells = [p.per_category.get(c) for p in pts]
            rows.append([c] + _bold_max(cells, _pct))
        rows.append(["**Overall**"] + _bold_max([p.value for p in pts], _pct))
        out += ["**MCQ-VQA accuracy per category and checkpoint** (bold: best per row)", "",
                _table(hdr, rows), "",
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
    rows = [[e.model, "zero-shot" if e.label == "base" else e.label,
             _pct(e.metrics["vqa_accuracy_caption_mode"].get("overall")),
             _pct(e.metrics["vqa_accuracy_caption_mode"].get("parseable_rate"))] for e in es]
    return ["## MCQ-VQA answered from the generated captions", "",
            "The MCQs answered by a separate answerer reading only each model's caption (how useful the captions are).", "",
            _table(["Model", "Checkpoint", "Accuracy", "Parseable"], rows), "", _sources(es, report_dir), ""]


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
    from avcap import __version__

    lines = [f"# {title}", "",
             f"Outputs: `{_rel(summary.outputs_dir, report_dir)}` · {len(summary.entries)} metrics.json files · "
             f"generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by avcap {__version__}", ""]
    if intro:
        lines += intro + [""]
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
    from avcap.records import write_text_atomic

    write_text_atomic(out, "\n".join(lines))
    return out, summary


def main(
    outputs_dir: Path = typer.Option(Path("outputs"), "--outputs-dir", help="Inference outputs root (holds <model>/<label>/<dataset>/metrics.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report file. Default: <outputs-dir>/report.md; plots go to plots/ beside it."),
    svg: bool = typer.Option(False, "--svg", help="Draw the embedded plots as SVG instead of PNG."),
) -> None:
    """Markdown report: zero-shot tables, checkpoint sweeps with the best checkpoint per metric, plots."""
    from avcap.records import RecordError

    try:
        path, summary = build_report(outputs_dir, out, plot_format="svg" if svg else "png")
    except (PlotError, RecordError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote {path}")
    for h in summary.headlines:
        typer.echo(
            f"  {h.model} {h.metric}: zero-shot {fmt_value(h.metric, h.zero_shot)} -> best {h.best_label} "
            f"{fmt_value(h.metric, h.best)} ({fmt_delta(h.metric, h.change, h.zero_shot)})"
        )
