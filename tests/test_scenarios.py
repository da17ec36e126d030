"""The scenario database (`avcap index`, `avcap search`, avcap.scenarios): real LanceDB on tmp_path,
the real offline wordllama embedder, records built with the record schema (no video, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avcap.cli import app
from avcap.scenarios import EmbedderError, QueryError, ScenarioDBError, load_embedder, open_db
from avcap.scenarios import ingest as ingest_module
from avcap.scenarios import query as Q
from avcap.scenarios.rows import searchable_text
from avcap.scenarios.store import META_FILE
from avcap.scenarios.record import (
    AttributeAnswer,
    AttributeQuestion,
    ClipInfo,
    Labeller,
    QuestionSet,
    ScenarioRecord,
    parse_record_dict,
)

QUESTIONS = [
    AttributeQuestion(name="weather", question_id="sd03", question="What is the weather?",
                      choices={"A": "Clear", "B": "Overcast", "C": "Rain or snow", "D": "Fog or mist"}),
    AttributeQuestion(name="lighting", question_id="sd02", question="What are the lighting conditions?",
                      choices={"A": "Daytime with direct sunlight", "B": "Daytime with diffused light (overcast, rain or fog)",
                               "C": "Dusk or dawn", "D": "Night"}),
    AttributeQuestion(name="pedestrian_crossing", question_id="am04",
                      question="Does a pedestrian cross the road ahead of the ego vehicle?",
                      choices={"A": "Yes, on a crosswalk", "B": "Yes, away from a crosswalk",
                               "C": "No, pedestrians are visible but none crosses", "D": "No pedestrians are visible"}),
]
ATTRS = {q.name: q for q in QUESTIONS}
LABELLER = Labeller(model_name="tiny", checkpoint="step_10", checkpoint_path="/ckpt/step_10", engine="hf",
                    fingerprint="f00d")
T1, T2, T0 = "2026-01-01T10:00:00+00:00", "2026-02-01T10:00:00+00:00", "2025-12-01T10:00:00+00:00"


def rec(clip_id: str, caption: str, at: str = T1, error: str | None = None, **letters: str) -> dict:
    answers = {name: AttributeAnswer(letter=letter, answer=ATTRS[name].choices[letter]) for name, letter in letters.items()}
    r = ScenarioRecord(clip_id=clip_id, source=f"/clips/{clip_id}.mp4", caption=None if error else caption,
                       error=error, attributes={} if error else answers, labeller=LABELLER, labelled_at=at,
                       clip=ClipInfo(duration_s=8.0, width=640, height=360, fps=10.0, frames=80),
                       thumbnail=f"/thumbs/{clip_id}.jpg")
    return r.to_json()


def label_dir(path: Path, records: list[dict], questions=QUESTIONS, partitions: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "questions.json").write_text(QuestionSet(pool="pool.json", attributes=questions).model_dump_json(by_alias=True))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if partitions:
        (path / "scenarios").mkdir(exist_ok=True)
        (path / "scenarios" / "part-00000.jsonl").write_text(lines)
    else:
        (path / "scenarios.jsonl").write_text(lines)
    return path


BASE = [
    rec("c1", "A sunny afternoon on an urban street; the ego car follows a sedan.", weather="A", lighting="A", pedestrian_crossing="D"),
    rec("c2", "Heavy rain at night; a pedestrian crosses the road ahead on a crosswalk.", weather="C", lighting="D", pedestrian_crossing="A"),
    rec("c3", "Fog on a rural road at dawn; no one is around.", weather="D", lighting="C", pedestrian_crossing="D"),
    rec("c4", "Overcast highway, traffic flows freely.", weather="B", lighting="B", pedestrian_crossing="D"),
    rec("c5", "Drizzle in the evening, people wait at the kerb.", weather="C", lighting="C", pedestrian_crossing="C"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A database of BASE (shared by the read-only tests)."""
    root = tmp_path_factory.mktemp("scen")
    db = open_db(root / "db", create=True)
    db.ingest([label_dir(root / "l1", BASE)])
    return db


def test_ingest_is_incremental_and_newer_labels_win(tmp_path):
    db = open_db(tmp_path / "db", create=True)
    l1 = label_dir(tmp_path / "l1", BASE)
    r = db.ingest([l1])
    assert (r.added, r.replaced, r.unchanged, r.total) == (5, 0, 0, 5)
    r = db.ingest([l1])  # unchanged file: skipped by the log
    assert (r.added, r.replaced, r.unchanged, r.files_skipped, r.total) == (0, 0, 5, 1, 5)
    l2 = label_dir(tmp_path / "l2", [
        rec("c6", "A cyclist crosses at a four-way intersection.", weather="A", lighting="A", pedestrian_crossing="D"),
        rec("c2", "Relabelled: snow at night, a person crosses away from the crosswalk.", at=T2, weather="C",
            lighting="D", pedestrian_crossing="B"),
        rec("c3", "An old label of c3 that must not win.", at=T0, weather="A", lighting="A", pedestrian_crossing="A"),
    ], partitions=True)
    r = db.ingest([l2])
    assert (r.added, r.replaced, r.unchanged, r.older, r.total) == (1, 1, 1, 1, 6)
    assert db.count() == 6
    assert db.get("c2").caption.startswith("Relabelled") and db.get("c2").attributes["pedestrian_crossing"]["letter"] == "B"
    assert db.get("c3").caption.startswith("Fog")
    # the same records again, forced through: nothing changes, nothing is duplicated
    r = db.ingest([l1, l2], force=True)
    assert (r.added, r.replaced, r.total) == (0, 0, 6)
    ids = [h.clip_id for h in db.search(limit=100)]
    assert sorted(ids) == ["c1", "c2", "c3", "c4", "c5", "c6"]
    meta = json.loads((tmp_path / "db" / META_FILE).read_text())
    assert meta["schema"] == "avcap.scenario-db/1" and meta["counts"]["scenarios"] == 6
    assert [a["name"] for a in meta["attributes"]] == ["weather", "lighting", "pedestrian_crossing"]
    assert len(meta["ingests"]) == 4 and meta["embedder"]["name"] == "wordllama:l2_supercat"


def test_full_text_index_covers_rows_of_a_later_ingest(tmp_path):
    db = open_db(tmp_path / "db", create=True)
    db.ingest([label_dir(tmp_path / "l1", BASE)])
    db.ingest([label_dir(tmp_path / "l2", [rec("z9", "A zebra-striped tram blocks the junction.", weather="A")])])
    hits = db.search("tram", mode="text")
    assert [h.clip_id for h in hits] == ["z9"]
    fts = [i for i in db.table().list_indices() if i.index_type == "FTS"]
    assert fts and db.table().index_stats(fts[0].name).num_unindexed_rows == 0


def test_where_values_match_letter_text_word_substring():
    w = ATTRS["weather"]
    assert Q.match_choices("C", w) == ["C"] and Q.match_choices("c", w) == ["C"]
    assert Q.match_choices("rain or snow", w) == ["C"]
    assert Q.match_choices("rain", w) == ["C"]
    assert Q.match_choices("mis", w) == ["D"]  # substring
    assert Q.match_choices("daytime", ATTRS["lighting"]) == ["A", "B"]  # several choices: OR
    conds = Q.parse_where(["weather=rain", "weather=fog", "lighting!=night"], ATTRS)
    assert Q.where_sql(conds) == "`weather_letter` IN ('C', 'D') AND `lighting_letter` NOT IN ('D')"
    assert Q.parse_where({"lighting": ["dusk", "night"]}, ATTRS)[0].letters == ("C", "D")


def test_where_errors_name_the_clause_and_suggest():
    with pytest.raises(QueryError, match=r"--where wether=rain: unknown attribute 'wether' \(did you mean weather\?\)"):
        Q.parse_where(["wether=rain"], ATTRS)
    with pytest.raises(QueryError, match=r"'sunny' names no choice of weather; choices: A 'Clear', B 'Overcast'"):
        Q.parse_where(["weather=sunny"], ATTRS)
    with pytest.raises(QueryError, match="expected NAME=VALUE"):
        Q.parse_where(["weather"], ATTRS)
    with pytest.raises(QueryError, match="string literal is not closed"):
        Q.check_filter("weather = 'Clear")
    with pytest.raises(QueryError, match="unbalanced parentheses"):
        Q.check_filter("(duration_s > 1")


def test_rrf_fuses_and_breaks_ties_deterministically():
    fused = Q.rrf([["a", "b", "c"], ["c", "a", "d"]])
    assert [k for k, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_filters_on_the_database(built):
    assert {h.clip_id for h in built.search(where=["weather=rain"])} == {"c2", "c5"}
    hits = built.search(where=["weather=rain", "lighting=night"])
    assert [h.clip_id for h in hits] == ["c2"] and hits[0].matched == {"weather": "Rain or snow", "lighting": "Night"}
    assert {h.clip_id for h in built.search(where=["lighting=daytime"])} == {"c1", "c4"}  # A or B
    assert {h.clip_id for h in built.search(filter="weather_letter = 'C' AND caption LIKE '%night%'")} == {"c2"}
    assert built.count(where={"weather": "C"}) == 2
    with pytest.raises(QueryError, match=r"--filter \"wether_letter = 'C'\": no column named 'wether_letter' \(did you mean weather_letter"):
        built.search("rain", filter="wether_letter = 'C'")
    values = built.attribute_values("weather")
    assert values["C"] == {"answer": "Rain or snow", "count": 2} and values["B"]["count"] == 1
    assert [a.name for a in built.attributes()] == ["weather", "lighting", "pedestrian_crossing"]


def test_hybrid_ranks_the_relevant_clip_first(built):
    for mode in ("hybrid", "hybrid-plain", "text", "vector"):
        hits = built.search("pedestrian crossing in the rain at night", mode=mode, limit=3)
        assert hits[0].clip_id == "c2", (mode, [h.clip_id for h in hits])
        assert hits[0].rank == 1 and hits[0].score is not None
    hits = built.search("foggy morning in the countryside", mode="vector", limit=5)
    assert hits[0].clip_id == "c3"
    page2 = built.search("rain", limit=2, offset=2)
    assert [h.rank for h in page2] == [3, 4]
    h = built.get("c2")
    assert h.source == "/clips/c2.mp4" and h.thumbnail == "/thumbs/c2.jpg" and h.clip["frames"] == 80
    assert h.labeller["checkpoint"] == "step_10" and h.attributes["lighting"] == {"letter": "D", "answer": "Night"}


def test_bad_record_lines_are_reported_and_the_rest_is_ingested(tmp_path):
    d = label_dir(tmp_path / "l1", BASE[:2])
    f = d / "scenarios.jsonl"
    other = dict(BASE[2], schema="avcap.scenario/2")
    missing = {k: v for k, v in BASE[3].items() if k != "labeller"}
    f.write_text(f.read_text() + json.dumps(other) + "\n{not json\n" + json.dumps(missing) + "\n"
                 + json.dumps(rec("e1", "", error="unreadable video")) + "\n" + json.dumps(BASE[4]) + "\n")
    db = open_db(tmp_path / "db", create=True)
    r = db.ingest([d])
    assert (r.added, r.malformed, r.errors, r.total) == (3, 3, 1, 3)
    assert r.problems[0] == f"{f}:3: schema: 'avcap.scenario/2' is not 'avcap.scenario/1' (written by another avcap version; relabel or convert)"
    assert r.problems[1].startswith(f"{f}:4: not valid JSON")
    assert r.problems[2] == f"{f}:5: labeller: Field required"
    assert r.error_records == ["e1: unreadable video"] and db.get("e1") is None


def test_fast_record_check_agrees_with_the_model():
    good = BASE[0]
    assert parse_record_dict(good, "f:1") is good
    coerced = json.loads(json.dumps(good))
    coerced["clip"]["width"] = "640"  # pydantic coerces; the fast path hands it to pydantic
    assert parse_record_dict(coerced, "f:1")["clip"]["width"] == 640


def test_database_version_embedder_and_question_mismatches(tmp_path):
    db_dir = tmp_path / "db"
    db = open_db(db_dir, embedder="wordllama@64", create=True)
    db.ingest([label_dir(tmp_path / "l1", BASE)])
    with pytest.raises(EmbedderError, match=rf"{db_dir / META_FILE}: embedder: the database was built with "
                                            r"wordllama:l2_supercat@64 \(dim 64\), not wordllama:l2_supercat \(dim 256\)"):
        open_db(db_dir, embedder="wordllama")
    assert open_db(db_dir).search("rain at night", limit=1)[0].clip_id == "c2"  # the recorded embedder by default
    changed = [QUESTIONS[0].model_copy(update={"choices": {"A": "Sunny", "B": "Cloudy", "C": "Rain", "D": "Fog"}})]
    with pytest.raises(ScenarioDBError, match=r"questions.json: attributes.0.choices: attribute 'weather' differs from the one in"):
        db.ingest([label_dir(tmp_path / "l2", [rec("n1", "x", weather="A")], questions=changed)])
    meta = json.loads((db_dir / META_FILE).read_text())
    (db_dir / META_FILE).write_text(json.dumps(dict(meta, schema="avcap.scenario-db/0")))
    with pytest.raises(ScenarioDBError, match=rf"{db_dir / META_FILE}: schema: 'avcap.scenario-db/0' is not 'avcap.scenario-db/1'"):
        open_db(db_dir)
    with pytest.raises(ScenarioDBError, match="no scenario database here"):
        open_db(tmp_path / "nothing")


def test_new_attributes_in_a_later_ingest_get_columns(tmp_path):
    db = open_db(tmp_path / "db", create=True)
    r = db.ingest([label_dir(tmp_path / "l1", [rec("c1", "Sunny.", weather="A"), rec("c2", "Sunny again.", weather="A", lighting="A")],
                             questions=QUESTIONS[:1])])
    assert (r.added, r.malformed) == (1, 1)  # c2 answers a question its questions.json does not ask
    assert r.problems == [f"{tmp_path / 'l1' / 'scenarios.jsonl'}: clip c2: attributes: lighting not in "
                          f"{tmp_path / 'l1' / 'questions.json'}"]
    assert [a.name for a in db.attributes()] == ["weather"]
    db.ingest([label_dir(tmp_path / "l2", [rec("c9", "Night drive in the rain.", weather="C", lighting="D")],
                         questions=QUESTIONS[:2])])
    assert [h.clip_id for h in db.search(where=["lighting=night"])] == ["c9"]
    assert db.get("c1").attributes == {"weather": {"letter": "A", "answer": "Clear"}}


def test_cli_index_and_search(tmp_path):
    runner = CliRunner()
    d = label_dir(tmp_path / "l1", BASE)
    db = tmp_path / "db"
    res = runner.invoke(app, ["index", str(d), "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "added 5, replaced 0, unchanged 0, errors 0, total 5" in res.output
    res = runner.invoke(app, ["search", "pedestrian crossing at night in the rain", "--db", str(db), "--json", "-n", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert rows[0]["clip_id"] == "c2" and rows[0]["rank"] == 1 and len(rows) == 2
    res = runner.invoke(app, ["search", "--db", str(db), "--where", "weather=rain", "--where", "lighting=night"])
    assert res.exit_code == 0 and "c2" in res.output and "c5" not in res.output
    assert "weather=Rain or snow" in res.output
    res = runner.invoke(app, ["search", "x", "--db", str(db), "--where", "wether=rain"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: --where wether=rain: unknown attribute 'wether' (did you mean weather?)"]
    res = runner.invoke(app, ["index", str(tmp_path / "absent"), "--db", str(db)])
    assert res.exit_code == 2 and f"{tmp_path / 'absent'}: no such file or directory" in res.output
    res = runner.invoke(app, ["search", "x", "--db", str(tmp_path / "nodb")])
    assert res.exit_code == 2 and "no scenario database here" in res.output


def test_text_column_holds_the_caption_and_the_stated_answers(tmp_path):
    absent = AttributeQuestion(name="absent", question_id="st06", question="Which of these is absent from the whole video?",
                               choices={"A": "Traffic lights", "B": "Pedestrians", "C": "Both", "D": "Neither: both appear"})
    r = rec("t1", "A wet street.", weather="C", pedestrian_crossing="D")
    r["attributes"]["absent"] = {"letter": "A", "answer": "Traffic lights"}
    db = open_db(tmp_path / "db", create=True)
    db.ingest([label_dir(tmp_path / "l1", [r], questions=[*QUESTIONS, absent])])
    text = db.table().search().select(["text"]).limit(1).to_arrow().column("text")[0].as_py()
    # "No pedestrians are visible" states an absence; "Traffic lights" answers "which is absent?"
    assert text == "A wet street. Rain or snow." == searchable_text(r, {**ATTRS, "absent": absent})
    assert db.search("traffic lights", mode="text") == []


def test_caption_snippet_shows_the_matching_sentence():
    cap = "It is a sunny day. A pedestrian crosses the road ahead at night. Cars wait."
    assert Q.snippet(cap, "pedestrians crossing", 60) == "… A pedestrian crosses the road ahead at night. Cars wait."
    assert Q.snippet(cap, "", 12) == "It is a sun…"


def test_vector_index_and_selective_filters(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "VECTOR_INDEX_MIN_ROWS", 300)  # an IVF index on a small table
    monkeypatch.setattr(ingest_module, "VECTOR_PARTITION_ROWS", 20)  # of 20 partitions
    recs = [rec(f"v{i:03d}", f"Clip {i}: a {'red' if i % 2 else 'blue'} car drives along a road number {i}.",
                weather="ABCD"[i % 4], lighting="ABCD"[(i // 4) % 4]) for i in range(400)]
    recs.append(rec("rare", "A horse-drawn carriage blocks the lane.", weather="D", lighting="D", pedestrian_crossing="B"))
    db = open_db(tmp_path / "db", create=True)
    r = db.ingest([label_dir(tmp_path / "l1", recs)])
    assert r.total == 401 and db.meta["vector_index"]["rows"] == 401
    assert any(i.index_type == "IvfRq" for i in db.table().list_indices())
    # one row passes the filter: the probed partitions may miss it, the exact fallback finds it
    hits = db.search("a car on a road", where=["pedestrian_crossing=away"], mode="vector")
    assert [h.clip_id for h in hits] == ["rare"]
    assert db.search("horse carriage", limit=1)[0].clip_id == "rare"
    r = db.ingest([tmp_path / "l1"])
    assert (r.files_skipped, r.index_seconds < 1.0) == (1, True)  # nothing new: indexes left as they are


def test_wordllama_vectors_equal_wordllama_s_own(tmp_path):
    import numpy as np
    import wordllama
    from wordllama import WordLlama

    texts = ["A pedestrian crosses at night in the rain.", "Two  spaces,\ttabs and ünïcödé 😀", "", "x"]
    ours = load_embedder("wordllama").embed(texts)
    ref = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True).embed(texts[:2] + texts[3:])
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(ours[[0, 1, 3]] - ref).max() < 1e-5 and not ours[2].any()
    assert load_embedder("wordllama@64").embed(texts).shape == (4, 64)
    with pytest.raises(EmbedderError, match="/nonexistent/model: not a sentence-transformers model directory"):
        load_embedder("/nonexistent/model")
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        with pytest.raises(EmbedderError, match="needs the package: pip install sentence-transformers"):
            load_embedder(str(tmp_path))


def test_searches_from_several_threads_agree(built):
    from concurrent.futures import ThreadPoolExecutor

    queries = [("rain at night", ()), ("fog", ["lighting=dusk"]), ("", ["weather=clear"]), ("crosswalk", ())] * 4
    want = [[h.clip_id for h in built.search(q, where=w)] for q, w in queries]
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda qw: [h.clip_id for h in built.search(qw[0], where=qw[1])], queries))
    assert got == want


def test_a_record_without_caption_is_found_by_its_answers(tmp_path):
    db = open_db(tmp_path / "db", create=True)
    db.ingest([label_dir(tmp_path / "l1", [*BASE, rec("nc", "", weather="D", lighting="D", pedestrian_crossing="A")])])
    hit = db.search("foggy night, someone on a crosswalk", mode="vector", limit=1)[0]
    assert hit.clip_id == "nc" and hit.caption is None and hit.score > 0.3


def test_streamed_writes_commit_in_pieces_and_replace_within_one_ingest(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 1000)  # one or two records a chunk, several commits, on 7 records
    monkeypatch.setattr(ingest_module, "COMMIT_ROWS", 3)
    recs = [rec(f"s{i}", f"Clip {i} first label.", weather="A") for i in range(5)]
    recs += [rec("s1", "Clip 1 relabelled.", at=T2, weather="C"), rec("s3", "Clip 3 older label.", at=T0, weather="D")]
    db = open_db(tmp_path / "db", create=True)
    r = db.ingest([label_dir(tmp_path / "l1", recs)])
    assert (r.added, r.replaced, r.unchanged, r.older, r.total) == (5, 1, 1, 1, 5)
    assert sorted(h.clip_id for h in db.search(limit=10)) == ["s0", "s1", "s2", "s3", "s4"]
    assert db.get("s1").caption == "Clip 1 relabelled." and db.get("s3").caption == "Clip 3 first label."
    assert db.search("relabelled", mode="text")[0].clip_id == "s1"


# ---- query understanding (avcap.scenarios.understand) ----------------------------------------


def test_aliases_and_choice_words_map_the_query_to_facets():
    from avcap.scenarios.understand import Vocabulary

    v = Vocabulary(QUESTIONS)
    u = v.understand("A downpour after dark; someone jaywalking")
    assert {f.name: f.letters for f in u.facets} == {"weather": ("C",), "lighting": ("D",), "pedestrian_crossing": ("B",)}
    assert [f.phrase for f in u.facets] == ["downpour", "after dark", "jaywalking"]
    assert "rain" in u.expansion and u.text.startswith("A downpour after dark; someone jaywalking ")
    # alternatives of one attribute: either; negation: the other choices, "or" keeps the negation
    assert [(f.name, f.letters) for f in v.understand("drizzle or fog").facets] == [("weather", ("C", "D"))]
    assert [(f.name, f.letters, f.negated) for f in v.understand("not raining").facets] == [("weather", ("A", "B", "D"), True)]
    assert [(f.name, f.letters) for f in v.understand("no rain or fog at dusk").facets] == [
        ("weather", ("A", "B")), ("lighting", ("C",))]
    assert v.understand("a pleasant drive").facets == []
    # the choice texts alone (no packaged vocabulary): whole words of one attribute's stated choices
    bare = Vocabulary(QUESTIONS, packaged=False)
    assert {f.name: f.letters for f in bare.understand("mist near a crosswalk").facets} == {
        "weather": ("D",), "pedestrian_crossing": ("A", "B")}
    assert bare.understand("downpour").facets == []
    assert [f.letters for f in bare.understand("someone on a crosswalk").facets] == [("A",)]  # a whole choice text
    # a question that asks what is absent gives no words ("traffic lights" would mean there are none);
    # a packaged entry for another question under the same name does not apply
    absent = AttributeQuestion(name="absent", question_id="st06", question="Which of these is absent from the whole video?",
                               choices={"A": "Traffic lights", "B": "Pedestrians", "C": "Both", "D": "Neither: both appear"})
    other = AttributeQuestion(name="weather", question_id="my-weather", question="Sky?",
                              choices={"A": "Blue", "B": "Grey", "C": "Wet", "D": "White"})
    v2 = Vocabulary([absent, other])
    assert v2.understand("traffic lights and pedestrians").facets == []
    assert v2.understand("downpour").facets == []


def test_facets_rank_matching_clips_first_and_where_stays_hard(built):
    hits = built.search("downpour after dark", limit=10)
    assert [h.clip_id for h in hits[:2]] == ["c2", "c5"]  # both facets (rain, night), then one (rain)
    assert hits[0].facets == {"weather": "Rain or snow", "lighting": "Night"} and hits[0].score > 2
    assert hits[1].facets == {"weather": "Rain or snow"} and 1 < hits[1].score < 2
    assert len(hits) == 5 and all(h.score < 1 and not h.facets for h in hits[2:])  # soft: the rest still ranks
    assert all(not h.facets for h in built.search("downpour after dark", mode="hybrid-plain"))
    page = built.search("downpour after dark", limit=2, offset=1)
    assert [(h.rank, h.clip_id) for h in page] == [(2, "c5"), (3, hits[2].clip_id)]
    # an explicit --where is a hard filter, and its attribute is no facet
    hits = built.search("downpour after dark", where=["lighting=dusk"])
    assert [h.clip_id for h in hits] == ["c5", "c3"] and hits[0].matched == {"lighting": "Dusk or dawn"}
    assert hits[0].facets == {"weather": "Rain or snow"}
    assert [f.name for f in built.understand("downpour after dark", where=["lighting=dusk"]).facets] == ["weather"]
    # a negated facet: clips without the thing first
    hits = built.search("no rain, no pedestrians crossing", limit=3)
    assert {h.attributes["weather"]["letter"] for h in hits} <= {"A", "B", "D"}


def _alias_file(path: Path, attributes: dict, **extra) -> Path:
    path.write_text(json.dumps({"schema": "avcap.search-vocabulary/1", "attributes": attributes, **extra}))
    return path


def test_user_alias_files_extend_the_vocabulary(tmp_path, monkeypatch):
    db_dir = tmp_path / "db"
    open_db(db_dir, create=True).ingest([label_dir(tmp_path / "l1", BASE)])
    assert open_db(db_dir).understand("mizzle").facets == []
    f = _alias_file(tmp_path / "mine.json", {"weather": {"choices": {"C": ["mizzle", "scotch mist"]}},
                                            "lighting": {"question_id": "sd02", "choices": {"CD": ["gloaming|crepuscule"]}}})
    db = open_db(db_dir, aliases=[f])
    assert [(x.name, x.letters) for x in db.understand("mizzle in the crepuscule").facets] == [
        ("weather", ("C",)), ("lighting", ("C", "D"))]
    assert db.search("mizzle", limit=1)[0].facets == {"weather": "Rain or snow"}
    # the database's own aliases.json, and AVCAP_SEARCH_ALIASES
    _alias_file(db_dir / "aliases.json", {"weather": {"choices": {"D": ["pea-souper"]}}})
    assert [x.letters for x in open_db(db_dir).understand("a real pea souper").facets] == [("D",)]
    env = _alias_file(tmp_path / "env.json", {"pedestrian_crossing": {"choices": {"B": ["darts across"]}}},
                      negation={"cues": ["sans"]})
    monkeypatch.setenv("AVCAP_SEARCH_ALIASES", str(env))
    u = open_db(db_dir).understand("a child darts across, sans rain")
    assert [(x.name, x.letters) for x in u.facets] == [("pedestrian_crossing", ("B",)), ("weather", ("A", "B", "D"))]
    res = CliRunner().invoke(app, ["search", "mizzle", "--db", str(db_dir), "--aliases", str(f), "-n", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith('understood: weather=Rain or snow ("mizzle")') and "weather=Rain or snow" in res.output


@pytest.mark.parametrize("content, line", [
    ({"attributes": {"weather": {"choices": {"E": ["x"]}}}},
     "attributes.weather.choices.E: expected one or more of the letters A, B, C, D (weather: A 'Clear'; B 'Overcast'; "
     "C 'Rain or snow'; D 'Fog or mist')"),
    ({"attributes": {"wether": {"choices": {"C": ["x"]}}}},
     "attributes.wether: the database has no attribute 'wether' (did you mean weather?)"),
    ({"attributes": {"weather": {"choices": {"C": "mizzle"}}}},
     "attributes.weather.choices.C: expected a list of non-empty strings"),
    ({"attributes": {"weather": {"choices": {"C": ["... mizzle"]}}}},
     "attributes.weather.choices.C[0]: '... mizzle': '...' must stand between two words"),
    ({"attributes": {"weather": {"question_id": "sd99", "choices": {"C": ["x"]}}}},
     "attributes.weather.question_id: 'sd99', but the database's weather is question 'sd03'"),
    ({"negation": {"window": "3"}, "attributes": {}}, "negation.window: expected a whole number from 0 to 10"),
    ({"attributes": {}, "synonyms": {}}, "synonyms: unknown field (expected schema, about, negation, ignore, attributes)"),
    (None, "1:2: not valid JSON (Expecting property name enclosed in double quotes)"),
])
def test_a_bad_alias_file_is_one_line_naming_file_and_field(built, tmp_path, content, line):
    f = tmp_path / "aliases.json"
    if content is None:
        f.write_text("{oops")
    else:
        f.write_text(json.dumps({"schema": "avcap.search-vocabulary/1", **content}))
    with pytest.raises(ScenarioDBError) as exc:
        open_db(built.path, aliases=[f]).search("rain")
    assert str(exc.value) == f"{f}: {line}" if content is not None else str(exc.value) == f"{f}:{line}"
    res = CliRunner().invoke(app, ["search", "rain", "--db", str(built.path), "--aliases", str(f)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and res.output.startswith(f"error: {f}")
