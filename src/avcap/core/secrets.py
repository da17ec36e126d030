"""Keeping secrets out of anything avcap stores or prints.

`redact(text, secrets)` is applied to every piece of foreign text (a server's error body, an
exception message) before it becomes an error record, a log line or a warning:

- each value in `secrets` (an API key read from the environment, say) is replaced wherever it
  occurs, as are the values of the environment variables named in `env_names`;
- `Bearer <token>` / `Basic <token>` (an echoed Authorization header), `Authorization: <value>`
  and `api_key=<value>`-style pairs (api_key, api-key, apikey, access_token, token, secret,
  password, with `=` or `:` and optional quotes, as in a query string, a header or JSON) keep
  their name and lose their value, and so does a URL's `user:password@`;
- values shorter than 4 characters are not searched for (they would blank ordinary words).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 4

_SCHEME = re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_HEADER = re.compile(r"\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?!\s*(?:Bearer|Basic)\b)[^\s\"',;}&]+",
                     re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]+@", re.IGNORECASE)
_PAIR = re.compile(
    r"\b((?:x-)?(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;}&]+",
    re.IGNORECASE,
)


def env_secrets(names: Iterable[str]) -> list[str]:
    """The values of the environment variables `names` that are set (and long enough to search for)."""
    return [v for v in (os.environ.get(n) for n in names if n) if v and len(v) >= MIN_SECRET_LEN]


def redact(text: str, secrets: Iterable[str] = (), *, env_names: Iterable[str] = ()) -> str:
    """`text` with every secret value and every credential-looking pair replaced by [REDACTED]."""
    values = {s for s in secrets if s and len(s) >= MIN_SECRET_LEN} | set(env_secrets(env_names))
    for value in sorted(values, key=len, reverse=True):  # a key that contains another goes first
        text = text.replace(value, REDACTED)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
