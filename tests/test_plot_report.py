"""`avcap plot` and `avcap report` on metrics.json files written by hand (formats.md "Metrics")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avcap.cli import app
from avcap.core.config import CATEGORIES
from avcap.report.plot import collect_series, falls_after_peak, plot_metric
from avcap.report.markdown import build_report, collect

BASE = "Cosmos-Reason2-8B"
ZERO_SHOT = {  # model: (MCQ overall, LingoQA, BLEU)
    "Cosmos-Reason2-2B": (0.747, 0.640, 0.101),
    BASE: (0.801, 0.632, 0.113),
    "Qwen3-VL-2B": (0.641, 0.608, 0.090),
    "Qwen3-VL-8B": (0.775, 0.694, 0.110),
}
# step: (MCQ overall, BLEU, LingoQA) — MCQ peaks at 250 then falls; BLEU ties at 200 and 350
SWEEP = {
    100: (0.790, 0.122, 0.734),
    200: (0.803, 0.125, 0.704),
    250: (0.8085, 0.124, 0.704),
    350: (0.780, 0.125, 0.770),
    500: (0.7513, 0.123, 0.766),
}


def _av(model, label, step, acc, bleu, offset=0.0):
    per_cat = {c: round(min(1.0, max(0.0, acc + offset + 0.02 * (i - 2.5))), 4) for i, c in enumerate(CATEGORIES)}
    return {
        "model": model, "checkpoint_label": label, "step": step, "dataset": "AV_CAPTION",
        "bleu": {"value": bleu, "implementation": "avcap.eval.metrics.bleu (coco-caption BLEU-4)",
                 "tokenization": "PTB", "n": 40, "sacrebleu": {"score": 100 * bleu, "signature": "tok:13a"}},
        "vqa_accuracy": {"mode": "direct", "overall": acc, "per_category": per_cat, "parseable_rate": 0.99,
                         "mean_per_video": acc - 0.002, "std_per_video": 0.128, "clustered_se": 0.011,
                         "total_predictions": 480, "videos_evaluated": 40,
                         "parser": "avcap.bench.parse.parse_choice"},
    }


def _lq(model, label, step, score):
    return {"model": model, "checkpoint_label": label, "step": step, "dataset": "LINGOQA",
            "lingoqa": {"score": score, "correct": round(score * 1000), "rows": 1000,
                        "judge": "wayveai/Lingo-Judge", "implementation": "avcap.eval.metrics.lingoqa"}}


def _write(root: Path, model: str, label: str, dataset: str, obj: dict) -> Path:
    p = root / model / label / dataset / "metrics.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj))
    return p


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    for model, (acc, lq, bleu) in ZERO_SHOT.items():
        _write(root, model, "base", "AV_CAPTION", _av(model, "base", None, acc, bleu))
        _write(root, model, "base", "LINGOQA", _lq(model, "base", None, lq))
    for step, (acc, bleu, lq) in SWEEP.items():
        _write(root, BASE, f"ckpt-{step}", "AV_CAPTION", _av(BASE, f"ckpt-{step}", step, acc, bleu, 0.01))
        _write(root, BASE, f"ckpt-{step}", "LINGOQA", _lq(BASE, f"ckpt-{step}", step, lq))
    return root


def test_series_best_and_fall(outputs: Path) -> None:
    s = collect_series(outputs, "AV_CAPTION", BASE, "vqa_accuracy")
    assert s.base.value == pytest.approx(0.801)
    assert [p.step for p in s.checkpoints] == [100, 200, 250, 350, 500]  # numeric, not lexical, order
    assert s.best.label == "ckpt-250"
    peak, last, drop = falls_after_peak(s)
    assert (peak.label, last.label) == ("ckpt-250", "ckpt-500") and drop == pytest.approx(0.0572)
    # ties go to the earlier checkpoint
    assert collect_series(outputs, "AV_CAPTION", BASE, "bleu").best.label == "ckpt-200"
    # lingoqa found in the LINGOQA directory although --dataset says AV_CAPTION
    lq = collect_series(outputs, "AV_CAPTION", BASE, "lingoqa")
    assert lq.dataset == "LINGOQA" and lq.best.label == "ckpt-350"


@pytest.mark.parametrize("metric", ["bleu", "vqa_accuracy", "lingoqa"])
def test_plot_png(outputs: Path, tmp_path: Path, metric: str) -> None:
    out = plot_metric(outputs, "AV_CAPTION", BASE, metric, tmp_path / f"{metric}.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_cli_svg_and_errors(outputs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "acc.svg"
    r = runner.invoke(app, ["plot", "--dataset", "AV_CAPTION", "--base-model", BASE, "--metric", "vqa_accuracy",
                            "--outputs-dir", str(outputs), "--out", str(out)])
    assert r.exit_code == 0, r.output
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "best ckpt-250 80.8%" in r.output
    # a model with no outputs: exit 2, one line naming the directory and the models present
    r = runner.invoke(app, ["plot", "--base-model", "Nope", "--metric", "bleu", "--outputs-dir", str(outputs)])
    assert r.exit_code == 2 and "Nope" in r.output and BASE in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["plot", "--base-model", BASE, "--metric", "rouge", "--outputs-dir", str(outputs)])
    assert r.exit_code == 2 and "unknown metric" in r.output


def test_plot_base_only(tmp_path: Path) -> None:
    root = tmp_path / "o"
    _write(root, "M", "base", "AV_CAPTION", _av("M", "base", None, 0.5, 0.1))
    out = plot_metric(root, "AV_CAPTION", "M", "vqa_accuracy", tmp_path / "a.png")
    assert out.exists()


def test_report(outputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep" / "report.md"
    path, summary = build_report(outputs, out)
    md = path.read_text()
    # zero-shot table: categories x models + overall, and the evaluation details
    header = next(l for l in md.splitlines() if l.startswith("| Category | Cosmos-Reason2-2B"))
    assert all(m in header for m in ZERO_SHOT)
    for c in CATEGORIES:
        assert f"| {c} |" in md
    assert re.search(r"\| \*\*Overall\*\* \| 74\.7% \| \*\*80\.1%\*\* \| 64\.1% \| 77\.5% \|", md)
    assert "Parseable rate" in md and "99.0%" in md
    assert "Mean per-video accuracy (± std)" in md and "79.9% (±12.8%)" in md
    assert "Total predictions" in md and "Videos evaluated" in md
    # LingoQA and BLEU per model
    assert "0.694" in md and "0.640" in md
    assert "| Qwen3-VL-2B | AV_CAPTION | 0.090 |" in md
    # sweep: best per metric and change from zero-shot
    assert "| MCQ-VQA accuracy | 80.1% | ckpt-250 | 80.8% | +0.7 pp |" in md
    assert "| BLEU-4 (coco-caption) | 0.113 | ckpt-200 | 0.125 | +0.012, +10.6% |" in md
    assert "| LingoQA score (Lingo-Judge) | 63.2% | ckpt-350 | 77.0% | +13.8 pp |" in md
    # overfitting: MCQ falls 5.7 pp after its peak (well beyond 2 SE); LingoQA's 0.4 pp dip is noise
    assert "**MCQ-VQA accuracy** peaks at ckpt-250 (80.8%) and falls to 75.1% by ckpt-500" in md
    assert "no clear sign of overfitting" in md
    # plots embedded and generated next to the report
    imgs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(imgs) == 3
    for rel in imgs:
        assert (out.parent / rel).is_file()
    # every linked metrics.json exists (traceability), and every file read is listed
    links = re.findall(r"\]\(([^)]+metrics\.json)\)", md)
    assert links and all((out.parent / l).is_file() for l in links)
    assert len(set(links)) == len(summary.entries) == 2 * len(ZERO_SHOT) + 2 * len(SWEEP)
    # implementation names of the metrics
    assert "avcap.bench.parse.parse_choice" in md and "wayveai/Lingo-Judge" in md and "coco-caption BLEU-4" in md
    heads = {(h.metric, h.best_label) for h in summary.headlines}
    assert heads == {("vqa_accuracy", "ckpt-250"), ("bleu", "ckpt-200"), ("lingoqa", "ckpt-350")}


def test_report_cli(outputs: Path) -> None:
    r = CliRunner().invoke(app, ["report", "--outputs-dir", str(outputs)])
    assert r.exit_code == 0, r.output
    assert (outputs / "report.md").is_file() and (outputs / "plots" / f"{BASE}_vqa_accuracy.png").is_file()
    assert "ckpt-250" in r.output
    # rerun over its own outputs (plots/ and report.md now inside outputs_dir) is still fine
    assert CliRunner().invoke(app, ["report", "--outputs-dir", str(outputs)]).exit_code == 0


def test_report_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["report", "--outputs-dir", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such outputs directory" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["report", "--outputs-dir", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "metrics.json" in r.output
    bad = tmp_path / "bad" / "M" / "base" / "AV_CAPTION"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text("{not json")
    r = CliRunner().invoke(app, ["report", "--outputs-dir", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "metrics.json" in r.output and "Traceback" not in r.output


def test_zero_shot_only_report(tmp_path: Path) -> None:
    root = tmp_path / "o"
    for model, (acc, lq, bleu) in ZERO_SHOT.items():
        _write(root, model, "base", "AV_CAPTION", _av(model, "base", None, acc, bleu))
    summary = collect(root)
    assert summary.headlines == [] and summary.finetuned_models() == []
    path, _ = build_report(root)
    assert "## Zero-shot MCQ-VQA accuracy (AV_CAPTION)" in path.read_text()


# ----------------------------------------------------------------------------- coverage, failures, engines


def _run_json(root: Path, model: str, label: str, dataset: str, obj) -> None:
    p = root / model / label / dataset / "run.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _cov(planned, scored, errors=0, missing=0, status=None):
    return {"file": "mcq.jsonl", "planned": planned, "planned_from": "vqa.jsonl", "records": scored + errors,
            "scored": scored, "errors": errors, "missing": missing, "not_in_dataset": 0,
            "fraction": scored / planned, "status": status or ("complete" if scored == planned else "partial")}


def test_report_marks_partial_and_all_failed(outputs: Path, tmp_path: Path) -> None:
    # Qwen3-VL-2B zero-shot: 470 of the 480 questions answered (10 errors), 38 of 40 captions
    m = _av("Qwen3-VL-2B", "base", None, 0.641, 0.090)
    m["coverage"] = {"mcq": _cov(480, 470, errors=10), "caption": {**_cov(40, 38, missing=2), "file": "caption.jsonl"},
                     "mcq_caption_mode": _cov(480, 400, errors=80)}
    m["vqa_accuracy_caption_mode"] = {"mode": "caption", "overall": 0.5, "parseable_rate": 0.9, "answerer": "openai:judge"}
    _write(outputs, "Qwen3-VL-2B", "base", "AV_CAPTION", m)
    # Qwen3-VL-8B zero-shot: every request failed (HTTP 422): no score, not 0
    failed = {"model": "Qwen3-VL-8B", "checkpoint_label": "base", "step": None, "dataset": "AV_CAPTION",
              "bleu": {"value": None, "status": "all_failed", "error": "all 40 caption requests failed; first error: 422"},
              "vqa_accuracy": {"overall": None, "status": "all_failed", "mode": "direct", "total_predictions": 480,
                               "engine_errors": 480, "error": "all 480 MCQ requests failed; first error: 422"},
              "coverage": {"mcq": _cov(480, 0, errors=480, status="all_failed"),
                           "caption": {**_cov(40, 0, errors=40, status="all_failed"), "file": "caption.jsonl"}}}
    _write(outputs, "Qwen3-VL-8B", "base", "AV_CAPTION", failed)
    # a checkpoint of the sweep whose MCQ requests all failed, and one scored over a subset
    ck = _av(BASE, "ckpt-350", 350, 0.780, 0.125, 0.01)
    ck["vqa_accuracy"] = failed["vqa_accuracy"]
    ck["coverage"] = {"mcq": failed["coverage"]["mcq"]}
    _write(outputs, BASE, "ckpt-350", "AV_CAPTION", ck)
    ck = _av(BASE, "ckpt-500", 500, 0.7513, 0.123, 0.01)
    ck["coverage"] = {"mcq": _cov(480, 240, missing=240)}
    _write(outputs, BASE, "ckpt-500", "AV_CAPTION", ck)

    md = build_report(outputs, tmp_path / "r" / "report.md")[0].read_text()
    assert "A value marked (n/N) was computed over n of the N records" in md
    assert '"all failed": every request of that task failed, so there is no score (not a score of 0).' in md
    overall = next(l for l in md.splitlines() if l.startswith("| **Overall** | 74.7%"))
    assert overall == "| **Overall** | 74.7% | **80.1%** | 64.1% (470/480) | all failed |"
    details = next(l for l in md.splitlines() if l.startswith("| Questions scored / in the dataset |"))
    assert "| 470/480 questions (10 errors) |" in details and "| 0/480 questions (480 errors) |" in details
    assert "| not recorded |" in details  # metrics.json files from before coverage existed
    assert "| Qwen3-VL-2B | AV_CAPTION | 0.090 (38/40) | 38/40 captions (2 missing) |" in md
    assert "| Qwen3-VL-8B | AV_CAPTION | all failed | 0/40 captions (40 errors) |" in md
    assert "| Qwen3-VL-2B | zero-shot | 50.0% (400/480) | 90.0% | 400/480 questions (80 errors) |" in md
    row350 = next(l for l in md.splitlines() if l.startswith("| ckpt-350 | 350 |"))
    assert "all failed](" in row350 and "0.0%" not in row350
    row500 = next(l for l in md.splitlines() if l.startswith("| ckpt-500 | 500 |"))
    assert ") (240/480)" in row500
    # the headline's best MCQ checkpoint is still ckpt-250; the failed checkpoint is not a 0 in the sweep
    assert "| MCQ-VQA accuracy | 80.1% | ckpt-250 | 80.8% | +0.7 pp |" in md
    # the CLI's headline lines carry the marks too (BLEU's best, ckpt-200, covers 20 of 40 captions)
    ck = _av(BASE, "ckpt-200", 200, 0.803, 0.125, 0.01)
    ck["coverage"] = {"caption": {**_cov(40, 20, missing=20), "file": "caption.jsonl"}}
    _write(outputs, BASE, "ckpt-200", "AV_CAPTION", ck)
    r = CliRunner().invoke(app, ["report", "--outputs-dir", str(outputs)])
    assert r.exit_code == 0, r.output
    assert f"  {BASE} bleu: zero-shot 0.113 -> best ckpt-200 0.125 (20/40) (+0.012, +10.6%)" in r.output


def test_report_says_when_engines_or_representations_differ(outputs: Path, tmp_path: Path) -> None:
    frames = {"kind": "frames", "via": "processor", "factor": 32, "size": [256, 448]}
    for model in ZERO_SHOT:
        for ds in ("AV_CAPTION", "LINGOQA"):
            _run_json(outputs, model, "base", ds, {"engine": {"name": "transformers"}, "engine_run": {"representation": frames}})
    for step in SWEEP:
        for ds in ("AV_CAPTION", "LINGOQA"):
            _run_json(outputs, BASE, f"ckpt-{step}", ds,
                      {"engine": {"name": "transformers"}, "engine_run": {"representation": frames}})
    same = build_report(outputs, tmp_path / "same" / "report.md")[0].read_text()
    assert "Different engines or frame representations" not in same and "Engine; representation" not in same

    # Qwen3-VL-8B through an API that takes the video file; a checkpoint with no engine_run recorded
    for ds in ("AV_CAPTION", "LINGOQA"):
        _run_json(outputs, "Qwen3-VL-8B", "base", ds, {"engine": {"name": "openai"}, "engine_run": {"representation": "video_url"}})
    _run_json(outputs, BASE, "ckpt-500", "AV_CAPTION", {"engine": {"name": "transformers"}})
    _run_json(outputs, BASE, "ckpt-100", "LINGOQA", "{not json")  # unreadable: read defensively
    md = build_report(outputs, tmp_path / "mixed" / "report.md")[0].read_text()
    lines = md.splitlines()
    want = "`transformers; factor=32, kind=frames, size=256x448, via=processor`"
    mcq_note = next(l for l in lines if l.startswith("**Different engines or frame representations in this table**"))
    assert want in mcq_note and "`openai; video_url`: Qwen3-VL-8B" in mcq_note
    # tables of one row per output set get an engine column
    assert "| Qwen3-VL-8B | LINGOQA | 0.694 (69.4%) | 694 / 1000 | not recorded | openai; video_url |" in md
    assert "| Qwen3-VL-8B | AV_CAPTION | 0.110 | 40 | 11.0 | openai; video_url |" in md
    # the sweep: a checkpoint without a recorded representation, one whose run.json is unreadable
    sweep = md[md.index("## Checkpoint sweep"):]
    note = next(l for l in sweep.splitlines() if l.startswith("**Different engines"))
    assert "`transformers; representation not recorded`: ckpt-500 (AV_CAPTION)" in note
    assert "`engine not recorded; representation not recorded`: ckpt-100 (LINGOQA)" in note
    # the headline marks a metric whose zero-shot and best checkpoint differ in engine (LingoQA best is ckpt-350)
    assert "| LingoQA score (Lingo-Judge) | 63.2% |" in md and "† zero-shot" not in md
    _run_json(outputs, BASE, "ckpt-350", "LINGOQA", {"engine": {"name": "vllm"}, "engine_run": {"representation": frames}})
    md = build_report(outputs, tmp_path / "mixed2" / "report.md")[0].read_text()
    assert "| LingoQA score (Lingo-Judge) † | 63.2% |" in md
    assert "† zero-shot and best checkpoint come from different engines or frame representations: " \
           f"{BASE} LingoQA score (Lingo-Judge): zero-shot `transformers; factor=32" in md
