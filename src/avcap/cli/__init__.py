"""`avcap` — one verb per recipe step.

Each step module owns its command: a function for a single verb, a `typer.Typer` app for a group
of sub-verbs. Step modules import heavy libraries (torch, transformers, av) inside functions so
that `avcap --help` stays fast. A step whose module cannot be imported still shows up and says why.
"""

from __future__ import annotations

import importlib
import sys

import typer

from avcap.core.records import is_user_fs_error, os_error_line

app = typer.Typer(
    name="avcap",
    help="Post-train and evaluate video VLMs as autonomous-vehicle video captioners "
    "(the Cosmos-Reason2 AV recipe, end to end).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# verb -> "module:attribute"; an attribute that is a typer.Typer becomes a group of sub-verbs
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("avcap.demo.run:main", "Run the whole recipe on the embedded default, offline, on CPU."),
    "config": ("avcap.cli.config:app", "Check and print recipe configs."),
    "video": ("avcap.cli.video:app", "Inspect how a video is sampled and tokenized."),
    "synth": ("avcap.demo.synth.cli:main", "Render the procedural dash-cam world and its annotations."),
    "tiny-model": ("avcap.demo.tiny_model:main", "Build a tiny Qwen3-VL (random weights, local tokenizer)."),
    "bench": ("avcap.cli.bench:app", "Build, review and summarise the AV-VQA benchmark."),
    "infer": ("avcap.eval.infer:main", "Captions, MCQ and LingoQA answers for a model or checkpoint."),
    "score": ("avcap.eval.score:main", "BLEU, MCQ-VQA and LingoQA metrics for every output set."),
    "curate": ("avcap.data.cli:app", "Turn raw sources into the blended training set."),
    "train": ("avcap.train.loop:main", "Supervised fine-tuning from the recipe TOML."),
    "plot": ("avcap.report.plot:main", "Plot a metric across checkpoints against the zero-shot base."),
    "report": ("avcap.report.markdown:main", "Markdown report of every metric, model and checkpoint."),
    "index": ("avcap.scenarios.cli:index", "Build or update a scenario database from scenario records."),
    "search": ("avcap.scenarios.cli:search", "Search a scenario database: free text, attribute filters, SQL."),
    "label": ("avcap.label.run:main", "Caption and attribute answers for every clip of a fleet, as scenario records."),
    "serve": ("avcap.serve.cli:main", "Search the scenario database and review the benchmark in the browser."),
}


def _unavailable(verb: str, reason: str):
    def cmd(ctx: typer.Context) -> None:
        typer.echo(f"avcap {verb} is not available in this build: {reason}", err=True)
        raise typer.Exit(2)

    return cmd


def _register() -> None:
    for verb, (target, help_text) in VERBS.items():
        module_name, attr = target.split(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # a step missing or broken must not take the other verbs down
            reason = f"{type(exc).__name__}: {exc}"
            app.command(
                verb,
                help=f"{help_text} [unavailable: {reason}]",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            )(_unavailable(verb, reason))
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=verb, help=help_text)
        else:
            app.command(verb, help=help_text)(obj)


_register()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if not is_user_fs_error(exc):
            raise
        typer.echo(f"error: {os_error_line(exc)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
