"""`avcap score`: metrics.json for every inference output set under an outputs directory.

    avcap score --outputs-dir DIR [--dataset NAME ...] [--config FILE] [--lingoqa-judge PATH]
                [--lingoqa-llm-judge MODEL]

Walks `DIR/<model>/<checkpoint-label>/<dataset>/` (docs/formats.md, "Inference outputs"), computes
what the files there allow, writes `metrics.json` beside them (atomically) and prints a table:

- `bleu` from caption.jsonl against the reference captions (the eval dataset's captions.jsonl, else
  each annotation's safety_analysis; the dataset is found through run.json's dataset_root, else the
  config's [avcap.datasets]) — coco-caption BLEU-4, sacrebleu beside it;
- `vqa_accuracy` (mode direct) from mcq.jsonl;
- `vqa_accuracy_caption_mode` when [avcap.metrics] caption_mode_answerer is set: that engine answers
  the dataset's vqa.jsonl questions from each generated caption alone (cached, resumable, in
  mcq_caption_mode.jsonl);
- `lingoqa` from lingoqa_predictions.csv (or lingoqa.jsonl) and the dataset's parquet with
  Lingo-Judge; when the judge cannot be loaded the other metrics are still written and
  metrics.json says why under `lingoqa_error` (an earlier LingoQA score of the very same
  predictions file is kept);
- `lingoqa_llm_judge` only when asked (--lingoqa-llm-judge MODEL): an LLM's yes/no verdicts, a
  second opinion that is never reported as `lingoqa`.

`coverage` says, per task, how many records each metric is computed over against the keys the
dataset holds for that task (the keys `avcap infer` plans without --limit): scored, errors,
missing, not in the dataset; every printed score says "over n/N". A task whose records are all
errors gets no score (its block has a null value and status "all_failed") and `avcap score` exits 2
with one line naming the outputs file and the first error. `engine` records run.json's engine name
and its frame representation (engine_run.representation), so the report can say when it compares
scores of different engines or representations.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from avcap.bench.pool import PoolError
from avcap.bench.vqa import read_vqa_for
from avcap.core.config import ConfigError, RecipeConfig, load_config
from avcap.core.records import (
    iter_records,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from avcap.eval.metrics.lingoqa import (
    JudgeError,
    LingoJudge,
    LingoQAError,
    load_predictions,
    load_references,
    match_predictions,
)
from avcap.eval.tasks import TASKS, video_files

# Heavy libraries (rich) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

OUTPUT_FILES = ("caption.jsonl", "mcq.jsonl", "lingoqa.jsonl", "lingoqa_predictions.csv")
# metric -> the task (key of metrics.json's `coverage`) whose records it is computed over
METRIC_TASK = {**{t.metric: t.name for t in TASKS.values() if t.metric}, "vqa_accuracy_caption_mode": "mcq_caption_mode"}
METRIC_VALUE_KEY = {"bleu": "value", "vqa_accuracy": "overall", "vqa_accuracy_caption_mode": "overall",
                    "lingoqa": "score"}
TASK_NOUN = {"caption": "captions", "mcq": "questions", "mcq_caption_mode": "questions", "lingoqa": "questions"}
TASK_REQUESTS = {"caption": "caption", "mcq": "MCQ", "mcq_caption_mode": "caption-mode answerer",
                 "lingoqa": "LingoQA"}


class ScoreError(ValueError):
    """A problem the user can fix; one line naming the file or flag."""


# ----------------------------------------------------------------------------- discovery


def find_output_sets(outputs_dir: Path) -> list[Path]:
    """Every directory holding inference outputs: `DIR/<model>/<label>/<dataset>` (or DIR itself,
    or one or two levels of it, e.g. `DIR` = outputs/<model>)."""
    outputs_dir = Path(outputs_dir)
    found: list[Path] = []
    for pattern in ("", "*", "*/*", "*/*/*"):
        for d in sorted(outputs_dir.glob(pattern)) if pattern else [outputs_dir]:
            if d.is_dir() and any((d / f).exists() for f in OUTPUT_FILES) and d not in found:
                found.append(d)
    return found


def _records(path: Path) -> list[dict[str, Any]]:
    """Records of a task file, one per key: the last success, else the last error."""
    best: dict[str, dict[str, Any]] = {}
    for rec in iter_records(path):
        k = str(rec.get("key"))
        if k not in best or not rec.get("error") or best[k].get("error"):
            best[k] = rec
    return list(best.values())


def _one_line(text: Any, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def coverage_block(records: list[tuple[str, Any]], planned: Optional[set[str]], planned_from: Optional[str],
                   file: str) -> dict[str, Any]:
    """`coverage` of one task: `records` are (key, error or None), one per key, in file order;
    `planned` the keys the dataset holds for the task (None when the dataset cannot be read)."""
    ok = {k for k, e in records if not e}
    failed = {k for k, e in records if e}
    have = ok | failed
    cov: dict[str, Any] = {
        "file": file,
        "planned": None if planned is None else len(planned),
        "planned_from": planned_from,
        "records": len(have),
        "scored": len(ok) if planned is None else len(ok & planned),
        "errors": len(failed),
    }
    if planned is not None:
        cov["missing"] = len(planned - have)
        cov["not_in_dataset"] = len(have - planned)
        cov["fraction"] = cov["scored"] / len(planned) if planned else None
    first = next((e for _, e in records if e), None)
    if first:
        cov["first_error"] = _one_line(first)
    if have and not ok:
        cov["status"] = "all_failed"
    elif planned is None:
        cov["status"] = "dataset_unknown"
    else:
        cov["status"] = "complete" if planned and planned <= ok else "partial"
    return cov


def coverage_text(cov: dict[str, Any], noun: str) -> str:
    """'38/40 captions (2 errors)': scored / planned, and what the rest is."""
    planned = cov.get("planned")
    head = f"{cov.get('scored')}/{planned} {noun}" if planned is not None else f"{cov.get('scored')} {noun}"
    extra = []
    n = cov.get("errors") or 0
    if n:
        extra.append(f"{n} error{'s' if n != 1 else ''}")
    if cov.get("missing"):
        extra.append(f"{cov['missing']} missing")
    if cov.get("not_in_dataset"):
        extra.append(f"{cov['not_in_dataset']} not in the dataset")
    if planned is None:
        extra.append("dataset not found: its size is unknown")
    return head + (f" ({', '.join(extra)})" if extra else "")


def _all_failed_block(metric: str, cov: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The block of a metric whose requests all failed: no score (never 0.0), the first reason."""
    return {METRIC_VALUE_KEY[metric]: None, "status": "all_failed", **fields,
            "error": f"all {cov['records']} {TASK_REQUESTS[METRIC_TASK[metric]]} requests failed; "
                     f"first error: {cov.get('first_error')}"}


def engine_summary(run: dict[str, Any]) -> Optional[dict[str, Any]]:
    """run.json's engine name and the representation the engine sent (engine_run), or None."""
    eng = run.get("engine")
    name = eng.get("name") if isinstance(eng, dict) else eng if isinstance(eng, str) else None
    er = run.get("engine_run")
    rep = er.get("representation") if isinstance(er, dict) else None
    if name is None and rep is None:
        return None
    return {"name": name, "representation": rep}


# ----------------------------------------------------------------------------- references


def _dataset_root(run: dict[str, Any], dataset: str, cfg: RecipeConfig) -> Optional[Path]:
    root = run.get("dataset_root")
    if root and Path(root).is_dir():
        return Path(root)
    if dataset in cfg.avcap.datasets:
        p = cfg.resolve(cfg.avcap.datasets[dataset].root)
        if p.is_dir():
            return p
    return None


def reference_captions(root: Path) -> tuple[dict[str, list[str]], str]:
    """video id -> reference caption(s): captions.jsonl (several lines or a `captions` list for one
    video give several references), else annotations/<id>.json safety_analysis."""
    refs: dict[str, list[str]] = {}
    cap = root / "captions.jsonl"
    if cap.is_file():
        for r in iter_records(cap):
            vid = str(r.get("video_id") or r.get("key"))
            texts = r.get("captions") if isinstance(r.get("captions"), list) else [r.get("caption")]
            for t in texts:
                if isinstance(t, str) and t.strip():
                    refs.setdefault(vid, []).append(t)
        return refs, str(cap)
    ann = root / "annotations"
    for p in sorted(ann.glob("*.json")) if ann.is_dir() else []:
        try:
            obj = read_json(p)
        except Exception:
            continue
        sa = obj.get("safety_analysis") if isinstance(obj, dict) else None
        if isinstance(sa, str) and sa.strip():
            refs[p.stem] = [sa]
    return refs, f"{ann}/*.json safety_analysis"


def _dataset_entry(cfg: RecipeConfig, dataset: str, kind: str):
    ds = cfg.avcap.datasets.get(dataset)
    return ds if ds is not None and ds.kind == kind else None


def _planned_videos(root: Optional[Path]) -> tuple[Optional[set[str]], Optional[str]]:
    """The videos `avcap infer` captions (videos/), else those with a reference caption."""
    if root is None:
        return None, None
    videos = video_files(root / "videos")  # the same listing as infer's plan
    if videos:
        return set(videos), str(root / "videos")
    refs, src = reference_captions(root)
    return (set(refs), src) if refs else (None, None)


def _vqa_path(root: Optional[Path], cfg: RecipeConfig, dataset: str) -> Optional[Path]:
    ds = _dataset_entry(cfg, dataset, "av_caption")
    return root / (ds.vqa if ds else "vqa.jsonl") if root else None


def _checked_vqa(cfg: RecipeConfig, vqa: Optional[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """vqa.jsonl's usable records and its problems (`avcap.bench.vqa.read_vqa_for`, as infer reads it)."""
    if vqa is None or not vqa.is_file():
        return [], []
    try:
        return read_vqa_for(cfg, vqa)
    except PoolError as exc:
        raise ScoreError(f"[avcap.bench] pool: {exc}") from None


def _planned_questions(vqa: Optional[Path], usable: list[dict[str, Any]]) -> tuple[Optional[set[str]], Optional[str]]:
    keys = {str(r["key"]) for r in usable}
    return (keys, str(vqa)) if keys else (None, None)


# ----------------------------------------------------------------------------- one output set


class _Judges:
    """Lazily built, shared across output sets: Lingo-Judge and the optional engines."""

    def __init__(self, cfg: RecipeConfig, judge: str, llm_judge_model: Optional[str], log):
        self.cfg, self.judge_source, self.llm_judge_model, self.log = cfg, judge, llm_judge_model, log
        self._judge = None
        self._judge_error: Optional[str] = None
        self._answerer = None
        self._answerer_error: Optional[Exception] = None
        self._llm = None

    def lingo(self):
        if self._judge is None and self._judge_error is None:
            try:
                self._judge = LingoJudge(self.judge_source)
            except JudgeError as exc:
                self._judge_error = str(exc)
        if self._judge is None:
            raise JudgeError(self._judge_error or "judge unavailable")
        return self._judge

    def answerer(self):
        ecfg = self.cfg.avcap.metrics.caption_mode_answerer
        if ecfg is None:
            return None, None
        if self._answerer_error is not None:
            raise self._answerer_error
        if self._answerer is None:
            from avcap.engines import (
                make_engine,  # looked up per call: tests replace avcap.engines.make_engine
            )

            try:
                self._answerer = make_engine(ecfg, vision=self.cfg.eval_vision)
            except Exception as exc:
                self._answerer_error = exc
                raise
        return self._answerer, f"{ecfg.name}:{ecfg.model}" + (" (reasoning)" if ecfg.reasoning else "")

    def llm(self):
        if self._llm is None:
            from avcap.engines import (
                make_engine,  # looked up per call: tests replace avcap.engines.make_engine
            )

            self._llm = make_engine(self.cfg.avcap.engine, vision=self.cfg.eval_vision, model=self.llm_judge_model)
        return self._llm

    def close(self):
        for e in (self._answerer, self._llm):
            if e is not None:
                try:
                    e.close()
                except Exception:
                    pass


def _lingoqa_csv(run_dir: Path) -> Optional[Path]:
    csv_path = run_dir / "lingoqa_predictions.csv"
    if csv_path.is_file():
        return csv_path
    jl = run_dir / "lingoqa.jsonl"
    if jl.is_file():  # build the official file from the records (an error is an empty answer)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["question_id", "segment_id", "answer"])
        for r in _records(jl):
            w.writerow([r.get("question_id"), r.get("segment_id"), (r.get("text") or "").strip()])
        write_text_atomic(csv_path, buf.getvalue())
        return csv_path
    return None


@dataclass
class _ScoreContext:
    """One output set being scored: what every task's scorer reads and writes."""

    run_dir: Path
    cfg: RecipeConfig
    judges: "_Judges"
    log: Any
    dataset: str
    root: Optional[Path]
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, dict[str, Any]] = field(default_factory=dict)
    captions: dict[str, Optional[str]] = field(default_factory=dict)  # video id -> caption text (None: failed)


def _score_captions(ctx: _ScoreContext) -> None:
    """BLEU-4 of caption.jsonl against the dataset's reference captions."""
    run_dir, dataset, root = ctx.run_dir, ctx.dataset, ctx.root
    metrics, notes, coverage = ctx.metrics, ctx.notes, ctx.coverage
    cap_path = run_dir / "caption.jsonl"
    captions = ctx.captions
    caption_errors: set[str] = set()
    if cap_path.is_file():
        cap_records = []
        for r in _records(cap_path):
            vid = str(r.get("video_id") or r.get("key"))
            captions[vid] = None if r.get("error") else r.get("caption_text")
            if r.get("error"):
                caption_errors.add(vid)
            cap_records.append((vid, r.get("error")))
        coverage["caption"] = cov = coverage_block(cap_records, *_planned_videos(root), cap_path.name)
        if cov["status"] == "all_failed":
            metrics["bleu"] = _all_failed_block("bleu", cov, caption_errors=len(caption_errors))
        elif root is None:
            notes.append(f"bleu: no reference captions (dataset {dataset} root not found via run.json or config)")
        else:
            from avcap.eval.metrics.bleu import bleu_report

            refs, ref_source = reference_captions(root)
            ids = sorted(v for v in captions if v in refs)
            if not ids:
                notes.append(f"bleu: none of the {len(captions)} captioned videos has a reference in {ref_source}")
            else:
                block = bleu_report(ids, [captions[v] or "" for v in ids], [refs[v] for v in ids])
                block["references"] = ref_source
                # both are scored as empty hypotheses (BLEU 0 for that video)
                block["caption_errors"] = sum(1 for v in ids if v in caption_errors)
                block["empty_captions"] = sum(1 for v in ids if v not in caption_errors and not (captions[v] or "").strip())
                skipped = len(captions) - len(ids)
                if skipped:
                    block["videos_without_reference"] = skipped
                metrics["bleu"] = block


def _score_mcq(ctx: _ScoreContext) -> None:
    """MCQ-VQA accuracy of mcq.jsonl (direct) and, when configured, in caption mode."""
    run_dir, cfg, judges, log = ctx.run_dir, ctx.cfg, ctx.judges, ctx.log
    dataset, root, metrics, notes, coverage = ctx.dataset, ctx.root, ctx.metrics, ctx.notes, ctx.coverage
    mcq_path = run_dir / "mcq.jsonl"
    vqa = _vqa_path(root, cfg, dataset)
    vqa_usable, vqa_problems = _checked_vqa(cfg, vqa) if mcq_path.is_file() or cfg.avcap.metrics.caption_mode_answerer else ([], [])
    notes += [f"vqa.jsonl: {problem}" for problem in vqa_problems]
    if mcq_path.is_file():
        from avcap.eval.metrics.mcq import PARSER, mcq_scores

        recs = _records(mcq_path)
        if vqa_usable or vqa_problems:  # score only the questions vqa.jsonl holds, as infer asks them
            usable = {str(r["key"]) for r in vqa_usable}
            dropped = [r for r in recs if str(r.get("key")) not in usable]
            if dropped:
                notes.append(f"vqa_accuracy: {len(dropped)} record(s) of {mcq_path.name} not scored: their questions "
                             f"are not usable lines of {vqa} (e.g. {dropped[0].get('key')!r})")
                recs = [r for r in recs if str(r.get("key")) in usable]
        coverage["mcq"] = cov = coverage_block([(str(r.get("key")), r.get("error")) for r in recs],
                                               *_planned_questions(vqa, vqa_usable), mcq_path.name)
        if cov["status"] == "all_failed":
            metrics["vqa_accuracy"] = _all_failed_block("vqa_accuracy", cov, mode="direct", parser=PARSER,
                                                        total_predictions=len(recs), engine_errors=len(recs))
        else:
            metrics["vqa_accuracy"] = mcq_scores(recs, mode="direct")

    # caption mode: the questions answered from the captions alone
    captions, cap_path = ctx.captions, run_dir / "caption.jsonl"
    if captions and cfg.avcap.metrics.caption_mode_answerer is not None:
        if coverage["caption"]["status"] == "all_failed":
            metrics["vqa_accuracy_caption_mode_error"] = f"not run: every caption request failed ({cap_path.name})"
        elif vqa is None or not vqa.is_file():
            notes.append(f"vqa_accuracy_caption_mode: no vqa.jsonl for dataset {dataset}")
        else:
            from avcap.eval.caption_mode import CAPTION_MODE_FILE, caption_mode_records
            from avcap.eval.metrics.mcq import mcq_scores

            try:
                engine, answerer = judges.answerer()
                recs = caption_mode_records(
                    vqa_usable, captions, engine, cfg.avcap.sampling.mcq, run_dir / CAPTION_MODE_FILE,
                    answerer=answerer, system=cfg.avcap.prompts.system, mcq_suffix=cfg.avcap.prompts.mcq_suffix, log=log,
                )
            except Exception as exc:  # the answerer cannot start: the other metrics still count
                metrics["vqa_accuracy_caption_mode_error"] = (
                    f"[avcap.metrics.caption_mode_answerer]: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                )
            else:
                coverage["mcq_caption_mode"] = cov = coverage_block(
                    [(str(r.get("key")), r.get("error")) for r in recs], *_planned_questions(vqa, vqa_usable), CAPTION_MODE_FILE)
                if cov["status"] == "all_failed":
                    block = _all_failed_block("vqa_accuracy_caption_mode", cov, mode="caption", total_predictions=len(recs))
                else:
                    block = mcq_scores(recs, mode="caption")
                block["answerer"] = answerer
                block["answers_file"] = CAPTION_MODE_FILE
                metrics["vqa_accuracy_caption_mode"] = block


def _score_lingoqa_task(ctx: _ScoreContext) -> None:
    """LingoQA: coverage and predictions match always, the judge's score when it loads."""
    run_dir, cfg, judges, log = ctx.run_dir, ctx.cfg, ctx.judges, ctx.log
    dataset, root, metrics, coverage = ctx.dataset, ctx.root, ctx.metrics, ctx.coverage
    pred_csv = _lingoqa_csv(run_dir) if any((run_dir / f).exists() for f in ("lingoqa.jsonl", "lingoqa_predictions.csv")) else None
    if pred_csv is not None:
        ds = _dataset_entry(cfg, dataset, "lingoqa")
        parquet = root / (ds.parquet if ds else "val.parquet") if root else None
        if parquet is not None and not parquet.is_file():
            parquet = None
        coverage["lingoqa"] = cov = _lingoqa_coverage(run_dir, pred_csv, parquet, metrics)
        if cov["status"] == "all_failed":
            metrics["lingoqa"] = _all_failed_block("lingoqa", cov, predictions_file=pred_csv.name)
        elif parquet is None:
            metrics["lingoqa_error"] = f"no LingoQA parquet for dataset {dataset} (run.json dataset_root / [avcap.datasets])"
        elif "lingoqa_error" not in metrics:
            _score_lingoqa(metrics, run_dir, pred_csv, parquet, cfg, judges, log)


# each task's metric (avcap.eval.tasks.Task.metric) -> its scorer
SCORERS = {"bleu": _score_captions, "vqa_accuracy": _score_mcq, "lingoqa": _score_lingoqa_task}


def score_one(run_dir: Path, cfg: RecipeConfig, judges: _Judges, log) -> dict[str, Any]:
    run: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        try:
            run = read_json(run_dir / "run.json")
        except Exception as exc:
            log(f"  warning: {run_dir / 'run.json'}: unreadable ({exc}); using directory names")
        if not isinstance(run, dict):
            run = {}
    dataset = str(run.get("dataset") or run_dir.name)
    metrics: dict[str, Any] = {
        "model": run.get("model_name") or run.get("model") or run_dir.parent.parent.name,
        "checkpoint_label": run.get("checkpoint_label") or run_dir.parent.name,
        "step": run.get("step"),
        "dataset": dataset,
    }
    if metrics["step"] is None:
        m = re.fullmatch(r"ckpt-(\d+)", str(metrics["checkpoint_label"]))
        metrics["step"] = int(m.group(1)) if m else None
    engine = engine_summary(run)
    if engine is not None:
        metrics["engine"] = engine
    ctx = _ScoreContext(run_dir, cfg, judges, log, dataset, _dataset_root(run, dataset, cfg), metrics)
    for task in TASKS.values():  # in the tasks' order: caption mode reads the captions
        if task.metric:  # the labelling job's attributes have no reference to score against
            SCORERS[task.metric](ctx)
    notes, coverage = ctx.notes, ctx.coverage
    if coverage:
        metrics["coverage"] = coverage
    if notes:
        metrics["notes"] = notes
    return metrics


def _lingoqa_coverage(run_dir: Path, pred_csv: Path, parquet: Optional[Path], metrics: dict[str, Any]) -> dict[str, Any]:
    """Coverage of the LingoQA questions (keys question_id/segment_id, as the official merge), from
    lingoqa.jsonl when present (it knows which requests failed), else the predictions file; and,
    judge or no judge, how the predictions file matches the parquet (`predictions_match`)."""

    jl = run_dir / "lingoqa.jsonl"
    planned, match = None, None
    if parquet is not None:
        try:
            refs = load_references(parquet)
            planned = {f"{q}/{s}" for q, s in zip(refs["question_id"], refs["segment_id"])}
            match = match_predictions(pred_csv, parquet)
        except LingoQAError as exc:
            metrics["lingoqa_error"] = str(exc)
    if jl.is_file():
        records = [(f"{r.get('question_id')}/{r.get('segment_id')}", r.get("error")) for r in _records(jl)]
        cov = coverage_block(records, planned, str(parquet) if parquet else None, jl.name)
    else:
        try:
            preds = load_predictions(pred_csv)
            records = [(f"{q}/{s}", None) for q, s in zip(preds["question_id"], preds["segment_id"])]
        except LingoQAError as exc:
            metrics["lingoqa_error"] = str(exc)
            records = []
        cov = coverage_block(records, planned, str(parquet) if parquet else None, pred_csv.name)
    if match is not None:
        cov["predictions_match"] = match
    return cov


def _score_lingoqa(metrics, run_dir, pred_csv, parquet, cfg, judges: _Judges, log) -> None:
    from avcap.eval.metrics.lingoqa import (
        JudgeError,
        LingoQAError,
        llm_judge_block,
        score_predictions,
    )

    try:
        judge = judges.lingo()
        res = score_predictions(pred_csv, parquet, judge, batch_questions=cfg.avcap.metrics.lingoqa_judge_batch_size)
        metrics["lingoqa"] = res.block
    except (JudgeError, LingoQAError) as exc:
        metrics["lingoqa_error"] = str(exc)
        old = _previous_metrics(run_dir).get("lingoqa")
        if isinstance(old, dict) and old.get("predictions_sha256") and old.get("predictions_sha256") == _sha(pred_csv):
            metrics["lingoqa"] = old
            metrics["lingoqa_error"] += " (the LingoQA score of these same predictions from an earlier run is kept)"
    if judges.llm_judge_model:
        try:
            metrics["lingoqa_llm_judge"] = llm_judge_block(
                pred_csv, parquet, judges.llm(), cfg.avcap.sampling.mcq.model_copy(update={"max_tokens": 16}),
                judge_name=f"{cfg.avcap.engine.name}:{judges.llm_judge_model}",
            )
        except Exception as exc:
            metrics["lingoqa_llm_judge_error"] = f"{type(exc).__name__}: {exc}"


def _previous_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        m = read_json(run_dir / "metrics.json")
        return m if isinstance(m, dict) else {}
    except Exception:
        return {}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the whole directory


def score_outputs(
    outputs_dir: str | Path,
    *,
    datasets: Optional[list[str]] = None,
    cfg: Optional[RecipeConfig] = None,
    lingoqa_judge: Optional[str] = None,
    lingoqa_llm_judge: Optional[str] = None,
    log=None,
) -> list[dict[str, Any]]:
    """Score every output set under `outputs_dir`; write each metrics.json; return them in order."""
    return [m for _, m in score_sets(outputs_dir, datasets=datasets, cfg=cfg, lingoqa_judge=lingoqa_judge,
                                     lingoqa_llm_judge=lingoqa_llm_judge, log=log)]


def score_sets(
    outputs_dir: str | Path,
    *,
    datasets: Optional[list[str]] = None,
    cfg: Optional[RecipeConfig] = None,
    lingoqa_judge: Optional[str] = None,
    lingoqa_llm_judge: Optional[str] = None,
    log=None,
) -> list[tuple[Path, dict[str, Any]]]:
    """`score_outputs`, each metrics dict with the directory it was written to."""
    log = log or (lambda msg: typer.echo(msg, err=True))
    cfg = cfg or load_config(None)
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        raise ScoreError(f"{outputs_dir}: no such outputs directory")
    sets = find_output_sets(outputs_dir)
    if datasets:
        wanted = set(datasets)
        sets = [d for d in sets if d.name in wanted or _run_dataset(d) in wanted]
    if not sets:
        what = f" for dataset(s) {', '.join(datasets)}" if datasets else ""
        raise ScoreError(f"{outputs_dir}: no inference outputs{what} (<model>/<checkpoint>/<dataset>/caption.jsonl, mcq.jsonl, lingoqa.jsonl)")
    judges = _Judges(cfg, lingoqa_judge or cfg.avcap.metrics.lingoqa_judge, lingoqa_llm_judge, log)
    results = []
    try:
        for d in sets:
            log(f"avcap score: {d}")
            m = score_one(d, cfg, judges, log)
            write_json_atomic(d / "metrics.json", m)
            for line in summary_lines(m):
                log(f"  {line}")
            for key in ("lingoqa_error", "vqa_accuracy_caption_mode_error", "lingoqa_llm_judge_error"):
                if m.get(key):
                    log(f"  {key}: {m[key]}")
            for n in m.get("notes", []):
                log(f"  note: {n}")
            results.append((d, m))
    finally:
        judges.close()
    return results


def _run_dataset(d: Path) -> Optional[str]:
    try:
        return str(read_json(d / "run.json").get("dataset"))
    except Exception:
        return None


_TITLES = (("bleu", "BLEU-4"), ("vqa_accuracy", "VQA accuracy"), ("vqa_accuracy_caption_mode", "VQA accuracy (caption mode)"),
           ("lingoqa", "LingoQA"))


def _fmt_metric(metric: str, v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    return f"{v:.4f}" if metric == "bleu" else f"{100 * v:.1f}%"


def summary_lines(m: dict[str, Any]) -> list[str]:
    """One line per metric of a metrics dict, each saying what it is computed over, e.g.
    'BLEU-4 0.2310 over 38/40 captions (2 errors)'; and how LingoQA predictions match the parquet."""
    cov_all = m.get("coverage") or {}
    lines = []
    for metric, title in _TITLES:
        task = METRIC_TASK[metric]
        cov, block = cov_all.get(task), m.get(metric)
        if cov is None and not isinstance(block, dict):
            continue
        over = coverage_text(cov, TASK_NOUN[task]) if cov else None
        if isinstance(block, dict) and block.get("status") == "all_failed":
            lines.append(f"{title}: no score, {block.get('error')}")
            continue
        value = block.get(METRIC_VALUE_KEY[metric]) if isinstance(block, dict) else None
        if isinstance(value, (int, float)):
            line = f"{title} {_fmt_metric(metric, value)}" + (f" over {over}" if over else "")
            if metric.startswith("vqa_accuracy") and isinstance(block.get("parseable_rate"), (int, float)):
                line += f"; parseable {100 * block['parseable_rate']:.1f}%"
            lines.append(line)
        else:
            noted = any(str(n).startswith(f"{metric}:") for n in m.get("notes") or [])
            why = f" (see {metric}_error)" if m.get(f"{metric}_error") else " (see notes)" if noted else ""
            lines.append(f"{title} not computed{why}" + (f"; {over}" if over else ""))
    match = (cov_all.get("lingoqa") or {}).get("predictions_match")
    if match:
        from avcap.eval.metrics.lingoqa import match_line

        lines.append("LingoQA " + match_line(match))
    return lines


def failure_lines(run_dir: Path, m: dict[str, Any]) -> list[str]:
    """One line per task whose requests all failed: the outputs file and the first error."""
    out = []
    for metric, task in METRIC_TASK.items():
        block = m.get(metric)
        if isinstance(block, dict) and block.get("status") == "all_failed":
            cov = (m.get("coverage") or {}).get(task) or {}
            out.append(f"{Path(run_dir) / str(cov.get('file', '?'))}: all {cov.get('records')} "
                       f"{TASK_REQUESTS[task]} requests failed, so there is no {metric} score "
                       f"(first error: {cov.get('first_error')})")
    return out


def _cell(m: dict[str, Any], metric: str, fmt) -> str:
    """A table cell: the value, '(n/N)' when computed over fewer records than the dataset holds."""
    block = m.get(metric)
    if isinstance(block, dict) and block.get("status") == "all_failed":
        return "all failed"
    v = block.get(METRIC_VALUE_KEY[metric]) if isinstance(block, dict) else None
    if not isinstance(v, (int, float)):
        return "—"
    cov = (m.get("coverage") or {}).get(METRIC_TASK[metric]) or {}
    if cov.get("status") == "partial":
        return f"{fmt(v)} ({cov.get('scored')}/{cov.get('planned')})"
    return fmt(v)


def render_table(results: list[dict[str, Any]]):
    from rich.table import Table

    def pct(v):
        return "—" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%"

    t = Table(title="avcap score")
    for col, just in (("model", "left"), ("checkpoint", "left"), ("dataset", "left"), ("BLEU-4", "right"),
                      ("VQA acc", "right"), ("parseable", "right"), ("VQA (caption)", "right"), ("LingoQA", "right")):
        t.add_column(col, justify=just)
    for m in results:
        v = m.get("vqa_accuracy") or {}
        lq_txt = _cell(m, "lingoqa", pct) if m.get("lingoqa") else ("error" if m.get("lingoqa_error") else "—")
        t.add_row(str(m.get("model")), str(m.get("checkpoint_label")), str(m.get("dataset")),
                  _cell(m, "bleu", lambda x: f"{x:.4f}"), _cell(m, "vqa_accuracy", pct), pct(v.get("parseable_rate")),
                  _cell(m, "vqa_accuracy_caption_mode", pct), lq_txt)
    if any((m.get("coverage") or {}).get(t_, {}).get("status") == "partial" for m in results for t_ in TASK_NOUN):
        t.caption = "(n/N): computed over n of the N records the dataset holds (metrics.json coverage)"
    return t


def main(
    outputs_dir: Path = typer.Option(..., "--outputs-dir", help="Directory holding <model>/<checkpoint>/<dataset>/ outputs of avcap infer."),
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", help="Score only these datasets (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Recipe TOML (datasets, LingoQA judge, caption-mode answerer, engine)."),
    lingoqa_judge: Optional[str] = typer.Option(None, "--lingoqa-judge", help="Lingo-Judge directory or hub id (default: the config's avcap.metrics.lingoqa_judge)."),
    lingoqa_llm_judge: Optional[str] = typer.Option(None, "--lingoqa-llm-judge", help="Also judge LingoQA with this model through the config's avcap.engine (reported as lingoqa_llm_judge)."),
) -> None:
    """BLEU, MCQ-VQA and LingoQA metrics for every output set; writes metrics.json beside the outputs."""
    from rich.console import Console

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    try:
        pairs = score_sets(outputs_dir, datasets=dataset, cfg=cfg, lingoqa_judge=lingoqa_judge,
                           lingoqa_llm_judge=lingoqa_llm_judge)
    except ScoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    console = Console(file=sys.stdout)
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(file=sys.stdout, width=200)
    console.print(render_table([m for _, m in pairs]))
    failures = [line for d, m in pairs for line in failure_lines(d, m)]
    for line in failures:
        typer.echo(f"error: {line}", err=True)
    if failures:
        raise typer.Exit(2)
