"""`avcap bench build|review|apply|stats|pool`.

The steps get the synthetic world's truth (`avcap.demo.truth.SyntheticWorld`) for answerers of
kind "truth", the review file's world_truth column, `apply --auto` and the stats; on a dataset
without world/ records it simply has nothing to say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from avcap.bench.build import build_benchmark
from avcap.bench.errors import BenchError
from avcap.bench.pool import PoolError, check_pool_fits, load_pool
from avcap.bench.review import DECISIONS, apply_reviews, write_review_file
from avcap.bench.stats import bench_stats, format_stats
from avcap.core.config import ConfigError, load_config
from avcap.demo.truth import SyntheticWorld

app = typer.Typer(no_args_is_help=True, help="Build, review and summarise the AV-VQA benchmark.")

DatasetOpt = typer.Option(None, "--dataset", "-d", help="Evaluation dataset directory (videos/, annotations/, world/). "
                          "Default: [avcap.datasets.AV_CAPTION] root of the config.")
ConfigOpt = typer.Option(None, "--config", "-c", help="Recipe TOML ([avcap.bench], [avcap.prompts], engines).")


def _fail(problems: list[str]) -> None:
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def _dataset(config: Optional[Path], dataset: Optional[Path]) -> Path:
    if dataset is not None:
        return dataset
    cfg = load_config(config)
    return cfg.resolve(cfg.dataset("AV_CAPTION").root)


def _guard(fn):
    try:
        return fn()
    except (BenchError, PoolError, ConfigError) as exc:
        _fail(exc.problems)


@app.command("build")
def build(
    config: Optional[Path] = ConfigOpt,
    dataset: Optional[Path] = DatasetOpt,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N videos (sorted by id)."),
) -> None:
    """Select 12 questions per video, answer each with both answerers, queue disagreements (resumable)."""

    def run():
        cfg = load_config(config)
        return build_benchmark(cfg, _dataset(config, dataset), limit=limit, world=SyntheticWorld())

    _guard(run)


@app.command("review")
def review(
    dataset: Optional[Path] = DatasetOpt,
    config: Optional[Path] = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Review file (.csv or .jsonl). Default DIR/bench/review.csv."),
    force: bool = typer.Option(False, "--force", help="Overwrite a review file that already holds decisions."),
) -> None:
    """Write the review queue as a file to edit: fill each row's `decision` column."""

    path, n = _guard(lambda: write_review_file(_dataset(config, dataset), out, force=force, world=SyntheticWorld()))
    typer.echo(f"{n} pair(s) to review -> {path}")
    if n:
        typer.echo(f"fill the decision column ({DECISIONS}), then: avcap bench apply --reviews {path}")


@app.command("apply")
def apply(
    dataset: Optional[Path] = DatasetOpt,
    config: Optional[Path] = ConfigOpt,
    reviews: Optional[Path] = typer.Option(None, "--reviews", "-r", help="The filled review file."),
    auto: bool = typer.Option(False, "--auto", help="Decide every queued pair from the synthetic world's truth "
                              "(set:X; recorded as by auto:world-truth)."),
) -> None:
    """Apply all decisions at once and write DIR/vqa.jsonl (nothing is written if any line is bad)."""

    res = _guard(lambda: apply_reviews(_dataset(config, dataset), reviews, auto=auto, world=SyntheticWorld()))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(res["outcomes"].items())) or "none"
    how = f" (auto: world truth, decisions in {res['reviews']})" if auto else ""
    typer.echo(f"{res['pairs']} verified pairs -> {res['vqa']}; {res['queued']} reviewed: {outcomes}{how}")


@app.command("stats")
def stats(
    dataset: Optional[Path] = DatasetOpt,
    config: Optional[Path] = ConfigOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON (also written to DIR/bench/stats.json)."),
) -> None:
    """Pairs, videos, per-category counts and agreement, review outcomes, removed questions."""

    s = _guard(lambda: bench_stats(_dataset(config, dataset), world=SyntheticWorld()))
    typer.echo(json.dumps(s, indent=2) if json_out else format_stats(s))


@app.command("pool")
def pool(
    config: Optional[Path] = ConfigOpt,
    file: Optional[Path] = typer.Option(None, "--file", help="A pool file to check (default: the config's, else the packaged pool)."),
) -> None:
    """Validate a question pool and print its per-category summary."""

    def run():
        cfg = load_config(config)
        b = cfg.avcap.bench
        p = load_pool(file if file else (cfg.resolve(b.pool) if b.pool else None))
        check_pool_fits(p, b.questions_per_video, b.required_per_video)
        return p

    p = _guard(run)
    typer.echo(f"{p.source}: {len(p.questions)} questions, {len(p.required)} required")
    for cat, v in p.summary().items():
        typer.echo(f"  {cat:<28}{v['questions']:>4}  ({v['required']} required)")
