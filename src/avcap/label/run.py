"""`avcap label`: a scenario record for every clip of a clip set — the caption, the attribute answers,
a thumbnail and a preview strip, the clip's metadata and what labelled it.

    avcap label --clips FOLDER|MANIFEST|DATASET --out DIR [--model-name NAME] [--checkpoint PATH]
                [--config FILE] [--engine transformers|openai|vllm] [--limit N] [--batch-size B]
                [--retry-errors] [--runner single|ray [--ray-address ADDR] [--actors N] [--batch-clips K]
                [--max-tries T]]

It is `avcap infer` with two tasks on a `clips` dataset (avcap.eval.tasks: `caption`, and
`attributes` — the pool's questions, asked about each clip in a row so the engine prefills the
video once for all of them): the same runner, records, settings check and resume. Then every clip
whose requests are all answered gets its scenario record (avcap.scenarios.record), assembled into
DIR/scenarios.jsonl (replaced atomically; a record whose labels did not change keeps its
`labelled_at`, so `avcap index` sees only real changes). A clip that cannot be read is an error
record naming the reason; the run goes on. DIR/questions.json holds the questions; a rerun with
other questions is refused (use another --out).

`--runner ray` runs the same inference loop and record assembly on Ray Data, one engine per actor,
and writes the records as partitions DIR/scenarios/part-*.jsonl (avcap.label.ray_runner).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from avcap.core.config import ConfigError, Dataset, RecipeConfig, load_config
from avcap.core.records import iter_records, read_json, write_json_atomic, write_records_atomic
from avcap.eval.infer import InferError, build_plan, collect, run_inference
from avcap.eval.tasks import TaskError, attribute_questions
from avcap.label.assemble import clip_record, labeller, question_set, same_labels
from avcap.scenarios.record import PARTITIONS_DIR, QUESTIONS_FILE, RECORDS_FILE, QuestionSet

TASKS = ["caption", "attributes"]
CLIPS_DATASET = "CLIPS"  # the dataset name a --clips folder or manifest is filed under in run.json


class LabelError(ValueError):
    """A problem the user can fix (bad --clips, changed questions): one line naming the file or flag."""


def clip_dataset(cfg: RecipeConfig, clips: str) -> tuple[RecipeConfig, str]:
    """(config with the clip set, its dataset name): a dataset named in the config (a `clips` one,
    or an av_caption dataset's videos/), else a folder or manifest path."""
    if clips in cfg.avcap.datasets:
        ds = cfg.avcap.datasets[clips]
        if ds.kind == "clips":
            return cfg, clips
        if ds.kind != "av_caption":
            raise LabelError(f"--clips: dataset {clips} is a {ds.kind} dataset; label a clips or av_caption one")
        entry = Dataset(kind="clips", root=str(cfg.resolve(ds.root) / "videos"))
    else:
        path = Path(clips).expanduser().resolve()
        if path.is_dir():
            entry = Dataset(kind="clips", root=str(path))
        elif path.is_file():
            entry = Dataset(kind="clips", root=str(path.parent), manifest=str(path))
        else:
            known = ", ".join(sorted(cfg.avcap.datasets))
            raise LabelError(f"--clips: {clips} is neither a folder, a manifest file nor a dataset of the config ({known})")
    name = clips if clips in cfg.avcap.datasets else CLIPS_DATASET
    datasets = {**cfg.avcap.datasets, name: entry}
    return cfg.model_copy(update={"avcap": cfg.avcap.model_copy(update={"datasets": datasets})}), name


def check_questions(out: Path, questions: QuestionSet) -> None:
    """The clips of one output directory are all asked the same questions."""
    path = out / QUESTIONS_FILE
    if not path.is_file():
        return
    old = read_json(path)
    new = questions.model_dump(mode="json", by_alias=True)
    if old != new:
        before = {a["question_id"]: a for a in (old.get("attributes") or [])} if isinstance(old, dict) else {}
        after = {a["question_id"]: a for a in new["attributes"]}
        diff = [f"{what} {', '.join(ids)}" for what, ids in (
            ("added", sorted(set(after) - set(before))), ("removed", sorted(set(before) - set(after))),
            ("changed", sorted(q for q in set(after) & set(before) if before[q] != after[q]))) if ids]
        raise LabelError(f"{path}: these clips were asked other attribute questions ({'; '.join(diff) or 'order or pool'}); "
                         "use another --out, or remove the directory")


def label_clips(
    cfg: RecipeConfig,
    *,
    clips: str,
    out: Path,
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    engine_name: Optional[str] = None,
    limit: Optional[int] = None,
    batch_size: Optional[int] = None,
    retry_errors: bool = False,
    progress: bool = True,
    log=None,
    runner: str = "single",
    ray: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Label the clip set into `out`; returns a summary (clips, labelled, errors, pending, seconds).
    `runner="ray"`: on Ray Data (avcap.label.ray_runner; `ray`: its options)."""
    log = log or (lambda msg: typer.echo(msg, err=True))
    t0 = time.perf_counter()
    cfg, dataset = clip_dataset(cfg, clips)
    try:
        pool, questions = attribute_questions(cfg)
    except TaskError as exc:
        raise LabelError(str(exc)) from None
    qset = question_set(pool.source, questions)
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    check_questions(out, qset)
    write_json_atomic(out / QUESTIONS_FILE, qset.model_dump(mode="json", by_alias=True))
    if runner == "ray":
        from avcap.label.ray_runner import label_on_ray  # Ray (an optional extra) loads only for --runner ray

        summary = label_on_ray(cfg, dataset, out, qset, model_name=model_name, checkpoint=checkpoint,
                               engine_name=engine_name, limit=limit, batch_size=batch_size, retry_errors=retry_errors,
                               progress=progress, log=log, **(ray or {}))
    else:
        if any((out / PARTITIONS_DIR).glob("*.jsonl")):
            raise LabelError(f"{out / PARTITIONS_DIR}: these clips were labelled with --runner ray; go on with it, "
                             "or use another --out")
        run_inference(cfg, dataset=dataset, model_name=model_name, checkpoint=checkpoint, engine_name=engine_name,
                      tasks=TASKS, limit=limit, batch_size=batch_size, retry_errors=retry_errors, progress=progress,
                      log=log, out_dir=out, title="avcap label")
        summary = assemble(cfg, dataset, out, qset, limit=limit, log=log)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    rate = summary["clips"] / summary["seconds"] if summary["seconds"] else 0.0
    log(f"  scenarios: {summary['labelled']} labelled, {summary['errors']} error(s), {summary['pending']} pending "
        f"-> {summary['records']} ({summary['seconds']:.1f} s, {rate:.2f} clips/s)")
    return summary


def assemble(cfg: RecipeConfig, dataset: str, out: Path, qset: QuestionSet, *, limit: Optional[int], log) -> dict[str, Any]:
    """Write scenarios.jsonl from the run's records (and the pictures that are missing)."""
    plan = build_plan(cfg, dataset, TASKS, limit)
    captions = collect(out, "caption")
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    for key, rec in collect(out, "attributes").items():
        answers.setdefault(str(rec["clip_id"]), {})[str(rec["question_id"])] = rec
    old = {str(r.get("clip_id")): r for r in iter_records(out / RECORDS_FILE)}
    who = labeller(read_json(out / "run.json"))
    paths = {it.unit: Path(it.video) for it in plan.items["caption"]}
    lc = cfg.avcap.label
    records, errors, pending, picture_failures = [], 0, 0, 0
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for cid in plan.units:
        caption = captions.get(cid)
        if caption is None or len(answers.get(cid, {})) < len(qset.attributes):
            pending += 1
            continue
        rec, no_pictures = clip_record(cid, paths[cid], caption, answers[cid], qset, who, now, out / "thumbs", lc, log)
        picture_failures += no_pictures
        if cid in old and same_labels(old[cid], rec):
            rec["labelled_at"] = old[cid].get("labelled_at", now)
        errors += rec["error"] is not None
        records.append(rec)
    write_records_atomic(out / RECORDS_FILE, records)
    return {"clips": len(plan.units), "labelled": len(records) - errors, "errors": errors, "pending": pending,
            "picture_failures": picture_failures, "records": str(out / RECORDS_FILE)}


def main(
    clips: str = typer.Option(..., "--clips", help="A folder of clips, a manifest (.txt/.jsonl/.csv) or a dataset of the config."),
    out: Path = typer.Option(..., "--out", help="Output directory: scenarios.jsonl, questions.json, thumbs/, run records."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name the labeller is recorded under (default \\[avcap] model_name)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="HF dir or an avcap/cosmos-rl checkpoint; omitted: the base model."),
    config: Optional[Path] = typer.Option(None, "--config", help="Recipe TOML (default: built-in defaults)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="transformers | openai | vllm (default \\[avcap.engine] name)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N clips, sorted by id."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Requests per model call (default \\[avcap.engine] batch_size)."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Retry requests that have error records."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    runner: str = typer.Option("single", "--runner", help="single (this process) | ray (Ray Data: pip install 'avcap[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="--runner ray: a Ray cluster (default RAY_ADDRESS, else a local Ray)."),
    actors: Optional[int] = typer.Option(None, "--actors", help="--runner ray: engines, one per actor (default: the cluster's GPUs, else 1-2 CPU actors)."),
    batch_clips: Optional[int] = typer.Option(None, "--batch-clips", help="--runner ray: clips per actor call (default: 4 engine batches, at least 16)."),
    max_tries: int = typer.Option(3, "--max-tries", help="--runner ray: tries of a clip whose worker dies or fails before it is an error record."),
    partition_clips: int = typer.Option(512, "--partition-clips", min=1, help="--runner ray: records per partition file (one is also written every 5 s)."),
) -> None:
    """Caption and attribute answers for every clip, as scenario records (resumable)."""
    try:
        cfg = load_config(config)
        if engine is not None and engine not in ("transformers", "openai", "vllm"):
            raise LabelError(f"--engine: {engine!r} is not one of transformers, openai, vllm")
        if runner not in ("single", "ray"):
            raise LabelError(f"--runner: {runner!r} is not one of single, ray")
        ray = {"address": ray_address, "actors": actors, "batch_clips": batch_clips, "max_tries": max_tries,
               "partition_clips": partition_clips}
        label_clips(cfg, clips=clips, out=out, model_name=model_name, checkpoint=checkpoint, engine_name=engine,
                    limit=limit, batch_size=batch_size, retry_errors=retry_errors, progress=not no_progress,
                    runner=runner, ray=ray if runner == "ray" else None)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    except (LabelError, InferError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
