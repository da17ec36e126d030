"""What every page of `avcap serve` shares: the server's state, the templates, error responses."""

from __future__ import annotations

import gzip
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from avcap.serve.reviews import ReviewQueue

TEMPLATES = Path(__file__).parent / "templates"
# autoescape on for every template: the .jinja suffix is not one jinja2.select_autoescape knows
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)
ENV.filters["urlpart"] = lambda s: quote(str(s), safe="")


MEDIA_KINDS = {"video": "source", "thumb": "thumbnail", "preview": "preview"}
MEDIA_REMEMBERED = 20_000


def local_file(value: Optional[str]) -> Optional[Path]:
    """The regular file that a record's media field names, or None: only absolute local paths
    count (a URI such as synthetic://... or s3://... is not served)."""
    if not value or "://" in value:
        return None
    p = Path(value)
    return p if p.is_absolute() and p.is_file() else None


@dataclass
class State:
    """What the server was started on, and the media paths of the clips it has shown."""

    csrf_token: str
    db: Any = None  # avcap.scenarios.db.ScenarioDB, or None (review only)
    db_dir: Optional[Path] = None
    reviews: Optional[ReviewQueue] = None
    attributes: list = field(default_factory=list)  # the db's attribute questions, read once
    total_clips: int = 0
    _media: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seen: Optional[int] = None  # mtime_ns of the database's avcap_db.json when last read

    def load_db(self) -> None:
        """(Re)read what the pages show of the database: its attributes and size. Called at start
        and whenever `avcap index` has rewritten avcap_db.json since (new clips show up without a
        restart)."""
        try:
            seen = self.db.meta_path.stat().st_mtime_ns
        except OSError:
            return
        if seen == self._seen:
            return
        with self._lock:
            if seen == self._seen:
                return
            if self._seen is not None:
                self.db.refresh()
                self._media.clear()
            self.attributes = self.db.attributes()
            self.total_clips = self.db.count()
            self._seen = seen

    def remember(self, hits: list) -> None:
        """Keep the media paths of clips just read from the database, so that the thumbnails of a
        result page do not each cost a database lookup."""
        with self._lock:
            for h in hits:
                self._media[h.clip_id] = {"source": h.source, "thumbnail": h.thumbnail, "preview": h.preview}
                self._media.move_to_end(h.clip_id)
            while len(self._media) > MEDIA_REMEMBERED:
                self._media.popitem(last=False)

    def media_file(self, clip_id: str, kind: str) -> Optional[Path]:
        """The file of `kind` (video, thumb, preview) that the database registered for `clip_id`."""
        field_name = MEDIA_KINDS.get(kind)
        if self.db is None or field_name is None:
            return None
        with self._lock:
            entry = self._media.get(clip_id)
        if entry is None:
            hit = self.db.get(clip_id)
            if hit is None:
                return None
            self.remember([hit])
            entry = {"source": hit.source, "thumbnail": hit.thumbnail, "preview": hit.preview}
        return local_file(entry[field_name])


def state(request: Request) -> State:
    return request.app.state.avcap


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    st = state(request)
    t0 = request.scope.get("avcap.t0")
    html = ENV.get_template(template).render(
        csrf_token=st.csrf_token, has_db=st.db is not None, has_review=st.reviews is not None, **context)
    headers = {"cache-control": "no-store", "vary": "accept-encoding"}
    body = html.encode("utf-8")
    if accepts_gzip(request):
        body = gzip.compress(body, compresslevel=6, mtime=0)
        headers["content-encoding"] = "gzip"
    if t0 is not None:  # the time the server spent on this page (and in the database), for benchmarks/bench_serve.py
        timing = [f"app;dur={(time.perf_counter() - t0) * 1000:.2f}"]
        if "avcap.db_ms" in request.scope:
            timing.append(f"db;dur={request.scope['avcap.db_ms']:.2f}")
        headers["server-timing"] = ", ".join(timing)
    return HTMLResponse(body, status_code=status, headers=headers)


def accepts_gzip(request: Request) -> bool:
    """Does the client take gzip? (Pages and the static files are compressed; media never are.)"""
    for part in request.headers.get("accept-encoding", "").split(","):
        name, _, q = part.strip().partition(";")
        if name.strip().lower() == "gzip":
            return q.strip().replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def message(request: Request, status: int, heading: str, *lines: str) -> HTMLResponse:
    return render(request, "message.jinja", status=status, heading=heading, lines=list(lines), section="")


def json_error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


def not_found(request: Request, what: str = "no such page") -> Response:
    if request.url.path.startswith(("/media/", "/static/", "/api/")):
        return PlainTextResponse("not found\n", status_code=404)
    return message(request, 404, "Not found", what)

