"""avcap curate: schemas, conversations of every source, unusable inputs, idempotence and resume,
the blend sampler's proportions, the preview grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avcap.core.config import load_config
from avcap.data.blend import BlendPlan, BlendSampler, micro_batches, quotas
from avcap.data.schemas import validate_source
from avcap.data.sources import load_conversation

# ----------------------------------------------------------------------------- raw data (the recipe's examples)

HUMAN = {
    "weather": "Partly cloudy",
    "lighting": "Daytime (diffused light)",
    "road_conditions": "Dry, clean asphalt",
    "traffic_light": "No traffic light is visible.",
    "traffic_sign": "Parking signs are visible on the right side of the street.",
    "additional_traffic_rules": "Pedestrian crosswalk markings are visible ahead at the intersection.",
    "road_type": "Local street – low‑speed, mixed residential/commercial access.",
    "junction_type": "Straight segment - uninterrupted roadway with no intersections or turns",
    "lane_type": "A single unidirectional lane.",
    "additional_map_rules": "Parking line markings are visible on the right side of the road.",
    "interactive_expanded_metaaction": ["Vehicle following"],
    "noninteractive_expanded_metaaction": None,
    "safety_analysis": "The ego vehicle is driving straight on a local street, following a gray SUV.",
    "driving_difficulty": 2,
    "rule_violation": "False",
    "interesting_scenario": "True",
    "critical_object": [
        {
            "box": {"x1": 2755.46, "y1": 748.28, "x2": 2858.53, "y2": 825.2},
            "box_time": 2,
            "critical_reasoning": "The ego vehicle is following the gray SUV, and thus it is a critical object.",
            "object_type": "Vehicles - Light trucks & SUVs",
        }
    ],
}
CV = {
    "event_start_frame": 40,
    "event_start_timestamp": 1635960777652742,
    "final_content": {
        "ego_behavior_schema": {
            "ego_behavior_reasoning": "Ego is decelerating and turning right at the intersection.",
            "effect_on_ego_behavior": "Decelerating and turning right, paying attention to parked cars.",
            "difficulty_score": 3,
        }
    },
}
REASON1 = {
    "response": {
        "description": "I'm driving in a residential area. I proceed to drive straight.",
        "driving difficulty explanation": "I'm driving in rain.",
        "notice": [{"Between time 10.18s and 17.07s": "Approaching a T junction. I slow down and turn left."}],
    }
}
EXAMPLES = {"human_annotated": HUMAN, "cv_annotated": CV, "reason1_sft": REASON1}


def vqa_record(video_id: str, qid: str, answer: str = "B") -> dict:
    return {"key": f"{video_id}/{qid}", "video_id": video_id, "question_id": qid, "category": "Key Objects",
            "question": "What colour is the lead vehicle?",
            "choices": {"A": "Red", "B": "Gray", "C": "Blue", "D": "There is none"},
            "answer": answer, "provenance": "agreed"}


def clip_frames(n: int, height: int, width: int, seed: int):
    """A moving gradient whose colours depend on the seed (clips differ visibly)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        f = np.stack([(xx * 2 + i * 6 + base[0]) % 256, (yy * 3 + base[1]) % 256, (xx + yy + i * 4 + base[2]) % 256], -1)
        yield f.astype(np.uint8)


def write_clip(path: Path, seed: int, frames: int = 8, size: tuple[int, int] = (64, 96)) -> Path:
    from avcap.video import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, clip_frames(frames, size[0], size[1], seed), 8, gop=4)
    return path


def make_source(root: Path, kind: str, n: int, *, seed: int = 0, annotate=None) -> Path:
    """`n` clean pairs videos/<id>.mp4 + annotations/<id>.json of `kind` (annotate(i) -> annotation)."""
    for i in range(n):
        sid = f"{kind[:2]}{i:02d}"
        write_clip(root / "videos" / f"{sid}.mp4", seed=seed + i)
        ann = annotate(i) if annotate else EXAMPLES[kind]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{sid}.json").write_text(json.dumps(ann))
    return root


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def curated_human_source(root: Path, tail: str, *, n: int = 2, annotate=None) -> Path:
    """`n` human-annotated clips under root/raw/human, curated into root/data (4 frames of 64x96)
    by a recipe TOML made of that source and `tail` (the [train]/[policy] tables); returns its path."""
    from avcap.core.config import load_config
    from avcap.data.sources import curate

    make_source(root / "raw/human", "human_annotated", n, seed=0, annotate=annotate or (lambda i: HUMAN))
    cfg_path = write_config(root / "r.toml", """
[custom.dataset]
dataset_root = "data"
subdirectories = ["human_annotated"]
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.curate.sources.human_annotated]
kind = "human_annotated"
path = "raw/human"
""" + tail)
    curate(load_config(cfg_path), echo=lambda s: None)
    return cfg_path


# ----------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_recipe_examples_validate(kind):
    validate_source(kind, EXAMPLES[kind])


def test_vqa_record_validates_and_rejects():
    validate_source("vqa", vqa_record("v1", "q7"))
    with pytest.raises(Exception, match="answer"):
        validate_source("vqa", {**vqa_record("v1", "q7"), "answer": "E"})
    with pytest.raises(Exception, match="category"):
        validate_source("vqa", {**vqa_record("v1", "q7"), "category": "Weather"})
    with pytest.raises(Exception, match="key"):
        validate_source("vqa", {**vqa_record("v1", "q7"), "key": "v2/q7"})


@pytest.mark.parametrize("kind,broken", [
    ("human_annotated", {k: v for k, v in HUMAN.items() if k != "safety_analysis"}),
    ("human_annotated", {**HUMAN, "driving_difficulty": "hard"}),
    ("cv_annotated", {"final_content": {"ego_behavior_schema": {}}}),
    ("reason1_sft", {"response": {**REASON1["response"], "notice": [{"at 3s": "x"}]}}),
    ("reason1_sft", {"description": "not under response"}),
])
def test_wrong_schema_is_rejected(kind, broken):
    with pytest.raises(Exception):
        validate_source(kind, broken)


# ----------------------------------------------------------------------------- curation


@pytest.fixture()
def raw_world(tmp_path):
    """Every source kind with clean inputs plus one of each unusable input."""
    raw = tmp_path / "raw"
    make_source(raw / "human", "human_annotated", 3, seed=0)
    make_source(raw / "cv", "cv_annotated", 2, seed=10)
    make_source(raw / "r1", "reason1_sft", 2, seed=20)
    # unusable inputs
    (raw / "human/annotations/novideo.json").write_text(json.dumps(HUMAN))                      # missing video
    write_clip(raw / "human/videos/orphan.mp4", seed=5)                                          # no annotation
    write_clip(raw / "cv/videos/badjson.mp4", seed=6)
    (raw / "cv/annotations/badjson.json").write_text('{"event_start_frame": 40,')               # malformed JSON
    write_clip(raw / "r1/videos/schema.mp4", seed=7)
    (raw / "r1/annotations/schema.json").write_text(json.dumps({"response": {"description": "x"}}))  # wrong schema
    (raw / "human/videos/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)  # unreadable
    (raw / "human/annotations/corrupt.json").write_text(json.dumps(HUMAN))
    # vqa source: AV_CAPTION-like directory
    ev = raw / "eval"
    write_clip(ev / "videos/e1.mp4", seed=30)
    lines = [json.dumps(vqa_record("e1", "q1", "B")), json.dumps(vqa_record("e1", "q2", "C")),
             json.dumps(vqa_record("gone", "q1")),                       # missing video
             '{"key": "e1/q3", ',                                         # malformed JSON
             json.dumps({**vqa_record("e1", "q4"), "answer": "Z"})]       # wrong schema
    (ev / "vqa.jsonl").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "recipe.toml", """
[custom.dataset]
dataset_root = "data/train"
subdirectories = ["human_annotated", "cv_annotated", "reason1_sft", "vqa"]
weights = [0.5, 0.3, 0.1, 0.1]

[custom.vision]
nframes = 4
max_pixels = 6144

[avcap.curate.sources.human_annotated]
kind = "human_annotated"
path = "raw/human"
[avcap.curate.sources.cv_annotated]
kind = "cv_annotated"
path = "raw/cv"
[avcap.curate.sources.reason1_sft]
kind = "reason1_sft"
path = "raw/r1"
[avcap.curate.sources.vqa]
kind = "vqa"
path = "raw/eval"
""")
    return tmp_path, cfg


def _run_curate(cfg_path: Path, *extra: str):
    from avcap.cli import app

    return CliRunner().invoke(app, ["curate", "--config", str(cfg_path), *extra])


def test_curate_every_source_and_report_every_bad_input(raw_world):
    root, cfg_path = raw_world
    res = _run_curate(cfg_path)
    assert res.exit_code == 0, res.output
    ds = root / "data/train"
    report = json.loads((ds / "report.json").read_text())
    counts = {k: (v["inputs"], v["written"], v["unusable"]) for k, v in report["sources"].items()}
    assert counts == {"human_annotated": (6, 3, 3), "cv_annotated": (3, 2, 1), "reason1_sft": (3, 2, 1), "vqa": (5, 2, 3)}
    reasons = {(Path(p["file"].split(":")[0]).name, p["reason"].split(" ")[0]) for p in report["problems"]}
    assert reasons == {
        ("novideo.json", "missing"), ("orphan.mp4", "no"), ("corrupt.mp4", "unreadable"),
        ("badjson.json", "malformed"), ("schema.json", "wrong"),
        ("vqa.jsonl", "missing"), ("vqa.jsonl", "malformed"), ("vqa.jsonl", "wrong"),
    }
    for p in report["problems"]:  # every problem is printed with its file and reason
        assert f"{p['file']}: {p['reason']}" in res.output
    assert any(p["file"].endswith("vqa.jsonl:4") for p in report["problems"])

    cfg = load_config(cfg_path)
    for sub, n in [("human_annotated", 3), ("cv_annotated", 2), ("reason1_sft", 2), ("vqa", 2)]:
        meta = json.loads((ds / sub / "meta.json").read_text())
        assert meta["count"] == n == len(meta["samples"]) == len(list((ds / sub / "conversations").glob("*.json")))
        for s in meta["samples"]:
            raw_conv = json.loads((ds / sub / s["conversation"]).read_text())
            conv = load_conversation(ds / sub / s["conversation"])
            assert [m["role"] for m in conv] == ["system", "user", "assistant"]
            assert conv[0]["content"] == cfg.avcap.prompts.system
            video, text = conv[1]["content"]
            assert video == {"type": "video", "video": video["video"], "nframes": 4, "min_pixels": 3136, "max_pixels": 6144}
            assert Path(video["video"]).is_file() and not Path(raw_conv[1]["content"][0]["video"]).is_absolute()
            assert (ds / sub / s["video"]).resolve() == Path(video["video"])
            assert text["type"] == "text" and isinstance(conv[2]["content"], str)
            target = conv[2]["content"]
            if sub == "human_annotated":
                assert text["text"] == cfg.avcap.prompts.caption
                assert json.loads(target) == HUMAN
            elif sub == "cv_annotated":
                assert text["text"] == cfg.avcap.prompts.caption
                es = CV["final_content"]["ego_behavior_schema"]
                assert es["ego_behavior_reasoning"] in target and es["effect_on_ego_behavior"] in target
            elif sub == "reason1_sft":
                r = REASON1["response"]
                assert target.startswith(r["description"]) and r["driving difficulty explanation"] in target
                assert "- Between time 10.18s and 17.07s: Approaching a T junction." in target
            else:
                from avcap.bench.pool import format_question

                rec = vqa_record("e1", s["id"].split("__")[1])
                assert text["text"] == format_question(rec, cfg.avcap.prompts.mcq_suffix)
                assert target == {"q1": "B", "q2": "C"}[s["id"].split("__")[1]]


def test_vqa_per_video_turns_make_one_multi_turn_conversation_per_video(raw_world):
    from avcap.bench.pool import format_question

    root, cfg_path = raw_world
    text = cfg_path.read_text().replace('path = "raw/eval"', 'path = "raw/eval"\nturns = "per_video"')
    cfg_path.write_text(text)
    res = _run_curate(cfg_path)
    assert res.exit_code == 0, res.output
    ds = root / "data/train"
    report = json.loads((ds / "report.json").read_text())
    # bad lines are still reported one by one; the good lines of e1 become one conversation
    assert (report["sources"]["vqa"]["written"], report["sources"]["vqa"]["unusable"]) == (1, 3)
    meta = json.loads((ds / "vqa" / "meta.json").read_text())
    (sample,) = meta["samples"]
    conv = load_conversation(ds / "vqa" / sample["conversation"])
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]
    assert conv[1]["content"][0]["type"] == "video" and all(c["type"] == "text" for c in conv[3]["content"])
    cfg = load_config(cfg_path)
    asked = sorted((conv[i]["content"][-1]["text"], conv[i + 1]["content"]) for i in (1, 3))
    assert asked == sorted((format_question(vqa_record("e1", q), cfg.avcap.prompts.mcq_suffix), a)
                           for q, a in (("q1", "B"), ("q2", "C")))


def test_curate_is_idempotent_and_follows_changes(raw_world):
    root, cfg_path = raw_world
    ds = root / "data/train"
    assert _run_curate(cfg_path).exit_code == 0
    before = {p: p.read_bytes() for p in ds.rglob("*.json") if p.name != "report.json"}
    res = _run_curate(cfg_path)
    assert res.exit_code == 0
    after = {p: p.read_bytes() for p in ds.rglob("*.json") if p.name != "report.json"}
    assert before == after
    report = json.loads((ds / "report.json").read_text())
    assert all(v["reused"] == v["inputs"] for v in report["sources"].values())

    # a changed annotation is redone, a removed input disappears from the output
    changed = {**HUMAN, "weather": "Heavy rain"}
    (root / "raw/human/annotations/hu01.json").write_text(json.dumps(changed))
    (root / "raw/human/annotations/hu02.json").unlink()
    (root / "raw/human/videos/hu02.mp4").unlink()
    assert _run_curate(cfg_path).exit_code == 0
    report = json.loads((ds / "report.json").read_text())
    h = report["sources"]["human_annotated"]
    assert (h["inputs"], h["written"], h["reused"]) == (5, 2, 4)
    assert not (ds / "human_annotated/conversations/hu02.json").exists()
    conv = load_conversation(ds / "human_annotated/conversations/hu01.json")
    assert json.loads(conv[2]["content"])["weather"] == "Heavy rain"


def test_curate_resumes_after_a_crash(raw_world, monkeypatch):
    import avcap.video
    from avcap.data.sources import curate

    root, cfg_path = raw_world
    cfg = load_config(cfg_path)
    real = avcap.video.probe
    calls = []

    def crashing(path, **kw):
        calls.append(Path(path).name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(avcap.video, "probe", crashing)
    with pytest.raises(KeyboardInterrupt):
        curate(cfg, workers=1, echo=lambda s: None)
    done_before = calls[:2]
    calls.clear()
    monkeypatch.setattr(avcap.video, "probe", lambda path, **kw: (calls.append(Path(path).name), real(path, **kw))[1])
    report = curate(cfg, workers=1, echo=lambda s: None)
    assert not set(done_before) & set(calls)  # finished inputs are not probed again
    assert report.sources["human_annotated"].written == 3 and report.sources["human_annotated"].reused == 2


def test_curate_rejects_a_bad_request(tmp_path):
    cfg = write_config(tmp_path / "r.toml", '[avcap.curate.sources.x]\nkind = "cv_annotated"\npath = "nowhere"\n')
    res = _run_curate(cfg)
    assert res.exit_code == 2 and "nowhere" in res.output and "Traceback" not in res.output
    cfg = write_config(tmp_path / "r2.toml", '[avcap.curate.sources.x]\nkind = "captions"\npath = "raw"\n')
    res = _run_curate(cfg)
    assert res.exit_code == 2 and "kind" in res.output


@pytest.mark.parametrize("size,max_pixels,accepted,why", [
    ((10, 1504), 6144, False, "short side falls below"),   # 150:1 (qwen-vl-utils' limit is 200:1): height 0
    ((8, 2000), 360000, False, "aspect ratio"),             # 250:1
    ((10, 1504), 360000, True, None),                      # 150:1 with room: 32x1504
])
def test_curate_accepts_only_clips_train_can_resize(tmp_path, size, max_pixels, accepted, why):
    """A sample curate writes is one the trainer can load: its video is sampled and resized with
    [custom.vision] at curate time (both resize factors, 32 and 28), not only probed."""
    from avcap.data.sources import curate
    from avcap.video import load_video

    make_source(tmp_path / "raw/human", "human_annotated", 1, seed=0)
    write_clip(tmp_path / "raw/human/videos/strip.mp4", seed=1, frames=4, size=size)
    (tmp_path / "raw/human/annotations/strip.json").write_text(json.dumps(HUMAN))
    cfg = write_config(tmp_path / "r.toml", f"""
[custom.dataset]
dataset_root = "data"
subdirectories = ["human_annotated"]
[custom.vision]
nframes = 4
max_pixels = {max_pixels}
[avcap.curate.sources.human_annotated]
kind = "human_annotated"
path = "raw/human"
""")
    lines: list[str] = []
    report = curate(load_config(cfg), echo=lines.append)
    problems = [p for p in report.problems if p.file.endswith("strip.mp4")]
    assert report.sources["human_annotated"].written == (2 if accepted else 1)
    if accepted:
        assert not problems
    else:
        (p,) = problems
        assert p.reason.startswith("unusable video: ") and why in p.reason and f"max_pixels = {max_pixels}" in p.reason
        assert any(p.file in line and why in line for line in lines)
    meta = json.loads((tmp_path / "data/human_annotated/meta.json").read_text())
    for s in meta["samples"]:  # every written sample loads the way avcap train loads it
        video = load_conversation(tmp_path / "data/human_annotated" / s["conversation"])[1]["content"][0]
        kw = {k: v for k, v in video.items() if k not in ("type", "video")}
        for factor in (32, 28):
            assert min(load_video(video["video"], factor=factor, **kw).frames.shape[1:3]) >= factor


def test_curate_removes_the_temp_files_a_killed_run_left(raw_world):
    """A kill between an atomic write's temp file and its rename leaves `.<name>.<random>.tmp`; the
    next run removes those (and only those), and its files have open()'s mode, not mkstemp's 0600."""
    import os
    import tempfile

    root, cfg_path = raw_world
    ds = root / "data/train"
    assert _run_curate(cfg_path).exit_code == 0
    conv_dir = ds / "human_annotated/conversations"
    left = [Path(tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=d)[1]) for prefix, d in [
        (".hu00.json.", conv_dir), (".meta.json.", ds / "human_annotated"),
        (".progress.jsonl.", ds / "cv_annotated"), (".report.json.", ds)]]
    foreign = [conv_dir / ".notes.tmp", ds / "human_annotated/my.json.tmp", ds / ".report.json.tmp"]
    for f in foreign:
        f.write_text("not avcap's")
    assert _run_curate(cfg_path).exit_code == 0
    assert not any(p.exists() for p in left) and all(f.exists() for f in foreign)
    umask = os.umask(0o022)
    os.umask(umask)
    for f in (ds / "report.json", ds / "human_annotated/meta.json", conv_dir / "hu00.json"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


# ----------------------------------------------------------------------------- blend


def test_quotas_are_exact_largest_remainder():
    assert quotas([0.3, 0.5, 0.2], 10) == [3, 5, 2]
    assert quotas([1, 2, 1], 7) == [2, 3, 2]
    assert sum(quotas([0.31, 0.29, 0.4], 1001)) == 1001


def test_blend_proportions_epoch_and_reproducibility():
    plan = BlendPlan(sizes=(1000, 60, 300), weights=(0.3, 0.5, 0.2), seed=42, global_batch=32)
    assert plan.nominal_epoch_samples == 1360
    assert plan.steps_per_epoch == 43 and plan.samples_per_epoch == 43 * 32  # ceil(1360 / 32) full batches
    order = plan.epoch_order(0)
    src = np.array([plan.source_of(i) for i in order])
    assert np.bincount(src, minlength=3).tolist() == quotas([0.3, 0.5, 0.2], 1376) == [413, 688, 275]
    # within an epoch a source repeats evenly: the 60-sample source (688 draws) uses every sample 11 or 12 times
    small = np.bincount(order[src == 1] - 1000, minlength=60)
    assert small.min() == 11 and small.max() == 12
    # the large, down-weighted source is sub-sampled without repeats
    assert len(set(order[src == 0].tolist())) == 413
    # batches are mixed: chi-square of the first 10 global batches against the weights (fixed seed)
    head = np.bincount(src[:320], minlength=3)
    expected = np.array([0.3, 0.5, 0.2]) * 320
    chi2 = float(((head - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom
    # reproducible per seed, different across seeds and epochs
    again = BlendPlan(sizes=(1000, 60, 300), weights=(0.3, 0.5, 0.2), seed=42, global_batch=32)
    assert np.array_equal(again.epoch_order(0), order)
    assert not np.array_equal(BlendPlan((1000, 60, 300), (0.3, 0.5, 0.2), 7, 32).epoch_order(0), order)
    assert not np.array_equal(plan.epoch_order(1), order)
    assert np.array_equal(plan.step_indices(43), plan.epoch_order(1)[:32])


def test_blend_weights_are_normalized_and_zero_removes_a_source():
    a = BlendPlan(sizes=(10, 10, 10), weights=(1, 2, 1), seed=0, global_batch=4)
    b = BlendPlan(sizes=(10, 10, 10), weights=(0.25, 0.5, 0.25), seed=0, global_batch=4)
    assert np.array_equal(a.epoch_order(0), b.epoch_order(0))
    z = BlendPlan(sizes=(10, 5, 7), weights=(1, 0, 1), seed=0, global_batch=4)
    assert z.nominal_epoch_samples == 17
    assert not any(10 <= i < 15 for i in z.epoch_order(0))
    with pytest.raises(ValueError, match="no samples"):
        BlendPlan(sizes=(10, 0), weights=(1, 1), seed=0, global_batch=4, names=("a", "b"))


def test_blend_ranks_take_disjoint_parts_of_every_global_batch():
    plan = BlendPlan(sizes=(7, 5), weights=(0.5, 0.5), seed=3, global_batch=8)
    for step in range(5):
        parts = [plan.rank_indices(step, r, 4).tolist() for r in range(4)]
        assert sum(parts, []) == plan.step_indices(step).tolist()
    mbs = list(micro_batches(plan, rank=1, world_size=2, mini_batch=2, start_step=2, end_step=4))
    assert mbs == [plan.rank_indices(2, 1, 2)[:2].tolist(), plan.rank_indices(2, 1, 2)[2:].tolist(),
                   plan.rank_indices(3, 1, 2)[:2].tolist(), plan.rank_indices(3, 1, 2)[2:].tolist()]
    # grouped by length: each step keeps its samples, micro-batches hold neighbours in length
    lengths = [(i * 37) % 11 for i in range(12)]
    grouped = list(micro_batches(plan, rank=0, world_size=1, mini_batch=4, start_step=0, end_step=3, lengths=lengths))
    for step in range(3):
        mbs = grouped[2 * step: 2 * step + 2]
        assert sorted(sum(mbs, [])) == sorted(plan.step_indices(step).tolist())
        assert max(lengths[i] for i in mbs[0]) <= min(lengths[i] for i in mbs[1])
    s = BlendSampler(plan, num_replicas=2, rank=1)
    s.set_epoch(1)
    assert len(s) == plan.samples_per_epoch // 2
    first = 1 * plan.steps_per_epoch
    assert list(s)[:4] == plan.rank_indices(first, 1, 2).tolist()


# ----------------------------------------------------------------------------- preview


def test_preview_grid_png_and_mp4(raw_world):
    from PIL import Image

    from avcap.data.preview_grid import PALETTE
    from avcap.video import probe

    root, cfg_path = raw_world
    assert _run_curate(cfg_path).exit_code == 0
    from avcap.cli import app

    res = CliRunner().invoke(app, ["curate", "preview", "--dataset-root", str(root / "data/train"),
                                   "--out", str(root / "prev"), "--seed", "1", "--frames", "4"])
    assert res.exit_code == 0, res.output
    png = np.asarray(Image.open(root / "prev/preview.png"))
    assert png.shape == (10 * 108, 10 * 192, 3)
    info = probe(root / "prev/preview.mp4")
    assert (info.height, info.width, info.total_frames) == (1080, 1920, 4)
    # 9 curated samples: 9 labelled tiles (border in their source's colour), the rest empty
    corners = [tuple(png[r * 108 + 1, c * 192 + 1]) for r in range(10) for c in range(10)]
    names = ["cv_annotated", "human_annotated", "reason1_sft", "vqa"]  # sorted discovery order
    labelled = [c for c in corners if c != (0, 0, 0)]
    assert len(labelled) == 9
    assert {c for c in labelled} == {PALETTE[i] for i in range(len(names))}


def test_a_duplicated_vqa_key_is_reported_once_and_the_first_identical_line_kept(raw_world):
    root, cfg_path = raw_world
    vqa = root / "raw" / "eval" / "vqa.jsonl"
    first = vqa.read_text().splitlines()[0]
    vqa.write_text(vqa.read_text() + first + "\n")  # line 6: line 1 again
    res = _run_curate(cfg_path)
    assert res.exit_code == 0, res.output
    report = json.loads((root / "data/train/report.json").read_text())
    vqa_problems = [p for p in report["problems"] if "vqa.jsonl" in p["file"]]
    assert [p["file"] for p in vqa_problems].count(f"{vqa}:6") == 1
    assert "duplicate of line 1" in next(p["reason"] for p in vqa_problems if p["file"] == f"{vqa}:6")
    assert report["sources"]["vqa"]["written"] == 2  # e1/q1 (line 1) and e1/q2 are still used
