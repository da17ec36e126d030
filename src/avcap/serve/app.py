"""The `avcap serve` application: routes, media, static files, the guard around them.

No path from a URL ever reaches the filesystem: a media URL names a clip id (looked up in the
scenario database) or a review item number (looked up in the benchmark's pairs), and the file is
the one that record registered; the two static files are read once at start-up and served from
memory. Anything else is 404.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from avcap.serve.review_pages import review_decide, review_index, review_item
from avcap.serve.reviews import ReviewQueue
from avcap.serve.search_pages import clip_page, search_page
from avcap.serve.security import Guard, new_csrf_token
from avcap.serve.web import State, accepts_gzip, json_error, message, not_found, state

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def _file(path: Optional[Path], request: Request) -> Response:
    if path is None:
        return not_found(request)
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers={"cache-control": "private, max-age=300"})


def clip_media(request: Request) -> Response:
    st = state(request)
    return _file(st.media_file(request.path_params["clip_id"], request.path_params["kind"]), request)


def review_media(request: Request) -> Response:
    queue = state(request).reviews
    if queue is None:
        return not_found(request)
    n = request.path_params["n"]
    items = queue.items()
    if not 1 <= n <= len(items):
        return not_found(request)
    return _file(queue.video(items[n - 1].item), request)


def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    body = request.app.state.static.get(name)
    if body is None:
        return not_found(request)
    headers = {"cache-control": "no-cache", "vary": "accept-encoding"}
    if accepts_gzip(request):
        body = request.app.state.static_gz[name]
        headers["content-encoding"] = "gzip"
    return Response(body, media_type=STATIC_TYPES[name], headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    code = getattr(exc, "status_code", 500)
    if code == 404:
        return not_found(request)
    if request.url.path.startswith("/api/"):
        return json_error(code, getattr(exc, "detail", "") or "error")
    return PlainTextResponse(f"{getattr(exc, 'detail', '') or 'error'}\n", status_code=code)


async def _server_error(request: Request, exc: Exception) -> Response:
    # one line, no traceback and no path of the server's code in the page; uvicorn logs the traceback
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": f"server error: {text}"}, status_code=500)
    return message(request, 500, "Server error", text)


class _Clock:
    """Stamps each request with its start, for the Server-Timing header of the pages."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["avcap.t0"] = time.perf_counter()
        await self.app(scope, receive, send)


def create_app(*, db=None, db_dir: Optional[Path] = None, reviews: Optional[ReviewQueue] = None,
               access_token: Optional[str] = None, loopback_only: bool = True,
               csrf_token: Optional[str] = None) -> Starlette:
    """The ASGI app on an open scenario database (`avcap.scenarios.db.open_db`) and/or a review
    queue. `loopback_only`: answer only requests addressed to the loopback interface (ignored,
    and unnecessary, when an `access_token` is required)."""
    if db is None and reviews is None:
        raise ValueError("avcap serve needs a scenario database (--db) or a benchmark (--bench), or both")
    st = State(csrf_token=csrf_token or new_csrf_token(), db=db, db_dir=db_dir, reviews=reviews)
    if db is not None:
        st.load_db()
    routes = [
        Route("/", search_page),
        Route("/clip/{clip_id:path}", clip_page),
        Route("/media/review/{n:int}", review_media),
        Route("/media/{kind:str}/{clip_id:path}", clip_media),
        Route("/review", review_index),
        Route("/review/{n:int}", review_item),
        Route("/api/review", review_decide, methods=["POST"]),
        Route("/static/{name:str}", static_file),
    ]
    middleware = [Middleware(_Clock),
                  Middleware(Guard, csrf_token=st.csrf_token, access_token=access_token, loopback_only=loopback_only)]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.avcap = st
    app.state.static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_TYPES}
    app.state.static_gz = {name: gzip.compress(body, mtime=0) for name, body in app.state.static.items()}
    return app
