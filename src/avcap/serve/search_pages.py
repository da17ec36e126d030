"""The search page (query box, attribute filters, thumbnail grid, paging) and the clip page."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from avcap.scenarios.query import MODES, QueryError, snippet
from avcap.serve.web import local_file, not_found, render, state

PER_PAGE = 24
MAX_PAGE = 400  # deeper pages would make hybrid ranking fetch 2 x 400 x 24 candidates per side
MAX_QUERY = 500
MAX_FILTERS = 20
SNIPPET = 200


class BadRequest(ValueError):
    """A search URL that cannot be served: one line for the page."""


def clip_url(clip_id: str) -> str:
    return "/clip/" + quote(clip_id, safe="")


def media_url(kind: str, clip_id: str) -> str:
    return f"/media/{kind}/" + quote(clip_id, safe="")


def _params(request: Request) -> tuple[str, list[tuple[str, str]], str, int]:
    qp = request.query_params
    unknown = sorted(set(qp.keys()) - {"q", "where", "mode", "page"})
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)} (expected q, where, mode, page)")
    q = qp.get("q", "").strip()
    if len(q) > MAX_QUERY:
        raise BadRequest(f"q: the query is {len(q)} characters (at most {MAX_QUERY})")
    mode = qp.get("mode", "hybrid")
    if mode not in MODES:
        raise BadRequest(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    page_s = qp.get("page", "1")
    if not page_s.isdigit() or not 1 <= int(page_s) <= MAX_PAGE:
        raise BadRequest(f"page: {page_s!r} is not a page number (1 to {MAX_PAGE})")
    where = []
    for w in qp.getlist("where"):
        if not w.strip():
            continue
        name, sep, value = w.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise BadRequest(f"where: {w!r}: expected NAME=VALUE, e.g. weather=C")
        pair = (name.strip(), value.strip())
        if pair not in where:
            where.append(pair)
    if len(where) > MAX_FILTERS:
        raise BadRequest(f"where: {len(where)} filters (at most {MAX_FILTERS})")
    return q, where, mode, int(page_s)


def _url(q: str, where: list[tuple[str, str]], mode: str, page: int = 1) -> str:
    params: list[tuple[str, Any]] = []
    if q:
        params.append(("q", q))
    params += [("where", f"{n}={v}") for n, v in where]
    if mode != "hybrid":
        params.append(("mode", mode))
    if page > 1:
        params.append(("page", page))
    return "/?" + urlencode(params) if params else "/"


def search_page(request: Request) -> Response:
    st = state(request)
    if st.db is None:
        return Response(status_code=303, headers={"location": "/review"}) if st.reviews else not_found(request)
    st.load_db()
    attrs = st.attributes
    by_name = {a.name: a for a in attrs}
    context: dict[str, Any] = dict(
        section="search", attributes=[{"name": a.name, "question": a.question, "choices": sorted(a.choices.items())}
                                      for a in attrs],
        modes=MODES, total_clips=st.total_clips, db_name=str(st.db_dir), q="", mode="hybrid", filters=[],
        hits=[], error=None, page=1, prev_url=None, next_url=None, clear_url="/", first=0, last=0, elapsed_ms=0.0)
    try:
        q, where, mode, page = _params(request)
    except BadRequest as exc:
        return render(request, "search.jinja", status=400, **{**context, "error": str(exc)})
    filters = []
    for i, (name, value) in enumerate(where):
        a = by_name.get(name)
        text = a.choices.get(value.upper(), value) if a is not None and len(value) == 1 else value
        rest = where[:i] + where[i + 1:]
        filters.append({"name": name, "letter": value, "text": text, "clause": f"{name}={text}",
                        "remove_url": _url(q, rest, mode)})
    context.update(q=q, mode=mode, filters=filters, page=page, clear_url=_url(q, [], mode))
    where_dict: dict[str, list[str]] = {}
    for name, value in where:
        where_dict.setdefault(name, []).append(value)
    t0 = time.perf_counter()
    try:
        hits = st.db.search(query=q, where=where_dict, limit=PER_PAGE + 1, offset=(page - 1) * PER_PAGE, mode=mode)
    except QueryError as exc:
        return render(request, "search.jinja", status=400, **{**context, "error": str(exc).replace("--where ", "filter ")})
    elapsed = request.scope["avcap.db_ms"] = (time.perf_counter() - t0) * 1000
    more = len(hits) > PER_PAGE
    hits = hits[:PER_PAGE]
    st.remember(hits)
    context.update(
        elapsed_ms=elapsed, first=(page - 1) * PER_PAGE + 1, last=(page - 1) * PER_PAGE + len(hits),
        prev_url=_url(q, where, mode, page - 1) if page > 1 else None,
        next_url=_url(q, where, mode, page + 1) if more and page < MAX_PAGE else None,
        hits=[{"clip_id": h.clip_id, "url": clip_url(h.clip_id), "score": h.score, "rank": h.rank,
               "thumb_url": media_url("thumb", h.clip_id) if h.thumbnail else None,
               "width": h.clip.get("width"), "height": h.clip.get("height"),
               "snippet": snippet(h.caption or "", q, SNIPPET),
               "matched": [f"{k}: {v}" for k, v in {**h.matched, **h.facets}.items() if v]} for h in hits],
    )
    return render(request, "search.jinja", **context)


def clip_page(request: Request) -> Response:
    st = state(request)
    if st.db is None:
        return not_found(request)
    st.load_db()
    clip_id = request.path_params["clip_id"]
    t0 = time.perf_counter()
    hit = st.db.get(clip_id)
    request.scope["avcap.db_ms"] = (time.perf_counter() - t0) * 1000
    if hit is None:
        return not_found(request, f"no clip {clip_id!r} in {st.db_dir}")
    st.remember([hit])
    questions = {a.name: a for a in st.attributes}
    attributes = []
    for name, a in questions.items():
        got = hit.attributes.get(name) or {}
        letter = got.get("letter")
        attributes.append({"name": name, "question": a.question, "letter": letter, "answer": got.get("answer"),
                           "filter_url": _url("", [(name, letter)], "hybrid") if letter else _url("", [], "hybrid")})
    info = [(k, v) for k, v in (("duration", f"{hit.clip['duration_s']:.2f} s" if hit.clip.get("duration_s") else None),
                                ("size", f"{hit.clip['width']}x{hit.clip['height']}" if hit.clip.get("width") else None),
                                ("fps", f"{hit.clip['fps']:g}" if hit.clip.get("fps") else None),
                                ("frames", hit.clip.get("frames")),
                                ("bytes", f"{hit.clip['size_bytes']:,}" if hit.clip.get("size_bytes") else None)) if v]
    labeller = {k: hit.labeller.get(k) or "" for k in ("model_name", "checkpoint", "checkpoint_path", "engine", "fingerprint")}
    rec = {"clip_id": hit.clip_id, "caption": hit.caption, "source": hit.source, "labeller": labeller,
           "labelled_at": hit.labelled_at,
           "caption_json": json.dumps(hit.caption_json, indent=2, ensure_ascii=False) if hit.caption_json else None}
    return render(request, "clip.jinja", section="search", rec=rec, attributes=attributes, clip_info=info,
                  db_name=str(st.db_dir),
                  video_url=media_url("video", hit.clip_id) if local_file(hit.source) else None,
                  poster_url=media_url("thumb", hit.clip_id) if local_file(hit.thumbnail) else None,
                  preview_url=media_url("preview", hit.clip_id) if local_file(hit.preview) else None)
