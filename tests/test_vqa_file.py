"""vqa.jsonl is read by one function (avcap.bench.vqa) wherever it is read: infer, score, curate.
Every unusable line is named with its line number and field, counted, and skipped; nothing guesses."""

from __future__ import annotations

import json
import pytest

from avcap.bench.vqa import check_vqa_lines, read_vqa

CHOICES = {"A": "clear", "B": "rain", "C": "fog", "D": "snow"}


def rec(vid="v1", qid="sd01", answer="A", **kw):
    return {"key": f"{vid}/{qid}", "video_id": vid, "question_id": qid, "category": "Scene Description",
            "question": "What is the weather?", "choices": CHOICES, "answer": answer, "provenance": "agreed", **kw}


BAD_LINES = [  # (line text, what the problem must say)
    (json.dumps(rec(answer="E")), "wrong schema: answer: Input should be 'A', 'B', 'C' or 'D'"),
    (json.dumps(rec(qid="zz99")), "question_id: 'zz99' is not in the test pool"),
    (json.dumps({k: v for k, v in rec().items() if k != "choices"}), "wrong schema: choices: Field required"),
    (json.dumps(rec(choices=["clear", "rain", "fog", "snow"])), "wrong schema: choices: Input should be a valid dictionary"),
    (json.dumps(rec(choices={"A": "x", "B": "y", "C": "z"})), "wrong schema: choices must have exactly the letters A-D"),
    (json.dumps(rec(key="v2/sd01")), "wrong schema: key 'v2/sd01' must be '<video_id>/<question_id>'"),
    ('{"key": "v1/sd01", ', "malformed JSON"),
    ("[1, 2]", "wrong schema: a record must be a JSON object, not list"),
    (json.dumps(rec(category="Weather")), "wrong schema: category: category 'Weather' is not one of"),
]


@pytest.mark.parametrize("line,says", BAD_LINES, ids=[s.split(":")[0] + str(i) for i, (_, s) in enumerate(BAD_LINES)])
def test_each_bad_line_is_named_with_its_line_and_field(tmp_path, line, says):
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps(rec(vid="v0")) + "\n" + line + "\n")
    records, problems = read_vqa(path, pool_ids={"sd01", "ko01"}, pool_source="the test pool")
    assert [r["key"] for r in records] == ["v0/sd01"]  # the good line is kept
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: ") and says in problems[0], problems


def test_a_key_twice_identical_is_kept_once_and_conflicting_is_used_never(tmp_path):
    path = tmp_path / "vqa.jsonl"
    lines = [rec("v1"), rec("v1"), rec("v2", answer="A"), rec("v2", answer="B"), rec("v3")]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    records, problems = read_vqa(path)
    assert [r["key"] for r in records] == ["v1/sd01", "v3/sd01"]
    assert problems == [
        f"{path}:2: key 'v1/sd01': duplicate of line 1 (identical; kept once)",
        f"{path}:3: key 'v2/sd01' is on lines 3, 4 with different content; none is used",
        f"{path}:4: key 'v2/sd01' is on lines 3, 4 with different content; none is used",
    ]
    assert [x.lineno for x in check_vqa_lines(path) if x.usable] == [1, 5]


def test_infer_and_score_skip_bad_vqa_lines_and_say_so(tmp_path, infer_data_dir, varied_model_dir):
    import shutil

    from avcap.core.config import load_config
    from avcap.eval.infer import run_inference
    from avcap.core.records import read_json, read_records
    from avcap.eval.score import score_outputs

    data = tmp_path / "data"
    shutil.copytree(infer_data_dir, data)
    vqa = data / "AV_CAPTION" / "vqa.jsonl"
    good = [json.loads(x) for x in vqa.read_text().splitlines()][:3]
    bad = [{**good[0], "answer": "E"}, {**good[1], "question_id": "zz99", "key": f"{good[1]['video_id']}/zz99"},
           {**good[2], "answer": "D" if good[2]["answer"] != "D" else "C"}]
    vqa.write_text("".join(json.dumps(r) + "\n" for r in good + bad) + "not json\n")
    cfg_path = tmp_path / "recipe.toml"
    cfg_path.write_text(f"""
[policy]
model_name_or_path = "{varied_model_dir}"
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.engine]
device = "cpu"
[avcap.sampling.mcq]
max_tokens = 3
[avcap.datasets.AV_CAPTION]
kind = "av_caption"
root = "{data / 'AV_CAPTION'}"
""")
    cfg = load_config(cfg_path)
    logged: list[str] = []
    run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=tmp_path / "out", tasks=["mcq"],
                  limit=1, progress=False, log=logged.append)
    d = tmp_path / "out" / "tiny" / "base" / "AV_CAPTION"
    keys = [r["key"] for r in read_records(d / "mcq.jsonl")]
    assert keys == [r["key"] for r in good[:2]]  # line 3 conflicts with line 6: neither is asked
    text = "\n".join(logged)
    for n, says in ((3, "different content"), (4, "answer: Input should be"), (5, "'zz99' is not in the question pool"),
                    (6, "different content"), (7, "malformed JSON")):
        assert f"skipped: {vqa}:{n}: " in text and says in text, (n, text)
    assert len(read_json(d / "run.json")["input_problems"]) == 5
    (m,) = score_outputs(tmp_path / "out", cfg=cfg, log=lambda *_: None)
    assert any(f"{vqa}:4: wrong schema: answer" in n for n in m["notes"]), m["notes"]
    assert m["vqa_accuracy"]["total_predictions"] == 2
