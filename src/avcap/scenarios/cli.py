"""`avcap index DIR_OR_FILE... --db DB` and `avcap search [QUERY] --db DB` (docs/search.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from avcap.core.records import DirectoryBusy
from avcap.scenarios.db import Hit, ScenarioDBError, open_db
from avcap.scenarios.rows import states
from avcap.scenarios.embed import EmbedderError
from avcap.scenarios.query import MODES, QueryError, query_words, snippet


def _fail(line: str) -> None:
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def index(
    inputs: List[Path] = typer.Argument(..., help="Label output directories (questions.json + scenarios.jsonl or "
                                        "scenarios/*.jsonl) or scenario record files."),
    db: Path = typer.Option(..., "--db", help="The database directory (made on first use)."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="wordllama (default), wordllama@DIM, or a "
                                           "sentence-transformers model directory; a database keeps the one it was made with."),
    force: bool = typer.Option(False, "--force", help="Read files again even when the log says they are unchanged."),
    json_out: bool = typer.Option(False, "--json", help="Print the ingest report as one JSON object."),
) -> None:
    """Add scenario records to a database: new clips are added, re-labelled clips replace their
    older record, nothing is duplicated; the full-text and vector indexes are current afterwards."""
    try:
        sdb = open_db(db, embedder=embedder, create=True)

        def progress(n: int, seconds: float) -> None:
            typer.echo(f"{n:,} records read ({n / max(seconds, 1e-9):,.0f} records/s)", err=True)

        report = sdb.ingest(inputs, progress=None if json_out else progress, force=force)
    except (ScenarioDBError, EmbedderError, DirectoryBusy) as exc:
        _fail(str(exc))
    for line in report.problems:
        typer.echo(f"skipped: {line}", err=True)
    for line in report.error_records[:5]:
        typer.echo(f"error record (not indexed): {line}", err=True)
    if report.errors > 5:
        typer.echo(f"... and {report.errors - 5} more error records", err=True)
    if json_out:
        typer.echo(json.dumps(report.to_json()))
    else:
        typer.echo(f"{db}: {report.summary()}")
    if report.malformed:
        raise typer.Exit(1)


def search(
    query: str = typer.Argument("", help="Free text, e.g. \"pedestrian crossing at night in the rain\" (empty: filters only)."),
    db: Path = typer.Option(..., "--db", help="The database directory (avcap index)."),
    where: List[str] = typer.Option([], "--where", "-w", help="NAME=VALUE attribute filter (VALUE: a letter, the choice "
                                    "text or a word of it); repeat to AND names, OR values of one name; NAME!=VALUE excludes."),
    filter: Optional[str] = typer.Option(None, "--filter", help="SQL-like filter on the columns, e.g. "
                                         "\"duration_s > 5 AND lighting_letter = 'D'\"."),
    mode: str = typer.Option("hybrid", "--mode", help=f"Ranking: {', '.join(MODES)} (hybrid reads attribute facets "
                             "in the query; hybrid-plain does not)."),
    aliases: List[Path] = typer.Option([], "--aliases", help="A vocabulary file of extra aliases for query "
                                       "understanding (docs/search.md); repeatable. Also: DB/aliases.json, $AVCAP_SEARCH_ALIASES."),
    limit: int = typer.Option(10, "--limit", "-n", min=1, help="Results to show."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many results first (paging)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per result (JSON Lines)."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="Must be the database's (default: it is)."),
) -> None:
    """Rank the clips of a scenario database: free text (full-text and semantic, fused), attribute
    filters and a SQL-like filter; prints a table, or JSON Lines with --json."""
    try:
        sdb = open_db(db, embedder=embedder, aliases=aliases)
        hits = sdb.search(query, where=where, filter=filter, limit=limit, offset=offset, mode=mode)
        understood = sdb.understand(query, where) if mode == "hybrid" and query.strip() else None
    except (ScenarioDBError, EmbedderError, QueryError) as exc:
        _fail(str(exc))
    if json_out:
        for h in hits:
            typer.echo(json.dumps(h.to_json(), ensure_ascii=False))
        return
    if understood is not None and understood.facets:
        typer.echo("understood: " + understood_line(understood, {a.name: a for a in sdb.attributes()}))
    _print_table(hits, query, sdb.count(), {a.name: a for a in sdb.attributes()})


def understood_line(u, questions: dict) -> str:
    """The facets read in a query, e.g. `weather=Rain or snow ("downpour"); cyclist=D ("not cyclists")`;
    alternatives joined by " or "."""
    parts = []
    for group in u.groups:
        alts = []
        for f in group:
            q = questions.get(f.name)
            answers = " | ".join(_short(q.choices[x]) if q else x for x in f.letters)
            alts.append(f"{f.name}={answers} (\"{f.phrase}\")")
        parts.append(" or ".join(alts))
    return "; ".join(parts)


def _shown_attributes(h: Hit, words: set[str], questions: dict) -> str:
    """The where-clause and facet matches, else the (up to three) stated answers sharing most words with the query."""
    if h.matched or h.facets:
        shown = {**h.matched, **h.facets}
        return ", ".join(f"{k}={_short(v or '')}" for k, v in shown.items())
    scored = []
    for k, a in h.attributes.items():
        answer = a.get("answer") or ""
        hits = len(words & query_words(answer))
        if hits and states(questions.get(k), answer):
            scored.append((-hits, len(scored), f"{k}={_short(answer)}"))
    return ", ".join(x for _, _, x in sorted(scored)[:3])


def _short(s: str, n: int = 24) -> str:
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def _print_table(hits: list[Hit], query: str, total: int, questions: dict) -> None:
    # rich imported here: only a table print needs it
    from rich.console import Console
    from rich.table import Table

    # a pipe gets 160 columns (rich's 80 would squeeze the captions), unless COLUMNS says otherwise
    console = Console(soft_wrap=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
    if not hits:
        console.print(f"no matching clips (of {total:,} in the database)")
        return
    words = query_words(query)
    table = Table(show_lines=False, pad_edge=False, expand=False)
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("clip", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("matching attributes", overflow="fold", min_width=16, max_width=44)
    table.add_column("caption", overflow="fold", min_width=24, max_width=80)
    for h in hits:
        score = "" if h.score is None else f"{h.score:.4f}" if h.score < 10 else f"{h.score:.2f}"
        table.add_row(str(h.rank), h.clip_id, score, _shown_attributes(h, words, questions), snippet(h.caption or "", query, 78))
    console.print(table)
    console.print(f"{len(hits)} shown (ranks {hits[0].rank}-{hits[-1].rank}) of {total:,} clips")
