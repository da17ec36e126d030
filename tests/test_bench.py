"""The AV-VQA benchmark builder: pool, selection, answerers, build/review/apply/stats, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from avcap.bench import apply_reviews, bench_stats, build_benchmark, write_review_file
from avcap.bench.answerers import annotation_text
from avcap.bench.build import BenchError, read_pairs
from avcap.bench.pool import PoolError, format_question, load_pool
from avcap.bench.select import select_questions
from avcap.core.config import CATEGORIES, load_config
from avcap.core.records import iter_records
from avcap.demo.truth import SyntheticWorld

WORLD = SyntheticWorld()  # the synthetic world truth the CLI hands the benchmark steps

POOL = load_pool()

# ----------------------------------------------------------------------------- pool


def test_packaged_pool_schema_and_counts():
    counts = Counter(q.category for q in POOL.questions)
    assert len(POOL.questions) == 50
    assert counts == {
        "Scene Description": 13, "Key Objects": 10, "Actions & Motion": 8,
        "Ego Vehicle Behavior": 7, "Characters & Interactions": 6, "Spatial & Temporal": 6,
    }
    assert set(counts) == set(CATEGORIES)
    required = POOL.required
    assert len(required) == 6
    assert {q.category for q in required} == set(CATEGORIES)  # one core question per category
    assert len({q.id for q in POOL.questions}) == 50
    assert len({q.question for q in POOL.questions}) == 50
    for q in POOL.questions:
        assert list(q.choices) == ["A", "B", "C", "D"]
        assert len({t.lower() for t in q.choices.values()}) == 4
        assert q.depends_on, q.id
    # every depends_on field is one the recipe's human annotation has
    human_fields = {
        "weather", "lighting", "road_conditions", "traffic_light", "traffic_sign", "additional_traffic_rules",
        "road_type", "junction_type", "lane_type", "additional_map_rules", "interactive_expanded_metaaction",
        "noninteractive_expanded_metaaction", "safety_analysis", "driving_difficulty", "rule_violation",
        "interesting_scenario", "critical_object",
    }
    assert {f for q in POOL.questions for f in q.depends_on} <= human_fields


def test_format_question_is_the_mcq_prompt():
    q = POOL.by_id()["sd03"]
    text = format_question(q, "Answer with the option's letter from the given choices directly.")
    assert text == (
        "What is the weather?\nA. Clear\nB. Overcast\nC. Rain or snow\nD. Fog or mist\n"
        "Answer with the option's letter from the given choices directly."
    )
    record = {"question": q.question, "choices": dict(q.choices)}  # a vqa.jsonl line works too
    assert format_question(record, "S") == format_question(q, "S")


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_user_pool_errors_name_the_file_and_the_question(tmp_path):
    good = [q.model_dump() for q in POOL.questions]
    bad = [dict(x) for x in good]
    bad[2]["category"] = "Scenery"
    bad[4]["choices"] = {"A": "x", "B": "y", "C": "z"}
    bad[7]["id"] = bad[0]["id"]
    bad[9]["colour"] = "red"
    path = _write(tmp_path / "my_pool.json", {"questions": bad})
    with pytest.raises(PoolError) as exc:
        load_pool(path)
    msgs = exc.value.problems
    assert any("my_pool.json: question #3 ('sd03'): category: unknown category 'Scenery'" in m for m in msgs)
    assert any("question #5 ('sd05'): choices: choices must be exactly A, B, C, D" in m for m in msgs)
    assert any("question #8 ('sd01'): duplicate id (first used by question #1)" in m for m in msgs)
    assert any("question #10 ('sd10'): colour: unknown field" in m for m in msgs)
    assert len(msgs) == 4
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(PoolError, match=r"broken.json:1:2: not valid JSON"):
        load_pool(broken)
    # YAML pools load too, and the list form without the "questions" wrapper
    import yaml

    ypath = tmp_path / "pool.yaml"
    ypath.write_text(yaml.safe_dump(good[:20]), encoding="utf-8")
    assert [q.id for q in load_pool(ypath).questions] == [q["id"] for q in good[:20]]


def test_bench_cli_refuses_a_bad_user_pool(tmp_path):
    bad = [q.model_dump() for q in POOL.questions]
    bad[11]["choices"]["B"] = bad[11]["choices"]["A"]
    _write(tmp_path / "pool.json", bad)
    cfg = tmp_path / "recipe.toml"
    cfg.write_text('[avcap.bench]\npool = "pool.json"\n', encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "avcap", "bench", "pool", "--config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "pool.json: question #12 ('sd12'): choices: two choices have the same text" in r.stderr
    assert "Traceback" not in r.stderr
    # a pool whose required count does not match the config is refused before any work
    few = [dict(q.model_dump(), required=False) for q in POOL.questions]
    _write(tmp_path / "pool.json", few)
    r = subprocess.run([sys.executable, "-m", "avcap", "bench", "pool", "--config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "has 0 required question(s) but [avcap.bench] required_per_video = 6" in r.stderr


# ----------------------------------------------------------------------------- selection


def test_selection_six_required_plus_six_sampled_deterministic():
    ids = [f"video_{i:04d}" for i in range(300)]
    picks = {v: [q.id for q in select_questions(POOL, v, seed=0, questions_per_video=12)] for v in ids}
    required = {q.id for q in POOL.required}
    for v, qs in picks.items():
        assert len(qs) == 12 and len(set(qs)) == 12
        assert required <= set(qs)
        assert [q.id for q in POOL.questions if q.id in qs] == qs  # pool order
    # same video -> same questions, whatever the order the videos are processed in
    for v in reversed(ids):
        assert [q.id for q in select_questions(POOL, v, seed=0, questions_per_video=12)] == picks[v]
    # ... and in a fresh process (no dependence on PYTHONHASHSEED or state)
    code = ("from avcap.bench.pool import load_pool; from avcap.bench.select import select_questions;"
            "print(','.join(q.id for q in select_questions(load_pool(), 'video_0007', seed=0, questions_per_video=12)))")
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().split(",") == picks["video_0007"]
    # the sample varies across videos and covers the whole optional pool; the seed changes it
    sampled = Counter(q for qs in picks.values() for q in qs if q not in required)
    assert set(sampled) == {q.id for q in POOL.optional}
    assert len({tuple(qs) for qs in picks.values()}) > 250
    other = [q.id for q in select_questions(POOL, "video_0007", seed=1, questions_per_video=12)]
    assert other != picks["video_0007"]


# ----------------------------------------------------------------------------- truth answerer


def test_truth_answerer_answers_every_question_for_random_worlds():
    from avcap.demo import truth
    from avcap.demo.synth.world import sample_scene

    assert set(truth.RULES) == {q.id for q in POOL.questions}
    letters: dict[str, Counter] = {q.id: Counter() for q in POOL.questions}
    for seed in range(150):
        record = sample_scene(seed)
        assert not record.check()
        for q in POOL.questions:
            letter = truth.answer(record, q.id)
            assert letter in q.choices, (seed, q.id, letter)
            letters[q.id][letter] += 1
    # every question's answer depends on the scene (no constant answers)
    constant = [qid for qid, c in letters.items() if len(c) < 2]
    assert not constant, constant
    # and across the pool every letter is used as an answer often
    overall = sum(letters.values(), Counter())
    assert min(overall[x] for x in "ABCD") > 0.1 * sum(overall.values())


# ----------------------------------------------------------------------------- a local OpenAI-compatible server


class ChatServer:
    """A real HTTP server speaking the chat-completions protocol; `reply(prompt_text) -> str` decides
    what the "model" says, so answers are controlled while the whole engine path runs for real."""

    def __init__(self, reply, delay_s: float = 0.0):
        self.reply, self.delay_s, self.prompts = reply, delay_s, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
                server.prompts.append(text)
                time.sleep(server.delay_s)
                answer = server.reply(text)
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def synth_eval(tmp_path_factory):
    """A synthetic AV_CAPTION evaluation set (videos, human annotations, world records)."""
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "avcap", "synth", "--out", str(out), "--videos", "6", "--seed", "3",
                    "--train-videos", "0", "--lingoqa-segments", "0", "--workers", "2"],
                   check=True, capture_output=True, text=True)
    return out / "eval" / "AV_CAPTION"


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("bench", "vqa.jsonl"))
    return dst


def _config(tmp_path: Path, server_url: str, *, video_kind: str = "truth", extra: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        f"""
[avcap.bench.annotation_answerer]
kind = "engine"
reads = "annotation"
[avcap.bench.annotation_answerer.engine]
name = "openai"
model = "test-llm"
base_url = "{server_url}"
concurrency = 2
batch_size = 2
max_retries = 0
[avcap.bench.video_answerer]
kind = "{video_kind}"
reads = "video"
{extra}
""",
        encoding="utf-8",
    )
    return path


class Oracle:
    """Knows, for a prompt, which video and question it is about and the world's answer."""

    def __init__(self, dataset: Path, suffix: str):
        self.by_annotation = {annotation_text(p): p.stem for p in sorted((dataset / "annotations").glob("*.json"))}
        self.suffix = suffix
        self.dataset = dataset

    def identify(self, prompt: str):
        vid = next(v for text, v in self.by_annotation.items() if text in prompt)
        q = next(q for q in POOL.questions if prompt.endswith(format_question(q, self.suffix)))
        return vid, q

    def truth(self, vid: str, q) -> str:
        from avcap.demo import truth
        from avcap.demo.synth.scene import SceneRecord

        rec = SceneRecord.model_validate_json((self.dataset / "world" / f"{vid}.json").read_bytes())
        return truth.answer(rec, q.id)


def _plan(vid: str, qid: str) -> str:
    """agree | disagree | unparseable, spread over the pairs deterministically."""
    import hashlib

    return ("agree", "agree", "disagree", "unparseable")[hashlib.sha256(f"{vid}/{qid}".encode()).digest()[0] % 4]


def _policy(oracle: Oracle):
    def reply(prompt: str) -> str:
        vid, q = oracle.identify(prompt)
        t = oracle.truth(vid, q)
        plan = _plan(vid, q.id)
        if plan == "agree":
            return f"The answer is {t}."
        if plan == "disagree":
            return "ABCD"[("ABCD".index(t) + 1) % 4]
        return "I cannot tell from the annotation."

    return reply


# ----------------------------------------------------------------------------- build: routing


@pytest.fixture(scope="module")
def built(synth_eval, tmp_path_factory):
    """The synthetic set built once: annotation answerer = an openai engine on the local server
    (agreeing, disagreeing or rambling per the plan), video answerer = the world truth."""
    tmp = tmp_path_factory.mktemp("built")
    dataset = _copy_dataset(synth_eval, tmp / "AV_CAPTION")
    oracle = Oracle(dataset, load_config(None).avcap.prompts.mcq_suffix)
    with ChatServer(_policy(oracle)) as srv:
        cfg = load_config(_config(tmp, srv.url))
        summary = build_benchmark(cfg, dataset, log=lambda s: None, world=WORLD)
        n_requests = len(srv.prompts)
        again = build_benchmark(cfg, dataset, log=lambda s: None, world=WORLD)  # rerun: nothing left to do
        assert len(srv.prompts) == n_requests
    return dataset, summary, again, n_requests


def test_build_routes_agreement_disagreement_and_unparseable(built):
    dataset, summary, again, n_requests = built
    pairs = read_pairs(dataset)
    videos = sorted(p.stem for p in (dataset / "videos").glob("*.mp4"))
    assert len(pairs) == 12 * len(videos) == summary["pairs"] == n_requests
    assert again["answered_this_run"] == {"annotation": {}, "video": {}}
    expected = {"agree": ("agreed", None), "disagree": ("review", "disagree"), "unparseable": ("review", "unparseable")}
    seen = Counter()
    for p in pairs:
        plan = _plan(p["video_id"], p["question_id"])
        seen[plan] += 1
        assert (p["status"], p["reason"]) == expected[plan], p
        if plan == "unparseable":
            assert p["annotation_letter"] is None and p["annotation_text"] == "I cannot tell from the annotation."
        assert p["video_letter"] in "ABCD"
    assert all(seen[k] for k in expected)
    assert summary["agreed"] == seen["agree"] and summary["review"] == seen["disagree"] + seen["unparseable"]
    # the annotation answerer read the annotation JSON and the MCQ prompt, never a video
    rec = next(iter_records(dataset / "bench" / "answers.jsonl"))
    assert rec["answerer"] == "engine openai:test-llm reading the annotation"


# ----------------------------------------------------------------------------- review and apply


def _review_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_review_file_and_apply(built, tmp_path):
    dataset = _copy_dataset(built[0], tmp_path / "ds")
    import shutil

    shutil.copytree(built[0] / "bench", dataset / "bench")
    path, n = write_review_file(dataset, world=WORLD)
    rows = _review_rows(path)
    pairs = {p["key"]: p for p in read_pairs(dataset)}
    queue = [k for k, p in pairs.items() if p["status"] == "review"]
    assert n == len(rows) == len(queue) and [r["item"] for r in rows] == queue
    r0 = rows[0]
    p0 = pairs[r0["item"]]
    assert r0["question"] == p0["question"] and [r0[k] for k in "ABCD"] == list(p0["choices"].values())
    assert (dataset / "bench" / r0["video"]).resolve() == (dataset / "videos" / f"{p0['video_id']}.mp4").resolve()
    excerpt = json.loads(r0["annotation_excerpt"])
    assert set(excerpt) == set(p0["depends_on"]) & set(json.loads((dataset / "annotations" / f"{p0['video_id']}.json").read_text()))
    assert all(r["world_truth"] in "ABCD" and r["world_truth"] for r in rows)

    # decide: disagreements -> keep_video, unparseable -> set:<truth>, every 5th -> remove
    for i, r in enumerate(rows):
        r["decision"] = "remove" if i % 5 == 0 else "keep_video" if r["reason"] == "disagree" else f"set:{r['world_truth']}"
    _write_rows(path, rows)
    with pytest.raises(BenchError, match="already exists and holds decisions"):
        write_review_file(dataset, world=WORLD)  # never overwrite a person's decisions by accident
    res = apply_reviews(dataset, path, world=WORLD)
    vqa = list(iter_records(dataset / "vqa.jsonl"))
    removed = {r["item"] for i, r in enumerate(rows) if i % 5 == 0}
    assert len(vqa) == len(pairs) - len(removed) == res["pairs"]
    assert {r["key"] for r in vqa} == set(pairs) - removed
    by_key = {r["key"]: r for r in vqa}
    for k, p in pairs.items():
        if p["status"] == "agreed":
            assert by_key[k]["provenance"] == "agreed" and by_key[k]["answer"] == p["annotation_letter"]
    for r in rows:
        if r["item"] not in removed:
            rec = by_key[r["item"]]
            assert rec["provenance"] == "reviewed" and rec["answer"] == r["world_truth"]  # keep_video == truth here
    # the records are what the scoring and curation steps read
    from avcap.data.schemas import VQARecord

    for rec in vqa:
        VQARecord.model_validate(rec)
    s = bench_stats(dataset, world=WORLD)
    assert s["final"]["pairs"] == len(vqa) and s["final"]["removed"] == len(removed)
    assert s["final"]["review_outcomes"]["remove"] == len(removed)
    assert sum(s["final"]["review_outcomes"].values()) == len(queue)
    assert s["agreed_matches_world_truth"]["rate"] == 1.0
    assert sum(v["pairs"] for v in s["built"]["per_category"].values()) == len(pairs)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[0].update(item="nope/sd01"), r":2: item 'nope/sd01' is not in the review queue"),
        (lambda rows: rows[1].update(decision="set:E"), r":3: item '[^']+': set:E: E is not a choice"),
        (lambda rows: rows[2].update(decision=""), r":4: item '[^']+': no decision"),
        (lambda rows: rows[2].update(decision="keep both"), r":4: item '[^']+': unknown decision 'keep both'"),
        (lambda rows: rows.append(dict(rows[0])), r":\d+: item '[^']+' is decided twice \(first on line 2\)"),
        (lambda rows: rows.pop(), r"item '[^']+' has no row \(every queued pair needs a decision\)"),
        (lambda rows: next(r for r in rows if r["reason"] == "unparseable").update(decision="keep_annotation"),
         r"keep_annotation, but that answer has no letter \(unparseable\)"),
        (lambda rows: rows[0].update(video_answer="Z" if rows[0]["video_answer"] != "Z" else "A"),
         r":2: item '[^']+': the video answer changed since this file was written"),
    ],
)
def test_apply_refuses_bad_decision_files_and_writes_nothing(built, tmp_path, edit, message):
    dataset = built[0]
    path = tmp_path / "review.csv"
    write_review_file(dataset, path, world=WORLD)
    rows = _review_rows(path)
    for r in rows:
        r["decision"] = "keep_video"
    vqa = dataset / "vqa.jsonl"
    before = vqa.read_bytes() if vqa.exists() else None
    edit(rows)
    _write_rows(path, rows)
    with pytest.raises(BenchError) as exc:
        apply_reviews(dataset, path, world=WORLD)
    text = "\n".join(exc.value.problems)
    assert str(path) in text
    import re

    assert re.search(message, text), text
    assert text.endswith("nothing was written")
    assert (vqa.read_bytes() if vqa.exists() else None) == before


def test_apply_cli_auto_and_jsonl_review(built, tmp_path):
    dataset = built[0]
    # JSONL review files work the same way
    path = tmp_path / "review.jsonl"
    write_review_file(dataset, path, world=WORLD)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0]["decision"] = "set:Q"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = subprocess.run([sys.executable, "-m", "avcap", "bench", "apply", "--dataset", str(dataset), "--reviews", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"{path}:1: item '{lines[0]['item']}': set:Q: Q is not a choice" in r.stderr
    assert "Traceback" not in r.stderr
    # --auto: decided from the world truth, recorded as such
    r = subprocess.run([sys.executable, "-m", "avcap", "bench", "apply", "--dataset", str(dataset), "--auto"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "auto: world truth" in r.stdout
    vqa = list(iter_records(dataset / "vqa.jsonl"))
    reviewed = [x for x in vqa if x["provenance"] == "reviewed"]
    assert reviewed and all(x["review"] == {"decision": "set", "by": "auto:world-truth"} for x in reviewed)
    assert len(vqa) == len(read_pairs(dataset))
    r = subprocess.run([sys.executable, "-m", "avcap", "bench", "stats", "--dataset", str(dataset)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "decided by: auto:world-truth" in r.stdout and "Spatial & Temporal" in r.stdout


# ----------------------------------------------------------------------------- resume after a kill


def test_build_resumes_after_sigkill(synth_eval, tmp_path):
    dataset = _copy_dataset(synth_eval, tmp_path / "ds")
    oracle = Oracle(dataset, load_config(None).avcap.prompts.mcq_suffix)
    answers = dataset / "bench" / "answers.jsonl"
    with ChatServer(_policy(oracle), delay_s=0.05) as srv:
        cfg = _config(tmp_path, srv.url)
        cmd = [sys.executable, "-m", "avcap", "bench", "build", "--config", str(cfg), "--dataset", str(dataset)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and (not answers.exists() or len(answers.read_bytes().splitlines()) < 10):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = {r["key"] for r in iter_records(answers)}
        assert 10 <= len(done_before) < 12 * 6
        n_before = len(srv.prompts)
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # the rerun asked only for what was not recorded
        assert len(srv.prompts) - n_before == 12 * 6 - len(done_before)
    records = list(iter_records(answers))
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 2 * 12 * 6
    assert len(read_pairs(dataset)) == 12 * 6


# ----------------------------------------------------------------------------- a real model watching the video


def test_video_answerer_runs_a_local_model_on_the_videos(synth_eval, tiny_model_dir, tmp_path):
    """The video answerer as the tiny Qwen3-VL (transformers engine): it watches the clips; its
    random-weight answers are mostly unparseable, so they land in the review queue."""
    dataset = _copy_dataset(synth_eval, tmp_path / "ds")
    cfg_path = tmp_path / "recipe.toml"
    cfg_path.write_text(
        f"""
[custom.vision]
nframes = 4
max_pixels = 16384
[avcap.sampling.mcq]
max_tokens = 4
[avcap.bench.annotation_answerer]
kind = "truth"
reads = "annotation"
[avcap.bench.video_answerer]
kind = "engine"
reads = "video"
[avcap.bench.video_answerer.engine]
name = "transformers"
model = "{tiny_model_dir}"
device = "cpu"
batch_size = 12
""",
        encoding="utf-8",
    )
    summary = build_benchmark(load_config(cfg_path), dataset, limit=2, log=lambda s: None, world=WORLD)
    assert summary["pairs"] == 24
    recs = [r for r in iter_records(dataset / "bench" / "answers.jsonl") if r["role"] == "video"]
    assert len(recs) == 24 and all(r["error"] is None and isinstance(r["text"], str) for r in recs)
    pairs = read_pairs(dataset)
    for p in pairs:
        if p["video_letter"] is None or p["video_letter"] != p["annotation_letter"]:
            assert p["status"] == "review"
        else:
            assert p["status"] == "agreed"
