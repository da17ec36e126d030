"""`avcap video inspect PATH`: how a clip is sampled, resized and tokenized (nothing is decoded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from avcap import video as V

app = typer.Typer(no_args_is_help=True, help="Inspect how a video is sampled and tokenized.")


@app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="Video file, or a directory of JPEG/PNG frames."),
    nframes: Optional[int] = typer.Option(None, "--nframes", help="Frames to sample (default 16, the recipe's)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Sample at this rate instead of --nframes."),
    min_pixels: int = typer.Option(3136, "--min-pixels", help="Per-frame minimum pixels."),
    max_pixels: int = typer.Option(360000, "--max-pixels", help="Per-frame maximum pixels (the recipe's 360000)."),
    total_pixels: Optional[float] = typer.Option(None, "--total-pixels", help="Pixel budget for the whole clip."),
    min_frames: int = typer.Option(4, "--min-frames", help="With --fps: fewest frames."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="With --fps: most frames (default min(768, clip))."),
    patch_size: int = typer.Option(16, "--patch-size", help="16 (Qwen3-VL, Cosmos-Reason2) or 14 (Qwen2.5-VL, Cosmos-Reason1)."),
    source_fps: Optional[float] = typer.Option(None, "--source-fps", help="Frame rate of a frame directory without fps.txt (default 1)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print the sampled frame indices, their timestamps, the resized size and the video token count."""

    if nframes is not None and fps is not None:
        typer.echo(f"error: {path}: use only one of --nframes or --fps", err=True)
        raise typer.Exit(2)
    if patch_size not in (14, 16):
        typer.echo(f"error: --patch-size must be 16 or 14, got {patch_size}", err=True)
        raise typer.Exit(2)
    if nframes is None and fps is None:
        nframes = 16
    try:
        info = V.probe(path, source_fps=source_fps)
        plan = V.plan_sampling(info, nframes=nframes, fps=fps, min_pixels=min_pixels, max_pixels=max_pixels,
                               total_pixels=total_pixels, factor=patch_size * V.SPATIAL_MERGE_SIZE,
                               min_frames=min_frames, max_frames=max_frames)
    except ValueError as exc:  # VideoError included
        typer.echo(f"error: {exc}" if isinstance(exc, V.VideoError) else f"error: {path}: {exc}", err=True)
        raise typer.Exit(2)
    tokens = V.num_video_tokens(len(plan.frame_indices), plan.resized_height, plan.resized_width, patch_size=patch_size)
    timestamps = [i / info.fps for i in plan.frame_indices]
    if json_out:
        typer.echo(json.dumps({
            "path": str(path),
            "frame_indices": plan.frame_indices,
            "timestamps": timestamps,
            "resized_height": plan.resized_height,
            "resized_width": plan.resized_width,
            "num_video_tokens": tokens,
            "fps": info.fps,
            "total_frames": info.total_frames,
            "height": info.height,
            "width": info.width,
            "duration": info.duration,
            "notes": plan.notes,
        }))
        return
    typer.echo(f"{path}: {info.total_frames} frames, {info.fps:g} fps, {info.duration:.2f} s, {info.width}x{info.height} ({info.codec})")
    typer.echo(f"sampled {len(plan.frame_indices)} frames: {plan.frame_indices}")
    typer.echo("timestamps (s): " + ", ".join(f"{t:.2f}" for t in timestamps))
    typer.echo(f"resized: {plan.resized_width}x{plan.resized_height} (h {plan.resized_height}, w {plan.resized_width})")
    typer.echo(f"video tokens: {tokens} (patch {patch_size}, merge 2, temporal patch 2)")
    for note in plan.notes:
        typer.echo(f"note: {note}")
