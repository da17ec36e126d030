"""`avcap curate --config FILE [--out DATASET_ROOT]` and `avcap curate preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from avcap.core.config import ConfigError, load_config
from avcap.data.preview_grid import preview
from avcap.data.sources import CurateError, curate
from avcap.video import VideoError

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Turn raw sources into training conversations (DATASET_ROOT/<subdirectory>/meta.json + "
    "conversations/), list every unusable input; `preview` renders the 10x10 sample grid.",
)


def _fail(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


@app.callback()
def curate_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe TOML with \\[avcap.curate.sources.<subdirectory>] tables."),
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset root (default: \\[custom.dataset] dataset_root)."),
    workers: int = typer.Option(8, "--workers", min=1, help="Inputs checked in parallel."),
) -> None:
    """Curate every configured source into DATASET_ROOT (idempotent; reruns reuse finished inputs)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        typer.echo(ctx.get_help())
        _fail(["avcap curate needs --config FILE (or a subcommand: preview)"])

    try:
        cfg = load_config(config)
        curate(cfg, out, workers=workers, echo=typer.echo)
    except ConfigError as exc:
        _fail(exc.problems)
    except CurateError as exc:
        _fail([f"{config}: {exc}"])


@app.command("preview")
def preview_cmd(
    dataset_root: Path = typer.Option(..., "--dataset-root", help="A curated dataset root (subdirectories with meta.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where preview.png / preview.mp4 go (default: the dataset root)."),
    seed: int = typer.Option(0, "--seed", help="Which random 100 samples."),
    grid: int = typer.Option(10, "--grid", min=1, help="Tiles per side."),
    frames: int = typer.Option(16, "--frames", min=2, help="Frames per clip in the MP4."),
    fps: float = typer.Option(4.0, "--fps", min=0.1, help="Frame rate of the MP4."),
) -> None:
    """Render a grid of random training clips labelled with their source: PNG (middle frames) and MP4."""

    try:
        png, mp4 = preview(dataset_root, out, seed=seed, grid=grid, frames=frames, fps=fps)
    except (CurateError, VideoError) as exc:
        _fail([str(exc)])
    typer.echo(f"wrote {png}")
    typer.echo(f"wrote {mp4}")
