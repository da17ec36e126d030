"""Query understanding: the words of a free-text query mapped to attribute facets and expansions.

People do not type the words the captions and answers use ("downpour", "motorway", "kid" where
the index says rain, highway, child). A *vocabulary* maps phrases to choices of the database's
attribute questions; `Vocabulary.understand` finds those phrases in a query and returns

- facets: which choices of which attributes the query names ("downpour" -> weather in {C}),
  negated ones as the other choices ("no pedestrians" -> pedestrian_groups in {D});
- an expansion: the distinctive words of the named choices' texts, appended to the query for the
  full-text and vector rankings ("downpour" adds "rain snow").

`ScenarioDB.search` (mode "hybrid") ranks the clips that match more facets first (db.py).

The vocabulary is data, from four sources, merged:

1. the package's `search_vocabulary.json` (general AV / driving words per choice of the packaged
   pool's questions; an entry applies only to a database attribute with the same `question_id`);
2. the database directory's `aliases.json`, if there is one;
3. files named by the caller (`avcap search --aliases FILE`, `open_db(aliases=[...])`) or by the
   environment variable AVCAP_SEARCH_ALIASES (paths separated by os.pathsep);
4. the choice texts themselves: a whole choice text ("a four-way intersection") and each of its
   words that appears nowhere else in the questions ("octagonal", "storefronts"), except words
   the vocabulary's `ignore` list names. Choices that state an absence ("No bus is visible",
   "None") and the questions that ask what is absent give no words (they name the opposite).

A file (docs/search.md, "Query understanding"):

    {"schema": "avcap.search-vocabulary/1",
     "negation": {"cues": ["no", "not", ...], "breaks": ["and", "but", ...], "window": 3},
     "ignore": ["vehicle", ...],
     "attributes": {"weather": {"question_id": "sd03",
                                "choices": {"C": ["rain*", "downpour", "drizzl*"], "CD": ["bad weather"]}}}}

A choice key is one or more letters (several: the phrase names any of them). A phrase is words
separated by spaces; a word may end in `*` (any word starting so), offer alternatives (`lorry|truck`),
and `...` stands for up to `window` other words (`pedestrian|person ... cross*`). Words match after
case folding and plural folding (a final s, ies -> y); hyphens split words ("t-junction" = "t junction").
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from avcap.scenarios.record import AttributeQuestion
from avcap.scenarios.rows import states
from avcap.scenarios.store import ScenarioDBError

VOCAB_SCHEMA = "avcap.search-vocabulary/1"
PACKAGED = "search_vocabulary.json"
DB_ALIASES_FILE = "aliases.json"  # in a database directory: that database's own aliases
ENV_ALIASES = "AVCAP_SEARCH_ALIASES"
BREAK = ""  # a token standing for punctuation: phrases and negations do not reach across it
GAP = "..."
_OR_FILLERS = frozenset(["or", "a", "an", "the", "either", "some", "any", BREAK])
_STOP = frozenset("a an and are as at be by do does for from has have if in into is it its of on or the this "
                  "that to was with".split())


@dataclass(frozen=True)
class Facet:
    """What the query says about one attribute: the clip's answer letter should be one of `letters`."""

    name: str
    letters: tuple[str, ...]
    phrase: str  # the query's words that said it ("downpour", "no pedestrians")
    negated: bool = False
    group: int = 0  # facets of one group are alternatives ("a lorry or a coach"): a clip matches the group if it matches any


@dataclass
class Understanding:
    query: str
    facets: list[Facet] = field(default_factory=list)
    expansion: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[list[Facet]]:
        """The facets by group, in the query's order: a clip should match every group (any facet of it)."""
        out: dict[int, list[Facet]] = {}
        for f in self.facets:
            out.setdefault(f.group, []).append(f)
        return list(out.values())

    @property
    def text(self) -> str:
        """The query with the expansion appended: what full-text and vector search are given."""
        return " ".join([self.query, *self.expansion]) if self.expansion else self.query


# ---- words -------------------------------------------------------------------------------------


def norm(word: str) -> str:
    """Plural folding: lorries -> lorry, cones -> cone, buses -> buse (bus and buses are both listed)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Lower-case words (possessive 's dropped, hyphenated words split, n't -> not) and BREAK for
    punctuation that ends a phrase (, . ; : ! ? and brackets)."""
    t = text.casefold().replace("\u2019", "'").replace("n't", " not")
    out = []
    for m in re.finditer(r"[a-z0-9]+(?:'[a-z]+)?|[.,;:!?()\[\]]", t):
        w = m.group(0)
        if not w[0].isalnum():
            out.append(BREAK)
            continue
        out.append(re.sub(r"'s?$", "", w).replace("'", ""))
    return out


@dataclass(frozen=True)
class _Slot:
    exact: frozenset[str]  # normalised words
    prefixes: tuple[str, ...]

    def matches(self, token: str) -> bool:
        return bool(token) and (norm(token) in self.exact or any(token.startswith(p) for p in self.prefixes))


@dataclass(frozen=True)
class _Phrase:
    slots: tuple[Optional[_Slot], ...]  # None: a gap
    name: str
    letters: frozenset[str]
    text: str
    derived: bool


def compile_phrase(text: str, where: str) -> tuple[Optional[_Slot], ...]:
    """A phrase's slots; raises ScenarioDBError naming `where` for a phrase that cannot match."""
    slots: list[Optional[_Slot]] = []
    for part in text.replace("-", " ").split():  # "t-junction" is the two words of the query's tokens
        if part == GAP:
            if not slots or slots[-1] is None:
                raise ScenarioDBError(f"{where}: {text!r}: '...' must stand between two words")
            slots.append(None)
            continue
        exact, prefixes = set(), []
        for alt in part.split("|"):
            star = alt.endswith("*")
            words = [w for w in tokens(alt.rstrip("*")) if w != BREAK]
            if len(words) != 1 or (star and len(words[0]) < 3):
                raise ScenarioDBError(f"{where}: {text!r}: {alt!r} is not one word"
                                      + (" of at least 3 letters before '*'" if star else "")
                                      + " (words are separated by spaces, alternatives by |)")
            (prefixes.append(words[0]) if star else exact.add(norm(words[0])))
        slots.append(_Slot(frozenset(exact), tuple(prefixes)))
    if not slots or slots[-1] is None:
        raise ScenarioDBError(f"{where}: {text!r}: " + ("empty phrase" if not slots else "'...' must stand between two words"))
    return tuple(slots)


# ---- vocabulary files --------------------------------------------------------------------------


def read_vocabulary_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioDBError(f"{path}: no such aliases file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioDBError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioDBError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    return data


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        raise ScenarioDBError(f"{where}: expected a list of non-empty strings")
    return value


def check_vocabulary(data: Any, source: str, questions: Mapping[str, AttributeQuestion],
                     packaged: bool = False) -> dict[str, Any]:
    """A vocabulary file's content, checked against the database's questions. Each problem is one
    line naming `source` and the field. An attribute the database does not have is an error in a
    user's file (naming the nearest), skipped in the packaged one; so is, in the packaged file, an
    attribute whose question_id differs from the database's."""
    if not isinstance(data, dict):
        raise ScenarioDBError(f"{source}: expected a JSON object with \"schema\": {VOCAB_SCHEMA!r} and \"attributes\"")
    if data.get("schema") != VOCAB_SCHEMA:
        raise ScenarioDBError(f"{source}: schema: {data.get('schema')!r} is not {VOCAB_SCHEMA!r}")
    unknown = sorted(set(data) - {"schema", "about", "negation", "ignore", "attributes"})
    if unknown:
        raise ScenarioDBError(f"{source}: {unknown[0]}: unknown field (expected schema, about, negation, ignore, attributes)")
    out: dict[str, Any] = {"cues": [], "breaks": [], "window": None, "ignore": [], "phrases": []}
    neg = data.get("negation", {})
    if not isinstance(neg, dict):
        raise ScenarioDBError(f"{source}: negation: expected an object with cues, breaks, window")
    for key in sorted(set(neg) - {"cues", "breaks", "window"}):
        raise ScenarioDBError(f"{source}: negation.{key}: unknown field (expected cues, breaks, window)")
    for key in ("cues", "breaks"):
        if key in neg:
            out[key] = [norm(w) for x in _strings(neg[key], f"{source}: negation.{key}") for w in tokens(x) if w]
    if "window" in neg:
        if not isinstance(neg["window"], int) or isinstance(neg["window"], bool) or not 0 <= neg["window"] <= 10:
            raise ScenarioDBError(f"{source}: negation.window: expected a whole number from 0 to 10")
        out["window"] = neg["window"]
    if "ignore" in data:
        out["ignore"] = [norm(w) for x in _strings(data["ignore"], f"{source}: ignore") for w in tokens(x) if w]
    attrs = data.get("attributes", {})
    if not isinstance(attrs, dict):
        raise ScenarioDBError(f"{source}: attributes: expected an object (attribute name -> {{\"choices\": ...}})")
    for name, entry in attrs.items():
        where = f"{source}: attributes.{name}"
        q = questions.get(name)
        if not isinstance(entry, dict):
            raise ScenarioDBError(f"{where}: expected an object with \"choices\"")
        for key in sorted(set(entry) - {"question_id", "choices"}):
            raise ScenarioDBError(f"{where}.{key}: unknown field (expected question_id, choices)")
        qid = entry.get("question_id")
        if qid is not None and not isinstance(qid, str):
            raise ScenarioDBError(f"{where}.question_id: expected a string")
        if q is None or (qid is not None and qid != q.question_id):
            if packaged:
                continue
            if q is None:
                near = difflib.get_close_matches(name, list(questions), n=3, cutoff=0.5)
                hint = f"did you mean {' or '.join(near)}?" if near else f"attributes: {', '.join(sorted(questions)) or 'none'}"
                raise ScenarioDBError(f"{where}: the database has no attribute {name!r} ({hint})")
            raise ScenarioDBError(f"{where}.question_id: {qid!r}, but the database's {name} is question {q.question_id!r}")
        choices = entry.get("choices")
        if not isinstance(choices, dict) or not choices:
            raise ScenarioDBError(f"{where}.choices: expected an object (letters -> list of phrases)")
        for key, phrases in choices.items():
            letters = frozenset(key.upper()) if isinstance(key, str) else frozenset()
            bad = sorted(letters - set(q.choices))
            if not key or bad or len(letters) != len(key):
                raise ScenarioDBError(f"{where}.choices.{key}: expected one or more of the letters "
                                      f"{', '.join(sorted(q.choices))} ({name}: "
                                      + "; ".join(f"{k} {v!r}" for k, v in sorted(q.choices.items())) + ")")
            for i, p in enumerate(_strings(phrases, f"{where}.choices.{key}")):
                slots = compile_phrase(p, f"{where}.choices.{key}[{i}]")
                out["phrases"].append(_Phrase(slots, name, letters, p, derived=False))
    return out


def packaged_vocabulary() -> Any:
    return json.loads(resources.files("avcap.scenarios").joinpath(PACKAGED).read_text(encoding="utf-8"))


def env_alias_files() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV_ALIASES, "").split(os.pathsep) if p.strip()]


# ---- the vocabulary ----------------------------------------------------------------------------


class Vocabulary:
    """The phrases that name choices of a database's attributes (module docstring), and
    `understand`, which reads a query with them."""

    def __init__(self, questions: Sequence[AttributeQuestion], files: Iterable[str | Path] = (),
                 packaged: bool = True):
        self.questions = {q.name: q for q in questions}
        parts = [check_vocabulary(packaged_vocabulary(), f"avcap/scenarios/{PACKAGED}", self.questions, packaged=True)] \
            if packaged else []
        self.files = [Path(f) for f in files]
        for f in self.files:
            parts.append(check_vocabulary(read_vocabulary_file(f), str(f), self.questions))
        self.cues = frozenset(w for p in parts for w in p["cues"])
        self.breaks = frozenset(w for p in parts for w in p["breaks"])
        self.window = ([p["window"] for p in parts if p["window"] is not None] or [3])[-1]  # the last file's
        self.ignore = frozenset(w for p in parts for w in p["ignore"])
        self.phrases: list[_Phrase] = [ph for p in parts for ph in p["phrases"]] + self._derived()
        self._by_first: dict[str, list[_Phrase]] = {}
        self._by_prefix: list[tuple[str, _Phrase]] = []
        for ph in self.phrases:
            for w in ph.slots[0].exact:
                self._by_first.setdefault(w, []).append(ph)
            for pre in ph.slots[0].prefixes:
                self._by_prefix.append((pre, ph))

    def _derived(self) -> list[_Phrase]:
        """Phrases from the choice texts: each stated choice's text without its leading article /
        "yes," / "it", and each of its content words (not those after a negation: "Buildings but
        no trees" gives "buildings") that appears nowhere else in the questions
        (no question's text, no other attribute's choices, no choice of absence: "emergency" is
        the topic of two questions, "cyclist" is in "No cyclist is visible"), unless `ignore`
        names it. A question that asks what is absent gives nothing."""
        out: list[_Phrase] = []
        word_to: dict[str, set[tuple[str, str]]] = {}
        elsewhere: set[str] = set()
        for name, q in self.questions.items():
            elsewhere |= {norm(w) for w in tokens(q.question) if w}
            asks_absence = not states(q, "x")  # `states` is False for every answer of such a question
            for letter, text in q.choices.items():
                words = [w for w in tokens(text) if w != BREAK]
                if asks_absence or not states(q, text):
                    elsewhere |= {norm(w) for w in words}
                    continue
                while words and words[0] in ("a", "an", "the", "it", "yes", "they", "there"):
                    words = words[1:]
                if len(words) >= 2:
                    out.append(_Phrase(tuple(_Slot(frozenset([norm(w)]), ()) for w in words), name,
                                       frozenset([letter]), text, derived=True))
                negated = False
                for w in words:  # the words after "no" in a choice ("Sidewalks but no painted crosswalk") say the opposite
                    negated = (negated or norm(w) in self.cues) and norm(w) not in self.breaks
                    if not negated and len(w) >= 3 and w not in _STOP and not w.isdigit():
                        word_to.setdefault(norm(w), set()).add((name, letter))
        for w, pairs in sorted(word_to.items()):
            names = {n for n, _ in pairs}
            if len(names) != 1 or w in elsewhere or w in self.ignore:
                continue
            (name,) = names
            q = self.questions[name]
            letters = frozenset(k for _, k in pairs)
            if len(letters) < len(q.choices):  # naming every choice says nothing
                out.append(_Phrase((_Slot(frozenset([w]), ()),), name, letters, w, derived=True))
        return out

    # ---- reading a query ----

    def _match_at(self, ph: _Phrase, toks: list[str], i: int) -> Optional[list[int]]:
        """The token positions `ph` matches starting at i, or None."""
        pos: list[int] = []
        j = i
        gap = False
        for slot in ph.slots:
            if slot is None:
                gap = True
                continue
            limit = j + (self.window if gap else 0)
            while j < len(toks) and j <= limit and toks[j] != BREAK and not slot.matches(toks[j]):
                j += 1
            if j >= len(toks) or j > limit or not slot.matches(toks[j]):
                return None
            pos.append(j)
            j += 1
            gap = False
        return pos

    def matches(self, query: str) -> list[tuple[_Phrase, list[int], list[str]]]:
        """The phrases found in `query`: (phrase, token positions, tokens), overlaps resolved: a
        phrase whose words are some of a longer phrase's words is dropped ("stop" inside "stop
        sign", "pedestrian" inside "pedestrian ... crosses"), and a phrase derived from choice
        texts is dropped where a phrase of the vocabulary files covers any of its words."""
        toks = tokens(query)
        found = []
        for i, t in enumerate(toks):
            if t == BREAK:
                continue
            cands = list(self._by_first.get(norm(t), ()))
            cands += [ph for pre, ph in self._by_prefix if t.startswith(pre)]
            for ph in cands:
                pos = self._match_at(ph, toks, i)
                if pos is not None:
                    found.append((ph, pos))
        curated = set().union(*[set(p) for ph, p in found if not ph.derived]) if found else set()
        found = [(ph, p) for ph, p in found if not (ph.derived and curated.intersection(p))]
        sets = [frozenset(p) for _, p in found]
        return [(ph, pos, [toks[k] for k in pos]) for ph, pos in found if not any(frozenset(pos) < o for o in sets)]

    def understand(self, query: str) -> Understanding:
        toks = tokens(query)
        found = self.matches(query)
        covered = set().union(*[set(p) for _, p, _ in found]) if found else set()
        per_attr: dict[str, list[tuple[frozenset[str], str, bool, int, int]]] = {}
        for ph, pos, words in found:
            cue = self._negation(toks, pos[0], covered)
            negated = cue is not None
            q = self.questions[ph.name]
            letters = frozenset(q.choices) - ph.letters if negated else ph.letters
            if not letters:
                continue
            phrase = " ".join(([toks[cue]] if negated else []) + words)
            per_attr.setdefault(ph.name, []).append((letters, phrase, negated, pos[0], pos[-1]))
        facets = []
        span: dict[str, tuple[int, int]] = {}
        for name, items in per_attr.items():
            allowed: Optional[frozenset[str]] = None
            phrases = []
            for letters, phrase, *_ in sorted(items, key=lambda x: x[3]):
                # two phrases naming one attribute: where they agree if they do ("drizzly rain"), else either ("rain or fog")
                allowed = letters if allowed is None else (allowed & letters) or (allowed | letters)
                if phrase not in phrases:
                    phrases.append(phrase)
            if allowed is None or allowed >= frozenset(self.questions[name].choices):
                continue
            facets.append(Facet(name, tuple(sorted(allowed)), " + ".join(phrases), negated=all(x[2] for x in items)))
            span[name] = (min(x[3] for x in items), max(x[4] for x in items))
        facets.sort(key=lambda f: span[f.name])
        # phrases of two attributes joined by "or" ("a lorry or a coach") are alternatives: one group
        grouped: list[Facet] = []
        for f in facets:
            prev = grouped[-1] if grouped else None
            between = toks[span[prev.name][1] + 1:span[f.name][0]] if prev else []
            joined = (prev is not None and not prev.negated and not f.negated and "or" in between
                      and all(t in _OR_FILLERS for t in between))
            grouped.append(replace(f, group=prev.group if joined else (prev.group + 1 if prev else 0)))
        return Understanding(query, grouped, self._expansion(query, grouped))

    def _negation(self, toks: list[str], start: int, covered: set[int]) -> Optional[int]:
        """The position of a negation cue ("no", "not", "without", ...) up to `window` words
        before the phrase, with no punctuation or scope-breaking word ("and", "but", "with", ...)
        between; None if there is none."""
        for k in range(start - 1, max(-1, start - 2 - self.window), -1):
            t = toks[k]
            if t == BREAK or (k not in covered and norm(t) in self.breaks):
                return None
            if k not in covered and norm(t) in self.cues:
                return k
        return None

    def _expansion(self, query: str, facets: list[Facet]) -> list[str]:
        """Distinctive words of the choice a facet names: the words of its text that the
        attribute's other choices do not use, at most four a facet, not already in the query. Only
        for a facet of one choice ("downpour" adds "rain snow"): the words of several choices
        ("stop" names three reasons to stop) would mostly add what the query did not say."""
        have = {norm(t) for t in tokens(query) if t}
        out: list[str] = []
        for f in facets:
            if len(f.letters) != 1:
                continue
            q = self.questions[f.name]
            inside = [w for k in f.letters for w in tokens(q.choices[k]) if w]
            outside = {norm(w) for k, t in q.choices.items() if k not in f.letters for w in tokens(t) if w}
            words = []
            for w in inside:
                n = norm(w)
                if (len(w) >= 3 and w not in _STOP and n not in self.ignore and n not in outside and n not in have
                        and w not in words and w not in out):
                    words.append(w)
            out += words[:4]
        return out


def load_vocabulary(questions: Sequence[AttributeQuestion], db_dir: Optional[Path] = None,
                    files: Iterable[str | Path] = ()) -> Vocabulary:
    """The packaged vocabulary, the database's own aliases.json, `files` and AVCAP_SEARCH_ALIASES's files."""
    paths: list[Path] = []
    if db_dir is not None and (db_dir / DB_ALIASES_FILE).is_file():
        paths.append(db_dir / DB_ALIASES_FILE)
    paths += [Path(f) for f in files] + env_alias_files()
    return Vocabulary(questions, paths)
