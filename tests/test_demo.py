"""`avcap demo`: the whole recipe on the embedded default (seeded `--quick` run) and its helpers."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from avcap.demo.run import QUICK, DemoError, SimulatedVideoAnswerer, blind_baselines, prepare_workdir, run_demo
from avcap.core.records import read_json, write_records_atomic


def test_workdir_settings_are_checked(tmp_path: Path) -> None:
    prepare_workdir(tmp_path, QUICK, 0, True)
    cfg_text = (tmp_path / "config.toml").read_text()
    assert f"max_num_steps = {QUICK.max_steps}" in cfg_text and f"nframes = {QUICK.nframes}" in cfg_text
    prepare_workdir(tmp_path, QUICK, 0, True)  # same settings: fine
    with pytest.raises(DemoError, match="other settings"):
        prepare_workdir(tmp_path, QUICK, 1, True)


def test_blind_baselines(tmp_path: Path) -> None:
    def rec(v, q, a):
        return {"key": f"{v}/{q}", "video_id": v, "question_id": q, "answer": a}

    write_records_atomic(tmp_path / "train.jsonl", [rec("t1", "q1", "A"), rec("t2", "q1", "A"), rec("t3", "q1", "D"),
                                                    rec("t1", "q2", "D"), rec("t2", "q2", "D")])
    write_records_atomic(tmp_path / "eval.jsonl", [rec("e1", "q1", "A"), rec("e2", "q1", "B"), rec("e1", "q2", "D"),
                                                   rec("e2", "q2", "C")])
    b = blind_baselines(tmp_path / "train.jsonl", tmp_path / "eval.jsonl")
    assert b["letter"] == "D" and b["letter_accuracy"] == 0.25
    assert b["prior_accuracy"] == 0.5 and b["prior_wrong_keys"] == ["e2/q1", "e2/q2"]
    assert b["letter_accuracy_where_prior_wrong"] == 0.0
    assert b["eval_letters"] == {"A": 1, "B": 1, "C": 1, "D": 1}


def test_simulated_video_answerer_errs_at_its_rate() -> None:
    from avcap.bench.answerers import Answer

    class Q:
        def __init__(self, i):
            self.id = f"q{i}"
            self.choices = {"A": "a", "B": "b", "C": "c", "D": "d"}

    class It:
        def __init__(self, i):
            self.video_id, self.question = f"v{i}", Q(i)

    sim = SimulatedVideoAnswerer(0.2, seed=0)
    sim.truth = type("T", (), {"answer": lambda self, items: [Answer("A", "A") for _ in items]})()
    items = [It(i) for i in range(2000)]
    got = [a.letter for a in sim.answer(items)]
    wrong = sum(g != "A" for g in got) / len(got)
    assert 0.17 < wrong < 0.23 and set(got) <= set("ABCD")
    assert got == [a.letter for a in sim.answer(items)]  # seeded: the same answers every time


@pytest.mark.slow
def test_quick_demo_learns_and_resumes(tmp_path: Path) -> None:
    lines: list[str] = []
    res = run_demo(tmp_path / "demo", quick=True, seed=0, echo=lines.append)
    work = tmp_path / "demo"
    heads = res["steps"]["report"]["result"]["headlines"]
    mcq, bleu = heads["vqa_accuracy"], heads["bleu"]
    # after SFT: clearly above chance (25%) on held-out videos, above answering each question with its
    # most frequent training answer (so the answers come from the pixels), and BLEU above zero-shot
    blind = res["steps"]["report"]["result"]["blind"]
    assert mcq["best"] >= 0.35, mcq
    assert mcq["best"] > blind["prior_accuracy"], (mcq, blind)
    assert bleu["zero_shot"] is not None and bleu["best"] > bleu["zero_shot"], bleu
    report = Path(res["report"]).read_text()
    assert "## This run" in report and "## Headline" in report and "blind prior" in report
    assert (Path(res["report"]).parent / "plots" / "tiny-qwen3-vl_vqa_accuracy.png").is_file()
    assert any(l.startswith("report: ") for l in lines)

    # evaluation videos are never trained on
    eval_ids = {p.stem for p in (work / "data/synth/eval/AV_CAPTION/videos").glob("*.mp4")}
    trained = {Path(part["video"]).stem for conv in _conversations(work / "data/curated")
               for c in conv if c["role"] == "user" for part in c["content"] if part["type"] == "video"}
    assert eval_ids and trained and not (eval_ids & trained)
    # prompts identical across videos apart from the question: one user text per question (MCQ), one caption prompt
    texts = defaultdict(set)
    for conv in _conversations(work / "data/curated"):
        for user in (c for c in conv if c["role"] == "user"):
            text = next(p["text"] for p in user["content"] if p["type"] == "text")
            texts[text.split("\n", 1)[0]].add(text)
    assert all(len(v) == 1 for v in texts.values())
    # synth_vqa: one multi-turn conversation per training video, every demo question asked once
    vqa_convs = list(_conversations(work / "data/curated", "synth_vqa"))
    assert vqa_convs and all(sum(c["role"] == "assistant" for c in conv) == len(QUICK.questions) for conv in vqa_convs)

    # the scenario database: every held-out clip labelled by the best checkpoint, indexed, searched
    sc = res["steps"]["scenarios"]["result"]
    assert Path(sc["checkpoint"]).name == mcq["best_label"].replace("ckpt-", "step_")
    assert sc["label"]["clips"] == len(eval_ids) == sc["index"]["total"] + sc["label"]["errors"]
    from avcap.scenarios.db import open_db

    db = open_db(sc["db"])
    night = db.search("", where=["lighting=night"], limit=100)
    assert all(h.attributes["lighting"]["letter"] == "D" for h in night)  # sd02: D = night
    assert [s["matching_filter"] for s in sc["searches"]][1] == len(night)
    assert "## The scenario database" in report and "avcap search" in report and "thumbs/" in report

    # a rerun reuses every finished step
    again: list[str] = []
    res2 = run_demo(work, quick=True, seed=0, echo=again.append)
    assert sum("reused" in l for l in again) == 9
    assert res2["report"] == res["report"]


def _conversations(root: Path, source: str = "*"):
    for meta in root.glob(f"{source}/meta.json"):
        m = read_json(meta)
        for sample in m.get("samples", []):
            path = meta.parent / sample["conversation"] if isinstance(sample, dict) and "conversation" in sample else None
            if path is not None and path.is_file():
                yield json.loads(path.read_text())
