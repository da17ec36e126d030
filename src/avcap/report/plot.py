"""`avcap plot`: one metric against the checkpoint step, with the zero-shot base as the reference.

Reads `<outputs_dir>/<model>/<label>/<dataset>/metrics.json` (docs/formats.md, label `base` |
`ckpt-<step>`) for one model and draws:
- the metric of every checkpoint against its training step (solid line, one marker per checkpoint);
- the zero-shot model (`base`) as a dashed horizontal line;
- the best checkpoint circled and labelled with its value and its change from zero-shot;
- for `vqa_accuracy` a second panel with the per-category accuracy of every checkpoint (dotted
  horizontal lines: the zero-shot value of each category, same colour).

Units: BLEU is coco-caption BLEU-4 in [0, 1] (the captioning papers' convention, and the recipe's);
MCQ-VQA accuracy and LingoQA score are rendered as percentages.

LingoQA lives in its own dataset (`LINGOQA`): `--metric lingoqa` reads the `lingoqa` block from the
`--dataset` directory when it has one there, and otherwise from whichever dataset directory of the
same label does (normally `LINGOQA`), so `--dataset AV_CAPTION --metric lingoqa` works as the
recipe's command line writes it.

The math (collecting the series, choosing the best checkpoint) is pure and separate from drawing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from avcap.core.config import CATEGORIES
from avcap.core.records import RecordError, read_json

# Heavy libraries (matplotlib) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

METRICS = ("bleu", "vqa_accuracy", "lingoqa")
CHANCE_4_CHOICES = 0.25
LINGOQA_DATASET = "LINGOQA"
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")

METRIC_TITLES = {
    "bleu": "BLEU-4 (coco-caption)",
    "vqa_accuracy": "MCQ-VQA accuracy",
    "lingoqa": "LingoQA score (Lingo-Judge)",
}


Y_LABELS = {
    "bleu": "BLEU-4 (0–1, higher is better)",
    "vqa_accuracy": "accuracy [%]",
    "lingoqa": "LingoQA score [% judged correct]",
}


class PlotError(ValueError):
    """A problem the user can fix (missing directory, no metrics for this model/metric)."""


# ----------------------------------------------------------------------------- reading


def label_step(label: str) -> Optional[int]:
    """`ckpt-120` -> 120; `base` -> None; anything else -> None."""
    m = _CKPT_RE.match(label)
    return int(m.group(1)) if m else None


def metrics_path(outputs_dir: str | Path, model: str, label: str, dataset: str) -> Path:
    return Path(outputs_dir) / model / label / dataset / "metrics.json"


def read_metrics(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise PlotError(f"{path}: expected a JSON object")
    return data


def discover(outputs_dir: str | Path) -> list[tuple[str, str, str, Path]]:
    """Every `(model, label, dataset, path)` with a metrics.json under outputs_dir, sorted."""
    root = Path(outputs_dir)
    found = []
    for p in sorted(root.glob("*/*/*/metrics.json")):
        dataset_dir = p.parent
        label_dir = dataset_dir.parent
        model_dir = label_dir.parent
        found.append((model_dir.name, label_dir.name, dataset_dir.name, p))
    return found


def metric_value(metrics: dict[str, Any], metric: str) -> Optional[float]:
    """The headline number of one metric block in formats.md units (BLEU 0-1, accuracies 0-1)."""
    block = metrics.get(metric)
    if not isinstance(block, dict):
        return None
    key = {"bleu": "value", "vqa_accuracy": "overall", "lingoqa": "score"}[metric]
    v = block.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def display_scale(metric: str) -> float:
    """Multiplier from stored value to displayed value (percent for accuracies)."""
    return 1.0 if metric == "bleu" else 100.0


def fmt_value(metric: str, v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if metric == "bleu" else f"{100 * v:.1f}%"


def fmt_delta(metric: str, d: Optional[float], base: Optional[float] = None) -> str:
    """Change from zero-shot: absolute BLEU (and relative when `base` is given), accuracy in points."""
    if d is None:
        return "—"
    if metric == "bleu":
        rel = f", {100 * d / base:+.1f}%" if base else ""
        return f"{d:+.3f}{rel}"
    return f"{100 * d:+.1f} pp"


@dataclass
class Point:
    label: str
    step: Optional[int]  # None for base
    value: float
    path: Path
    per_category: dict[str, float] = field(default_factory=dict)


@dataclass
class Series:
    model: str
    metric: str
    dataset: str  # the dataset the values were read from
    base: Optional[Point]
    checkpoints: list[Point]  # sorted by step

    @property
    def best(self) -> Optional[Point]:
        """Highest value; ties go to the earliest step (the cheaper checkpoint)."""
        if not self.checkpoints:
            return None
        return max(self.checkpoints, key=lambda p: (p.value, -(p.step or 0)))

    @property
    def paths(self) -> list[Path]:
        return ([self.base.path] if self.base else []) + [p.path for p in self.checkpoints]


def _labels(outputs_dir: Path, model: str) -> list[str]:
    mdir = outputs_dir / model
    if not mdir.is_dir():
        return []
    return sorted(d.name for d in mdir.iterdir() if d.is_dir() and (d.name == "base" or label_step(d.name) is not None))


def _metrics_for(outputs_dir: Path, model: str, label: str, dataset: str, metric: str) -> Optional[tuple[dict, Path]]:
    """metrics.json of (model, label) holding `metric`: the named dataset, or for lingoqa any dataset."""
    p = metrics_path(outputs_dir, model, label, dataset)
    if p.is_file():
        m = read_metrics(p)
        if metric_value(m, metric) is not None:
            return m, p
    if metric == "lingoqa":
        candidates = [metrics_path(outputs_dir, model, label, LINGOQA_DATASET)]
        candidates += sorted((outputs_dir / model / label).glob("*/metrics.json"))
        for c in candidates:
            if c.is_file() and c != p:
                m = read_metrics(c)
                if metric_value(m, metric) is not None:
                    return m, c
    return None


def collect_series(outputs_dir: str | Path, dataset: str, model: str, metric: str) -> Series:
    """The base value and the checkpoint values of `metric` for `model` (pure reading, no drawing)."""
    if metric not in METRICS:
        raise PlotError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    root = Path(outputs_dir)
    if not root.is_dir():
        raise PlotError(f"{root}: no such outputs directory")
    labels = _labels(root, model)
    if not labels:
        models = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise PlotError(
            f"{root / model}: no outputs for model {model!r} (models here: {', '.join(models) or 'none'})"
        )
    base = None
    ckpts = []
    used_dataset = dataset
    for label in labels:
        got = _metrics_for(root, model, label, dataset, metric)
        if got is None:
            continue
        m, path = got
        used_dataset = path.parent.name
        per_cat = {}
        if metric == "vqa_accuracy":
            per_cat = {k: float(v) for k, v in (m[metric].get("per_category") or {}).items() if v is not None}
        step = label_step(label)
        if step is None and isinstance(m.get("step"), int) and label != "base":
            step = m["step"]
        pt = Point(label=label, step=step, value=metric_value(m, metric), path=path, per_category=per_cat)
        if label == "base":
            base = pt
        else:
            ckpts.append(pt)
    if base is None and not ckpts:
        where = f"{root / model}/*/{dataset}/metrics.json"
        raise PlotError(f"{where}: no {metric!r} values for model {model!r} in dataset {dataset!r}")
    ckpts.sort(key=lambda p: p.step)
    return Series(model=model, metric=metric, dataset=used_dataset, base=base, checkpoints=ckpts)


def falls_after_peak(series: Series) -> Optional[tuple[Point, Point, float]]:
    """(peak, last, drop) when the last checkpoint is below the best one, else None."""
    best = series.best
    if best is None or len(series.checkpoints) < 2:
        return None
    last = series.checkpoints[-1]
    if last is best or last.value >= best.value:
        return None
    return best, last, best.value - last.value


# ----------------------------------------------------------------------------- drawing

_BASE_COLOR = "#7f7f7f"
_LINE_COLOR = "#1f77b4"
_BEST_COLOR = "#d62728"


def _draw_main(ax, series: Series) -> None:
    metric = series.metric
    s = display_scale(metric)
    xs = [p.step for p in series.checkpoints]
    ys = [p.value * s for p in series.checkpoints]
    if series.checkpoints:
        ax.plot(xs, ys, "-o", color=_LINE_COLOR, lw=2, ms=5, label=f"fine-tuned checkpoints ({len(xs)})")
    if series.base is not None:
        ax.axhline(
            series.base.value * s,
            color=_BASE_COLOR,
            ls="--",
            lw=1.5,
            label=f"zero-shot {series.model}: {fmt_value(metric, series.base.value)}",
        )
    best = series.best
    if best is not None:
        ax.plot([best.step], [best.value * s], "o", ms=14, mfc="none", mec=_BEST_COLOR, mew=2.5,
                label=f"best: {best.label}")
        text = fmt_value(metric, best.value)
        if series.base is not None:
            text += f"\n({fmt_delta(metric, best.value - series.base.value, series.base.value)} vs zero-shot)"
        steps = [p.step for p in series.checkpoints]
        # keep the label inside the axes at either end of the sweep
        ha = "left" if len(steps) > 1 and best.step == min(steps) else "right" if len(steps) > 1 and best.step == max(steps) else "center"
        ax.annotate(
            f"{best.label}: {text}",
            xy=(best.step, best.value * s),
            xytext={"left": (-8, 18), "right": (8, 18)}.get(ha, (0, 18)),
            textcoords="offset points",
            ha=ha,
            va="bottom",
            fontsize=9,
            color=_BEST_COLOR,
            fontweight="bold",
            bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=_BEST_COLOR, alpha=0.9),
        )
    if metric == "vqa_accuracy":
        ax.axhline(100 * CHANCE_4_CHOICES, color="#bbbbbb", ls=":", lw=1.2, label="chance (4 choices): 25%")
    values = ys + ([series.base.value * s] if series.base else []) + ([100 * CHANCE_4_CHOICES] if metric == "vqa_accuracy" else [])
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.2, 0.01 if metric == "bleu" else 2.0)
    ax.set_ylim(max(lo - pad, 0.0), hi + 3 * pad)  # room above for the best-checkpoint label
    ax.margins(x=0.08)
    if not series.checkpoints:
        ax.text(0.5, 0.5, "no checkpoints evaluated yet", transform=ax.transAxes, ha="center", color="gray")
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel(Y_LABELS[metric])
    ax.set_title("overall" if metric == "vqa_accuracy" else METRIC_TITLES[metric])
    ax.grid(True, alpha=0.3)
    if xs:
        ax.set_xticks(xs)
        ax.tick_params(axis="x", labelrotation=45 if len(xs) > 8 else 0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, framealpha=0.9)


def _draw_categories(ax, series: Series) -> None:
    import matplotlib

    cats = [c for c in CATEGORIES if any(c in p.per_category for p in series.checkpoints + ([series.base] if series.base else []))]
    extra = sorted({c for p in series.checkpoints for c in p.per_category} - set(cats))
    cats += extra
    cmap = matplotlib.colormaps["tab10"]
    xs = [p.step for p in series.checkpoints]
    for i, cat in enumerate(cats):
        color = cmap(i % 10)
        pts = [(p.step, p.per_category[cat] * 100) for p in series.checkpoints if cat in p.per_category]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "-o", color=color, ms=4, lw=1.5, label=cat)
        if series.base is not None and cat in series.base.per_category:
            ax.axhline(series.base.per_category[cat] * 100, color=color, ls=":", lw=1.2,
                       label=None if pts else f"{cat} (zero-shot)")
    allv = [v * 100 for p in series.checkpoints + ([series.base] if series.base else []) for v in p.per_category.values()]
    ax.set_ylim(max(0.0, min(allv, default=0) - 8), min(100.0, max(allv, default=100) + 8) + 2)
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("accuracy [%]")
    ax.set_title("per category (dotted: zero-shot)")
    ax.grid(True, alpha=0.3)
    if xs:
        ax.set_xticks(xs)
        ax.tick_params(axis="x", labelrotation=45 if len(xs) > 8 else 0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, framealpha=0.9)


def render(series: Series, out: str | Path) -> Path:
    """Draw `series` to `out` (.png or .svg) with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg"):
        raise PlotError(f"{out}: the output must end in .png or .svg")
    two = series.metric == "vqa_accuracy"
    fig, axes = plt.subplots(
        1, 2 if two else 1, figsize=(15 if two else 8, 5.8), squeeze=False,
        gridspec_kw={"width_ratios": [1, 1]} if two else None,
    )
    _draw_main(axes[0][0], series)
    if two:
        _draw_categories(axes[0][1], series)
    fig.suptitle(
        f"{series.model} on {series.dataset}: {METRIC_TITLES[series.metric]}\n"
        "fine-tuned checkpoints vs the zero-shot model",
        fontsize=12,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110, format=out.suffix.lower().lstrip("."))
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_metric(
    outputs_dir: str | Path,
    dataset: str,
    base_model: str,
    metric: str,
    out: str | Path | None = None,
) -> Path:
    """Plot `metric` of `base_model`'s checkpoints against its zero-shot value; returns the file.

    Default output: `<outputs_dir>/plots/<base_model>_<dataset>_<metric>.png`.
    """
    series = collect_series(outputs_dir, dataset, base_model, metric)
    if out is None:
        out = Path(outputs_dir) / "plots" / f"{base_model}_{dataset}_{metric}.png"
    return render(series, out)


# ----------------------------------------------------------------------------- CLI


def main(
    dataset: str = typer.Option("AV_CAPTION", "--dataset", help="Dataset directory name (e.g. AV_CAPTION)."),
    base_model: str = typer.Option(..., "--base-model", help="Model directory name (e.g. Cosmos-Reason2-8B)."),
    metric: str = typer.Option(..., "--metric", help="bleu | vqa_accuracy | lingoqa"),
    outputs_dir: Path = typer.Option(Path("outputs"), "--outputs-dir", help="Inference outputs root."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output file, .png (default) or .svg. Default: <outputs-dir>/plots/<model>_<dataset>_<metric>.png"
    ),
) -> None:
    """Plot a metric against the checkpoint step, the zero-shot base as a horizontal reference.

    For `--metric lingoqa` the LingoQA metrics are read from the LINGOQA dataset directory when the
    `--dataset` directory has none.
    """

    try:
        series = collect_series(outputs_dir, dataset, base_model, metric)
        target = out or (outputs_dir / "plots" / f"{base_model}_{dataset}_{metric}.png")
        path = render(series, target)
    except (PlotError, RecordError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    best = series.best
    line = f"wrote {path}"
    if series.base is not None:
        line += f"; zero-shot {fmt_value(metric, series.base.value)}"
    if best is not None:
        line += f"; best {best.label} {fmt_value(metric, best.value)}"
    typer.echo(line)
