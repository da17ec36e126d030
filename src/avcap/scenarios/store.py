"""The database directory: its layout, `avcap_db.json` and the LanceDB connection.

    DB/avcap_db.json      schema "avcap.scenario-db/1", the embedder, the attribute questions,
                          counts, the files ingested (size, mtime) and the ingest log
    DB/scenarios.lance/   the LanceDB table: one row per clip (columns: rows.py, docs/formats.md)
    DB/.avcap_db.lock     the writer lock (one ingest at a time)
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from avcap.core.records import read_json

DB_SCHEMA = "avcap.scenario-db/1"
META_FILE = "avcap_db.json"
TABLE = "scenarios"
LOCK_FILE = ".avcap_db.lock"


class ScenarioDBError(ValueError):
    """A database or an input that cannot be used: one line naming the file and field."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_meta(path: Path) -> dict[str, Any]:
    """`avcap_db.json`, checked: another schema version is refused naming the file and both versions."""
    try:
        meta = read_json(path)
    except FileNotFoundError:
        raise ScenarioDBError(f"{path.parent}: not a scenario database (no {META_FILE}); create one with avcap index") from None
    except ValueError as exc:
        raise ScenarioDBError(str(exc)) from None
    if not isinstance(meta, dict):
        raise ScenarioDBError(f"{path}: expected a JSON object")
    version = meta.get("schema")
    if version != DB_SCHEMA:
        raise ScenarioDBError(f"{path}: schema: {version!r} is not {DB_SCHEMA!r} (made by another avcap version; "
                              "index the label outputs into a new database)")
    for key in ("embedder", "attributes", "counts"):
        if key not in meta:
            raise ScenarioDBError(f"{path}: {key}: missing")
    return meta


def new_meta(embedder_spec: dict[str, Any]) -> dict[str, Any]:
    return {"schema": DB_SCHEMA, "created_at": now(), "updated_at": now(), "table": TABLE,
            "embedder": {k: v for k, v in embedder_spec.items() if v is not None}, "attributes": [],
            "counts": {"scenarios": 0}, "files": {}, "ingests": []}


def connect(path: Path):
    """A LanceDB connection to the database directory."""
    # Lance's Rust log prints warnings meant for its developers (k-means with empty clusters on
    # duplicate captions, API deprecations) on stderr: errors only, unless the user set
    # LANCEDB_LOG (read when lancedb is first imported)
    os.environ.setdefault("LANCEDB_LOG", "error")
    # lancedb imported here: importing it costs ~1 s, which `avcap --help` must not pay
    import lancedb

    return lancedb.connect(str(path))
