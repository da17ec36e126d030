"""`avcap index`'s fast paths against the slow ones they replace: record files read in blocks by
Arrow (scenarios/reader.py) give the records and the problems that reading line by line
(`scan_scenarios`) gives; captions embedded sentence by sentence get the vectors of the plain path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from avcap.scenarios import load_embedder, open_db
from avcap.scenarios import ingest as ingest_module
from avcap.scenarios.reader import RecordReader
from avcap.scenarios.record import (
    AttributeAnswer,
    AttributeQuestion,
    ClipInfo,
    Labeller,
    QuestionSet,
    ScenarioFormatError,
    ScenarioRecord,
    questions_for,
    scan_scenarios,
)

QUESTIONS = [
    AttributeQuestion(name="weather", question_id="sd03", question="What is the weather?",
                      choices={"A": "Clear", "B": "Overcast", "C": "Rain or snow", "D": "Fog or mist"}),
    AttributeQuestion(name="lighting", question_id="sd02", question="What are the lighting conditions?",
                      choices={"A": "Day", "B": "Overcast day", "C": "Dusk or dawn", "D": "Night"}),
]
NAMES = [q.name for q in QUESTIONS]
LABELLER = Labeller(model_name="tiny", checkpoint="step_10", checkpoint_path="/ckpt", engine="hf", fingerprint="f00d")


def rec(i: int, **over) -> dict:
    r = ScenarioRecord(clip_id=f"c{i}", source=f"/clips/c{i}.mp4", caption=f"Clip {i} drives on. The road is dry.",
                       attributes={"weather": AttributeAnswer(letter="ABCD"[i % 4], answer=QUESTIONS[0].choices["ABCD"[i % 4]]),
                                   "lighting": AttributeAnswer(letter="A", answer="Day")},
                       clip=ClipInfo(duration_s=8.0, width=640, height=360, fps=10.0, frames=80),
                       labeller=LABELLER, labelled_at="2026-01-01T10:00:00+00:00").to_json()
    r.update(over)
    return r


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def messy_file(d: Path) -> Path:
    """Good records around every kind of line the block reader must hand to the line checks."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "questions.json").write_text(QuestionSet(pool="p", attributes=QUESTIONS).model_dump_json(by_alias=True))
    coerced = rec(5)
    coerced["clip"]["width"] = "640"  # the model coerces it to 640
    whole_float = rec(6)
    whole_float["clip"]["height"] = 360.0  # likewise
    bad_width = rec(7)
    bad_width["clip"]["width"] = "wide"
    answer_raw = rec(8)
    answer_raw["attributes"]["weather"] = {"letter": None, "answer": None, "raw": "it rains", "error": None}
    null_answer = rec(9)
    null_answer["attributes"]["lighting"] = None
    unknown_attr = rec(10)
    unknown_attr["attributes"]["season"] = {"letter": "A", "answer": "Winter"}
    no_labeller = {k: v for k, v in rec(11).items() if k != "labeller"}
    one_unanswered = rec(61)
    del one_unanswered["attributes"]["lighting"]  # valid: Arrow's null struct is read again alone
    parts = [line(rec(i)) for i in range(5)]
    parts += [
        line(coerced), line(whole_float), line(bad_width), line(answer_raw), line(null_answer), line(unknown_attr),
        line(no_labeller), b"\n", b"   \n", json.dumps(rec(12)).encode() + b"\r\n",
        line(rec(13)).rstrip(b"\n") + b" " + line(rec(14)),  # two objects on one line
        b"{not json\n", line([1, 2]), line(rec(15, schema="avcap.scenario/2")), line(rec(16, clip_id="")),
        line(rec(17, attributes=None)), line(rec(18, caption_json={"safety_analysis": "ok", "n": [1, 2]})),
        line(rec(19, error="unreadable video", caption=None, attributes={})), line(rec(20, extra_field=1)),
        b'{"clip_id": "\xff\xfe"}\n', line(rec(21, caption="")), line(rec(22, thumbnail=3)), line(one_unanswered),
    ]
    parts += [line(rec(i)) for i in range(23, 60)]
    parts.append(json.dumps(rec(60)).encode())  # torn: no newline
    f = d / "scenarios.jsonl"
    f.write_bytes(b"".join(parts))
    return f


def expected(f: Path, reader: RecordReader):
    """What the line-by-line reader makes of the file, as the block reader gives it."""
    rows, problems, count = [], [], 0
    for n, got in enumerate(scan_scenarios(f, as_dict=True), start=1):
        if isinstance(got, ScenarioFormatError):
            problems.append(str(got))
            continue
        count += 1
        if set(got["attributes"]) - set(NAMES):
            problems.append(f"{f}: clip {got['clip_id']}: attributes: "
                            f"{', '.join(sorted(set(got['attributes']) - set(NAMES)))} not in {questions_for(f)}")
            continue
        cj = got["caption_json"]
        rows.append({**got, "caption_json": None if cj is None else json.dumps(cj)})
    table = pa.Table.from_pylist(rows, schema=reader.schema)
    return table.to_pylist(), problems, count


@pytest.mark.parametrize("block_bytes", [700, 4096, 1 << 20])
def test_block_reader_agrees_with_the_line_reader(tmp_path, block_bytes):
    f = messy_file(tmp_path / "l")
    reader = RecordReader(NAMES, questions_for)
    blocks = list(reader.blocks(f, block_bytes))
    got = pa.concat_tables([b.records for b in blocks])
    want_rows, want_problems, want_count = expected(f, reader)
    assert got.drop_columns(["line"]).to_pylist() == want_rows
    assert [p for b in blocks for p in b.problems] == want_problems
    assert sum(b.count for b in blocks) == want_count
    # line numbers as scan_scenarios counts them (blank lines included)
    lines = got["line"].to_pylist()
    assert lines == sorted(lines) and got["clip_id"].to_pylist()[lines.index(15)] == "c12"  # after 2 blank lines
    assert len(want_problems) == 13 and want_problems[4] == f"{f}:16: not valid JSON (Extra data)"
    by_id = {r["clip_id"]: r for r in want_rows}
    assert by_id["c5"]["clip"]["width"] == 640 and by_id["c18"]["caption_json"] is not None
    assert "c7" not in by_id and "c9" not in by_id and "c13" not in by_id and "c60" not in by_id
    assert by_id["c61"]["attributes"]["lighting"] is None and by_id["c61"]["attributes"]["weather"]["letter"] == "B"


def test_ingest_of_a_messy_file_is_the_same_in_any_chunking(tmp_path, monkeypatch):
    f = messy_file(tmp_path / "l")
    reports, dumps = [], []
    for i, chunk in enumerate((1 << 20, 900)):
        monkeypatch.setattr(ingest_module, "CHUNK_BYTES", chunk)
        db = open_db(tmp_path / f"db{i}", create=True)
        r = db.ingest([f])
        reports.append({k: getattr(r, k) for k in ("added", "replaced", "unchanged", "errors", "malformed",
                                                    "records_read", "total")} | {"problems": r.problems,
                                                                                 "error_records": r.error_records})
        rows = db.table().to_arrow().drop_columns(["vector"]).sort_by("clip_id").to_pylist()
        dumps.append(rows)
    assert reports[0] == reports[1]
    assert reports[0]["errors"] == 1 and reports[0]["error_records"] == ["c19: unreadable video"]
    assert reports[0]["malformed"] == 13 and len(reports[0]["problems"]) == 6  # five shown, then a count
    assert dumps[0] == dumps[1]
    rows = {r["clip_id"]: r for r in dumps[0]}
    assert json.loads(rows["c18"]["extra_json"]) == {"caption_json": {"safety_analysis": "ok", "n": [1, 2]}}
    assert json.loads(rows["c8"]["extra_json"]) == {"attributes": {"weather": {"raw": "it rains"}}}
    assert rows["c21"]["caption"] is None and rows["c5"]["width"] == 640 and rows["c6"]["height"] == 360


def test_sentence_by_sentence_embedding_is_the_plain_one():
    e = load_embedder("wordllama")
    rng = np.random.default_rng(0)
    sentences = ["The road is dry.", "A cyclist waits at the light.", "It rains.", "Night falls;  two spaces here.",
                 "Tabs\tand\nnewlines.", "ünïcödé 😀 signs.", "No full stop at the end", "Mr. Smith crosses.",
                 "A \u2581marked word.", "Trailing  double.  Space."]
    texts = [" ".join(rng.choice(sentences, rng.integers(1, 6))) for _ in range(600)]
    texts += ["", "Ends with a space. ", " Leading space.", "Sep\x1earator. x", "a. . b", "x"] * 5
    batch = e.embed(texts)  # >= BY_SENTENCE_MIN texts: sentence by sentence
    assert len(texts) >= e.BY_SENTENCE_MIN
    one_by_one = np.concatenate([e.embed([t]) for t in texts])
    assert np.abs(batch - one_by_one).max() < 1e-5
    assert np.abs(e.embed(pa.array(texts)) - batch).max() < 1e-6
    assert not batch[texts.index("")].any()
