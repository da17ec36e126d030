"""LingoQA scoring with Lingo-Judge, exactly as wayveai/LingoQA `benchmark/evaluate.py` + `judge.py`.

The official procedure (read from the repository, commit fd8cdac and later):

1. references: the evaluation parquet's `question_id, segment_id, question, answer`, grouped by
   `(question_id, segment_id, question)` with the answers aggregated into a list (two per question:
   1,000 rows -> 500 questions);
2. predictions: `pd.read_csv(predictions.csv)` (pandas' default NA handling: an empty answer, "None",
   "NA", "N/A", ... becomes NaN and reaches the judge as the string "nan"), column `answer` renamed
   to `prediction`;
3. `pd.merge(predictions, references, on=[question_id, segment_id])` — an inner join: predictions
   without a reference are dropped, questions without a prediction are not scored (the official
   script only warns when the merge does not have 500 rows);
4. per merged row: references and prediction go through `str(x).lower().lstrip().rstrip()` (the
   question does not), one text per reference
   `f"{tokenizer.cls_token}\\nQuestion: {question}\\nAnswer: {reference}\\nStudent: {prediction}"`,
   tokenized together with `padding=True, truncation=True, max_length=128` (the tokenizer adds its
   own [CLS]/[SEP] around the text as well), one forward pass of
   `AutoModelForSequenceClassification`, `logits.squeeze(-1)`, score = max over the references;
5. correct iff score > 0 (probability = sigmoid(score) > 0.5); benchmark score = correct rows /
   merged rows. "rows" is therefore the number of *evaluated predictions* (500 on the full
   benchmark), not the 1,000 reference rows of the parquet.

avcap batches several questions per forward pass only when their padded lengths are equal, so
every sequence sees exactly the input ids and attention mask of the official one-question batch.

An LLM judge (any avcap engine) is available as a second opinion; it is reported as
`lingoqa_llm_judge`, never as `lingoqa`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlparse

from avcap.engines import Request, build_messages

# Heavy libraries (pandas, torch, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

IMPLEMENTATION = (
    "avcap.eval.metrics.lingoqa: wayveai/LingoQA benchmark/evaluate.py + judge.py re-implemented "
    "(references grouped by question_id/segment_id/question, inner merge with the predictions on "
    "question_id/segment_id, refs and prediction lower-cased and stripped, "
    "'{cls}\\nQuestion: {q}\\nAnswer: {ref}\\nStudent: {pred}', padding + truncation max_length=128, "
    "max logit over references, correct iff > 0, score = correct / merged rows)"
)
DEFAULT_JUDGE = "wayveai/Lingo-Judge"
MAX_LENGTH = 128


class JudgeError(RuntimeError):
    """The judge model cannot be loaded; the message says how to point avcap at it."""


class LingoQAError(ValueError):
    """A problem with the parquet or predictions file (names the file)."""


# ----------------------------------------------------------------------------- official data handling


def preprocess(value: Any) -> str:
    """judge.py's LingoJudge.preprocess."""
    return str(value).lower().lstrip().rstrip()


def load_references(parquet: str | Path):
    """evaluate.py's reference table, as a flat DataFrame: question_id, segment_id, question, references."""
    import pandas as pd

    p = Path(parquet)
    if not p.is_file():
        raise LingoQAError(f"{p}: no LingoQA evaluation parquet")
    df = pd.read_parquet(p)
    missing = {"question_id", "segment_id", "question", "answer"} - set(df.columns)
    if missing:
        raise LingoQAError(f"{p}: missing column(s) {', '.join(sorted(missing))}")
    refs = df[["question_id", "segment_id", "question", "answer"]]
    refs = refs.groupby(["question_id", "segment_id", "question"]).agg(list)
    refs = refs.rename({"answer": "references"}, axis=1).reset_index()
    return refs


def load_predictions(csv_path: str | Path):
    """evaluate.py's prediction table (pandas defaults, ids read as text)."""
    import pandas as pd

    p = Path(csv_path)
    if not p.is_file():
        raise LingoQAError(f"{p}: no predictions file")
    # ids as strings: the official default dtype inference would turn an all-digit or "1e5"-like id
    # into a number and silently drop it from the merge; the answer column keeps pandas' defaults
    preds = pd.read_csv(p, dtype={"question_id": str, "segment_id": str})
    missing = {"question_id", "segment_id", "answer"} - set(preds.columns)
    if missing:
        raise LingoQAError(f"{p}: missing column(s) {', '.join(sorted(missing))} (official: question_id,segment_id,answer)")
    return preds.rename({"answer": "prediction"}, axis=1)


def merge(predictions, references):
    """evaluate.py's inner merge on (question_id, segment_id); the question text comes from the
    reference parquet (the official script's behaviour when the CSV has the official 3 columns)."""
    import pandas as pd

    preds = predictions[["question_id", "segment_id", "prediction"]]
    return pd.merge(preds, references, on=["question_id", "segment_id"])


def match_predictions(predictions_csv: str | Path, parquet: str | Path) -> dict[str, Any]:
    """How the predictions file lines up with the evaluation parquet, judge or no judge: the
    official merge's keys (question_id, segment_id). `matched` prediction rows are what the judge
    scores (`rows`); `absent` questions have no prediction; `unmatched_predictions` match none."""
    refs = load_references(parquet)
    preds = load_predictions(predictions_csv)
    ref_keys = set(zip(refs["question_id"], refs["segment_id"]))
    pred_keys = list(zip(preds["question_id"], preds["segment_id"]))
    matched = [k for k in pred_keys if k in ref_keys]
    return {
        "predictions": len(pred_keys),
        "matched": len(matched),
        "unmatched_predictions": len(pred_keys) - len(matched),
        "questions": len(ref_keys),
        "questions_matched": len(set(matched)),
        "absent": len(ref_keys - set(matched)),
        "reference_file": Path(parquet).name,
    }


def match_line(m: dict[str, Any]) -> str:
    """One line for a `match_predictions` result."""
    line = (f"predictions: {m['matched']} of {m['predictions']} question ids match {m['reference_file']} "
            f"({m['questions']} questions); {m['absent']} absent")
    if m["unmatched_predictions"]:
        line += f", {m['unmatched_predictions']} predictions match no question"
    return line


def judge_texts(cls_token: str, question: str, references: Sequence[Any], prediction: Any) -> list[str]:
    """The judge inputs of one merged row (one per reference)."""
    pred = preprocess(prediction)
    return [f"{cls_token}\nQuestion: {question}\nAnswer: {preprocess(r)}\nStudent: {pred}" for r in references]


# ----------------------------------------------------------------------------- the judge


def _device(device: Optional[str]) -> str:
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class LingoJudge:
    """Lingo-Judge (or any one-logit sequence classifier) loaded from a directory or a hub id."""

    def __init__(self, judge: str = DEFAULT_JUDGE, *, device: Optional[str] = None):
        self.source = str(judge)
        self.tokenizer, self.model = _load_judge(self.source)
        self.device = _device(device)
        self.model.to(self.device)
        self.model.eval()

    def scores(self, questions: Sequence[str], references: Sequence[Sequence[Any]], predictions: Sequence[Any],
               *, batch_questions: int = 32) -> list[float]:
        """Max logit over the references of each question (judge.py `compute`)."""
        import torch

        texts = [judge_texts(self.tokenizer.cls_token, q, r, p) for q, r, p in zip(questions, references, predictions)]
        enc = [self.tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"] for t in texts]
        padded_len = [max(len(ids) for ids in e) if e else 0 for e in enc]
        out: list[Optional[float]] = [None] * len(texts)
        # equal padded length -> identical inputs to the official one-question batches
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(padded_len):
            groups.setdefault(n, []).append(i)
        with torch.inference_mode():
            for _, idx in sorted(groups.items()):
                for b in range(0, len(idx), max(1, batch_questions)):
                    chunk = idx[b : b + max(1, batch_questions)]
                    flat = [t for i in chunk for t in texts[i]]
                    if not flat:
                        continue
                    inputs = self.tokenizer(flat, return_tensors="pt", padding=True, truncation=True, max_length=MAX_LENGTH)
                    inputs = {k: v.to(self.device) for k, v in inputs.items()}
                    logits = self.model(**inputs).logits.squeeze(-1).float().cpu().tolist()
                    if isinstance(logits, float):
                        logits = [logits]
                    pos = 0
                    for i in chunk:
                        k = len(texts[i])
                        out[i] = max(logits[pos : pos + k])
                        pos += k
        return [float("-inf") if s is None else s for s in out]


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_judge(judge: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hint = (
        "point avcap at a local copy of the judge: set [avcap.metrics] lingoqa_judge = \"/path/to/Lingo-Judge\" "
        "in the config, or pass --lingoqa-judge PATH to `avcap score` (download once with "
        "`huggingface-cli download wayveai/Lingo-Judge --local-dir Lingo-Judge` on a machine with internet)"
    )
    path = Path(judge).expanduser()
    # a hub id is "owner/name"; anything else that is not an existing directory is a missing path
    looks_local = path.exists() or judge.startswith((".", "/", "~")) or judge.count("/") > 1 or "\\" in judge
    if looks_local and not path.is_dir():
        raise JudgeError(f"LingoQA judge {judge!r} could not be loaded: no such directory; {hint}")
    # a local directory; else the Hugging Face cache; else the hub, only when it is reachable (an
    # offline machine would otherwise spend a minute in download retries before failing)
    attempts = [dict(local_files_only=True)]
    if not path.is_dir() and _hub_reachable():
        attempts.append(dict())
    last: Optional[BaseException] = None
    for kw in attempts:
        try:
            tok = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else judge, use_fast=True, **kw)
            model = AutoModelForSequenceClassification.from_pretrained(str(path) if path.is_dir() else judge, **kw)
            if getattr(model.config, "num_labels", 1) != 1:
                raise JudgeError(
                    f"LingoQA judge {judge!r} has {model.config.num_labels} labels; Lingo-Judge is a one-logit classifier; {hint}"
                )
            return tok, model
        except JudgeError:
            raise
        except Exception as exc:  # OSError (not found / offline), ValueError (bad config), ...
            last = exc
    if not path.is_dir() and len(attempts) == 1:
        reason = "not in the local Hugging Face cache, and the hub is not reachable from this machine"
    else:
        reason = f"{type(last).__name__}: " + (" ".join(str(last).split())[:300] if last else "unknown error")
        if last is not None and any(w in str(last).lower() for w in ("sentencepiece", "protobuf")):
            # Lingo-Judge ships a SentencePiece model (spm.model); the official requirements pin both
            reason += "; its SentencePiece tokenizer needs `pip install sentencepiece protobuf`"
    raise JudgeError(f"LingoQA judge {judge!r} could not be loaded ({reason}); {hint}")


# ----------------------------------------------------------------------------- scoring


@dataclass
class LingoQAResult:
    score: float
    correct: int
    rows: int
    per_question: list[dict[str, Any]]
    block: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score_predictions(
    predictions_csv: str | Path,
    parquet: str | Path,
    judge: LingoJudge,
    *,
    batch_questions: int = 32,
) -> LingoQAResult:
    """The official benchmark score of one predictions file, plus what a reviewer needs to check it."""
    refs = load_references(parquet)
    preds = load_predictions(predictions_csv)
    merged = merge(preds, refs)
    n_nan = int(merged["prediction"].isna().sum())
    scores = judge.scores(list(merged["question"]), list(merged["references"]), list(merged["prediction"]),
                          batch_questions=batch_questions)
    correct_flags = [s > 0.0 for s in scores]
    rows = len(merged)
    correct = sum(correct_flags)
    ref_keys = set(zip(refs["question_id"], refs["segment_id"]))
    pred_keys = list(zip(preds["question_id"], preds["segment_id"]))
    unmatched = sum(1 for k in pred_keys if k not in ref_keys)
    answered = set(pred_keys)
    missing = sum(1 for k in ref_keys if k not in answered)
    block: dict[str, Any] = {
        "score": correct / rows if rows else None,
        "correct": correct,
        "rows": rows,
        "questions": len(refs),
        "reference_rows": int(sum(len(r) for r in refs["references"])),
        "predictions": len(preds),
        "unmatched_predictions": unmatched,
        "unanswered_questions": missing,
        "nan_predictions": n_nan,
        "judge": judge.source,
        "judge_device": judge.device,
        "implementation": IMPLEMENTATION,
        "predictions_file": Path(predictions_csv).name,
        "predictions_sha256": _sha256(Path(predictions_csv)),
    }
    if rows != len(refs):
        block["warning"] = (
            f"{rows} of {len(refs)} questions evaluated ({unmatched} predictions matched no question, "
            f"{missing} questions have no prediction): a subset of the benchmark"
        )
    per_question = [
        {"question_id": q, "segment_id": s, "score": sc, "correct": c}
        for q, s, sc, c in zip(merged["question_id"], merged["segment_id"], scores, correct_flags)
    ]
    return LingoQAResult(block["score"] or 0.0, correct, rows, per_question, block)


# ----------------------------------------------------------------------------- LLM judge (second opinion)

LLM_JUDGE_PROMPT = (
    "You are grading an answer to a question about a driving video.\n"
    "Question: {question}\n"
    "Reference answers (any of them is correct):\n{references}\n"
    "Student answer: {prediction}\n\n"
    "Is the student answer correct, i.e. does it agree with a reference answer in meaning? "
    "Reply with exactly one word: yes or no."
)


def parse_yes_no(text: Optional[str]) -> Optional[bool]:
    if not isinstance(text, str):
        return None
    t = text.rsplit("</think>", 1)[-1].strip().lower()
    words = re.findall(r"[a-z]+", t)
    if not words:
        return None
    if words[0] in ("yes", "correct", "true"):
        return True
    if words[0] in ("no", "incorrect", "false", "wrong"):
        return False
    has_yes, has_no = "yes" in words, "no" in words
    return True if has_yes and not has_no else False if has_no and not has_yes else None


def llm_judge_block(predictions_csv: str | Path, parquet: str | Path, engine: Any, sampling: Any,
                    *, judge_name: str) -> dict[str, Any]:
    """`lingoqa_llm_judge`: the same merged rows judged by an LLM (yes/no), unparseable = wrong."""

    merged = merge(load_predictions(predictions_csv), load_references(parquet))
    requests = []
    for i, row in enumerate(merged.itertuples(index=False)):
        refs = "\n".join(f"- {preprocess(r)}" for r in row.references)
        prompt = LLM_JUDGE_PROMPT.format(question=row.question, references=refs, prediction=preprocess(row.prediction))
        requests.append(Request(key=str(i), messages=build_messages(None, prompt)))
    verdicts: list[Optional[bool]] = []
    bs = max(1, int(getattr(engine, "batch_size", 8) or 8))
    for b in range(0, len(requests), bs):
        for res in engine.generate(requests[b : b + bs], sampling):
            verdicts.append(None if res.error else parse_yes_no(res.text))
    rows = len(verdicts)
    correct = sum(1 for v in verdicts if v)
    return {
        "score": correct / rows if rows else None,
        "correct": correct,
        "rows": rows,
        "unparseable": sum(1 for v in verdicts if v is None),
        "judge": judge_name,
        "implementation": "avcap.eval.metrics.lingoqa.llm_judge_block (LLM yes/no on the official merged rows; "
        "NOT the official Lingo-Judge metric)",
    }
