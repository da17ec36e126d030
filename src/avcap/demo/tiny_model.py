"""The embedded default's model (`avcap tiny-model`): a tiny Qwen3-VL (`avcap.models.qwen3_vl.tiny`)
whose tokenizer also learns the synthetic world's text, so captions and annotations tokenize compactly."""

from __future__ import annotations

from pathlib import Path

import typer

from avcap.demo.synth import text_corpus
from avcap.models.qwen3_vl import tiny
from avcap.models.qwen3_vl.tiny import SIZES, count_parameters

CORPUS_SCENES = 50  # the synthetic world's vocabulary is closed: 50 scenes give ~98% of the BPE vocabulary 400 give


def default_corpus(seed: int = 0) -> list[str]:
    """The synthetic world's texts (captions, annotation JSONs, LingoQA QA of sampled scenes) and
    the built-in corpus."""
    return list(text_corpus(n_scenes=CORPUS_SCENES, seed=seed)) + tiny.builtin_corpus(seed)


def build_tiny_model(out, *, size: str = "tiny", seed: int = 0) -> Path:
    """`avcap.models.qwen3_vl.tiny.build_tiny_model` with the default corpus."""
    return tiny.build_tiny_model(out, size=size, seed=seed, corpus=default_corpus(seed))


def main(
    out: Path = typer.Option(..., "--out", help="Directory to write the checkpoint to."),
    size: str = typer.Option("tiny", "--size", help="tiny | small"),
    seed: int = typer.Option(0, "--seed", help="Seed for the weights and the corpus."),
) -> None:
    """Build a tiny Qwen3-VL (random weights, local tokenizer) as a save_pretrained directory."""
    if size not in SIZES:
        typer.echo(f"--size: unknown size {size!r}; choose one of {', '.join(SIZES)}", err=True)
        raise typer.Exit(2)
    if out.exists() and not out.is_dir():
        typer.echo(f"{out}: exists and is not a directory", err=True)
        raise typer.Exit(2)
    path = build_tiny_model(out, size=size, seed=seed)
    typer.echo(f"wrote {path} ({size}, {count_parameters(path):,} parameters)")
