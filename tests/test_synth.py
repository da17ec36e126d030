"""The procedural dash-cam world: determinism, layout, schemas, distributions, LingoQA, large frames."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from avcap.demo.synth import annotate as A
from avcap.demo.synth.cli import SOURCES, SynthError, synthesize
from avcap.demo.synth.render import Renderer
from avcap.demo.synth.scene import SceneRecord
from avcap.demo.synth.world import MANEUVERS, sample_scene

TINY = dict(width=64, height=40, seconds=2.0, fps=4.0)  # 8 frames


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    synthesize(out, videos=2, train_videos=1, lingoqa_segments=2, seed=7, workers=1, **TINY)
    return out


@pytest.fixture(scope="module")
def records():
    return [sample_scene(s) for s in range(200)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- layout


def test_layout_matches_formats_md(world):
    ids_eval = ["av00000", "av00001"]
    for vid in ids_eval:
        for sub, ext in (("videos", "mp4"), ("annotations", "json"), ("world", "json")):
            assert (world / "eval" / "AV_CAPTION" / sub / f"{vid}.{ext}").is_file()
    caps = [json.loads(x) for x in (world / "eval" / "AV_CAPTION" / "captions.jsonl").read_text().splitlines()]
    assert [c["key"] for c in caps] == ids_eval
    for c in caps:
        assert set(c) == {"key", "video_id", "caption"} and c["caption"]
        ann = json.loads((world / "eval" / "AV_CAPTION" / "annotations" / f"{c['video_id']}.json").read_text())
        assert ann["safety_analysis"] == c["caption"]
    for src in SOURCES:
        vids = sorted(p.stem for p in (world / "train" / src / "videos").glob("*.mp4"))
        anns = sorted(p.stem for p in (world / "train" / src / "annotations").glob("*.json"))
        assert vids == anns and len(vids) == 1
        for vid in vids:
            assert (world / "train" / "world" / f"{vid}.json").is_file()
    train_ids = {p.stem for p in (world / "train" / "world").glob("*.json")}
    assert len(train_ids) == 3 and not train_ids & set(ids_eval)
    man = json.loads((world / "manifest.json").read_text())
    assert man["status"] == "complete" and man["settings"]["seed"] == 7
    assert man["counts"] == {"eval_videos": 2, "train_videos_per_source": 1, "lingoqa_segments": 2, "lingoqa_questions": 10}
    # training and evaluation videos come from distinct seeds
    seeds = list(man["video_seeds"].values())
    assert len(seeds) == len(set(seeds))


def test_videos_are_h264_of_the_requested_size(world):
    from avcap.video import probe

    info = probe(world / "eval" / "AV_CAPTION" / "videos" / "av00000.mp4")
    assert (info.width, info.height, info.total_frames) == (64, 40, 8)
    assert abs(info.fps - 4.0) < 1e-6
    import av

    with av.open(str(world / "eval" / "AV_CAPTION" / "videos" / "av00000.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_world_records_roundtrip(world):
    for p in (world / "eval" / "AV_CAPTION" / "world").glob("*.json"):
        rec = SceneRecord.model_validate_json(p.read_text())
        assert rec.video_id == p.stem and not rec.check()


# ----------------------------------------------------------------------------- schemas


def test_every_emitted_json_validates_against_the_curation_schemas(world, records):
    from avcap.data.schemas import validate_source

    for src in SOURCES:
        for p in (world / "train" / src / "annotations").glob("*.json"):
            validate_source(src, json.loads(p.read_text()))
    for p in (world / "eval" / "AV_CAPTION" / "annotations").glob("*.json"):
        validate_source("human_annotated", json.loads(p.read_text()))
    for rec in records[:80]:
        validate_source("human_annotated", A.human_annotation(rec))
        validate_source("cv_annotated", A.cv_annotation(rec))
        validate_source("reason1_sft", A.reason_annotation(rec))


def test_human_annotation_has_every_key_of_the_recipe_example(records):
    keys = ["weather", "lighting", "road_conditions", "traffic_light", "traffic_sign", "additional_traffic_rules",
            "road_type", "junction_type", "lane_type", "additional_map_rules", "interactive_expanded_metaaction",
            "noninteractive_expanded_metaaction", "safety_analysis", "driving_difficulty", "rule_violation",
            "interesting_scenario", "critical_object"]
    with_boxes = 0
    for rec in records[:60]:
        ann = A.human_annotation(rec)
        assert list(ann) == keys
        assert ann["rule_violation"] in ("True", "False") and ann["interesting_scenario"] in ("True", "False")
        assert 1 <= ann["driving_difficulty"] <= 5
        for k in ("interactive_expanded_metaaction", "noninteractive_expanded_metaaction"):
            assert ann[k] is None or (isinstance(ann[k], list) and ann[k])
        for obj in ann["critical_object"]:
            b = obj["box"]
            assert 0 <= b["x1"] < b["x2"] <= rec.render.width and 0 <= b["y1"] < b["y2"] <= rec.render.height
            assert 0 <= obj["box_time"] <= rec.duration_s
            with_boxes += 1
    assert with_boxes > 20
    cv = A.cv_annotation(records[0])
    assert cv["event_start_timestamp"] > 1_600_000_000_000_000  # microseconds, like the recipe's example


def test_reasoning_notice_keys_are_timed(records):
    import re

    n = 0
    for rec in records[:60]:
        for item in A.reason_annotation(rec)["response"]["notice"]:
            (key,) = item
            m = re.fullmatch(r"Between time (\d+\.\d+)s and (\d+\.\d+)s", key)
            assert m and float(m.group(1)) <= float(m.group(2)) <= rec.duration_s + 1e-6
            n += 1
    assert n > 30


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_frames(world, tmp_path):
    from avcap.video import decode_all

    again = tmp_path / "again"
    synthesize(again, videos=2, train_videos=1, lingoqa_segments=2, seed=7, workers=2, **TINY)
    a, b = _files(world), _files(again)
    assert set(a) == set(b)
    for name in a:
        if name.endswith((".json", ".jsonl")) and name != "timings.json":
            assert a[name] == b[name], name  # manifest.json included: it holds no wall-clock figure
    for name in a:
        if name.endswith(".mp4"):
            assert np.array_equal(decode_all(world / name), decode_all(again / name)), name
            assert a[name] == b[name], name  # the encoder settings are reproducible too (mbtree off)
        if name.endswith(".jpg"):
            assert a[name] == b[name], name
    assert A.lingoqa_questions(sample_scene(3)) == A.lingoqa_questions(sample_scene(3))
    import pandas as pd

    assert pd.read_parquet(world / "eval/LINGOQA/val.parquet").equals(pd.read_parquet(again / "eval/LINGOQA/val.parquet"))


def test_manifest_is_byte_identical_across_runs(tmp_path):
    """Two runs with the same seed write the same manifest.json; the run's timings go elsewhere."""
    runs = []
    for name in ("one", "two"):
        out = tmp_path / name
        m = synthesize(out, videos=1, train_videos=0, lingoqa_segments=0, seed=3, workers=1,
                       width=32, height=32, seconds=0.5, fps=4.0)
        runs.append((out, m))
    (a, ma), (b, mb) = runs
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    man = json.loads((a / "manifest.json").read_text())
    assert "render_seconds_mean" not in man and not [k for k in man if "time" in k or "seconds" in k]
    t = json.loads((a / "timings.json").read_text())
    assert t["videos_rendered"] == 1 and t["render_seconds_mean"] > 0 and t["wall_seconds"] > 0
    assert ma["render_seconds_mean"] == t["render_seconds_mean"]  # returned to callers (demo, benchmarks)
    assert {k: v for k, v in ma.items() if k != "render_seconds_mean"} == man


def test_different_seed_differs(tmp_path, world):
    other = tmp_path / "other"
    synthesize(other, videos=2, train_videos=0, lingoqa_segments=0, seed=8, workers=1, **TINY)
    a = (world / "eval/AV_CAPTION/captions.jsonl").read_text()
    b = (other / "eval/AV_CAPTION/captions.jsonl").read_text()
    assert a != b
    assert sample_scene(1).model_dump_json() != sample_scene(2).model_dump_json()


def test_record_json_renders_the_same_pixels():
    rec = sample_scene(11, width=96, height=60)
    back = SceneRecord.model_validate_json(rec.model_dump_json())
    r1, r2 = Renderer(rec), Renderer(back)
    for i in (0, 7, 15):
        assert np.array_equal(r1.frame_at(i / 4, i), r2.frame_at(i / 4, i))
    assert sample_scene(11, width=96, height=60) == rec


def test_rerun_resumes_and_other_settings_refused(world):
    before = _files(world)
    synthesize(world, videos=2, train_videos=1, lingoqa_segments=2, seed=7, workers=1, **TINY)
    after = _files(world)
    assert {k: v for k, v in before.items() if k != "timings.json"} == {k: v for k, v in after.items() if k != "timings.json"}
    with pytest.raises(SynthError, match="other settings"):
        synthesize(world, videos=2, train_videos=1, seed=8, workers=1, **TINY)


# ----------------------------------------------------------------------------- distributions


def _shares(values) -> collections.Counter:
    c = collections.Counter(values)
    n = sum(c.values())
    return collections.Counter({k: v / n for k, v in c.items()})


def test_every_category_of_facts_varies_and_is_balanced(records):
    assert not [r.seed for r in records if r.check()]
    facts = {
        # Scene Description
        "environment": [r.road.environment for r in records],
        "time_of_day": [r.conditions.time_of_day for r in records],
        "weather": [r.conditions.weather for r in records],
        "road_condition": [r.conditions.road_condition for r in records],
        "junction": [r.road.junction for r in records],
        "traffic_light": [r.traffic_light is not None for r in records],
        "lanes": [min(r.road.lane_count, 4) for r in records],
        # Key Objects
        "lead_color": [r.lead_vehicle().color for r in records if r.lead_vehicle()],
        "lead_type": [r.lead_vehicle().type for r in records if r.lead_vehicle()],
        "has_lead": [r.lead_vehicle() is not None for r in records],
        # Characters & Interactions
        "pedestrians": [min(len(r.non_workers()), 2) for r in records],
        # Actions & Motion
        "lead_behavior": [r.lead_vehicle().behavior for r in records if r.lead_vehicle()],
        # Ego Vehicle Behavior
        "maneuver": [r.ego.maneuver for r in records],
        "speed_trend": [r.ego.speed_trend for r in records],
        # Spatial & Temporal
        "moving_at_end": [r.ego.moving_at_end for r in records],
        "nearest": [r.nearest_vehicle_position for r in records],
    }
    for name, vals in facts.items():
        sh = _shares(vals)
        assert len(sh) >= 2, name
        # yes/no presence facts may lean one way (most roads have no signal), multi-class ones less
        assert max(sh.values()) < (0.76 if len(sh) == 2 else 0.62), (name, sh.most_common(3))
    assert set(facts["time_of_day"]) == {"day", "dusk", "night"}
    assert set(facts["weather"]) == {"clear", "overcast", "rain", "fog"}
    assert set(facts["maneuver"]) == set(MANEUVERS)
    assert set(facts["environment"]) == {"urban", "suburban", "rural", "highway"}
    for name, k in (("maneuver", 8), ("weather", 4), ("time_of_day", 3), ("environment", 4)):
        assert min(_shares(facts[name]).values()) > 0.5 / k, name
    present = collections.Counter(e for r in records for e in r.present_elements())
    for element in ("emergency_vehicle", "bus", "cyclist", "worker", "child", "stop_sign", "crosswalk",
                    "construction_cones", "parked_vehicle", "traffic_light"):
        assert 0.04 * len(records) < present[element] < 0.9 * len(records), (element, present[element])
    assert any(p.action == "crossing" for r in records for p in r.pedestrians)
    assert any(v.behavior.startswith("lane_change") and v.role != "lead" for r in records for v in r.vehicles)
    assert {r.traffic_light.state_at_start for r in records if r.traffic_light} >= {"red", "green"}
    assert {r.traffic_light.state_at_end for r in records if r.traffic_light} >= {"red", "green"}
    assert sum(bool(r.events) for r in records) > 0.9 * len(records)


def test_events_are_ordered_and_inside_the_clip(records):
    for r in records:
        starts = [e.start_s for e in r.events]
        assert starts == sorted(starts)
        for e in r.events:
            assert 0 <= e.start_s <= e.end_s <= r.duration_s


def test_stories_are_consistent(records):
    for r in records:
        e = r.ego
        if e.stop_reason == "stop_sign":
            assert any(s.kind == "stop" for s in r.signs), r.seed
        if e.stop_reason == "red_light":
            assert r.traffic_light is not None and "red" in {p.state for p in r.traffic_light.phases}, r.seed
        if e.maneuver in ("left_turn", "right_turn"):
            assert r.road.junction != "none" and e.turn_direction
        if e.maneuver == "stopped":
            assert not e.moving_at_start and not e.moving_at_end
        if e.following_lead:
            assert r.lead_vehicle() is not None
        if e.stop_reason == "pedestrian":
            assert r.crossing_pedestrians(), r.seed
        if e.yields_to is not None:
            assert r.object_by_id(e.yields_to) is not None
        for p in r.crossing_pedestrians():
            assert p.on_crosswalk and r.road.crosswalk
        # people stay on the pavement, the verge or the crosswalk of this road (also on curved roads)
        med, rd = r.road.median_m, r.road
        right = med / 2 + rd.lanes_ego_direction * 3.5 + (2.5 if rd.parking_lane else 0.0) + 4.0
        left = -med / 2 - rd.lanes_oncoming * 3.5 - 4.0
        for p in r.pedestrians:
            for t, x, z, _ in p.track:
                u = x - 0.5 * rd.curvature_per_m * z * z
                assert left <= u <= right, (r.seed, p.id, t, u)


def test_captions_are_varied_natural_sentences(records):
    caps = [A.caption(r) for r in records[:80]]
    assert len(set(caps)) == len(caps)
    openings = collections.Counter(" ".join(c.split()[:3]) for c in caps)
    assert len(openings) >= 8
    # the same fact is phrased in more than one way
    weather_phr = {s for c in caps for s in c.split(". ") if "rain" in s and ("scene" in s or s.startswith("It is"))}
    assert len(weather_phr) >= 2
    # several phrasings of one record (variants) differ
    assert len({A.caption(records[5], v) for v in range(6)}) >= 3
    for c in caps:
        assert c[0].isupper() and c.endswith(".") and "  " not in c and " ." not in c


def test_texts_state_only_what_the_record_holds(records):
    for r in records:
        cap = A.caption(r).lower()
        el = r.present_elements()
        if "traffic_light" not in el:
            assert "traffic light" not in cap and "signal" not in cap, r.seed
        if "cyclist" not in el:
            assert "cyclist" not in cap
        if "emergency_vehicle" not in el:
            assert "flashing" not in cap
        if not r.road.crosswalk:
            assert "crosswalk" not in cap
        lead = r.lead_vehicle()
        if lead is None:
            assert "following" not in cap


# ----------------------------------------------------------------------------- LingoQA


def test_lingoqa_parquet_shape(world):
    import pandas as pd

    df = pd.read_parquet(world / "eval" / "LINGOQA" / "val.parquet")
    assert list(df.columns) == ["question_id", "segment_id", "images", "question", "answer"]
    assert len(df) == 2 * 10
    for qid, g in df.groupby("question_id"):
        assert len(g) == 2 and g["answer"].nunique() == 2 and g["question"].nunique() == 1
    assert df["segment_id"].nunique() == 2
    assert df.groupby("segment_id")["question_id"].nunique().min() >= 3
    for imgs, seg in zip(df["images"], df["segment_id"]):
        assert list(imgs) == [f"images/val/{seg}/{k}.jpg" for k in range(5)]
        for rel in imgs:
            p = world / "eval" / "LINGOQA" / rel
            assert p.is_file() and p.read_bytes()[:2] == b"\xff\xd8"


def test_lingoqa_questions_match_the_real_set_style(records):
    real = {"Is there a traffic light? If yes, what color is displayed?", "How many pedestrians can be seen?",
            'What is the current action and its justification? Answer in the form "action, justification".'}
    asked = {q for r in records[:50] for q, _ in A.lingoqa_questions(r)}
    assert real <= asked and len(asked) >= 10


# ----------------------------------------------------------------------------- text corpus


def test_text_corpus_is_deterministic_and_covers_every_text_kind():
    from avcap.demo.synth import text_corpus

    a = list(text_corpus(n_scenes=4, seed=1))
    assert a == list(text_corpus(n_scenes=4, seed=1))
    assert a != list(text_corpus(n_scenes=4, seed=2))
    joined = "\n".join(a)
    for needle in ('"safety_analysis"', '"ego_behavior_schema"', '"driving difficulty explanation"', "Question: ", "ego vehicle"):
        assert needle in joined


# ----------------------------------------------------------------------------- recipe size


def test_recipe_resolution_path_is_streamed(tmp_path):
    """1936x1220 at 30 fps works; frames are drawn small and upscaled, one at a time."""
    from avcap.demo.synth.render import render_video
    from avcap.video import probe

    rec = sample_scene(5, duration_s=0.4, fps=30, width=1936, height=1220)
    assert rec.render.num_frames == 12
    tracemalloc.start()
    render_video(rec, tmp_path / "big.mp4")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    info = probe(tmp_path / "big.mp4")
    assert (info.width, info.height, info.total_frames) == (1936, 1220, 12)
    # one 1936x1220 RGB frame is 6.8 MiB: holding the 12 frames would alone exceed this
    assert peak < 64 * 2**20, f"peak Python memory {peak / 2**20:.0f} MiB"


def test_cli_errors_are_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "avcap", "synth", "--out", str(tmp_path / "x"), "--width", "63"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--width" in r.stderr


def _footprint(x, z, hdg, length, width):
    from avcap.demo.synth import geometry as G

    return G.box_corners(x, z, hdg, length, width, 0.0, 1.0)[:4][:, [0, 2]]


def _separated(a, b) -> bool:
    for poly in (a, b):
        for i in range(4):
            e = poly[(i + 1) % 4] - poly[i]
            n = np.array([-e[1], e[0]])
            if (a @ n).max() < (b @ n).min() or (b @ n).max() < (a @ n).min():
                return True
    return False


def test_nobody_drives_or_walks_through_anybody(records):
    import math

    from avcap.demo.synth import geometry as G

    for r in records[:60]:
        ego = np.array(r.ego.track)
        objs = r.vehicles + r.pedestrians + r.cyclists
        for t in np.linspace(0, r.duration_s, 17):
            ex, ez, eh = G.pose_at(ego, t)
            psi = math.radians(eh)
            fps = [("ego", _footprint(ex - 0.8 * math.sin(psi), ez - 0.8 * math.cos(psi), eh, 4.6, 1.9))]
            for o in objs:
                x, z, h = G.pose_at(np.array(o.track), t)
                size = G.VEHICLE_SIZE[o.type][:2] if hasattr(o, "type") else ((0.45, 0.5) if hasattr(o, "kind") else (1.8, 0.6))
                fps.append((o.id, _footprint(x, z, h, *size)))
            for i in range(len(fps)):
                for j in range(i + 1, len(fps)):
                    assert _separated(fps[i][1], fps[j][1]), (r.seed, fps[i][0], fps[j][0], float(t))
