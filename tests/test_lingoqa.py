"""LingoQA: the official evaluate.py/judge.py rule, checked with a tiny DeBERTa-v2 judge built here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lingoqa"

QA = [
    ("q1", "s1", "What colour is the traffic light?", ["Green.", "It is green"]),
    ("q2", "s1", "How many cyclists are ahead?", ["Two", "There are two cyclists."]),
    ("q3", "s2", "Is it safe to overtake?", ["No, the vehicle in front is braking.", "no"]),
    ("q4", "s2", "What should we do?", ["Slow down because the car is braking.", "slow down"]),
    ("q5", "s3", "Are there pedestrians crossing?", ["None.", "No pedestrians."]),
    ("q6", "s3", "How many lanes are there?", ["Three", "three lanes"]),
    ("q7", "s3", "What colour is the bus?", ["Red", "red"]),
]
LONG = " ".join(["the vehicle in front is braking so we should slow down"] * 30)
# as pandas reads the CSV below: "" and "None" become NaN, which the judge sees as "nan"
PREDICTIONS = {"q1": "GREEN", "q2": "there are two cyclists", "q3": "nan", "q4": LONG, "q5": "nan", "q6": "Four lanes"}
_WORD = re.compile(r"\w+|[^\w\s]")
_ALL_TEXT = ["question answer student nan orphan four"] + [q for _, _, q, _ in QA] + [a for *_, r in QA for a in r] + list(PREDICTIONS.values())


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    """A one-logit DeBERTa-v2 sequence classifier with a fixed local WordPiece vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("judge") / "tiny-lingo-judge"
    words = sorted({w for text in _ALL_TEXT for w in _WORD.findall(text.lower())})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = DebertaV2Config(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=256, num_labels=1, pad_token_id=fast.pad_token_id,
                          initializer_range=0.5)
    model = DebertaV2ForSequenceClassification(cfg).eval()
    # centre the logits on this test's own judge inputs: about half of the answers are accepted
    from avcap.eval.metrics.lingoqa import judge_texts

    with torch.no_grad():
        maxima = []
        for qid, _, question, refs in QA:
            texts = judge_texts("[CLS]", question, refs, PREDICTIONS.get(qid, ""))
            enc = fast(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
            maxima.append(model(**enc).logits.squeeze(-1).max())
        model.classifier.bias -= torch.stack(maxima).median() + 1e-3
    model.save_pretrained(out)
    return out


def _data(tmp_path: Path) -> tuple[Path, Path]:
    """An evaluation parquet (2 references per question) and an official predictions CSV with the
    cases that matter: exact, paraphrase, wrong, empty (NaN), a "None" answer (NaN to pandas), a long
    answer (truncated at 128 tokens), an id that matches no question, a question without prediction."""
    rows = []
    for qid, seg, q, answers in QA:
        for a in answers:
            rows.append({"question_id": qid, "segment_id": seg, "images": [f"images/val/{seg}/{k}.jpg" for k in range(5)],
                         "question": q, "answer": a})
    parquet = tmp_path / "val.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    csv = tmp_path / "predictions.csv"
    csv.write_text(
        "question_id,segment_id,answer\n"
        "q1,s1,  GREEN  \n"
        "q2,s1,there are two cyclists\n"
        "q3,s2,\n"
        "q4,s2," + LONG + "\n"
        "q5,s3,None\n"
        "q6,s3,Four lanes\n"
        "zz,s9,orphan\n",
        encoding="utf-8",
    )
    return parquet, csv


def _official(parquet: Path, csv: Path, judge_dir: Path):
    """A direct re-implementation of wayveai/LingoQA evaluate.py + judge.py (one question per call)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(judge_dir, use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(judge_dir).eval()
    references = pd.read_parquet(parquet)
    references = references[["question_id", "segment_id", "question", "answer"]]
    references = references.groupby(["question_id", "segment_id", "question"]).agg(list)
    references = references.rename({"answer": "references"}, axis=1).reset_index()
    predictions = pd.read_csv(csv).rename({"answer": "prediction"}, axis=1)
    merged = pd.merge(predictions, references, on=["question_id", "segment_id"])

    def preprocess(s):
        return str(s).lower().lstrip().rstrip()

    scores = []
    with torch.inference_mode():
        for _, row in merged.iterrows():
            refs = [preprocess(r) for r in row["references"]]
            pred = preprocess(row["prediction"])
            texts = [f"{tokenizer.cls_token}\nQuestion: {row['question']}\nAnswer: {a}\nStudent: {pred}" for a in refs]
            enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
            s = model(**enc).logits.squeeze(-1)
            scores.append(float(max(s)))
    correct = [s > 0.0 for s in scores]
    return merged, scores, correct, sum(correct) / len(merged)


@pytest.mark.parametrize("batch_questions", [1, 4, 32])
def test_matches_official_rule(tmp_path, tiny_judge_dir, batch_questions):
    from avcap.eval.metrics.lingoqa import LingoJudge, score_predictions

    parquet, csv = _data(tmp_path)
    merged, ref_scores, ref_correct, ref_score = _official(parquet, csv, tiny_judge_dir)
    judge = LingoJudge(str(tiny_judge_dir), device="cpu")
    res = score_predictions(csv, parquet, judge, batch_questions=batch_questions)
    assert [r["question_id"] for r in res.per_question] == list(merged["question_id"])
    got = [r["score"] for r in res.per_question]
    assert got == pytest.approx(ref_scores, abs=1e-5)
    assert [r["correct"] for r in res.per_question] == ref_correct
    assert res.block["score"] == pytest.approx(ref_score)
    # the official denominator: merged prediction rows (6 here: the orphan dropped, q7 unanswered)
    assert res.block["rows"] == 6 and res.rows == 6
    assert res.block["questions"] == 7 and res.block["reference_rows"] == 14
    assert res.block["unmatched_predictions"] == 1 and res.block["unanswered_questions"] == 1
    assert res.block["nan_predictions"] == 2  # the empty answer and "None", as pandas reads them
    assert "warning" in res.block and res.block["judge"] == str(tiny_judge_dir)
    assert 0 < sum(ref_correct) < len(ref_correct), "the test judge should accept some and reject some"


def test_prediction_match_without_a_judge(tmp_path):
    """How the predictions line up with the parquet, before (and without) any judge."""
    from avcap.eval.metrics.lingoqa import match_line, match_predictions

    parquet, csv = _data(tmp_path)
    m = match_predictions(csv, parquet)
    assert m == {"predictions": 7, "matched": 6, "unmatched_predictions": 1, "questions": 7, "questions_matched": 6,
                 "absent": 1, "reference_file": "val.parquet"}
    assert match_line(m) == ("predictions: 6 of 7 question ids match val.parquet (7 questions); 1 absent, "
                             "1 predictions match no question")
    # a segment id that differs is no match either (the official merge is on both ids)
    csv.write_text("question_id,segment_id,answer\nq1,s2,green\nq2,s1,two\n")
    m = match_predictions(csv, parquet)
    assert (m["matched"], m["unmatched_predictions"], m["absent"]) == (1, 1, 6)


def test_template_and_preprocessing():
    from avcap.eval.metrics.lingoqa import judge_texts, preprocess

    assert preprocess("  Yes, GREEN.\n") == "yes, green."
    assert preprocess(float("nan")) == "nan"
    t = judge_texts("[CLS]", "Is It Red?", ["  Yes ", "NO"], " Maybe ")
    assert t == ["[CLS]\nQuestion: Is It Red?\nAnswer: yes\nStudent: maybe", "[CLS]\nQuestion: Is It Red?\nAnswer: no\nStudent: maybe"]


def test_truncation_at_128_tokens(tiny_judge_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_judge_dir, use_fast=True)
    ids = tok(["[CLS]\nQuestion: q\nAnswer: a\nStudent: " + "slow down " * 200], truncation=True, max_length=128)["input_ids"][0]
    assert len(ids) == 128


def test_missing_judge_says_how_to_fix(tmp_path):
    from avcap.eval.metrics.lingoqa import JudgeError, LingoJudge

    with pytest.raises(JudgeError) as exc:
        LingoJudge(str(tmp_path / "no-such-judge"))
    msg = str(exc.value)
    assert "could not be loaded" in msg and "lingoqa_judge" in msg and "--lingoqa-judge" in msg


def test_llm_judge_is_separate(tmp_path):
    from avcap.engines import Result
    from avcap.eval.metrics.lingoqa import llm_judge_block, parse_yes_no

    parquet, csv = _data(tmp_path)

    class Fake:
        batch_size = 4

        def generate(self, requests, sampling):
            return [Result(key=r.key, text="Yes." if "green" in str(r.messages) else "no") for r in requests]

    block = llm_judge_block(csv, parquet, Fake(), None, judge_name="fake:judge")
    assert block["rows"] == 6 and block["correct"] == 1 and "NOT the official" in block["implementation"]
    assert parse_yes_no("Yes") is True and parse_yes_no("no, wrong") is False and parse_yes_no("maybe") is None
    assert parse_yes_no("<think>no</think> yes") is True


def test_real_lingoqa_files_parse():
    """The published val.parquet (1000 rows, 500 questions) and example predictions.csv."""
    from avcap.eval.metrics.lingoqa import load_predictions, load_references, merge

    parquet, csv = SHARED / "val.parquet", SHARED / "predictions.csv"
    if not (parquet.exists() and csv.exists()):
        pytest.skip(f"{SHARED} is absent (a fresh clone): the real LingoQA files are not checked")
    raw = pd.read_parquet(parquet)
    assert len(raw) == 1000
    refs = load_references(parquet)
    assert len(refs) == 500 and refs["segment_id"].nunique() == 100
    assert all(len(r) == 2 for r in refs["references"])
    preds = load_predictions(csv)
    assert len(preds) == 500
    merged = merge(preds, refs)
    # the example predictions file matches 369 of the 500 questions (the official script warns)
    official = pd.merge(pd.read_csv(csv).rename({"answer": "prediction"}, axis=1),
                        raw[["question_id", "segment_id", "question", "answer"]].groupby(
                            ["question_id", "segment_id", "question"]).agg(list), on=["question_id", "segment_id"])
    assert len(merged) == len(official) == 369
    # the example file carries its own question column: identical to the parquet's on every matched row
    q_csv = pd.read_csv(csv).set_index("question_id")["question"]
    assert all(q_csv[q] == qq for q, qq in zip(merged["question_id"], merged["question"]))
    assert int(merged["prediction"].isna().sum()) == int(official["prediction"].isna().sum())
    from avcap.eval.metrics.lingoqa import match_line, match_predictions

    m = match_predictions(csv, parquet)
    assert (m["predictions"], m["matched"], m["questions"], m["absent"], m["unmatched_predictions"]) == (500, 369, 500, 131, 131)
    assert match_line(m).startswith("predictions: 369 of 500 question ids match val.parquet (500 questions); 131 absent")
