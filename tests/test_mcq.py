"""MCQ letter parsing (a large table of realistic outputs and traps) and the MCQ statistics."""

from __future__ import annotations

import math

import pytest

from avcap.eval.metrics.mcq import clustered_se, mcq_scores, parse_choice, sample_std

CHOICES = {"A": "One lane", "B": "Three lanes", "C": "Two lanes", "D": "Four lanes"}
CHOICES_CAR = {
    "A": "The ego vehicle accelerates",
    "B": "The ego vehicle slows down",
    "C": "The ego vehicle turns left",
    "D": "The ego vehicle changes lanes to the right",
}

# (model output, expected letter or None)
CASES: list[tuple[str, object]] = [
    # bare letters and light formatting
    ("A", "A"),
    ("B", "B"),
    ("b", "B"),
    ("a", "A"),
    (" C \n", "C"),
    ("(C)", "C"),
    ("[D]", "D"),
    ("B.", "B"),
    ("B)", "B"),
    ("'B'", "B"),
    ('"D"', "D"),
    ("**B**", "B"),
    ("**B.**", "B"),
    ("`C`", "C"),
    ("Option C", "C"),
    ("option c.", "C"),
    ("Choice: A", "A"),
    ("Answer: D.", "D"),
    ("Answer: (B)", "B"),
    ("ANSWER: B", "B"),
    ("Final answer: C", "C"),
    ("The answer is B.", "B"),
    ("The answer is b", "B"),
    ("the answer is: a", "A"),
    ("The correct answer is (C).", "C"),
    ("The correct option is B: Three lanes.", "B"),
    ("**Answer:** C", "C"),
    ("### Answer\nB", "B"),
    # labelled options
    ("(C) Two lanes", "C"),
    ("C. Two lanes", "C"),
    ("C) Two lanes", "C"),
    ("C: Two lanes", "C"),
    ("B - Three lanes", "B"),
    ("b) three lanes", "B"),
    ("B. Two lanes", None),  # label and text disagree
    # option text
    ("Two lanes", "C"),
    ("two lanes.", "C"),
    ("  Four Lanes ", "D"),
    ("The answer is: two lanes", "C"),
    # tags, JSON, reasoning
    ("<answer>B</answer>", "B"),
    ("<answer> (D) </answer>", "D"),
    ("I think so. <answer>C</answer>", "C"),
    ('{"answer": "C"}', "C"),
    ('```json\n{"answer": "B"}\n```', "B"),
    ('{"answer": "Two lanes", "confidence": 0.8}', "C"),
    ('{"answer": "E"}', None),
    ('{"answer": null}', None),
    ("<think>A is wrong, B is possible, maybe D.</think>C", "C"),
    ("<think>\nThe road has two lanes, so A and B are out.\n</think>\n\nC", "C"),
    ("<think>Option A says one lane. Option B says three.</think>\nThe answer is D.", "D"),
    ("<think>The answer is A because", None),  # cut off inside the reasoning
    ("<think>hmm</think>", None),
    # sentences: the traps of first-capital-letter parsers
    ("A car ahead brakes, so the answer is B.", "B"),
    ("A car ahead brakes, so B.", "B"),
    ("A pedestrian is crossing. I think it's B.", "B"),
    ("I think the answer is C.", "C"),
    ("I choose D.", "D"),
    ("I would go with option A.", "A"),
    ("B is correct.", "B"),
    ("Option B is the correct answer because the road has three lanes.", "B"),
    ("A is the best answer.", "A"),
    ("A because the ego vehicle is alone in its lane.", "A"),
    ("B\n\nThe car ahead brakes and the ego vehicle slows down.", "B"),
    ("The answer is not A, it is C.", "C"),
    ("It's not A; the answer is D.", "D"),
    ("Answer: B. Option A would mean one lane, which is not the case.", "B"),
    ("After looking at the video, the answer is B. The answer is B.", "B"),
    ("Based on the B-pillar view, the answer is C.", "C"),
    ("The BMW in front slows down: C.", "C"),
    ("A white car is ahead of us in the left lane.", None),
    ("A", "A"),
    # refusals, ambiguity, out-of-range letters, empty
    ("I cannot determine the number of lanes from the video.", None),
    ("I can't tell from this video.", None),
    ("It is not possible to determine the answer.", None),
    ("Not sure.", None),
    ("None of the above.", None),
    ("A or B", None),
    ("Either A or B.", None),
    ("Both A and C are plausible.", None),
    ("A/B", None),
    ("The answer is A or C.", None),
    ("E", None),
    ("(E)", None),
    ("The answer is E.", None),
    ("Answer: F", None),
    ("", None),
    ("   ", None),
    ("\n\n", None),
    ("The video shows a road.", None),
    ("Lanes: 2", None),
    # more real-world shapes
    ("Therefore, the final answer is $\\boxed{C}$.", "C"),
    ("The correct answer is B, not A.", "B"),
    ("C.\n\nExplanation: there are two lanes (not A, B or D).", "C"),
    ("A. One lane\nB. Three lanes\nC. Two lanes\nD. Four lanes", None),  # the options echoed back
    ("It could be A, B or C.", None),
    ("Answer: A car", None),
    ("answer: a car", None),
    ("Answer: I don't know", None),
    ("Based on the video, C is the correct choice.", "C"),
    ("I'm going with B.", "B"),
    ("Answer:C", "C"),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[f"{i:02d}:{c[0][:40]!r}" for i, c in enumerate(CASES)])
def test_parse_choice_table(text, expected):
    assert parse_choice(text, CHOICES) == expected


def test_table_is_large():
    assert len(CASES) >= 60


CAR_CASES = [
    ("The ego vehicle slows down", "B"),
    ("B. The ego vehicle slows down.", "B"),
    ("Since a car ahead brakes, the ego vehicle slows down. Answer: B", "B"),
    ("A car ahead brakes, so the answer is B.", "B"),
    ("The ego vehicle accelerates.", "A"),
    ("D. The ego vehicle changes lanes to the right", "D"),
    ("A: The ego vehicle accelerates", "A"),
    ("I cannot determine what the ego vehicle does, but maybe B.", None),
]


@pytest.mark.parametrize("text,expected", CAR_CASES)
def test_parse_choice_with_sentence_options(text, expected):
    assert parse_choice(text, CHOICES_CAR) == expected


WEATHER = {"A": "Clear", "B": "Rain", "C": "Snow", "D": "Fog"}
LANES = {"A": "Left", "B": "Left lane", "C": "Right lane", "D": "Straight"}

# a full sentence that restates one choice's text (rule 6 of the parser): (choices, text, expected)
MENTION_CASES: list[tuple[dict, str, object]] = [
    # exactly one choice's text, as whole words, case and punctuation ignored
    (WEATHER, "There is rain on the windshield and the road is wet.", "B"),
    (WEATHER, "The weather in the video: RAIN, and lots of it.", "B"),
    (WEATHER, "Visibility is poor because of the fog ahead.", "D"),
    (WEATHER, "The sky is clear and the road is dry.", "A"),
    (WEATHER, "<think>Wet road.</think>I see rain falling on the road.", "B"),
    (WEATHER, "<answer>It looks like snow covers the road</answer>", "C"),
    # no stemming: "rainy" / "raining" / "snowing" are not the choice "Rain" / "Snow" (never guess)
    (WEATHER, "The weather in the video is rainy... it is raining", None),
    (WEATHER, "It is snowing heavily.", None),
    (WEATHER, "The road looks rain-soaked.", None),  # a hyphenated word is not the word
    (WEATHER, "Rainfall is heavy.", None),
    # several choices mentioned: ambiguous, negated or not
    (WEATHER, "The weather is clear, no rain.", None),
    (WEATHER, "It is not snow, it is rain.", None),
    (WEATHER, "Rain or snow, hard to say.", None),
    (WEATHER, "Fog and rain.", None),
    # none mentioned
    (WEATHER, "The road is wet and the wipers are on.", None),
    # refusals still win
    (WEATHER, "I cannot tell whether it is rain.", None),
    # a letter in the sentence is read as before (rule 5), the choice text does not override it
    (WEATHER, "I think it's B, there is rain.", "B"),
    (WEATHER, "Either A or B, rain maybe.", None),
    # choice texts that are substrings of each other: the longer occurrence owns its words
    (LANES, "The ego vehicle moves into the left lane.", "B"),
    (LANES, "The ego vehicle turns left at the junction.", "A"),
    (LANES, "It turns left, then merges into the left lane.", None),  # "left" on its own as well
    (LANES, "The truck is in the right lane.", "C"),
    (LANES, "It drives in the left lane; a truck passes in the right lane.", None),
    (LANES, "The car keeps to its lanes and goes straight on.", "D"),
    (LANES, "The car is in the left-lane queue.", None),
    # the existing option-text rules are unchanged
    (LANES, "Left lane", "B"),
    (LANES, "left", "A"),
]


@pytest.mark.parametrize("choices,text,expected", MENTION_CASES,
                         ids=[f"{i:02d}:{c[1][:40]!r}" for i, c in enumerate(MENTION_CASES)])
def test_parse_choice_sentence_restating_one_choice(choices, text, expected):
    assert parse_choice(text, choices) == expected


def test_parse_choice_non_strings_and_empty_choices():
    assert parse_choice(None, CHOICES) is None  # type: ignore[arg-type]
    assert parse_choice("B", {}) is None
    assert parse_choice("B", {"A": "x", "B": "y"}) == "B"
    assert parse_choice("C", {"A": "x", "B": "y"}) is None


# ----------------------------------------------------------------------------- statistics


def _rec(video, cat, truth, text, error=None):
    return {"video_id": video, "category": cat, "choices": CHOICES, "answer": truth, "text": text, "error": error}


def test_scores_hand_computed():
    recs = [
        # video v1: 3 questions, 2 right
        _rec("v1", "Scene Description", "A", "A"),
        _rec("v1", "Key Objects", "B", "B"),
        _rec("v1", "Key Objects", "C", "A"),
        # video v2: 2 questions, 0 right (one unparseable, one failed request)
        _rec("v2", "Scene Description", "D", "I cannot determine."),
        _rec("v2", "Key Objects", "A", None, error="video decode failed"),
        # video v3: 1 question, right
        _rec("v3", "Scene Description", "C", "The answer is C."),
    ]
    s = mcq_scores(recs)
    assert s["total_predictions"] == 6 and s["videos_evaluated"] == 3
    assert s["overall"] == pytest.approx(3 / 6)
    assert s["per_category"] == pytest.approx({"Key Objects": 1 / 3, "Scene Description": 2 / 3})
    assert s["parseable_rate"] == pytest.approx(4 / 6)
    assert s["unparseable"] == 2 and s["engine_errors"] == 1 and s["correct"] == 3
    per_video = [2 / 3, 0.0, 1.0]
    mean = sum(per_video) / 3
    assert s["mean_per_video"] == pytest.approx(mean)
    assert s["std_per_video"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in per_video) / 2))
    # clustered SE by hand: p = 1/2; residual sums per video: v1 2-3*.5 = .5, v2 0-2*.5 = -1, v3 1-.5 = .5
    cr0 = math.sqrt((0.5**2 + 1.0**2 + 0.5**2) / 6**2)
    assert s["clustered_se_cr0"] == pytest.approx(cr0)
    assert s["clustered_se"] == pytest.approx(cr0 * math.sqrt(3 / 2))
    assert s["mode"] == "direct" and s["parser"] == "avcap.bench.parse.parse_choice"


def test_clustered_se_balanced_equals_std_over_sqrt_g():
    clusters = [[1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1]]
    per_video = [sum(c) / len(c) for c in clusters]
    se = clustered_se([[float(x) for x in c] for c in clusters])
    assert se == pytest.approx(sample_std(per_video) / math.sqrt(len(clusters)))


def test_clustered_se_singletons_is_binomial_like():
    ys = [1, 0, 1, 1, 0, 1, 1, 0]  # one question per video: CR0 = sqrt(p(1-p)/N)
    p = sum(ys) / len(ys)
    assert clustered_se([[float(y)] for y in ys], kind="CR0") == pytest.approx(math.sqrt(p * (1 - p) / len(ys)))
    with pytest.raises(ValueError):
        clustered_se([[1.0]], kind="HC3")


def test_scores_degenerate():
    assert mcq_scores([])["overall"] is None
    one = mcq_scores([_rec("v1", "Scene Description", "A", "A")])
    assert one["overall"] == 1.0 and one["std_per_video"] is None and one["clustered_se"] is None
    assert one["clustered_se_cr0"] == 0.0
    assert sample_std([0.5]) is None
