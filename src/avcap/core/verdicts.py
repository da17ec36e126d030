"""Passed start-up self-checks, remembered across processes.

Some checks guard against a library release rather than against the data: the fast path's check
that its transcribed decoder layer computes what transformers' layer computes depends only on the
two pieces of code, the model's configuration, the dtype and the device. Its answer for one such
key does not change from one process to the next, yet it costs every process's first call ~1.7 s
on a GPU. A passed check is written to `<cache>/verdicts/<name>-<digest>.json` (`<cache>` being
$AVCAP_CACHE_DIR or ~/.cache/avcap, as for compiled graphs) holding its whole key, and a later
process with an equal key skips it. Only passes are kept: a check that fails runs again each time.
Delete the folder to run every check again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from avcap.core.compile_cache import default_root


def source_digest(obj: Any) -> str:
    """A short digest of a module's, class's or function's source, for a key: another version of
    the code is another key. Raises what `inspect.getsource` raises (OSError, TypeError) where the
    source cannot be read."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def _normal(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def verdict_path(name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(_normal(key).encode()).hexdigest()[:20]
    return default_root() / "verdicts" / f"{name}-{digest}.json"


def passed_before(name: str, key: dict[str, Any]) -> bool:
    """Whether check `name` passed before for exactly this key (a torn or foreign file: no)."""
    try:
        kept = json.loads(verdict_path(name, key).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(kept, dict) and kept.get("passed") is True and _normal(kept.get("key", {})) == _normal(key)


def remember_pass(name: str, key: dict[str, Any]) -> bool:
    """Record that check `name` passed for `key` (atomically: a reader sees the whole file or none);
    False where the cache folder cannot be written (the check then runs again next time)."""
    path = verdict_path(name, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"name": name, "passed": True, "key": json.loads(_normal(key))}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a full disk: no verdict, and no partial file left behind
        Path(tmp).unlink(missing_ok=True)
        return False
    return True
