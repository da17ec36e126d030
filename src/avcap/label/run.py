"""`avcap label`: a scenario record for every clip of a clip set — the caption, the attribute answers,
a thumbnail and a preview strip, the clip's metadata and what labelled it.

    avcap label --clips FOLDER|MANIFEST|DATASET --out DIR [--model-name NAME] [--checkpoint PATH]
                [--config FILE] [--engine transformers|openai|vllm] [--limit N] [--batch-size B]
                [--retry-errors]

It is `avcap infer` with two tasks on a `clips` dataset (avcap.eval.tasks: `caption`, and
`attributes` — the pool's questions, asked about each clip in a row so the engine prefills the
video once for all of them): the same runner, records, settings check and resume. Then every clip
whose requests are all answered gets its scenario record (avcap.scenarios.record), assembled into
DIR/scenarios.jsonl (replaced atomically; a record whose labels did not change keeps its
`labelled_at`, so `avcap index` sees only real changes). A clip that cannot be read is an error
record naming the reason; the run goes on. DIR/questions.json holds the questions; a rerun with
other questions is refused (use another --out).
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
from avcap.label.assemble import clip_info, labeller, question_set, same_labels, scenario
from avcap.label.thumbs import picture_stem, write_pictures
from avcap.scenarios.record import QUESTIONS_FILE, RECORDS_FILE, QuestionSet

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
) -> dict[str, Any]:
    """Label the clip set into `out`; returns a summary (clips, labelled, errors, pending, seconds)."""
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
    run_inference(cfg, dataset=dataset, model_name=model_name, checkpoint=checkpoint, engine_name=engine_name,
                  tasks=TASKS, limit=limit, batch_size=batch_size, retry_errors=retry_errors, progress=progress,
                  log=log, out_dir=out, title="avcap label")
    summary = assemble(cfg, dataset, out, qset, limit=limit, log=log)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    rate = summary["clips"] / summary["seconds"] if summary["seconds"] else 0.0
    log(f"  scenarios: {summary['labelled']} labelled, {summary['errors']} error(s), {summary['pending']} pending "
        f"-> {out / RECORDS_FILE} ({summary['seconds']:.1f} s, {rate:.2f} clips/s)")
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
        source = paths[cid]
        info, probe_error = clip_info(source)
        pictures: tuple[Optional[str], Optional[str]] = (None, None)
        if probe_error is None:
            stem = picture_stem(cid)
            thumb, strip = out / "thumbs" / f"{stem}.jpg", out / "thumbs" / f"{stem}.strip.jpg"
            try:
                if not (thumb.is_file() and strip.is_file()):
                    write_pictures(source, thumb, strip, thumbnail_width=lc.thumbnail_width,
                                   preview_frames=lc.preview_frames, preview_height=lc.preview_height)
                pictures = (str(thumb), str(strip))
            except Exception as exc:  # a clip the model read but the picture decode cannot: labels stay
                picture_failures += 1
                log(f"  no pictures: {' '.join(str(exc).split())[:300]}")
        rec = scenario(cid, source, caption, answers[cid], qset, info, probe_error, who, now, pictures).to_json()
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
) -> None:
    """Caption and attribute answers for every clip, as scenario records (resumable)."""
    try:
        cfg = load_config(config)
        if engine is not None and engine not in ("transformers", "openai", "vllm"):
            raise LabelError(f"--engine: {engine!r} is not one of transformers, openai, vllm")
        label_clips(cfg, clips=clips, out=out, model_name=model_name, checkpoint=checkpoint, engine_name=engine,
                    limit=limit, batch_size=batch_size, retry_errors=retry_errors, progress=not no_progress)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    except (LabelError, InferError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
