"""`avcap score`: metrics.json from output files written per docs/formats.md, the CLI table, a
missing judge, caption mode (cached, resumable) and, when the runner exists, real inference outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avcap.core.config import load_config
from avcap.core.records import RecordWriter, read_json, read_records

pd = pytest.importorskip("pandas")

CHOICES = {"A": "clear", "B": "rain", "C": "fog", "D": "snow"}
QIDS = ("sd01", "ko01")  # pool questions (Scene Description, Key Objects): vqa.jsonl is checked against the pool


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny one-logit DeBERTa-v2 judge (test_lingoqa.py checks the rule itself)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("judge") / "judge"
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["question answer student yes no car ahead red green there is a"] * 20,
                            trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(out)
    torch.manual_seed(1)
    cfg = DebertaV2Config(vocab_size=fast.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=256, num_labels=1, pad_token_id=fast.pad_token_id)
    DebertaV2ForSequenceClassification(cfg).save_pretrained(out)
    return out


def _dataset(root: Path, *, with_captions_jsonl: bool = True) -> Path:
    """AV_CAPTION (3 videos, 2 MCQs each, references) and LINGOQA (2 questions x 2 references)."""
    av = root / "AV_CAPTION"
    (av / "annotations").mkdir(parents=True)
    refs = {
        "v1": "The ego vehicle slows down behind a white truck on a wet road.",
        "v2": "The ego vehicle turns left at a green light while a cyclist waits.",
        "v3": "The ego vehicle drives straight on a clear highway.",
    }
    for vid, text in refs.items():
        (av / "annotations" / f"{vid}.json").write_text(json.dumps({"safety_analysis": text, "weather": "clear"}))
    if with_captions_jsonl:
        with RecordWriter(av / "captions.jsonl") as w:
            for vid, text in refs.items():
                w.append({"key": vid, "video_id": vid, "caption": text})
    with RecordWriter(av / "vqa.jsonl") as w:
        for vid in refs:
            for q, (cat, ans) in enumerate([("Scene Description", "A"), ("Key Objects", "B")]):
                w.append({"key": f"{vid}/{QIDS[q]}", "video_id": vid, "question_id": QIDS[q], "category": cat,
                          "question": f"Question {q} about {vid}?", "choices": CHOICES, "answer": ans, "provenance": "agreed"})
    lq = root / "LINGOQA"
    lq.mkdir()
    rows = [{"question_id": q, "segment_id": "s1", "images": [f"images/val/s1/{k}.jpg" for k in range(5)],
             "question": "Is there a car ahead?", "answer": a} for q in ("q1", "q2") for a in ("Yes.", "There is a car.")]
    pd.DataFrame(rows).to_parquet(lq / "val.parquet")
    return root


def _outputs(out: Path, data: Path, label: str = "base", step=None, captions=None, mcq_texts=None) -> None:
    """Inference outputs written exactly per docs/formats.md (no inference run)."""
    d = out / "tiny" / label / "AV_CAPTION"
    d.mkdir(parents=True)
    captions = captions or {"v1": "The ego vehicle slows down behind a truck.", "v2": None, "v3": "A car drives on a highway."}
    with RecordWriter(d / "caption.jsonl") as w:
        for vid, text in captions.items():
            w.append({"key": vid, "video_id": vid, "text": text, "caption": None, "caption_text": text,
                      "error": None if text else "decode failed"})
    mcq_texts = mcq_texts or {"v1/sd01": "A", "v1/ko01": "The answer is B.", "v2/sd01": "C", "v2/ko01": "I cannot tell.",
                              "v3/sd01": "(A) clear", "v3/ko01": None}
    with RecordWriter(d / "mcq.jsonl") as w:
        for key, text in mcq_texts.items():
            vid, q = key.split("/")
            w.append({"key": key, "video_id": vid, "question_id": q, "category": "Scene Description" if q == "sd01" else "Key Objects",
                      "choices": CHOICES, "answer": "A" if q == "sd01" else "B", "text": text,
                      "error": None if text is not None else "timeout"})
    (d / "run.json").write_text(json.dumps({"model_name": "tiny", "checkpoint_label": label, "step": step,
                                            "dataset": "AV_CAPTION", "dataset_root": str(data / "AV_CAPTION")}))
    lq = out / "tiny" / label / "LINGOQA"
    lq.mkdir(parents=True)
    with RecordWriter(lq / "lingoqa.jsonl") as w:
        for q, text in (("q1", "Yes, there is a car."), ("q2", "No.")):
            w.append({"key": q, "question_id": q, "segment_id": "s1", "question": "Is there a car ahead?", "text": text, "error": None})
    (lq / "lingoqa_predictions.csv").write_text("question_id,segment_id,answer\nq1,s1,\"Yes, there is a car.\"\nq2,s1,No.\n")
    (lq / "run.json").write_text(json.dumps({"model_name": "tiny", "checkpoint_label": label, "step": step,
                                             "dataset": "LINGOQA", "dataset_root": str(data / "LINGOQA")}))


# ----------------------------------------------------------------------------- on files written per the contract


def test_score_contract_files(tmp_path, judge_dir):
    from avcap.eval.metrics.bleu import corpus_bleu
    from avcap.eval.score import score_outputs

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    _outputs(out, data)
    _outputs(out, data, label="ckpt-20", step=20, mcq_texts={k: "A" for k in ("v1/sd01", "v1/ko01", "v2/sd01", "v2/ko01", "v3/sd01", "v3/ko01")})
    cfg = load_config(None, {"avcap": {"metrics": {"lingoqa_judge": str(judge_dir)}}})
    results = score_outputs(out, cfg=cfg, log=lambda m: None)
    assert len(results) == 4
    m = read_json(out / "tiny" / "base" / "AV_CAPTION" / "metrics.json")
    assert (m["model"], m["checkpoint_label"], m["step"], m["dataset"]) == ("tiny", "base", None, "AV_CAPTION")
    # BLEU: the failed caption of v2 is an empty hypothesis; references from captions.jsonl
    refs = [["The ego vehicle slows down behind a white truck on a wet road."],
            ["The ego vehicle turns left at a green light while a cyclist waits."],
            ["The ego vehicle drives straight on a clear highway."]]
    expected = corpus_bleu(["The ego vehicle slows down behind a truck.", "", "A car drives on a highway."], refs)
    b = m["bleu"]
    assert b["value"] == expected and b["n"] == 3 and b["caption_errors"] == 1 and b["empty_captions"] == 0
    assert set(b["per_video"]) == {"v1", "v2", "v3"} and b["references"].endswith("captions.jsonl")
    assert "BleuScorer" in b["implementation"] and "PTBTokenizer" in b["tokenization"] and "signature" in b["sacrebleu"]
    # MCQ: right v1/sd01 v1/ko01 v3/sd01; wrong v2/sd01; unparseable v2/ko01; failed v3/ko01
    v = m["vqa_accuracy"]
    assert v["mode"] == "direct" and v["overall"] == pytest.approx(3 / 6) and v["parseable_rate"] == pytest.approx(4 / 6)
    assert v["per_category"] == pytest.approx({"Key Objects": 1 / 3, "Scene Description": 2 / 3})
    assert v["total_predictions"] == 6 and v["videos_evaluated"] == 3
    assert v["mean_per_video"] == pytest.approx((1 + 0 + 0.5) / 3) and v["clustered_se"] > 0
    assert "vqa_accuracy_caption_mode" not in m  # no answerer configured
    ck = read_json(out / "tiny" / "ckpt-20" / "AV_CAPTION" / "metrics.json")
    assert ck["step"] == 20 and ck["vqa_accuracy"]["overall"] == pytest.approx(3 / 6)
    lq = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")["lingoqa"]
    assert lq["rows"] == 2 and lq["questions"] == 2 and lq["reference_rows"] == 4
    assert lq["score"] == lq["correct"] / 2 and lq["judge"] == str(judge_dir) and "judge.py" in lq["implementation"]
    # coverage per task: records scored against the keys the dataset holds
    cov = m["coverage"]
    assert {k: cov["caption"][k] for k in ("planned", "records", "scored", "errors", "missing", "status")} == \
        {"planned": 3, "records": 3, "scored": 2, "errors": 1, "missing": 0, "status": "partial"}
    assert cov["caption"]["first_error"] == "decode failed" and cov["caption"]["file"] == "caption.jsonl"
    assert {k: cov["mcq"][k] for k in ("planned", "scored", "errors", "missing", "status")} == \
        {"planned": 6, "scored": 5, "errors": 1, "missing": 0, "status": "partial"}
    assert cov["mcq"]["planned_from"].endswith("vqa.jsonl") and cov["mcq"]["fraction"] == pytest.approx(5 / 6)
    lcov = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")["coverage"]["lingoqa"]
    assert (lcov["planned"], lcov["scored"], lcov["status"]) == (2, 2, "complete")
    assert lcov["predictions_match"] == {"predictions": 2, "matched": 2, "unmatched_predictions": 0, "questions": 2,
                                         "questions_matched": 2, "absent": 0, "reference_file": "val.parquet"}
    from avcap.eval.score import summary_lines

    assert summary_lines(m) == [f"BLEU-4 {expected:.4f} over 2/3 captions (1 error)",
                                "VQA accuracy 50.0% over 5/6 questions (1 error); parseable 66.7%"]


def test_partial_outputs_say_what_they_cover(tmp_path):
    """Outputs of 2 of the dataset's 3 videos (e.g. --limit 2): every score says 2/3, never more."""
    from avcap.eval.score import score_outputs, summary_lines

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    _outputs(out, data, captions={"v1": "The ego vehicle slows down.", "v2": "It turns left."},
             mcq_texts={"v1/sd01": "A", "v1/ko01": "B", "v2/sd01": "A", "v2/ko01": "B"})
    shutil.rmtree(out / "tiny" / "base" / "LINGOQA")
    (videos := data / "AV_CAPTION" / "videos").mkdir()
    for vid in ("v1", "v2", "v3", "v4"):  # the videos infer plans: one more than the references
        (videos / f"{vid}.mp4").write_bytes(b"")
    m = score_outputs(out, cfg=load_config(None), log=lambda m: None)[0]
    cap, mcq = m["coverage"]["caption"], m["coverage"]["mcq"]
    assert (cap["planned"], cap["scored"], cap["missing"], cap["status"]) == (4, 2, 2, "partial")
    assert cap["planned_from"].endswith("videos") and "first_error" not in cap
    assert (mcq["planned"], mcq["scored"], mcq["missing"], mcq["errors"]) == (6, 4, 2, 0)
    assert m["vqa_accuracy"]["overall"] == 1.0  # over the 4 answered questions, and said so:
    lines = summary_lines(m)
    assert lines[0].startswith("BLEU-4 ") and lines[0].endswith(" over 2/4 captions (2 missing)")
    assert lines[1] == "VQA accuracy 100.0% over 4/6 questions (2 missing); parseable 100.0%"


def _failing_outputs(out: Path, data: Path) -> Path:
    """Every request failed, as against a server that answered HTTP 422 to each."""
    err = "HTTPStatusError: 422 Unprocessable Entity: video_url is not supported"
    d = out / "tiny" / "base" / "AV_CAPTION"
    d.mkdir(parents=True)
    with RecordWriter(d / "caption.jsonl") as w:
        for vid in ("v1", "v2"):
            w.append({"key": vid, "video_id": vid, "text": None, "caption": None, "caption_text": "", "error": err})
    with RecordWriter(d / "mcq.jsonl") as w:
        for vid in ("v1", "v2", "v3"):
            w.append({"key": f"{vid}/sd01", "video_id": vid, "question_id": "sd01", "category": "Scene Description",
                      "choices": CHOICES, "answer": "A", "text": None, "error": err})
    (d / "run.json").write_text(json.dumps({"model_name": "tiny", "checkpoint_label": "base", "dataset": "AV_CAPTION",
                                            "dataset_root": str(data / "AV_CAPTION"),
                                            "engine": {"name": "openai", "reasoning": False}, "engine_run": {}}))
    lq = out / "tiny" / "base" / "LINGOQA"
    lq.mkdir(parents=True)
    with RecordWriter(lq / "lingoqa.jsonl") as w:
        for q in ("q1", "q2"):
            w.append({"key": q, "question_id": q, "segment_id": "s1", "question": "Is there a car ahead?", "text": None, "error": err})
    (lq / "run.json").write_text(json.dumps({"model_name": "tiny", "checkpoint_label": "base", "dataset": "LINGOQA",
                                             "dataset_root": str(data / "LINGOQA")}))
    return d


def test_all_requests_failed_is_an_error_not_a_zero(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import avcap.engines
    from avcap.cli import app

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    d = _failing_outputs(out, data)
    made = []
    monkeypatch.setattr(avcap.engines, "make_engine", lambda *a, **k: made.append(1))  # must not be needed
    cfg_file = tmp_path / "recipe.toml"
    cfg_file.write_text('[avcap.metrics]\nlingoqa_judge = "/no/such/judge"\n'
                        '[avcap.metrics.caption_mode_answerer]\nname = "openai"\nmodel = "answerer"\n')
    res = CliRunner().invoke(app, ["score", "--outputs-dir", str(out), "--config", str(cfg_file)])
    assert res.exit_code == 2, res.output
    errors = [l for l in res.stderr.splitlines() if l.startswith("error: ")]
    assert errors == [
        f"error: {d / 'caption.jsonl'}: all 2 caption requests failed, so there is no bleu score "
        "(first error: HTTPStatusError: 422 Unprocessable Entity: video_url is not supported)",
        f"error: {d / 'mcq.jsonl'}: all 3 MCQ requests failed, so there is no vqa_accuracy score "
        "(first error: HTTPStatusError: 422 Unprocessable Entity: video_url is not supported)",
        f"error: {out / 'tiny' / 'base' / 'LINGOQA' / 'lingoqa.jsonl'}: all 2 LingoQA requests failed, so there is "
        "no lingoqa score (first error: HTTPStatusError: 422 Unprocessable Entity: video_url is not supported)",
    ]
    assert "Traceback" not in res.output and not made  # no answerer started for captions that do not exist
    m = read_json(d / "metrics.json")
    assert m["bleu"]["value"] is None and m["bleu"]["status"] == "all_failed" and "422" in m["bleu"]["error"]
    assert m["vqa_accuracy"]["overall"] is None and m["vqa_accuracy"]["status"] == "all_failed"
    assert "per_category" not in m["vqa_accuracy"]  # no 0.0 anywhere in place of a score
    assert "every caption request failed" in m["vqa_accuracy_caption_mode_error"]
    assert m["coverage"]["caption"]["status"] == m["coverage"]["mcq"]["status"] == "all_failed"
    assert m["engine"] == {"name": "openai", "representation": None}
    lq = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")
    assert lq["lingoqa"]["score"] is None and lq["lingoqa"]["status"] == "all_failed"
    assert "lingoqa_error" not in lq  # the judge was never needed
    assert "all failed" in res.stdout and "0.0000" not in res.stdout and "0.0%" not in res.stdout


def test_real_lingoqa_predictions_match_without_a_judge(tmp_path):
    """The published val.parquet and example predictions.csv: 369 of the 500 ids match, judge or not."""
    from avcap.eval.score import score_outputs, summary_lines

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lingoqa"
    if not ((shared / "val.parquet").is_file() and (shared / "predictions.csv").is_file()):
        pytest.skip(f"{shared} is absent (a fresh clone): the real LingoQA files are not checked")
    d = tmp_path / "outputs" / "example" / "base" / "LINGOQA"
    d.mkdir(parents=True)
    (d / "lingoqa_predictions.csv").symlink_to(shared / "predictions.csv")  # read in place, never copied
    (d / "run.json").write_text(json.dumps({"dataset": "LINGOQA", "dataset_root": str(shared)}))
    cfg = load_config(None, {"avcap": {"metrics": {"lingoqa_judge": str(tmp_path / "no-judge")}}})
    m = score_outputs(tmp_path / "outputs", cfg=cfg, log=lambda m: None)[0]
    assert "lingoqa" not in m and "could not be loaded" in m["lingoqa_error"]
    cov = m["coverage"]["lingoqa"]
    assert (cov["planned"], cov["records"], cov["scored"], cov["missing"], cov["not_in_dataset"]) == (500, 500, 369, 131, 131)
    assert cov["predictions_match"]["matched"] == 369 and cov["predictions_match"]["absent"] == 131
    assert summary_lines(m) == [
        "LingoQA not computed (see lingoqa_error); 369/500 questions (131 missing, 131 not in the dataset)",
        "LingoQA predictions: 369 of 500 question ids match val.parquet (500 questions); 131 absent, "
        "131 predictions match no question",
    ]


def test_references_from_annotations_and_dataset_filter(tmp_path, judge_dir):
    from avcap.eval.score import score_outputs

    data = _dataset(tmp_path / "data", with_captions_jsonl=False)
    out = tmp_path / "outputs"
    _outputs(out, data)
    cfg = load_config(None, {"avcap": {"metrics": {"lingoqa_judge": str(judge_dir)}}})
    results = score_outputs(out, cfg=cfg, datasets=["AV_CAPTION"], log=lambda m: None)
    assert [r["dataset"] for r in results] == ["AV_CAPTION"]
    from avcap.eval.score import reference_captions

    # several lines for one video in captions.jsonl: several references
    with RecordWriter(data / "AV_CAPTION" / "captions.jsonl") as w:
        w.append({"key": "v1", "video_id": "v1", "caption": "First reference."})
        w.append({"key": "v1#2", "video_id": "v1", "caption": "Second reference."})
    refs, src = reference_captions(data / "AV_CAPTION")
    assert refs == {"v1": ["First reference.", "Second reference."]} and src.endswith("captions.jsonl")
    assert not (out / "tiny" / "base" / "LINGOQA" / "metrics.json").exists()
    assert "safety_analysis" in results[0]["bleu"]["references"]


def test_dataset_root_from_config_when_run_json_is_missing(tmp_path):
    from avcap.eval.score import score_outputs

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    _outputs(out, data)
    (out / "tiny" / "base" / "AV_CAPTION" / "run.json").unlink()
    cfg_file = tmp_path / "recipe.toml"
    cfg_file.write_text(f'[avcap.datasets.AV_CAPTION]\nkind = "av_caption"\nroot = "{data / "AV_CAPTION"}"\n')
    res = score_outputs(out, cfg=load_config(cfg_file), datasets=["AV_CAPTION"], log=lambda m: None)
    assert res[0]["bleu"]["n"] == 3 and res[0]["checkpoint_label"] == "base"


def test_cli_table_and_missing_judge(tmp_path, judge_dir):
    from typer.testing import CliRunner

    from avcap.cli import app

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    _outputs(out, data)
    runner = CliRunner()
    ok = runner.invoke(app, ["score", "--outputs-dir", str(out), "--lingoqa-judge", str(judge_dir)])
    assert ok.exit_code == 0, ok.output
    for word in ("model", "checkpoint", "BLEU", "VQA acc", "parseable", "LingoQA", "tiny", "base"):
        assert word in ok.stdout
    before = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")["lingoqa"]

    missing = tmp_path / "no-judge-here"
    res = runner.invoke(app, ["score", "--outputs-dir", str(out), "--lingoqa-judge", str(missing)])
    assert res.exit_code == 0, res.output
    m = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")
    assert "could not be loaded" in m["lingoqa_error"] and "--lingoqa-judge" in m["lingoqa_error"]
    assert m["lingoqa"] == before  # the same predictions: the earlier score is kept, and said so
    assert "earlier run is kept" in m["lingoqa_error"]
    assert "bleu" in read_json(out / "tiny" / "base" / "AV_CAPTION" / "metrics.json")

    # new predictions and no judge: no stale score
    (out / "tiny" / "base" / "LINGOQA" / "lingoqa_predictions.csv").write_text("question_id,segment_id,answer\nq1,s1,No\nq2,s1,No\n")
    runner.invoke(app, ["score", "--outputs-dir", str(out), "--lingoqa-judge", str(missing)])
    m = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")
    assert "lingoqa" not in m and "lingoqa_error" in m

    bad = runner.invoke(app, ["score", "--outputs-dir", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "no such outputs directory" in bad.output


class _FakeAnswerer:
    """Answers from the caption: 'slows' -> A, 'truck' -> B, else 'not sure'. Can crash on demand."""

    name = "fake"
    batch_size = 2

    def __init__(self):
        self.calls = 0
        self.crash_after = None

    def generate(self, requests, sampling):
        from avcap.engines import Result

        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        out = []
        for r in requests:
            prompt = r.messages[-1]["content"][-1]["text"]
            assert "Description:" in prompt and "A. clear" in prompt and not any(
                p.get("type") == "video" for p in r.messages[-1]["content"])
            q0 = "Question 0" in prompt
            out.append(Result(key=r.key, text=("A" if q0 else "B") if "slows" in prompt else "not sure"))
        return out

    def close(self):
        pass


def test_caption_mode_cached_and_resumable(tmp_path, monkeypatch):
    import avcap.engines
    from avcap.eval.score import score_outputs

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    _outputs(out, data)
    shutil.rmtree(out / "tiny" / "base" / "LINGOQA")
    fake = _FakeAnswerer()
    monkeypatch.setattr(avcap.engines, "make_engine", lambda *a, **k: fake)
    cfg = load_config(None, {"avcap": {"metrics": {"caption_mode_answerer": {"name": "openai", "model": "answerer-llm"}}}})
    cache = out / "tiny" / "base" / "AV_CAPTION" / "mcq_caption_mode.jsonl"

    fake.crash_after = 1  # killed after the first batch of 2 questions
    with pytest.raises(KeyboardInterrupt):
        score_outputs(out, cfg=cfg, log=lambda m: None)
    assert len(read_records(cache)) == 2

    fake.crash_after = None
    fake.calls = 0
    m = score_outputs(out, cfg=cfg, log=lambda m: None)[0]
    assert fake.calls == 1  # only v3's two questions were left (v2 has no caption: no request)
    c = m["vqa_accuracy_caption_mode"]
    # v1 (caption mentions "slows"): both right; v2: failed caption -> wrong; v3: "not sure" -> unparseable
    assert c["mode"] == "caption" and c["overall"] == pytest.approx(2 / 6) and c["parseable_rate"] == pytest.approx(2 / 6)
    assert c["total_predictions"] == 6 and c["videos_evaluated"] == 3 and c["answerer"] == "openai:answerer-llm"
    assert m["vqa_accuracy"]["mode"] == "direct"  # the direct score is separate

    fake.calls = 0
    score_outputs(out, cfg=cfg, log=lambda m: None)
    assert fake.calls == 0  # everything cached
    # a changed caption invalidates only its own questions
    cap = out / "tiny" / "base" / "AV_CAPTION" / "caption.jsonl"
    with RecordWriter(cap) as w:
        w.append({"key": "v3", "video_id": "v3", "text": "It slows.", "caption": None, "caption_text": "It slows.", "error": None})
    m = score_outputs(out, cfg=cfg, log=lambda m: None)[0]
    assert fake.calls == 1 and m["vqa_accuracy_caption_mode"]["overall"] == pytest.approx(4 / 6)


# ----------------------------------------------------------------------------- end to end on real inference outputs


@pytest.mark.slow
def test_end_to_end_on_inference_outputs(tmp_path, tiny_model_dir, infer_data_dir, judge_dir):
    """avcap infer (tiny Qwen3-VL) on the synthetic eval set, then avcap score on its real outputs."""
    infer = pytest.importorskip("avcap.eval.infer")
    from avcap.eval.metrics.bleu import corpus_bleu
    from avcap.bench.parse import parse_choice
    from avcap.eval.score import score_outputs

    data = infer_data_dir
    cfg_file = tmp_path / "recipe.toml"
    cfg_file.write_text(f"""
[policy]
model_name_or_path = "{tiny_model_dir}"
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.engine]
batch_size = 4
device = "cpu"
[avcap.sampling.caption]
temperature = 0.0
max_tokens = 8
[avcap.sampling.mcq]
max_tokens = 3
[avcap.sampling.lingoqa]
max_tokens = 4
[avcap.metrics]
lingoqa_judge = "{judge_dir}"
[avcap.datasets.AV_CAPTION]
kind = "av_caption"
root = "{data / 'AV_CAPTION'}"
[avcap.datasets.LINGOQA]
kind = "lingoqa"
root = "{data / 'LINGOQA'}"
""")
    cfg = load_config(cfg_file)
    out = tmp_path / "outputs"
    for ds in ("AV_CAPTION", "LINGOQA"):
        infer.run_inference(cfg, dataset=ds, model_name="tiny", outputs_dir=out, progress=False)
    results = score_outputs(out, cfg=cfg, log=lambda m: None)
    assert sorted(r["dataset"] for r in results) == ["AV_CAPTION", "LINGOQA"]

    av_dir = out / "tiny" / "base" / "AV_CAPTION"
    m = read_json(av_dir / "metrics.json")
    assert (m["model"], m["checkpoint_label"], m["dataset"]) == ("tiny", "base", "AV_CAPTION")
    refs = {}
    for r in read_records(data / "AV_CAPTION" / "captions.jsonl"):
        refs.setdefault(str(r["video_id"]), []).append(r["caption"])
    caps = {r["video_id"]: r for r in read_records(av_dir / "caption.jsonl")}
    ids = sorted(v for v in caps if v in refs)  # the corrupt clip has no reference caption
    assert ids and len(ids) < len(caps)
    expected = corpus_bleu([caps[v]["caption_text"] or "" for v in ids], [refs[v] for v in ids])
    assert m["bleu"]["value"] == expected and m["bleu"]["n"] == len(ids) and m["bleu"]["videos_without_reference"] == 1

    mcq = read_records(av_dir / "mcq.jsonl")
    right = sum(1 for r in mcq if not r["error"] and parse_choice(r["text"], r["choices"]) == r["answer"])
    v = m["vqa_accuracy"]
    assert v["total_predictions"] == len(mcq) == len(read_records(data / "AV_CAPTION" / "vqa.jsonl"))
    assert v["overall"] == pytest.approx(right / len(mcq)) and v["videos_evaluated"] == len(caps)
    assert v["engine_errors"] == sum(1 for r in mcq if r["error"]) > 0  # the corrupt clip's questions
    # coverage against what infer planned: every video and question, the corrupt clip's as errors
    cov = m["coverage"]
    assert (cov["caption"]["planned"], cov["caption"]["missing"]) == (len(caps), 0)
    assert cov["caption"]["errors"] == sum(1 for r in caps.values() if r["error"]) > 0
    assert cov["caption"]["scored"] == len(caps) - cov["caption"]["errors"] and cov["caption"]["status"] == "partial"
    assert (cov["mcq"]["planned"], cov["mcq"]["scored"]) == (len(mcq), len(mcq) - v["engine_errors"])
    assert m["engine"]["name"] == "transformers"

    questions = pd.read_parquet(data / "LINGOQA" / "val.parquet")
    lq = read_json(out / "tiny" / "base" / "LINGOQA" / "metrics.json")["lingoqa"]
    assert lq["rows"] == lq["questions"] == questions["question_id"].nunique()
    assert lq["reference_rows"] == len(questions) and lq["score"] == lq["correct"] / lq["rows"]


def test_answerer_that_cannot_start_does_not_stop_scoring(tmp_path):
    from avcap.eval.score import find_output_sets, score_outputs

    data = _dataset(tmp_path / "data")
    out = tmp_path / "outputs"
    _outputs(out, data)
    shutil.rmtree(out / "tiny" / "base" / "LINGOQA")
    # an engine table without a model: make_engine refuses
    cfg = load_config(None, {"avcap": {"metrics": {"caption_mode_answerer": {"name": "openai"}}}})
    m = score_outputs(out / "tiny", cfg=cfg, log=lambda m: None)[0]  # a model directory works too
    assert "vqa_accuracy_caption_mode" not in m and "caption_mode_answerer" in m["vqa_accuracy_caption_mode_error"]
    assert m["bleu"]["n"] == 3 and m["vqa_accuracy"]["total_predictions"] == 6
    assert find_output_sets(out / "tiny" / "base" / "AV_CAPTION") == [out / "tiny" / "base" / "AV_CAPTION"]
