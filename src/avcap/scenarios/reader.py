"""Scenario record files read for `avcap index`: blocks of lines parsed by Arrow's JSON reader.

Arrow's reader (C++; ~36,000 records/s a core on the 5.5 kB records of bench_scale, and it uses
both cores when they are free) checks every value's type against a fixed schema and hands back
columns, where `json.loads`, the record checks and the dicts took ~70 µs a record in one Python
thread. Whatever Arrow cannot take as it stands is read again line by line by
`record.read_line`, which makes the checks `scan_scenarios` makes, so a malformed line is still
named by file:line and field, and what the record model coerces (a width written as "640") is
still coerced:

- a block that Arrow refuses (a line that is not JSON or holds two objects, an unknown field or
  attribute, a mistyped value, a `caption_json` object, which no fixed schema can hold) is split
  in halves until the lines it refuses are found; up to `LINES_ALONE` lines are read one by one;
- a row that Arrow read but that is not plainly a valid record (another schema version, a
  missing or empty required field, a null where the model wants an object: Arrow cannot tell a
  missing key from an explicit null, so an error record's empty `attributes` is one) is read
  again alone.

A blank line is skipped and a torn last line (no newline: killed mid-write) is not a record, as
in `scan_scenarios`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from avcap.scenarios.record import SCHEMA, ScenarioFormatError, ScenarioRecord, read_line
from avcap.scenarios.rows import CLIP_COLUMNS, LABELLER_COLUMNS

ARROW_BLOCK_BYTES = 8 << 20  # Arrow's unit of parallel parsing (a longer line is read alone)
LINES_ALONE = 16  # a refused group of at most this many lines is read line by line
ANSWER_FIELDS = ("letter", "answer", "raw", "error")


def record_schema(names: Sequence[str], caption_json=pa.string()) -> pa.Schema:
    """A scenario record as Arrow: `ScenarioRecord`'s fields in its order, `attributes` a struct
    of the attributes `names`. `caption_json` is its JSON text (Arrow's reader is given `null`:
    a record with a JSON caption is read alone)."""
    answer = pa.struct([(k, pa.string()) for k in ANSWER_FIELDS])
    s = pa.string()
    return pa.schema([
        ("schema", s), ("clip_id", s), ("source", s), ("error", s), ("caption", s), ("caption_json", caption_json),
        ("attributes", pa.struct([(n, answer) for n in names])),
        ("clip", pa.struct([(k, pa.float64() if t == "float64" else pa.int64()) for k, t in CLIP_COLUMNS.items()])),
        ("thumbnail", s), ("preview", s),
        ("labeller", pa.struct([(k, s) for k in LABELLER_COLUMNS])),
        ("labelled_at", s),
    ])


def _model_fields() -> list[str]:
    return [f.alias or k for k, f in ScenarioRecord.model_fields.items()]


@dataclass
class Block:
    """The records of one block of lines, in line order: `records` (record_schema, caption_json
    as text, plus `line`, the line number), `problems` (one line each, in line order) and `count`,
    the lines that are records (`scan_scenarios`' records, error records and records answering an
    unknown attribute included)."""

    records: pa.Table
    problems: list[str] = field(default_factory=list)
    count: int = 0


class RecordReader:
    """Reads record files whose attributes are among `names`; a record answering another
    attribute is a problem naming `questions_file(path)`."""

    def __init__(self, names: Sequence[str], questions_file) -> None:
        self.names = list(names)
        self.known = frozenset(self.names)
        self.questions_file = questions_file
        self.schema = record_schema(self.names)
        self.out_schema = self.schema.append(pa.field("line", pa.int64()))
        self._parse = pj.ParseOptions(explicit_schema=record_schema(self.names, pa.null()),
                                      unexpected_field_behavior="error")
        self._read = pj.ReadOptions(use_threads=True, block_size=ARROW_BLOCK_BYTES)
        self._is_newline = np.empty(0, dtype=bool)
        assert [f.name for f in self.schema] == _model_fields(), "record_schema is out of step with ScenarioRecord"

    def blocks(self, path: str | Path, block_bytes: int) -> Iterator[Block]:
        """Every block of `path`, about `block_bytes` of lines each (at least one line). A missing
        or unreadable file raises OSError."""
        path = Path(path)
        before = 0  # lines before this block
        buf = bytearray(block_bytes)  # read into, again and again (Arrow copies what it keeps)
        have = 0  # bytes of buf that hold a line begun in the last read
        with path.open("rb") as fh:
            while True:
                if have == len(buf):  # one line longer than the buffer: a new one, twice as long
                    buf = buf + bytes(len(buf))
                got = fh.readinto(memoryview(buf)[have:])
                if not got:
                    return  # what is left after the last newline is a torn line: not a record
                size = have + got
                cut = buf.rfind(b"\n", 0, size) + 1
                if cut:
                    block, lines = self._block(path, memoryview(buf)[:cut], before)
                    yield block
                    before += lines
                    buf[:size - cut] = buf[cut:size]
                    have = size - cut
                else:
                    have = size

    def _block(self, path: Path, buf: memoryview, before: int) -> tuple[Block, int]:
        """One block of whole lines; returns it and its number of lines."""
        a = np.frombuffer(buf, np.uint8)
        if len(self._is_newline) < len(a):
            self._is_newline = np.empty(len(a), dtype=bool)  # kept: a fresh 64 MB array a block costs page faults
        ends = np.flatnonzero(np.equal(a, 10, out=self._is_newline[:len(a)]))
        starts = np.concatenate([[0], ends[:-1] + 1])
        out = _Out(self, path)
        t = None
        if (a[starts] == ord("{")).all():  # no blank line: Arrow's rows are the lines, if as many
            t = self._arrow(buf)
        if t is not None and t.num_rows == len(ends):
            out.parsed(t, before + 1 + np.arange(len(ends)), lambda i: bytes(buf[starts[i]:ends[i]]).strip())
        else:
            lines = [bytes(buf[s:e]).strip() for s, e in zip(starts, ends)]
            numbers = [before + 1 + i for i, x in enumerate(lines) if x]
            self._parse_lines([x for x in lines if x], numbers, out)
        return out.block(), len(ends)

    def _arrow(self, buf) -> pa.Table | None:
        try:
            return pj.read_json(pa.BufferReader(pa.py_buffer(buf)), read_options=self._read, parse_options=self._parse)
        except (pa.ArrowException, ValueError):  # ArrowInvalid; UnicodeDecodeError on bytes that are not UTF-8
            return None

    def _parse_lines(self, lines: list[bytes], numbers: list[int], out: "_Out") -> None:
        """Stripped, non-empty lines: Arrow's rows if it reads them all, one row a line; else halves."""
        if not lines:
            return
        t = self._arrow(b"\n".join(lines) + b"\n")
        if t is not None and t.num_rows == len(lines):  # else a line held two objects
            out.parsed(t, np.array(numbers, np.int64), lines.__getitem__)
        elif len(lines) <= LINES_ALONE:
            for x, n in zip(lines, numbers):
                out.line(x, n)
        else:
            half = len(lines) // 2
            self._parse_lines(lines[:half], numbers[:half], out)
            self._parse_lines(lines[half:], numbers[half:], out)

    def _plainly_valid(self, t: pa.Table) -> np.ndarray:
        """Rows that are valid records as Arrow read them (Arrow checked the types and refused
        unknown fields): the right schema version, every required field present, no null object."""
        def valid(a):
            return pc.is_valid(a)

        ok = pc.and_(pc.equal(t["schema"], SCHEMA), pc.greater(pc.binary_length(t["clip_id"]), 0))
        for col in ("source", "labelled_at", "labeller", "attributes", "clip"):
            ok = pc.and_(ok, valid(t[col]))
        for k in LABELLER_COLUMNS:
            ok = pc.and_(ok, valid(pc.struct_field(t["labeller"], k)))
        for n in self.names:
            ok = pc.and_(ok, valid(pc.struct_field(t["attributes"], n)))
        return pc.fill_null(ok, False).to_numpy(zero_copy_only=False).astype(bool)


class _Out:
    """What `_parse_lines` finds in one block, put back in line order by `block()`."""

    def __init__(self, reader: RecordReader, path: Path):
        self.reader = reader
        self.path = path
        self.tables: list[pa.Table] = []
        self.dicts: list[dict[str, Any]] = []
        self.problems: list[tuple[int, str]] = []
        self.count = 0

    def parsed(self, t: pa.Table, numbers: np.ndarray, line: Callable[[int], bytes]) -> None:
        """Rows Arrow read, row i from line numbers[i]: kept if plainly valid, else `line(i)` read alone."""
        ok = self.reader._plainly_valid(t)
        if not ok.all():
            for i in np.flatnonzero(~ok):
                self.line(line(i), int(numbers[i]))
            good = np.flatnonzero(ok)
            t, numbers = t.take(good), numbers[good]
        if t.num_rows:
            cj = t.schema.get_field_index("caption_json")
            t = t.set_column(cj, "caption_json", pa.nulls(t.num_rows, pa.string()))
            self.tables.append(t.append_column("line", pa.array(numbers, pa.int64())))
            self.count += t.num_rows

    def line(self, raw: bytes, n: int) -> None:
        where = f"{self.path}:{n}"
        got = read_line(raw, where, as_dict=True)
        if isinstance(got, ScenarioFormatError):
            self.problems.append((n, str(got)))
            return
        self.count += 1
        unknown = set(got.get("attributes") or {}) - self.reader.known
        if unknown:
            self.problems.append((n, f"{self.path}: clip {got['clip_id']}: attributes: {', '.join(sorted(unknown))} "
                                     f"not in {self.reader.questions_file(self.path)}"))
            return
        cj = got.get("caption_json")
        self.dicts.append({**got, "caption_json": None if cj is None else json.dumps(cj, ensure_ascii=False),
                           "line": n})

    def block(self) -> Block:
        tables = self.tables
        if self.dicts:
            tables = [*tables, pa.Table.from_pylist(self.dicts, schema=self.reader.out_schema)]
        if not tables:
            t = self.reader.out_schema.empty_table()
        elif len(tables) == 1:
            t = tables[0]
        else:
            t = pa.concat_tables(tables)
            t = t.take(pc.sort_indices(t["line"]))
        return Block(t, [p for _, p in sorted(self.problems)], self.count)
