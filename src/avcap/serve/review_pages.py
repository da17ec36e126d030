"""The review page (one queued pair at a time) and the one request that writes: a decision."""

from __future__ import annotations

import json
from typing import Optional

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from avcap.bench.errors import BenchError
from avcap.serve.reviews import DecisionError, ReviewItem
from avcap.serve.web import json_error, message, not_found, render, state

MAX_BODY = 64 * 1024


def _next_undecided(items: list[ReviewItem], after: int) -> Optional[ReviewItem]:
    """The first undecided item after position `after` (1-based), wrapping round; None if all are decided."""
    n = len(items)
    for k in range(n):
        it = items[(after + k) % n]
        if not it.decision:
            return it
    return None


def _url(it: Optional[ReviewItem]) -> Optional[str]:
    return f"/review/{it.index}" if it is not None else None


def _file_warnings(queue, items: list[ReviewItem]) -> list[str]:
    seen: dict[str, int] = {}
    twice = []
    for it in items:
        if it.item in seen:
            twice.append(it.item)
        seen.setdefault(it.item, it.index)
    out = []
    missing = [k for k in queue.queue if k not in seen]
    if missing:
        out.append(f"{len(missing)} queued pair(s) have no row in this file ({', '.join(missing[:3])}"
                   f"{' …' if len(missing) > 3 else ''}): apply will refuse it; write a new review file")
    if twice:
        out.append(f"item(s) with two rows: {', '.join(twice[:3])}: apply will refuse the file until one row of each is gone")
    return out


def review_index(request: Request) -> Response:
    queue = state(request).reviews
    if queue is None:
        return not_found(request, "no benchmark: start avcap serve with --bench DIR")
    try:
        items = queue.items()
    except BenchError as exc:
        return message(request, 500, "The review file cannot be read", *exc.problems)
    if not items:
        return message(request, 200, "Nothing to review", f"{queue.path} has no rows: every pair was agreed.")
    return RedirectResponse(_url(_next_undecided(items, 0)) or "/review/1", status_code=303)


def review_item(request: Request) -> Response:
    queue = state(request).reviews
    if queue is None:
        return not_found(request, "no benchmark: start avcap serve with --bench DIR")
    n = request.path_params["n"]
    try:
        items = queue.items()
    except BenchError as exc:
        return message(request, 500, "The review file cannot be read", *exc.problems)
    if not 1 <= n <= len(items):
        return not_found(request, f"no item {n}: the review file has {len(items)}")
    it = items[n - 1]
    warnings = _file_warnings(queue, items)
    if not it.in_queue:
        warnings.insert(0, f"item {it.item!r} is not in the benchmark's review queue now (unknown, or agreed "
                           "since this file was written): apply will refuse the file; write a new review file")
    nxt = _next_undecided(items, n)
    return render(
        request, "review.jinja", section="review", it=it, progress=queue.progress(items),
        ann=it.field("annotation_answer").upper(), vid=it.field("video_answer").upper(),
        chosen=it.decision[4:].upper() if it.decision.lower().startswith("set:") else
        (it.field("annotation_answer").upper() if it.decision == "keep_annotation" else
         it.field("video_answer").upper() if it.decision == "keep_video" else ""),
        excerpt=it.excerpt, warnings=warnings,
        video_url=f"/media/review/{n}" if queue.video(it.item) else None,
        prev_url=f"/review/{n - 1}" if n > 1 else None, next_url=f"/review/{n + 1}" if n < len(items) else None,
        next_undecided_url=_url(nxt) if nxt is not None and nxt.index != n else None,
        review_path=str(queue.path), dataset=str(queue.dataset),
    )


async def review_decide(request: Request) -> Response:
    """POST /api/review {"item": KEY, "decision": "keep_video" | "set:B" | ... | "", "note": TEXT?}."""
    queue = state(request).reviews
    if queue is None:
        return json_error(404, "no benchmark: start avcap serve with --bench DIR")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return json_error(400, f"the body must be JSON (Content-Type application/json, got {ctype or 'none'!r})")
    body = await request.body()
    if len(body) > MAX_BODY:
        return json_error(400, f"the body is {len(body)} bytes (at most {MAX_BODY})")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return json_error(400, f"the body is not valid JSON ({getattr(exc, 'msg', exc)})")
    if not isinstance(obj, dict):
        return json_error(400, "the body must be a JSON object: {\"item\": ..., \"decision\": ...}")
    unknown = sorted(set(obj) - {"item", "decision", "note"})
    if unknown:
        return json_error(400, f"unknown field(s) {', '.join(unknown)} (expected item, decision, note)")
    item, decision, note = obj.get("item"), obj.get("decision"), obj.get("note")
    if not isinstance(item, str) or not item:
        return json_error(400, "item: expected the item key (a non-empty string)")
    if not isinstance(decision, str):
        return json_error(400, "decision: expected a string: keep_annotation | keep_video | set:A..D | remove (or \"\" to clear)")
    if note is not None and not isinstance(note, str):
        return json_error(400, "note: expected a string or null")
    try:
        it, items = await run_in_threadpool(queue.decide, item, decision, note)
    except DecisionError as exc:
        return json_error(400, str(exc))
    except BenchError as exc:
        return json_error(500, "; ".join(exc.problems))
    except OSError as exc:
        return json_error(500, f"{queue.path}: cannot write ({exc.strerror or exc})")
    nxt = _next_undecided(items, it.index)
    return JSONResponse({"item": it.item, "index": it.index, "decision": it.decision,
                         "progress": queue.progress(items),
                         "next_undecided_url": _url(nxt) if nxt is not None and nxt.index != it.index else None})


