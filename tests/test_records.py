"""avcap.core.records: torn-tail repair, done_keys, atomic JSON/JSONL writes, a real SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avcap.core.records import (
    RecordError,
    RecordWriter,
    done_keys,
    iter_records,
    latest_by_key,
    read_json,
    read_records,
    remove_stale_temp_files,
    write_json_atomic,
    write_records_atomic,
)


def test_append_and_read_back(tmp_path):
    p = tmp_path / "sub" / "out.jsonl"
    with RecordWriter(p) as w:
        w.append({"key": "a", "text": "line one\nline two", "n": np.int64(3).item(), "arr": np.arange(3)})
        w.append({"key": 7, "path": Path("x/y.mp4"), "uni": "é ✓ \u2028"})
    recs = read_records(p)
    assert [r["key"] for r in recs] == ["a", 7]
    assert recs[0]["text"] == "line one\nline two" and recs[0]["arr"] == [0, 1, 2]
    assert recs[1]["path"] == "x/y.mp4" and recs[1]["uni"] == "é ✓ \u2028"
    assert p.read_bytes().count(b"\n") == 2


def test_record_needs_key(tmp_path):
    with RecordWriter(tmp_path / "o.jsonl") as w, pytest.raises(ValueError, match="key"):
        w.append({"text": "no key"})


def test_missing_file(tmp_path):
    assert read_records(tmp_path / "none.jsonl") == []
    assert done_keys(tmp_path / "none.jsonl") == set()
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        read_records(tmp_path / "none.jsonl", missing_ok=False)


@pytest.mark.parametrize("tail", [b'{"key": "c", "te', b"{", b'{"key": "c"}', b"x" * 200_000])
def test_torn_tail_is_ignored_then_repaired(tmp_path, tail):
    p = tmp_path / "o.jsonl"
    with RecordWriter(p) as w:
        w.append({"key": "a"})
        w.append({"key": "b"})
    with open(p, "ab") as fh:  # a writer killed mid-line: no trailing newline
        fh.write(tail)
    assert [r["key"] for r in read_records(p)] == ["a", "b"]
    with RecordWriter(p) as w:  # reopening cuts the torn line off before appending
        w.append({"key": "c"})
    assert [r["key"] for r in read_records(p)] == ["a", "b", "c"]
    assert p.read_bytes().endswith(b'{"key": "c"}\n')


def test_torn_only_line(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_bytes(b'{"key": "half')
    assert read_records(p) == []
    with RecordWriter(p) as w:
        w.append({"key": "a"})
    assert p.read_bytes() == b'{"key": "a"}\n'


def test_blank_lines_skipped_and_bad_lines_named(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_text('{"key": "a"}\n\n{"key": "b"}\n')
    assert [r["key"] for r in iter_records(p)] == ["a", "b"]
    p.write_text('{"key": "a"}\nnot json\n')
    with pytest.raises(RecordError, match=r"o\.jsonl:2: not valid JSON"):
        read_records(p)
    p.write_text('{"key": "a"}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"o\.jsonl:2: expected a JSON object"):
        read_records(p)


def test_done_keys_and_latest(tmp_path):
    p = tmp_path / "o.jsonl"
    with RecordWriter(p, fsync=False) as w:
        w.append({"key": "a", "error": None, "text": "ok"})
        w.append({"key": "b", "error": "video unreadable"})
        w.append({"key": 3, "text": "ok"})
        w.append({"key": "b", "error": None, "text": "retried"})
        w.append({"key": "d", "error": "timeout"})
    assert done_keys(p) == {"a", "b", "3"}
    assert done_keys(p, include_errors=True) == {"a", "b", "3", "d"}
    latest = latest_by_key(read_records(p))
    assert latest["b"]["text"] == "retried" and set(latest) == {"a", "b", "3", "d"}


def test_write_json_atomic(tmp_path):
    p = tmp_path / "deep" / "metrics.json"
    write_json_atomic(p, {"bleu": 0.113, "path": Path("a/b"), "v": np.float32(0.5).item()})
    assert json.loads(p.read_text()) == {"bleu": 0.113, "path": "a/b", "v": 0.5}
    assert read_json(p)["bleu"] == 0.113
    write_json_atomic(p, {"bleu": 0.2})
    assert read_json(p) == {"bleu": 0.2}
    assert sorted(x.name for x in p.parent.iterdir()) == ["metrics.json"]  # no temp files left


def test_write_json_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "run.json"
    write_json_atomic(p, {"step": 1})
    with pytest.raises(TypeError):
        write_json_atomic(p, {"bad": object()})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(p, {"step": 2})
    monkeypatch.undo()
    assert read_json(p) == {"step": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    """mkstemp makes 0600 files; the written file must have open()'s mode: 0666 less the umask for
    a new file, the old mode for a replaced one."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.json", "w") as fh:
            fh.write("{}")
        write_json_atomic(tmp_path / "run.json", {"a": 1})
        write_records_atomic(tmp_path / "caption.jsonl", [{"key": "v1"}])
        (tmp_path / "private.json").write_text("{}")
        os.chmod(tmp_path / "private.json", 0o600)
        write_json_atomic(tmp_path / "private.json", {"a": 2})
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("run.json") == mode("caption.jsonl") == mode("plain.json") == 0o666 & ~umask
    assert mode("private.json") == 0o600 and read_json(tmp_path / "private.json") == {"a": 2}


def test_remove_stale_temp_files_takes_only_the_writers_own(tmp_path):
    import tempfile

    # what a write_text_atomic killed between mkstemp and rename leaves
    left = [Path(tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=tmp_path)[1])
            for name in ("v1.json", "meta.json", ".progress.jsonl")]
    others = [".preview.png.tmp", "notes.tmp", ".v1.json.ABCDEFGH.tmp", "v1.json", ".v1.json.abc.tmp"]
    for name in others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.json.abcdefgh.tmp").mkdir()
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".dir.json.abcdefgh.tmp"])
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_write_records_atomic(tmp_path):
    p = tmp_path / "vqa.jsonl"
    write_records_atomic(p, [{"key": "v/1"}, {"key": "v/2"}])
    write_records_atomic(p, [{"key": "v/3"}])
    assert read_records(p) == [{"key": "v/3"}]


def test_read_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_json(tmp_path / "absent.json")
    p = tmp_path / "bad.json"
    p.write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(RecordError, match=r"bad\.json:2:\d+: malformed JSON"):
        read_json(p)


WRITER = """
import sys
from avcap.core.records import RecordWriter
w = RecordWriter(sys.argv[1], fsync=False)
i = 0
pad = "x" * 5000
while True:
    w.append({"key": str(i), "pad": pad})
    i += 1
    if i == 50:
        print("ready", flush=True)
"""


def test_sigkill_mid_run_loses_at_most_the_record_in_flight(tmp_path):
    p = tmp_path / "o.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(p)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    keys = [r["key"] for r in read_records(p)]
    assert len(keys) >= 50 and keys == [str(i) for i in range(len(keys))]
    with RecordWriter(p) as w:  # the rerun appends after the last whole record
        w.append({"key": "resumed"})
    again = [r["key"] for r in read_records(p)]
    assert again[:-1] == keys and again[-1] == "resumed"
