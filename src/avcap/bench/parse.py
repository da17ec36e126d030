"""Reading the chosen letter out of a model's answer to a benchmark question (used by the
benchmark's answerers and by MCQ-VQA scoring, `avcap.eval.metrics.mcq`).

`parse_choice(text, choices)` returns the letter the answer commits to, or None. It never guesses:
no first-capital-letter rule (which reads "A car ahead brakes, so the answer is B." as A), no
"last few tokens" rule, no random fallback. What it understands, in order:

1. reasoning: only the text after the last `</think>` counts; a `<think>` that is never closed
   (cut off mid-reasoning) has no answer -> None;
2. `<answer>...</answer>` and JSON (`{"answer": "C"}`, also inside ``` fences): their content is read
   as a short answer (a letter, a labelled option, an option's text) and nothing else counts;
3. a short answer: the whole text is a letter with optional brackets/punctuation/markdown ("B",
   "(B)", "B.", "**B**", "b", "[C]", "Option C"), or exactly one option's text, or starts with a
   labelled option ("(C) Two lanes", "B. Two lanes", "B) ...", "B: ..."); a letter that is not one
   of the choices ("E" for A-D) -> None;
4. declarations: "the answer is B", "Answer: D.", "correct option is (C)", "I choose B",
   "B is correct", ...; two different declared letters -> None; a declared letter outside the
   choices -> None;
5. otherwise the standalone capital letters of the choices in the text ("I think it's B.") —
   exactly one distinct letter or None. Not counted: "A" or "I" followed by a word (the article /
   pronoun: "A car ahead ..."), letters inside words or hyphenated terms ("BMW", "B-pillar"),
   letters right after a negation ("not A", "rule out C");
6. otherwise, when the text holds no such letter at all: a sentence that restates exactly one
   choice's text as a phrase ("There is rain on the windshield." for B = "Rain") — whole words,
   case and punctuation ignored, no stemming ("rainy", "raining" are not "Rain"); an occurrence
   inside a longer choice's occurrence counts only for the longer one ("the left lane" is
   "Left lane", not "Left"); zero or several choices mentioned ("clear, no rain") -> None.
Refusals ("I cannot determine ...", "not possible to tell") give None unless the text also
declares an answer explicitly. Two letters offered as equally possible ("A or B") give None.
"""

from __future__ import annotations

import json
import re
from typing import Mapping, Optional

PARSER = "avcap.bench.parse.parse_choice"

_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.I | re.S)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*")
_MD = re.compile(r"(\*\*|__|\*|`)")

_REFUSAL = re.compile(
    r"\b(?:cannot|can ?not|can't|unable to|not able to|impossible to|no way to)\s+(?:be\s+)?"
    r"(?:determine|determined|tell|told|say|know|answer|decide|see|identify|infer|conclude)"
    r"|\bnot\s+(?:possible|enough\s+information|sure)\b|\binsufficient\s+information\b"
    r"|\bnone of the (?:above|options|choices)\b",
    re.I,
)

# words after "A"/"I" that make it a letter, not the article/pronoun ("A is correct", "A because ...")
_LETTER_FOLLOWERS = frozenset(
    "is was seems appears looks would should could fits matches describes best correctly because since as "
    "or and nor but than vs versus".split()
)
_NEGATION = re.compile(
    r"(?:\bnot|n't|\bno|\bnever|\bexclude|\bexcluding|\beliminate|\beliminating|\brule\s+out|\bruled\s+out"
    r"|\bruling\s+out|\bexcept|\bneither|\bnor|\brather\s+than|\binstead\s+of)\s+(?:option\s+|choice\s+)?[(\[]?$",
    re.I,
)

_ALTERNATIVE = re.compile(r"\s*[)\]]?\s*(?:,|/|\bor\b|\band\b|\bnor\b)\s*(?:option\s+|choice\s+)?[(\[]?([A-Z])(?![A-Za-z0-9])")
_LETTER_END = r"(?=$|[\s.,;:!?)\]}'\"*]|-(?![A-Za-z]))"  # what may follow a letter that is an answer

_DECLARATIONS = [
    # "the answer is B", "Answer: D.", "final answer: (C)", "my answer would be option B"
    r"\banswer\s*(?:is|:|=|-|would\s+be|should\s+be|will\s+be|must\s+be)?\s*:?\s*(?:option|choice|letter)?\s*:?\s*[(\[]?\s*(?P<l>[A-Za-z])\s*[)\]]?"
    + _LETTER_END,
    # "the correct option is C", "the best choice would be (B)"
    r"\b(?:correct|right|best|most\s+likely|most\s+accurate|most\s+appropriate)\s+(?:answer|option|choice)\s*"
    r"(?:is|:|=|would\s+be|should\s+be|will\s+be|must\s+be)?\s*:?\s*(?:option|choice|letter)?\s*[(\[]?\s*(?P<l>[A-Za-z])\s*[)\]]?"
    + _LETTER_END,
    # "option B is correct", "(C) is the right answer", "B is correct"
    r"(?:\b(?:option|choice|letter)\s*)?(?<![A-Za-z0-9'])[(\[]?(?P<l>[A-Z])[)\]]?\s+(?:is|seems|appears\s+to\s+be|would\s+be)\s+"
    r"(?:the\s+)?(?:correct|right|best|most\s+likely|most\s+accurate|answer)\b",
    # "I choose B", "I'd go with option C", "select (A)."
    r"\b(?:choose|chose|select|selected|pick|picked|go\s+with|going\s+with)\s+(?:option|choice|letter)?\s*[(\[]?\s*(?P<l>[A-Za-z])\s*[)\]]?"
    + _LETTER_END,
]
_DECLARATION_RES = [re.compile(p, re.I if i != 2 else 0) for i, p in enumerate(_DECLARATIONS)]

_SHORT = re.compile(r"^[\s\"'(\[{<]*(?:(?:the\s+)?(?:final\s+)?(?:answer|option|choice|letter)\s*(?:is)?\s*[:=\-]?\s*)?[(\[]?\s*(?P<l>[A-Za-z])\s*[)\]]?[\s.,;:!?\"')\]}>]*$", re.I)
_LABELLED = re.compile(r"^[\s\"'*]*(?:option\s+|choice\s+)?[(\[]?(?P<l>[A-Za-z])(?:[)\]]|[.:]|\s-|\s*[)\]][.:]?)\s+(?P<rest>\S.*)$", re.I | re.S)
_LABELLED_LINE = re.compile(r"^\s*[(\[]?([A-Za-z])[)\].:]\s+\S", re.M)


def _norm_text(s: str) -> str:
    s = _MD.sub("", s).lower()
    s = re.sub(r"[^\w\s%/-]", " ", s)
    return " ".join(s.split())


def _letter_ok(letter: str, choices: Mapping[str, str]) -> Optional[str]:
    up = letter.upper()
    return up if up in choices else None


def _option_text_letter(text: str, choices: Mapping[str, str]) -> Optional[str]:
    """The letter whose option text equals `text` (case, punctuation and spacing ignored)."""
    t = _norm_text(text)
    if not t:
        return None
    hits = {k for k, v in choices.items() if _norm_text(str(v)) == t}
    return hits.pop() if len(hits) == 1 else None


class _Ambiguous(Exception):
    pass


def _short_answer(text: str, choices: Mapping[str, str]) -> tuple[bool, Optional[str]]:
    """(matched, letter) for a text that is only an answer: a letter, a labelled option, an option's
    text. matched=True with letter None means "clearly a bare answer, but not a valid choice"."""
    t = text.strip()
    m = _SHORT.match(t)
    if m:
        return True, _letter_ok(m.group("l"), choices)
    letter = _option_text_letter(t, choices)
    if letter:
        return True, letter
    m = _LABELLED.match(t)
    if m and len(set(_LABELLED_LINE.findall(t))) <= 1:
        letter = _letter_ok(m.group("l"), choices)
        if letter is None:
            # "A. car ahead" is not a label when A is not a choice; "E. ..." with A-D is
            return (m.group("l").isupper() and len(m.group("l")) == 1), None
        other = _option_text_letter(m.group("rest"), choices)
        if other is not None and other != letter:
            return True, None  # "B. <text of option C>": contradictory
        return True, letter
    return False, None


def _followed_by_word(text: str, end: int) -> Optional[str]:
    m = re.match(r"\s+([A-Za-z][A-Za-z'’-]*)", text[end:])
    return m.group(1).lower() if m else None


def _is_article_or_pronoun(text: str, start: int, end: int) -> bool:
    """'A car', 'I think': a capital A/I followed by a word that does not make it a letter."""
    if text[start:end] not in ("A", "I"):
        return False
    if end < len(text) and text[end] in "'’":
        return True  # I'm, I'd
    nxt = _followed_by_word(text, end)
    return nxt is not None and nxt not in _LETTER_FOLLOWERS


def _declared(text: str, choices: Mapping[str, str]) -> set[str]:
    """Letters the text declares as its answer ('?' for a declared letter outside the choices)."""
    found: set[str] = set()
    for i, rx in enumerate(_DECLARATION_RES):
        for m in rx.finditer(text):
            s, e = m.span("l")
            raw = m.group("l")
            if raw.islower():
                # lower-case only when nothing word-like follows ("answer is b." but not "answer is a car")
                if _followed_by_word(text, e) is not None and _followed_by_word(text, e) not in _LETTER_FOLLOWERS:
                    continue
                if e < len(text) and text[e].isalpha():
                    continue
            elif _is_article_or_pronoun(text, s, e):
                continue
            if _NEGATION.search(text[max(0, s - 40) : s]):
                continue
            found.add(_letter_ok(raw, choices) or "?")
            # "the answer is A or C": every alternative offered counts (and makes it ambiguous)
            for alt in _ALTERNATIVE.finditer(text, e):
                if alt.start() != e:
                    break
                found.add(_letter_ok(alt.group(1), choices) or "?")
                e = alt.end()
    return found


def _standalone(text: str, choices: Mapping[str, str]) -> set[str]:
    out: set[str] = set()
    keys = "".join(sorted(k for k in choices if len(k) == 1 and k.isalpha() and k.isupper()))
    if not keys:
        return out
    for m in re.finditer(rf"(?<![A-Za-z0-9'’&/-])([{keys}])(?![A-Za-z0-9'’&/]|-[A-Za-z])", text):
        s, e = m.span(1)
        if _is_article_or_pronoun(text, s, e):
            continue
        if _NEGATION.search(text[max(0, s - 40) : s]):
            continue
        out.add(m.group(1))
    return out


def _json_answer(text: str) -> tuple[bool, Optional[str]]:
    """(found, value) of an "answer"-like key in a JSON object inside the text."""
    body = _FENCE.sub("", text)
    i, j = body.find("{"), body.rfind("}")
    if not (0 <= i < j):
        return False, None
    try:
        obj = json.loads(body[i : j + 1])
    except ValueError:
        return False, None
    if not isinstance(obj, dict):
        return False, None
    for k, v in obj.items():
        if str(k).lower() in ("answer", "final_answer", "choice", "option", "letter", "selected", "prediction"):
            return True, None if v is None else str(v)
    return False, None


def parse_choice(text: Optional[str], choices: Mapping[str, str]) -> Optional[str]:
    """The letter (a key of `choices`) that `text` commits to, or None. Never guesses."""
    if not isinstance(text, str) or not text.strip() or not choices:
        return None
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    elif _THINK_OPEN.search(text):
        return None  # reasoning cut off before its answer
    text = text.strip()
    if not text:
        return None

    tags = _ANSWER_TAG.findall(text)
    if tags:
        letters = {_short_or_declared(t, choices) for t in tags}
        return letters.pop() if len(letters) == 1 else None

    found, value = _json_answer(text)
    if found:
        return _short_or_declared(value or "", choices)

    plain = _FENCE.sub("", _MD.sub("", text)).strip()
    return _free_text(plain, choices)


def _short_or_declared(text: str, choices: Mapping[str, str]) -> Optional[str]:
    plain = _MD.sub("", text).strip()
    matched, letter = _short_answer(plain, choices)
    if matched:
        return letter
    return _free_text(plain, choices)


def _free_text(plain: str, choices: Mapping[str, str]) -> Optional[str]:
    if not plain:
        return None
    matched, letter = _short_answer(plain, choices)
    if matched:
        return letter
    # the first line on its own is a bare answer ("B\n\nBecause the car ahead ...")
    first = plain.split("\n", 1)[0].strip()
    if first != plain:
        m = _SHORT.match(first)
        if m:
            return _letter_ok(m.group("l"), choices)
    declared = _declared(plain, choices)
    if declared:
        if len(declared) != 1 or "?" in declared:
            return None
        return declared.pop()
    if _REFUSAL.search(plain):
        return None
    # "the answer is: two lanes" / "Answer - Two lanes."
    m = re.search(r"\banswer\s*(?:is|:|=|-)\s*:?\s*(?P<rest>[^\n]+)", plain, re.I)
    if m:
        letter = _option_text_letter(m.group("rest"), choices)
        if letter:
            return letter
    letters = _standalone(plain, choices)
    if len(letters) == 1:
        return letters.pop()
    if letters:
        return None
    return _mentioned_choice(plain, choices)


def _mentioned_choice(text: str, choices: Mapping[str, str]) -> Optional[str]:
    """The one choice whose whole text the sentence contains as a phrase, or None (rule 6)."""
    t = _norm_text(text)
    spans: dict[str, list[tuple[int, int]]] = {}
    for k, v in choices.items():
        phrase = _norm_text(str(v))
        if not phrase:
            continue
        # whole words: a hyphen or slash joins words ("rain-soaked" is not "rain")
        rx = re.compile(rf"(?<![\w/-]){re.escape(phrase)}(?![\w/-])")
        spans[k] = [m.span() for m in rx.finditer(t)]

    def covered(k: str, s: int, e: int) -> bool:  # inside a longer choice's occurrence
        return any(o != k and (os_, oe) != (s, e) and os_ <= s and e <= oe for o, sp in spans.items() for os_, oe in sp)

    hits = {k for k, sp in spans.items() if any(not covered(k, s, e) for s, e in sp)}
    return hits.pop() if len(hits) == 1 else None


# ----------------------------------------------------------------------------- scores
