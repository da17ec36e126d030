"""The search language, as pure functions: attribute filters (`--where name=value`), the SQL-like
`--filter`, and the fusion of full-text and vector rankings (reciprocal rank fusion).

`--where weather=rain` matches a choice of the attribute's question by its letter (`C`), its exact
text (`"Rain or snow"`), a whole word of it (`rain`) or, failing that, a substring; a value that
matches several choices selects any of them (`lighting=daytime` is A or B). Repeating an attribute
ORs its values, different attributes AND. `name!=value` excludes the matching choices. The clauses
become SQL on the `<name>_letter` columns, so they filter by the answer's letter.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from avcap.scenarios.record import AttributeQuestion

MODES = ("hybrid", "hybrid-plain", "text", "vector")  # hybrid: with query understanding (understand.py)
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009; LanceDB's RRFReranker uses 60 too)


class QueryError(ValueError):
    """A query that cannot run: one line naming the clause and what is wrong with it."""


@dataclass(frozen=True)
class Condition:
    """One attribute filter: the attribute's answer letter is (or, negated, is not) one of `letters`."""

    name: str
    letters: tuple[str, ...]
    negate: bool = False
    clause: str = ""  # what the user wrote, for messages


def letter_column(name: str) -> str:
    return f"{name}_letter"


def sql_string(value: str) -> str:
    """A SQL string literal ('it''s')."""
    return "'" + value.replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A column name as the filter language quotes it (a name like `order` is a SQL keyword)."""
    return f"`{name}`"


def choices_text(q: AttributeQuestion) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in sorted(q.choices.items()))


def match_choices(value: str, q: AttributeQuestion) -> list[str]:
    """The letters of `q`'s choices that `value` names: its letter, its exact text (case-insensitive),
    the choices containing it as whole words, else the choices containing it as a substring."""
    v = value.strip()
    if not v:
        return []
    if len(v) == 1 and v.upper() in q.choices:
        return [v.upper()]
    low = v.casefold()
    exact = [k for k, text in q.choices.items() if text.casefold() == low]
    if exact:
        return sorted(exact)
    word = re.compile(r"(?<!\w)" + re.escape(low) + r"(?!\w)")
    words = [k for k, text in q.choices.items() if word.search(text.casefold())]
    if words:
        return sorted(words)
    return sorted(k for k, text in q.choices.items() if low in text.casefold())


def _items(where: Sequence[str] | Mapping[str, str | Sequence[str]] | None) -> list[tuple[str, str, bool, str]]:
    """(name, value, negate, clause) for each clause of a `--where` list or a {name: value(s)} dict."""
    out: list[tuple[str, str, bool, str]] = []
    if not where:
        return out
    if isinstance(where, Mapping):
        for name, values in where.items():
            for value in ([values] if isinstance(values, str) else list(values)):
                out.append((str(name), str(value), False, f"{name}={value}"))
        return out
    for clause in where:
        m = re.match(r"^\s*([^=!]+?)\s*(!=|=)\s*(.*?)\s*$", clause)
        if not m:
            raise QueryError(f"--where {clause!r}: expected NAME=VALUE (or NAME!=VALUE), e.g. weather=rain")
        out.append((m.group(1), m.group(3), m.group(2) == "!=", clause))
    return out


def parse_where(where: Sequence[str] | Mapping[str, str | Sequence[str]] | None,
                attributes: Mapping[str, AttributeQuestion]) -> list[Condition]:
    """The attribute filters of a query, one `Condition` per attribute (and sign): repeated values
    of one attribute are ORed. Raises QueryError for an unknown attribute (naming the nearest) or a
    value that names no choice (listing the choices)."""
    merged: dict[tuple[str, bool], tuple[list[str], list[str]]] = {}
    for raw_name, value, negate, clause in _items(where):
        name = raw_name.strip().lower().replace("-", "_")
        q = attributes.get(name)
        if q is None:
            near = difflib.get_close_matches(name, list(attributes), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(near)}?" if near else f"attributes: {', '.join(sorted(attributes)) or 'none'}"
            raise QueryError(f"--where {clause}: unknown attribute {raw_name.strip()!r} ({hint})")
        if not value.strip():
            raise QueryError(f"--where {clause}: no value; choices of {name}: {choices_text(q)}")
        letters = match_choices(value, q)
        if not letters:
            raise QueryError(f"--where {clause}: {value!r} names no choice of {name}; choices: {choices_text(q)}")
        got_letters, clauses = merged.setdefault((name, negate), ([], []))
        got_letters.extend(x for x in letters if x not in got_letters)
        clauses.append(clause)
    return [Condition(name, tuple(sorted(letters)), negate, " | ".join(clauses))
            for (name, negate), (letters, clauses) in merged.items()]


def where_sql(conditions: Iterable[Condition]) -> Optional[str]:
    parts = []
    for c in conditions:
        values = ", ".join(sql_string(x) for x in c.letters)
        parts.append(f"{sql_ident(letter_column(c.name))} {'NOT IN' if c.negate else 'IN'} ({values})")
    return " AND ".join(parts) or None


def facet_sql(name: str, letters: Sequence[str]) -> str:
    """A facet as a two-valued condition: false, not unknown, for a clip without an answer, so
    that NOT of it keeps that clip."""
    col = sql_ident(letter_column(name))
    return f"({col} IS NOT NULL AND {col} IN ({', '.join(sql_string(x) for x in letters)}))"


def all_of(conds: Sequence[str]) -> str:
    return "(" + " AND ".join(conds) + ")"


def at_least_all_but_one(conds: Sequence[str]) -> str:
    """All of `conds` but possibly one (k >= 2)."""
    return "(" + " OR ".join(all_of([c for j, c in enumerate(conds) if j != i]) for i in range(len(conds))) + ")"


def exactly_all_but_one(conds: Sequence[str]) -> str:
    """All of `conds` but exactly one (k >= 2)."""
    return "(" + " OR ".join(all_of([f"NOT {c}" if j == i else c for j, c in enumerate(conds)])
                             for i in range(len(conds))) + ")"


def check_filter(sql: Optional[str]) -> Optional[str]:
    """A raw `--filter` checked for what a cheap look can tell (the database judges the rest)."""
    if sql is None or not sql.strip():
        return None
    s = sql.strip()
    if ";" in re.sub(r"'(?:[^']|'')*'", "", s):
        raise QueryError(f"--filter {sql!r}: one expression, no ';' (e.g. \"weather_letter = 'C' AND duration_s > 5\")")
    if len(re.findall(r"'", s)) % 2:
        raise QueryError(f"--filter {sql!r}: a string literal is not closed (quote strings with '...')")
    depth = 0
    for ch in re.sub(r"'(?:[^']|'')*'", "", s):
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            break
    if depth:
        raise QueryError(f"--filter {sql!r}: unbalanced parentheses")
    return s


def combine(*parts: Optional[str]) -> Optional[str]:
    """AND the filters that are set, each parenthesised."""
    kept = [p for p in parts if p]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else " AND ".join(f"({p})" for p in kept)


def filter_error_line(sql: str, exc: Exception) -> str:
    """A database's complaint about a filter as one line (its first line, without the SQL echo)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    msg = re.sub(r"^(Invalid input|lance error|Lance error)[,:]\s*", "", msg)
    msg = re.sub(r"SELECT 1 FROM t WHERE ", "", msg)
    m = re.search(r"No field named [`'\"]?(\w+)[`'\"]?\. Valid fields are (.*)", msg)
    if m:  # name the nearest columns instead of listing a hundred
        fields = re.findall(r"`([^`]+)`", m.group(2))
        near = difflib.get_close_matches(m.group(1), fields, n=3, cutoff=0.5)
        msg = f"no column named {m.group(1)!r}" + (f" (did you mean {' or '.join(near)}?)" if near else "")
    return f"--filter {sql!r}: {msg}"


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: each id scores sum(1 / (k + rank)) over the rankings it appears in
    (rank from 1). Ties go to the id with the better best rank, then to the id, so the order is
    deterministic."""
    score: dict[str, float] = {}
    best: dict[str, int] = {}
    for ranking in rankings:
        for r, key in enumerate(ranking, start=1):
            score[key] = score.get(key, 0.0) + 1.0 / (k + r)
            best[key] = min(best.get(key, r), r)
    return sorted(score.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


_STOP = frozenset("a an and are at by for from in into is it its of on or the to with without".split())


def query_words(query: str) -> set[str]:
    """The content words of a free-text query (lower case, no stop words, at least 3 letters)."""
    return {w for w in re.findall(r"[a-z0-9]+", query.casefold()) if len(w) >= 3 and w not in _STOP}


def snippet(text: str, query: str, width: int = 160) -> str:
    """The part of a caption that best shows why it matched: the sentence sharing the most words
    with the query (a word matches another with the same first five letters: rain/raining), to
    `width` characters; the caption's start when the query is empty or shares nothing."""
    text = " ".join(text.split())
    words = {w[:5] for w in query_words(query)}
    if not words:
        return _cut(text, width)
    sentences = re.split(r"(?<=[.!?])\s+", text)
    best, best_hits = 0, 0
    for i, s in enumerate(sentences):
        hits = len(words & {w[:5] for w in re.findall(r"[a-z0-9]+", s.casefold())})
        if hits > best_hits:
            best, best_hits = i, hits
    rest = " ".join(sentences[best:])
    return _cut(("… " if best else "") + rest, width)


def _cut(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1].rstrip() + "…"
