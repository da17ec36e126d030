"""What keeps `avcap serve` safe by default: where it may listen, who may talk to it, who may write.

- **Loopback by default.** Any other address needs an access token (`--token-env NAME`: the value of
  the environment variable NAME, never a command-line argument, never printed). With a token, every
  request needs it: `Authorization: Bearer <token>`, or once `?token=<token>` in the browser, which
  sets an HttpOnly, SameSite=Strict cookie and redirects to the same URL without it.
- **Host check.** Without a token the server answers only requests whose Host header names the
  loopback interface (127.0.0.1, localhost, [::1]): a web page that rebinds its own domain name to
  127.0.0.1 (DNS rebinding) gets 400, not the pages.
- **Same-origin token for writes.** Every request that is not GET/HEAD must carry the header
  `X-Avcap-Token` with the per-process token that the pages embed (a page from another origin cannot
  read it), and a browser's `Origin`, when sent, must be this server; otherwise 403.
- **Headers.** A Content-Security-Policy that allows only this server's own scripts, styles,
  images and media (no inline script), `nosniff`, no framing, no referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
from http.cookies import SimpleCookie
from typing import Optional
from urllib.parse import parse_qsl, quote, urlencode

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_HEADER = "x-avcap-token"
ACCESS_COOKIE = "avcap_access"
MIN_TOKEN_LEN = 16
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
     b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class StartupRefused(ValueError):
    """`avcap serve` will not start with these settings (one line saying why)."""


def is_loopback(host: str) -> bool:
    """True for the loopback interface (127.0.0.0/8, ::1, "localhost"); False for anything else,
    wildcard addresses (0.0.0.0, ::) and other host names included."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: Optional[str], token_env: Optional[str]) -> Optional[str]:
    """Raises StartupRefused when `avcap serve` must not listen on `host` with this token; returns
    the line to print at start-up when a token is in force (None on loopback without one)."""
    if token_env is not None and not token:
        raise StartupRefused(f"--token-env {token_env}: the environment variable {token_env} is not set or empty")
    if token is not None and len(token) < MIN_TOKEN_LEN:
        raise StartupRefused(f"--token-env {token_env}: the access token is {len(token)} characters; "
                             f"use at least {MIN_TOKEN_LEN} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    if token is not None and not _TOKEN_CHARS.match(token):
        raise StartupRefused(f"--token-env {token_env}: the access token may hold only letters, digits and . _ ~ + / = -")
    if is_loopback(host):
        return None if token is None else f"access token required (from ${token_env}); open the URL with ?token=<the token>"
    if token is None:
        raise StartupRefused(f"--host {host}: not a loopback address; serving beyond this machine needs an access "
                             "token: --token-env NAME, with the token in the environment variable NAME")
    return (f"WARNING: listening on {host}, reachable from other machines; every request needs the access token "
            f"(${token_env}): open the URL with ?token=<the token> once, or send 'Authorization: Bearer <token>'. "
            "Traffic is plain HTTP: use it only on a network you trust, or behind TLS")


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *extra]})
    await send({"type": "http.response.body", "body": body})


async def _json_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: host check, access token, same-origin token for writes, security headers."""

    def __init__(self, app: ASGIApp, *, csrf_token: str, access_token: Optional[str] = None,
                 loopback_only: bool = True):
        self.app = app
        self.csrf_token = csrf_token
        self.access_token = access_token
        self.loopback_only = loopback_only and access_token is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return  # no websockets here
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.loopback_only and _host_name(host) not in LOOPBACK_NAMES:
            await _plain(send, 400, "this server answers only requests addressed to 127.0.0.1, localhost or [::1]")
            return
        if self.access_token is not None:
            granted = await self._check_access(scope, headers, send)
            if granted is not True:
                return
        if scope["method"].upper() not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1].lower() != host.lower():
                await _json_error(send, 403, f"cross-origin request refused (Origin {origin!r})")
                return
            sent = headers.get(CSRF_HEADER)
            if sent is None or not _same(sent, self.csrf_token):
                await _json_error(send, 403, f"missing or wrong same-origin token ({CSRF_HEADER} header); reload the page")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _check_access(self, scope: Scope, headers: Headers, send: Send) -> bool:
        assert self.access_token is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), self.access_token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no credential
            cookie = SimpleCookie()
        if ACCESS_COOKIE in cookie and _same(cookie[ACCESS_COOKIE].value, self.access_token):
            return True
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and scope["method"].upper() == "GET" and _same(given[0], self.access_token):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = scope.get("raw_path") or quote(scope["path"]).encode()
            location = path.decode("latin-1") + (f"?{rest}" if rest else "")
            morsel = f"{ACCESS_COOKIE}={self.access_token}; HttpOnly; SameSite=Strict; Path=/"
            await _plain(send, 303, "access granted", [(b"location", location.encode("latin-1")),
                                                       (b"set-cookie", morsel.encode("latin-1"))])
            return False
        await _plain(send, 401, "access token required: open this server's URL with ?token=<the token> "
                                "(the value of the environment variable given to --token-env)")
        return False


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)
