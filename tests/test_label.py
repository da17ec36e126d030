"""`avcap label`: clip sets (folder, manifests), the runner's two tasks on a clip set, scenario
records (schema, errors, pictures, metadata), resume, and the settings check on questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avcap.core.config import load_config
from avcap.core.records import read_json, read_records
from avcap.eval.clips import ClipSetError, clip_set
from avcap.eval.tasks import TaskError, attribute_questions
from avcap.label.run import LabelError, label_clips
from avcap.label.thumbs import picture_stem
from avcap.scenarios.record import iter_scenarios, read_questions

ATTRIBUTES = ["weather", "lighting", "people_on_foot", "ego_maneuver"]


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_is_walked_and_a_clip_id_is_its_relative_path(tmp_path):
    _touch(tmp_path / "2026-11" / "cam0_1.mp4")
    _touch(tmp_path / "2026-11" / "cam0_1.mov")  # the same id: reported, the first one kept
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "frames" / "seg1" / "0.jpg")  # a frame directory is one clip
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden" / "x.mp4")
    clips, problems = clip_set(tmp_path)
    assert list(clips) == ["2026-11/cam0_1", "a", "frames/seg1"]
    assert clips["2026-11/cam0_1"].name == "cam0_1.mov"  # sorted: .mov before .mp4
    assert len(problems) == 1 and "clip id '2026-11/cam0_1'" in problems[0]
    with pytest.raises(ClipSetError, match="no clips"):
        clip_set(_empty(tmp_path))
    with pytest.raises(ClipSetError, match="no such folder"):
        clip_set(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_manifests_list_paths_and_ids_and_name_each_bad_line(tmp_path):
    (tmp_path / "list.txt").write_text("# fleet export\nclips/a.mp4\n/abs/b.mp4\n\nclips/a.mp4\n")
    clips, problems = clip_set(tmp_path, tmp_path / "list.txt")
    assert clips == {"a": tmp_path / "clips" / "a.mp4", "b": Path("/abs/b.mp4")}
    assert problems == [f"{tmp_path / 'list.txt'}:5: clip_id: 'a' is listed twice; this one is skipped"]

    (tmp_path / "list.jsonl").write_text(
        '{"path": "x.mp4", "clip_id": "veh7/x"}\n{"path": 3}\nnot json\n{"path": "y.mp4", "clip_id": ""}\n{"path": "z.mp4"}\n')
    clips, problems = clip_set(tmp_path, tmp_path / "list.jsonl")
    assert list(clips) == ["veh7/x", "z"]
    assert [p.split(": ", 1)[0] for p in problems] == [f"{tmp_path / 'list.jsonl'}:{n}" for n in (2, 3, 4)]
    assert "path: expected an object with a string `path`" in problems[0] and "not valid JSON" in problems[1]

    (tmp_path / "list.csv").write_text("clip_id,path\nc1,c1.mp4\n,c2.mp4\n")
    assert list(clip_set(tmp_path, tmp_path / "list.csv")[0]) == ["c1", "c2"]
    (tmp_path / "bad.csv").write_text("file\nc1.mp4\n")
    with pytest.raises(ClipSetError, match=r"bad.csv: no `path` column \(columns: file\)"):
        clip_set(tmp_path, tmp_path / "bad.csv")
    with pytest.raises(ClipSetError, match="no such manifest"):
        clip_set(tmp_path, tmp_path / "nope.txt")


def test_attribute_questions_follow_the_config_and_suggest_the_nearest_name():
    cfg = load_config(None, {"avcap": {"label": {"attributes": ["weather", "eb01", "lighting"]}}})
    pool, qs = attribute_questions(cfg)
    assert [q.attribute_name for q in qs] == ["weather", "ego_maneuver", "lighting"]
    assert len(attribute_questions(load_config(None))[1]) == len(pool.questions) == 50
    with pytest.raises(TaskError, match=r"'wether' is neither a question id nor an attribute .*did you mean 'weather'"):
        attribute_questions(load_config(None, {"avcap": {"label": {"attributes": ["wether"]}}}))


def test_picture_names_never_leave_the_thumbs_directory():
    assert picture_stem("2026-11/cam0") == "2026-11/cam0"
    assert picture_stem("../../etc/passwd") == "__/__/etc/passwd"
    assert picture_stem("/abs/x y?.mp4") == "abs/x_y_.mp4"
    assert picture_stem("") == "_"


# ----------------------------------------------------------------------------- end to end


def write_config(path: Path, model: Path, attributes=ATTRIBUTES) -> Path:
    path.write_text(f"""
[policy]
model_name_or_path = "{model}"
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.engine]
batch_size = 8
device = "cpu"
dtype = "float32"
[avcap.sampling.caption]
temperature = 0.0
max_tokens = 12
[avcap.sampling.mcq]
max_tokens = 3
[avcap.label]
attributes = {json.dumps(attributes)}
thumbnail_width = 64
""")
    return path


@pytest.fixture(scope="module")
def labelled(varied_model_dir, infer_data_dir, tmp_path_factory):
    """The test set's 4 clips + a corrupt file, and a manifest clip that does not exist, labelled once."""
    root = tmp_path_factory.mktemp("label")
    videos = infer_data_dir / "AV_CAPTION" / "videos"
    manifest = root / "clips.jsonl"
    lines = [{"path": str(p), "clip_id": f"fleet/{p.stem}"} for p in sorted(videos.glob("*.mp4"))]
    lines.append({"path": str(root / "gone.mp4"), "clip_id": "fleet/gone"})
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg_file = write_config(root / "recipe.toml", varied_model_dir)
    out = root / "out"
    logs: list[str] = []
    summary = label_clips(load_config(cfg_file), clips=str(manifest), out=out, model_name="tiny", progress=False,
                          log=logs.append)
    return {"out": out, "summary": summary, "cfg": cfg_file, "manifest": manifest, "logs": logs, "videos": videos}


def test_every_clip_gets_one_scenario_record(labelled):
    out, videos = labelled["out"], labelled["videos"]
    recs = list(iter_scenarios(out / "scenarios.jsonl"))  # the schema reader accepts every line
    ids = [r.clip_id for r in recs]
    assert ids == sorted(["fleet/av00000", "fleet/av00001", "fleet/av00002", "fleet/av00003", "fleet/av99999", "fleet/gone"])
    assert labelled["summary"] | {"seconds": 0} == {
        "clips": 6, "labelled": 4, "errors": 2, "pending": 0, "picture_failures": 0,
        "records": str(out / "scenarios.jsonl"), "seconds": 0}
    by = {r.clip_id: r for r in recs}
    good = by["fleet/av00000"]
    assert good.error is None and good.source == str(videos / "av00000.mp4")
    assert list(good.attributes) == ATTRIBUTES
    qs = read_questions(out / "questions.json").by_name()
    raw = {r["key"]: r for r in read_records(out / "attributes.jsonl")}
    for name, a in good.attributes.items():
        rec = raw[f"fleet/av00000#{qs[name].question_id}"]
        assert a.letter == rec["letter"] and a.error is None
        assert a.answer == (qs[name].choices[a.letter] if a.letter else None)
        assert a.raw == (None if a.letter and rec["text"].strip() == a.letter else rec["text"].strip())
    cap = {r["key"]: r for r in read_records(out / "caption.jsonl")}["fleet/av00000"]
    assert good.caption == cap["caption_text"] and cap["text"]
    assert (good.clip.width, good.clip.height, good.clip.fps, good.clip.frames, good.clip.duration_s) == (96, 64, 8.0, 24, 3.0)
    assert good.clip.size_bytes == (videos / "av00000.mp4").stat().st_size
    assert good.labeller.model_name == "tiny" and good.labeller.checkpoint == "base"
    assert good.labeller.fingerprint == read_json(out / "run.json")["fingerprint"]

    from PIL import Image

    thumb, strip = Image.open(good.thumbnail), Image.open(good.preview)
    assert Path(good.thumbnail) == out / "thumbs" / "fleet" / "av00000.jpg"
    assert thumb.size == (64, 43) and strip.size == (4 * 135 + 3 * 2, 90)

    for cid in ("fleet/av99999", "fleet/gone"):
        bad = by[cid]
        assert bad.error and bad.error.startswith(str(videos / "av99999.mp4") if "99999" in cid else str(labelled["manifest"].parent / "gone.mp4"))
        assert bad.caption is None and bad.attributes == {} and bad.thumbnail is None


def test_the_attributes_share_the_video_prefix(labelled):
    run = read_json(labelled["out"] / "run.json")
    assert run["tasks"] == ["caption", "attributes"]
    assert run["engine_run"]["counts"].get("shared_inputs_spliced", 0) > 0  # one prefill per clip's questions
    assert run["timings"]["attributes"]["requests"] == 6 * len(ATTRIBUTES)


def test_a_rerun_does_nothing_and_keeps_every_record(labelled):
    out = labelled["out"]
    before = (out / "scenarios.jsonl").read_text()
    logs: list[str] = []
    summary = label_clips(load_config(labelled["cfg"]), clips=str(labelled["manifest"]), out=out, model_name="tiny",
                          progress=False, log=logs.append)
    assert summary["labelled"] == 4 and (out / "scenarios.jsonl").read_text() == before  # labelled_at kept
    assert any("caption: 0 to do, 6 already done" in line for line in logs)


def test_other_questions_or_bad_clips_are_refused_with_one_line(labelled, varied_model_dir, tmp_path):
    cfg_file = write_config(tmp_path / "other.toml", varied_model_dir, attributes=["weather", "area"])
    res = subprocess.run([sys.executable, "-m", "avcap", "label", "--clips", str(labelled["manifest"]), "--out",
                          str(labelled["out"]), "--config", str(cfg_file), "--no-progress"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {labelled['out'] / 'questions.json'}: these clips were asked other attribute questions "
        "(added sd01; removed ci01, eb01, sd02); use another --out, or remove the directory"]
    with pytest.raises(LabelError, match="is neither a folder, a manifest file nor a dataset"):
        label_clips(load_config(cfg_file), clips=str(tmp_path / "nowhere"), out=tmp_path / "o", progress=False,
                    log=lambda m: None)
