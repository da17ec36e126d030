"""Crash-safe JSON Lines records: the one way every long-running step writes its results.

A record is one JSON object on one line. `RecordWriter.append` writes the whole line with a single
`os.write` on an `O_APPEND` descriptor and fsyncs, so a kill loses at most the record in flight and
never interleaves two records. A line torn by a kill mid-write (no trailing newline) is cut off when
the file is next opened for appending, so reruns never see or extend a torn record.

Records are keyed (`record["key"]`); `done_keys` tells a rerun what to skip.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional


class RecordError(ValueError):
    """A JSONL file holds a line that is not a JSON object (names the file and line)."""


def read_records(path: str | Path, *, missing_ok: bool = True) -> list[dict[str, Any]]:
    """All complete records of `path`; a torn last line (no newline) is ignored."""
    return list(iter_records(path, missing_ok=missing_ok))


def iter_records(path: str | Path, *, missing_ok: bool = True) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return  # torn by a kill mid-write: not a record
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Map key -> last record with that key (a retried error is superseded by its retry)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        out[str(rec["key"])] = rec
    return out


# file-system errors the user causes and can fix (a full disk, a read-only or foreign directory):
# the CLI prints them as one line naming the path and exits 2 (`os_error_line`)
USER_FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
_FS_HINTS = {
    errno.ENOSPC: "free some space and rerun: finished work is kept",
    errno.EDQUOT: "free some space and rerun: finished work is kept",
    errno.EFBIG: "the file system or a limit refuses a file this large",
    errno.EROFS: "write the outputs somewhere writable",
    errno.EACCES: "write the outputs somewhere this user may write",
    errno.EPERM: "write the outputs somewhere this user may write",
}


def is_user_fs_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in USER_FS_ERRNOS


def os_error_line(exc: OSError) -> str:
    """`<path>: <cause> (<what to do>)` for a file-system error the user can fix."""
    where = exc.filename if exc.filename is not None else "(path unknown)"
    cause = (exc.strerror or os.strerror(exc.errno or 0)).lower()
    hint = _FS_HINTS.get(exc.errno or 0)
    return f"{where}: {cause}" + (f" ({hint})" if hint else "")


@contextlib.contextmanager
def naming(path: str | Path):
    """Re-raise an OSError that names no file (a write or fsync on an open descriptor: a full disk
    says only "No space left on device") as the same error naming `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise


def _repair_torn_tail(path: Path) -> None:
    """Truncate a trailing partial line left by a killed writer."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # scan back to the last newline
        pos = size - 1
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            buf = fh.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                fh.truncate(start + idx + 1)
                return
            pos = start
        fh.truncate(0)


class RecordWriter:
    """Append-only, crash-safe writer for one JSONL file."""

    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_tail(self.path)
        self._fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        if "key" not in record:
            raise ValueError("a record needs a 'key'")
        data = (json.dumps(record, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")
        with naming(self.path):
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk can take part of a line; the next open repairs it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            if self._fsync:
                os.fsync(self._fd)

    def sync(self) -> None:
        """fsync what was appended: a writer opened with `fsync=False` syncs once per batch."""
        if self._fd >= 0:
            with naming(self.path):
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def done_keys(path: str | Path, *, include_errors: bool = False) -> set[str]:
    """Keys that already have a finished record (error records count only if asked)."""
    keys: set[str] = set()
    for rec in iter_records(path):
        if include_errors or not rec.get("error"):
            keys.add(str(rec["key"]))
    return keys


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """Write JSON to a temp file in the same directory and rename it over `path`."""
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temp file beside `path` (`.<name>.<random>.tmp`) and rename it over `path`.
    The file ends with the mode a plain `open(path, "w")` gives: an existing file's mode, else
    0666 less the umask (mkstemp's own 0600 would make results unreadable to others)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with naming(path), os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


TEMP_SUFFIX = ".tmp"
# `.<name>.<8 characters of tempfile's alphabet>.tmp`: what write_text_atomic's mkstemp names
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def remove_stale_temp_files(directory: str | Path, names: Optional[Iterable[str]] = None) -> list[Path]:
    """Delete the temp files a killed `write_text_atomic` left in `directory` (only that name
    pattern, `.<name>.<random>.tmp`, only regular files; with `names`, only those of these target
    file names); returns what was deleted. Call it where no other process is writing these files."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    only = set(names) if names is not None else None
    for p in directory.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m and (only is None or m.group("name") in only) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask sets it, which
    races with files other threads create meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


_UMASK_LOCK = threading.Lock()


def write_records_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a whole JSONL file at once (used when a step rewrites its output, e.g. bench apply)."""
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records)
    write_text_atomic(path, text)


def read_json(path: str | Path) -> Any:
    """Load a JSON file; errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class DirectoryBusy(RuntimeError):
    """Another process holds the writer lock of an output directory."""


class WriterLock:
    """One writer per output directory: an exclusive `flock` on `<dir>/<name>`, taken without
    waiting. The kernel drops it when the holder exits, however it exits (SIGKILL included), so a
    killed run never leaves it stuck; the file itself stays and only says who held it last.

        with WriterLock(out_dir, ".infer.lock", "avcap infer"):
            ...
    """

    def __init__(self, directory: str | Path, name: str, what: str):
        self.path = Path(directory) / name
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise DirectoryBusy(
                f"{self.path.parent}: another {self.what} is writing here ({holder}); wait for it to finish, "
                "or use another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def schema_error_text(exc: Exception) -> str:
    """A pydantic ValidationError as one line, 'field.path: message; ...' (other errors: str)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)  # a whole-record check names its fields itself
    return "; ".join(parts)
