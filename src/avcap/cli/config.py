"""`avcap config check FILE`: print the normalized config, or the problems (exit 2)."""

from __future__ import annotations

from pathlib import Path

import typer

from avcap.core.config import ConfigError, load_config, to_toml

app = typer.Typer(no_args_is_help=True, help="Check and print recipe configs.")


@app.command("check")
def check(
    file: Path = typer.Argument(..., help="Recipe TOML (cosmos-rl tables plus [avcap.*])."),
    json_out: bool = typer.Option(False, "--json", help="Print the normalized config as JSON."),
) -> None:
    """Validate FILE; print it normalized (defaults filled in) and exit 0, or list problems and exit 2."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        typer.echo(f"{len(exc.problems)} problem(s) in {file}", err=True)
        raise typer.Exit(2)
    if json_out:
        typer.echo(cfg.model_dump_json(indent=2))
    else:
        typer.echo(f"# {file}: OK (normalized; defaults filled in)")
        typer.echo(to_toml(cfg))
    w = cfg.custom.dataset.normalized_weights()
    mix = ", ".join(f"{s} {x:.0%}" for s, x in zip(cfg.custom.dataset.subdirectories, w))
    typer.echo(
        f"# blend: {mix}; optimizer step = {cfg.train.train_batch_per_replica} samples/rank in "
        f"{cfg.train.grad_accumulation} micro-batches of {cfg.train.train_policy.mini_batch}",
        err=True,
    )


@app.command("show-default")
def show_default() -> None:
    """Print the default config (every key avcap knows, with its default)."""
    typer.echo(to_toml(load_config(None)))
