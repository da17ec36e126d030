"""BLEU: bit-for-bit parity with pycocoevalcap's BleuScorer, and coco-caption's PTB tokenization."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from avcap.eval.metrics.bleu import (
    bleu_from_tokens,
    bleu_report,
    bleu_scores,
    corpus_bleu,
    sacrebleu_corpus,
    sentence_bleu,
)
from avcap.eval.metrics.ptb_tokenizer import PUNCTUATIONS, coco_tokenize, coco_tokenize_corpus, ptb_tokenize

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LINGOQA_PARQUET = SHARED / "lingoqa" / "val.parquet"
LINGOQA_PREDICTIONS = SHARED / "lingoqa" / "predictions.csv"


def _bleu_scorer():
    try:
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    except Exception as exc:  # pragma: no cover - dev extra missing
        pytest.skip(f"pycocoevalcap is not importable ({exc}); install the dev extra to check parity")
    return BleuScorer


def _reference_scores(hyps: list[str], refs: list[list[str]]):
    """pycocoevalcap's Bleu(4).compute_score path, on already tokenized captions."""
    BleuScorer = _bleu_scorer()
    scorer = BleuScorer(n=4)
    for h, r in zip(hyps, refs):
        scorer += (h, r)
    return scorer.compute_score(option="closest", verbose=0)


# ----------------------------------------------------------------------------- test corpora

VOCAB = "the a car ego vehicle lane left right turns stops slows down at red green light truck ahead of road wet".split()


def _random_corpus(rng: random.Random, n_captions: int) -> tuple[list[str], list[list[str]]]:
    hyps, refs = [], []
    for _ in range(n_captions):
        hyps.append(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 25))))
        refs.append([" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 25))) for _ in range(rng.randint(1, 4))])
    return hyps, refs


EDGE_CASES: list[tuple[str, list[str], list[str]]] = [
    # (name, hypotheses, references as "|"-joined alternatives)
    ("empty hypothesis", [""], ["the car stops at the red light"]),
    ("empty hypothesis and reference", [""], [""]),
    ("empty reference", ["the car stops"], [""]),
    ("one token", ["car"], ["the car stops at the light"]),
    ("two tokens", ["the car"], ["the car"]),
    ("three tokens exact", ["the car stops"], ["the car stops"]),
    ("four tokens exact", ["the car stops now"], ["the car stops now"]),
    ("identical long", ["the ego vehicle slows down behind a white truck"], ["the ego vehicle slows down behind a white truck"]),
    ("multiple references", ["the car turns left at the light"], ["a car turns left|the car turns left at the green light|left turn"]),
    ("closest length tie picks shorter", ["a b c d e"], ["a b c d|a b c d e f"]),
    ("repeated n-grams clipped", ["the the the the the the the"], ["the cat is on the mat"]),
    ("repeated bigrams", ["car car car car"], ["car car|car car car"]),
    ("longer than references", ["the car the car the car the car the car"], ["the car"]),
    ("no overlap", ["alpha beta gamma delta"], ["one two three four"]),
]


def _edge_corpus():
    hyps, refs = [], []
    for _, h, r in EDGE_CASES:
        hyps += h
        refs += [x.split("|") for x in r]
    return hyps, refs


# ----------------------------------------------------------------------------- parity on tokens


def test_parity_with_bleu_scorer_on_random_corpora():
    rng = random.Random(0)
    worst = 0.0
    for trial in range(200):
        hyps, refs = _random_corpus(rng, rng.randint(1, 30))
        ref_corpus, ref_sent = _reference_scores(hyps, refs)
        mine = bleu_from_tokens(hyps, refs)
        for a, b in zip(ref_corpus, mine.bleu):
            worst = max(worst, abs(a - b))
        for k in range(4):
            for a, b in zip(ref_sent[k], mine.per_sentence[k]):
                worst = max(worst, abs(a - b))
    assert worst == 0.0, f"max abs difference vs BleuScorer: {worst}"


@pytest.mark.parametrize("name,hyps,refs", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_parity_edge_cases_one_by_one(name, hyps, refs):
    refs = [r.split("|") for r in refs]
    ref_corpus, ref_sent = _reference_scores(hyps, refs)
    mine = bleu_from_tokens(hyps, refs)
    assert mine.bleu == ref_corpus
    assert mine.per_sentence == ref_sent


def test_parity_edge_cases_as_one_corpus():
    hyps, refs = _edge_corpus()
    ref_corpus, ref_sent = _reference_scores(hyps, refs)
    mine = bleu_from_tokens(hyps, refs)
    assert mine.bleu == ref_corpus
    assert mine.per_sentence == ref_sent


def test_known_values():
    assert corpus_bleu(["the car stops at the red light"], [["the car stops at the red light"]]) == pytest.approx(1.0)
    assert corpus_bleu([""], [["the car stops"]]) == 0.0
    # fewer than 4 tokens: no 4-gram can match, BleuScorer's smoothing leaves a tiny positive number
    short = corpus_bleu(["the car"], [["the car"]])
    assert 0.0 < short < 1e-3
    # hand-computed: hyp "a b c d e" vs ref "a b c d x": p1=4/5 p2=3/4 p3=2/3 p4=1/2, bp=1
    expected = (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert corpus_bleu(["a b c d e"], [["a b c d x"]]) == pytest.approx(expected, rel=1e-9)
    # brevity penalty: hyp 4 tokens, closest ref 8 tokens -> exp(1 - 8/4)
    bp = corpus_bleu(["a b c d"], [["a b c d e f g h"]])
    assert bp == pytest.approx(math.exp(1 - 8 / 4), rel=1e-6)


def test_corpus_level_is_not_mean_of_sentences():
    hyps = ["the car stops at the red light now", "a truck"]
    refs = [["the car stops at the red light now"], ["a big truck turns left"]]
    res = bleu_scores(hyps, refs)
    assert res.bleu4 != pytest.approx(sum(res.per_sentence[3]) / 2)
    assert 0.0 <= res.bleu4 <= 1.0
    assert sentence_bleu(hyps[0], refs[0]) == pytest.approx(1.0)


def test_input_validation():
    with pytest.raises(ValueError):
        bleu_from_tokens(["a"], [])
    with pytest.raises(ValueError):
        bleu_from_tokens(["a"], [[]])
    with pytest.raises(ValueError):
        bleu_from_tokens(["a"], ["a b"])  # a bare string is not a list of references


# ----------------------------------------------------------------------------- tokenization

# Expected values are the jar's output (Stanford PTBTokenizer 3.4.1 -preserveLines -lowerCase, as
# shipped in pycocoevalcap 1.2) with coco-caption's punctuation removed, all lines in one batch.
GOLDEN = [
    ("The ego vehicle is driving on a two-lane road; it's daytime and the weather's clear.",
     "the ego vehicle is driving on a two-lane road it 's daytime and the weather 's clear"),
    ("A white sedan ahead brakes, so the ego car slows down (about 30 km/h).",
     "a white sedan ahead brakes so the ego car slows down -lrb- about 30 km/h -rrb-"),
    ('"Pedestrians" wait at the crosswalk... The light turns green!',
     "pedestrians wait at the crosswalk the light turns green"),
    ("The car doesn't stop; it can't, and it won't. We cannot see the U.S. flag.",
     "the car does n't stop it ca n't and it wo n't we can not see the u.s. flag"),
    ("Visibility is reduced, e.g. by fog, rain, etc. The road is wet.",
     "visibility is reduced e.g. by fog rain etc. the road is wet"),
    ("The truck's trailer [blue] blocks the left lane -- partially.",
     "the truck 's trailer -lsb- blue -rsb- blocks the left lane partially"),
    ("Speed: 3.5 m/s, 1,000 meters, 10:30 am, 50% chance, $5 toll, 3/4 of the lane.",
     "speed 3.5 m/s 1,000 meters 10:30 am 50 % chance $ 5 toll 3/4 of the lane"),
    ("A left-turn at the T-junction; a U-turn is prohibited.",
     "a left-turn at the t-junction a u-turn is prohibited"),
    ("Option A. Then option B. The answer is C.",
     "option a then option b the answer is c"),
    ("The answer is B.",
     "the answer is b"),
    ("It is 5 p.m. The sun is low.",
     "it is 5 p.m. the sun is low"),
    ("He's gonna turn at St. Mary's Rd. in Calif. The end.",
     "he 's gon na turn at st. mary 's rd. in calif. the end"),
    ('{"weather": "clear", "lighting": "daylight"}',
     "-lcb- weather clear lighting daylight -rcb-"),
    ("\u2018Curly\u2019 \u201cquotes\u201d and an ellipsis\u2026 and a dash \u2014 here.",
     "curly quotes and an ellipsis and a dash here"),
    ("No. 5 is the bus; No. The bus is number 5.",
     "no. 5 is the bus no the bus is number 5"),
    ("Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \U0001F600 emoji",
     "caf\u00e9 na\u00efve r\u00e9sum\u00e9 emoji"),
]


def test_tokenization_golden_batch():
    got = coco_tokenize_corpus([g[0] for g in GOLDEN])
    assert got == [g[1] for g in GOLDEN]


def test_tokenizer_details():
    assert ptb_tokenize("don't") == ["do", "n't"]
    assert ptb_tokenize("(x)") == ["-LRB-", "x", "-RRB-"]
    assert coco_tokenize("The CAR, stops.") == "the car stops"
    assert coco_tokenize("") == ""
    assert coco_tokenize("line one\nline two") == "line one line two"  # coco-caption joins a caption's lines
    assert "-LRB-" in PUNCTUATIONS and coco_tokenize("(a)") == "-lrb- a -rrb-"  # coco-caption's quirk, kept


def _jar() -> tuple[str, Path]:
    java = shutil.which("java")
    if not java:
        pytest.skip("no java on PATH: the live check against Stanford PTBTokenizer 3.4.1 needs it")
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"pycocoevalcap is not importable ({exc})")
    jar = Path(ptb.__file__).parent / "stanford-corenlp-3.4.1.jar"
    if not jar.exists():
        pytest.skip(f"{jar} is missing")
    return java, jar


def _jar_tokenize(lines: list[str], tmp_path: Path) -> list[str]:
    java, jar = _jar()
    src = tmp_path / "captions.txt"
    src.write_text("\n".join(lines), encoding="utf-8")
    out = subprocess.run(
        [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", str(src)],
        capture_output=True, text=True, encoding="utf-8", check=True, timeout=300,
    ).stdout.split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in out[: len(lines)]]


def _caption_like_lines(n: int, seed: int = 7) -> list[str]:
    words = (
        "the ego vehicle is driving on a two-lane road with clear weather and daylight . A white sedan ahead "
        "brakes , so the ego car slows down ; pedestrians wait at the crosswalk near a traffic light showing "
        "green ! there is no cyclist ? it's rainy and the road's surface is wet , visibility's reduced . The "
        "truck's trailer (blue) blocks the left lane [partially] . 30 km/h 45 mph 2.5 m 10 meters 3rd 4-way "
        "T-junction U-turn left-turn right-hand lane-change e.g. i.e. etc. vs. approx. St. No. U.S. Mr. '' \" ' ` "
        "safety_analysis : { } \"weather\": \"clear\", ``` json -- \u2014 \u2013 ... \u2026 don't doesn't isn't "
        "won't can't cannot it's that's there's we're they've I'm you'll he'd O'Neil rock'n'roll 1,000 3.5 -2 +1 "
        "50% $10 #1 @home & / * = ~ ^ | \\ \u00b0 \u00bd \u20ac \u00a3 \u00e9 \u00fc \u00f1"
    ).split()
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        line = ""
        for _ in range(rng.randint(1, 30)):
            line += rng.choice(words) + rng.choice([" "] * 8 + ["", ",", ".", "  "])
        lines.append(line.strip())
    return lines


def test_tokenizer_matches_stanford_jar(tmp_path):
    lines = [g[0] for g in GOLDEN] + _caption_like_lines(600)
    if LINGOQA_PARQUET.exists():
        import pandas as pd

        df = pd.read_parquet(LINGOQA_PARQUET)
        lines += list(df["question"].unique()) + [str(a).replace("\n", " ") for a in df["answer"]]
    expected = _jar_tokenize(lines, tmp_path)
    got = coco_tokenize_corpus(lines)
    diffs = [(line, e, g) for line, e, g in zip(lines, expected, got) if e != g]
    assert not diffs, f"{len(diffs)} of {len(lines)} lines differ, first: {diffs[:3]}"


def test_full_coco_pipeline_parity_on_real_text(tmp_path):
    """coco-caption end to end (Java PTBTokenizer + Bleu(4)) vs avcap, on LingoQA's real answers."""
    _jar()
    if not (LINGOQA_PARQUET.exists() and LINGOQA_PREDICTIONS.exists()):
        pytest.skip(f"{SHARED}/lingoqa is absent (a fresh clone): real-text parity not checked")
    import pandas as pd
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs_by_q = pd.read_parquet(LINGOQA_PARQUET).groupby("question_id")["answer"].agg(list)
    preds = pd.read_csv(LINGOQA_PREDICTIONS).set_index("question_id")["answer"]
    ids = [q for q in refs_by_q.index if q in preds.index]
    hyps = [str(preds[q]) for q in ids]
    refs = [list(refs_by_q[q]) for q in ids]
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in refs[i]] for i in range(len(ids))})
    res = tok.tokenize({i: [{"caption": hyps[i]}] for i in range(len(ids))})
    ref_corpus, ref_sent = Bleu(4).compute_score(gts, res, verbose=0)
    mine = bleu_scores(hyps, refs)
    assert mine.bleu == ref_corpus
    assert mine.per_sentence == ref_sent


# ----------------------------------------------------------------------------- sacrebleu and the report


def test_sacrebleu_cross_check_matches_sacrebleu():
    import sacrebleu

    hyps = ["The car stops at the red light.", "A truck turns left."]
    refs = [["The car stops at the red light."], ["A big truck turns left.", "The truck turns left."]]
    got = sacrebleu_corpus(hyps, refs)
    direct = sacrebleu.corpus_bleu(hyps, [[refs[0][0], refs[1][0]], [None, refs[1][1]]])
    assert got["score"] == pytest.approx(direct.score)
    assert "tok:13a" in got["signature"] and "nrefs:var" in got["signature"]


def test_bleu_report_block():
    rep = bleu_report(["v1", "v2"], ["the car stops", "a truck turns left"], [["the car stops"], ["a truck turns right"]])
    assert set(rep) >= {"value", "implementation", "tokenization", "n", "sacrebleu", "per_video"}
    assert rep["n"] == 2 and set(rep["per_video"]) == {"v1", "v2"}
    assert 0.0 <= rep["value"] <= 1.0 and 0.0 <= rep["sacrebleu"]["score"] <= 100.0
    assert "BleuScorer" in rep["implementation"] and "PTBTokenizer" in rep["tokenization"]
