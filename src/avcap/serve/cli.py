"""`avcap serve`: the scenario database and the benchmark's review queue in the browser."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Optional

import typer

from avcap.bench.errors import BenchError
from avcap.serve.reviews import ReviewQueue

# The app (starlette, jinja2: ~70 ms), uvicorn and the scenario database (lancedb) are imported in
# `main`: `avcap --help` imports every verb's module and must not pay for them.


def _fail(line: str) -> None:
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), made here so that the URL printed at
    start-up names the real port."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise OSError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(
    db: Optional[Path] = typer.Option(None, "--db", help="Scenario database directory (avcap index)."),
    bench: Optional[Path] = typer.Option(None, "--bench", help="Benchmark dataset directory (avcap bench build, "
                                         "then avcap bench review) for the review page."),
    reviews: Optional[Path] = typer.Option(None, "--reviews", help="The review file to work on (.csv or .jsonl). "
                                           "Default: DIR/bench/review.csv of --bench."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback needs --token-env."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0: any free port)."),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="Name of the environment variable holding "
                                            "the access token that every request must then carry."),
) -> None:
    """Search the scenario database and settle the benchmark's review queue in the browser."""
    import uvicorn

    from avcap.serve.app import create_app
    from avcap.serve.security import StartupRefused, check_bind, is_loopback

    if db is None and bench is None:
        _fail("give --db DIR (search), --bench DIR (review), or both")
    if reviews is not None and bench is None:
        _fail("--reviews FILE needs --bench DIR (the benchmark whose queue it decides)")
    token = os.environ.get(token_env) if token_env else None
    try:
        warning = check_bind(host, token, token_env)
    except StartupRefused as exc:
        _fail(str(exc))
    scenario_db = queue = None
    if db is not None:
        from avcap.scenarios.db import ScenarioDBError, open_db
        from avcap.scenarios.embed import EmbedderError

        try:
            scenario_db = open_db(db)
            _ = scenario_db.embedder  # load it now: the first search must not pay for it
        except (ScenarioDBError, EmbedderError) as exc:
            _fail(str(exc))
    if bench is not None:
        try:
            queue = ReviewQueue(bench, reviews)
        except BenchError as exc:
            _fail("; ".join(exc.problems))
    app = create_app(db=scenario_db, db_dir=db, reviews=queue, access_token=token, loopback_only=is_loopback(host))
    try:
        sock = _bind(host, port)
    except OSError as exc:
        _fail(str(exc))
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    typer.echo(f"avcap serve: {url}")
    state = app.state.avcap
    if scenario_db is not None:
        typer.echo(f"  search: {state.total_clips:,} clips in {db}")
    if queue is not None:
        progress = queue.progress(queue.items())
        typer.echo(f"  review: {queue.path} ({progress['decided']} of {progress['total']} decided)")
    if warning:
        typer.echo(warning, err=True)
    typer.echo("  Ctrl+C stops it", err=True)
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False,
                            server_header=False, date_header=True)
    uvicorn.Server(config).run(sockets=[sock])
