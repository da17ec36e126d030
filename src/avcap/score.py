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
"""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from avcap.config import ConfigError, RecipeConfig, load_config
from avcap.records import iter_records, read_json, write_json_atomic, write_text_atomic

OUTPUT_FILES = ("caption.jsonl", "mcq.jsonl", "lingoqa.jsonl", "lingoqa_predictions.csv")


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
        from avcap.metrics.lingoqa import JudgeError, LingoJudge

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
            from avcap.engines import make_engine

            try:
                self._answerer = make_engine(ecfg, vision=self.cfg.eval_vision)
            except Exception as exc:
                self._answerer_error = exc
                raise
        return self._answerer, f"{ecfg.name}:{ecfg.model}" + (" (reasoning)" if ecfg.reasoning else "")

    def llm(self):
        if self._llm is None:
            from avcap.engines import make_engine

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


def score_one(run_dir: Path, cfg: RecipeConfig, judges: _Judges, log) -> dict[str, Any]:
    run: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        try:
            run = read_json(run_dir / "run.json")
        except Exception as exc:
            log(f"  warning: {run_dir / 'run.json'}: unreadable ({exc}); using directory names")
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
    notes: list[str] = []
    root = _dataset_root(run, dataset, cfg)

    # BLEU
    cap_path = run_dir / "caption.jsonl"
    captions: dict[str, Optional[str]] = {}
    caption_errors: set[str] = set()
    if cap_path.is_file():
        for r in _records(cap_path):
            vid = str(r.get("video_id") or r.get("key"))
            captions[vid] = None if r.get("error") else r.get("caption_text")
            if r.get("error"):
                caption_errors.add(vid)
        if root is None:
            notes.append(f"bleu: no reference captions (dataset {dataset} root not found via run.json or config)")
        else:
            from avcap.metrics.bleu import bleu_report

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

    # MCQ, direct
    mcq_path = run_dir / "mcq.jsonl"
    if mcq_path.is_file():
        from avcap.metrics.mcq import mcq_scores

        metrics["vqa_accuracy"] = mcq_scores(_records(mcq_path), mode="direct")

    # MCQ, caption mode
    if captions and cfg.avcap.metrics.caption_mode_answerer is not None:
        ds = _dataset_entry(cfg, dataset, "av_caption")
        vqa = root / (ds.vqa if ds else "vqa.jsonl") if root else None
        if vqa is None or not vqa.is_file():
            notes.append(f"vqa_accuracy_caption_mode: no vqa.jsonl for dataset {dataset}")
        else:
            from avcap.metrics.mcq import CAPTION_MODE_FILE, caption_mode_records, mcq_scores

            try:
                engine, answerer = judges.answerer()
                recs = caption_mode_records(
                    iter_records(vqa), captions, engine, cfg.avcap.sampling.mcq, run_dir / CAPTION_MODE_FILE,
                    answerer=answerer, system=cfg.avcap.prompts.system, mcq_suffix=cfg.avcap.prompts.mcq_suffix, log=log,
                )
            except Exception as exc:  # the answerer cannot start: the other metrics still count
                metrics["vqa_accuracy_caption_mode_error"] = (
                    f"[avcap.metrics.caption_mode_answerer]: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                )
            else:
                block = mcq_scores(recs, mode="caption")
                block["answerer"] = answerer
                block["answers_file"] = CAPTION_MODE_FILE
                metrics["vqa_accuracy_caption_mode"] = block

    # LingoQA
    pred_csv = _lingoqa_csv(run_dir) if any((run_dir / f).exists() for f in ("lingoqa.jsonl", "lingoqa_predictions.csv")) else None
    if pred_csv is not None:
        ds = _dataset_entry(cfg, dataset, "lingoqa")
        parquet = root / (ds.parquet if ds else "val.parquet") if root else None
        if parquet is None or not parquet.is_file():
            metrics["lingoqa_error"] = f"no LingoQA parquet for dataset {dataset} (run.json dataset_root / [avcap.datasets])"
        else:
            _score_lingoqa(metrics, run_dir, pred_csv, parquet, cfg, judges, log)

    if notes:
        metrics["notes"] = notes
    return metrics


def _score_lingoqa(metrics, run_dir, pred_csv, parquet, cfg, judges: _Judges, log) -> None:
    from avcap.metrics.lingoqa import JudgeError, LingoQAError, llm_judge_block, score_predictions

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
    import hashlib

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
            for key in ("lingoqa_error", "vqa_accuracy_caption_mode_error", "lingoqa_llm_judge_error"):
                if m.get(key):
                    log(f"  {key}: {m[key]}")
            for n in m.get("notes", []):
                log(f"  note: {n}")
            results.append(m)
    finally:
        judges.close()
    return results


def _run_dataset(d: Path) -> Optional[str]:
    try:
        return str(read_json(d / "run.json").get("dataset"))
    except Exception:
        return None


def render_table(results: list[dict[str, Any]]):
    from rich.table import Table

    def pct(v):
        return "—" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%"

    t = Table(title="avcap score")
    for col, just in (("model", "left"), ("checkpoint", "left"), ("dataset", "left"), ("BLEU-4", "right"),
                      ("VQA acc", "right"), ("parseable", "right"), ("VQA (caption)", "right"), ("LingoQA", "right")):
        t.add_column(col, justify=just)
    for m in results:
        b = (m.get("bleu") or {}).get("value")
        v = m.get("vqa_accuracy") or {}
        c = m.get("vqa_accuracy_caption_mode") or {}
        lq = m.get("lingoqa") or {}
        lq_txt = pct(lq.get("score")) if lq else ("error" if m.get("lingoqa_error") else "—")
        t.add_row(str(m.get("model")), str(m.get("checkpoint_label")), str(m.get("dataset")),
                  "—" if b is None else f"{b:.4f}", pct(v.get("overall")), pct(v.get("parseable_rate")),
                  pct(c.get("overall")), lq_txt)
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
        results = score_outputs(outputs_dir, datasets=dataset, cfg=cfg, lingoqa_judge=lingoqa_judge,
                                lingoqa_llm_judge=lingoqa_llm_judge)
    except ScoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    console = Console(file=sys.stdout)
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(file=sys.stdout, width=200)
    console.print(render_table(results))
