"""`avcap infer`: checkpoints, caption parsing, every task end to end on the tiny model, resume after
SIGKILL, error records, sharding over two processes and the merge."""

from __future__ import annotations

import csv
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avcap.core.checkpoints import CheckpointError, resolve_checkpoint
from avcap.core.config import load_config
from avcap.eval.infer import InferError, library_versions, merge_only, run_inference
from avcap.eval.tasks import parse_caption
from avcap.core.records import read_json, read_records

# ----------------------------------------------------------------------------- checkpoints


def _hf_dir(d: Path, processor: bool = True) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    if processor:
        (d / "tokenizer_config.json").write_text("{}")
        (d / "processor_config.json").write_text("{}")
    return d


def test_checkpoint_resolution(tmp_path):
    base = _hf_dir(tmp_path / "base-model")
    cfg = load_config(None, {"policy": {"model_name_or_path": str(base)}})
    ck = resolve_checkpoint(None, cfg)
    assert (ck.path, ck.label, ck.step) == (str(base), "base", None)
    cfg_hub = load_config(None, {"avcap": {"engine": {"model": "nvidia/Cosmos-Reason2-2B"}}})
    assert resolve_checkpoint(None, cfg_hub).path == "nvidia/Cosmos-Reason2-2B"
    assert resolve_checkpoint("Qwen/Qwen3-VL-2B-Instruct", cfg).label == "base"

    # avcap training output: a step, or the latest step of the run
    for n in (20, 100, 40):
        _hf_dir(tmp_path / "train" / "checkpoints" / f"step_{n}")
    ck = resolve_checkpoint(str(tmp_path / "train" / "checkpoints" / "step_40"), cfg)
    assert (ck.label, ck.step, ck.kind, ck.processor) == ("ckpt-40", 40, "avcap", None)
    assert resolve_checkpoint(str(tmp_path / "train"), cfg).label == "ckpt-100"

    # cosmos-rl: <out>/<timestamp>/safetensors/step_N, weights only -> the base model's processor
    _hf_dir(tmp_path / "crl" / "20250101000000" / "safetensors" / "step_10", processor=False)
    _hf_dir(tmp_path / "crl" / "20250102000000" / "safetensors" / "step_30", processor=False)
    ck = resolve_checkpoint(str(tmp_path / "crl" / "20250101000000" / "safetensors" / "step_10"), cfg)
    assert (ck.label, ck.kind, ck.processor) == ("ckpt-10", "cosmos-rl", str(base))
    assert resolve_checkpoint(str(tmp_path / "crl"), cfg).path.endswith("20250102000000/safetensors/step_30")

    # a plain save_pretrained dir: a model given by path; with a train state: its step
    assert resolve_checkpoint(str(_hf_dir(tmp_path / "uber" / "ckpt-250")), cfg).label == "ckpt-250"
    plain = _hf_dir(tmp_path / "my-finetune")
    assert resolve_checkpoint(str(plain), cfg).label == "base"
    (plain / "avcap_train_state.json").write_text(json.dumps({"step": 7}))
    assert resolve_checkpoint(str(plain), cfg).label == "ckpt-7"

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(str(tmp_path / "missing" / "dir"), cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"), cfg)


# ----------------------------------------------------------------------------- caption parsing


def test_parse_caption_fenced_bare_and_plain():
    obj, text = parse_caption('```json\n{"weather": "clear", "safety_analysis": "The ego car slows."}\n```')
    assert obj["weather"] == "clear" and text == "The ego car slows."
    obj, text = parse_caption('Here you go: {"safety_analysis": " Stops at the light. "} Done.')
    assert text == "Stops at the light."
    obj, text = parse_caption('```\n{"weather": "rain"}\n```')
    assert obj == {"weather": "rain"} and text == '{"weather": "rain"}'
    obj, text = parse_caption("```\nThe ego vehicle turns left.\n```")
    assert obj is None and text == "The ego vehicle turns left."


# ----------------------------------------------------------------------------- end to end


def write_config(path: Path, model: Path, data: Path, **sampling_caption) -> Path:
    cap = {"temperature": 0.0, "max_tokens": 8, **sampling_caption}
    path.write_text(
        f"""
[policy]
model_name_or_path = "{model}"
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.engine]
batch_size = 2
device = "cpu"
[avcap.sampling.caption]
{chr(10).join(f"{k} = {json.dumps(v)}" for k, v in cap.items())}
[avcap.sampling.mcq]
max_tokens = 3
[avcap.sampling.lingoqa]
max_tokens = 4
[avcap.datasets.AV_CAPTION]
kind = "av_caption"
root = "{data / 'AV_CAPTION'}"
[avcap.datasets.LINGOQA]
kind = "lingoqa"
root = "{data / 'LINGOQA'}"
"""
    )
    return path


@pytest.fixture(scope="module")
def cfg_file(varied_model_dir, infer_data_dir, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "recipe.toml", varied_model_dir, infer_data_dir)


@pytest.fixture(scope="module")
def reference(cfg_file, tmp_path_factory):
    """One uninterrupted single-process run of every task: the records everything else must equal."""
    out = tmp_path_factory.mktemp("ref-outputs")
    cfg = load_config(cfg_file)
    run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)
    run_inference(cfg, dataset="LINGOQA", model_name="tiny", outputs_dir=out, progress=False)
    return out / "tiny" / "base"


def texts(path: Path) -> dict[str, object]:
    recs = read_records(path)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {path}"
    return {r["key"]: (r["text"], bool(r["error"])) for r in recs}


def lingoqa_questions(data: Path) -> list[tuple[str, str]]:
    """(question_id, segment_id) once per question, segments in id order (the runner's order)."""
    import pandas as pd

    df = pd.read_parquet(data / "LINGOQA" / "val.parquet").drop_duplicates("question_id")
    rows = list(zip(df.question_id, df.segment_id))
    return sorted(rows, key=lambda r: r[1])  # stable: parquet order within a segment


def test_every_task_end_to_end(reference, infer_data_dir):
    av = reference / "AV_CAPTION"
    videos = sorted(p.stem for p in (infer_data_dir / "AV_CAPTION" / "videos").glob("*.mp4"))
    caption = {r["key"]: r for r in read_records(av / "caption.jsonl")}
    assert sorted(caption) == videos and videos[-1] == "av99999"
    assert caption["av99999"]["error"].startswith(str(infer_data_dir / "AV_CAPTION" / "videos" / "av99999.mp4"))
    assert caption["av99999"]["text"] is None
    good = caption["av00000"]
    assert good["error"] is None and isinstance(good["text"], str) and isinstance(good["caption_text"], str)
    assert good["num_output_tokens"] <= 8 and good["num_frames"] == [4] and good["num_video_tokens"] > 0

    vqa = read_records(infer_data_dir / "AV_CAPTION" / "vqa.jsonl")
    mcq = read_records(av / "mcq.jsonl")
    assert [r["key"] for r in mcq] == [q["key"] for q in vqa] and len(mcq) == 15
    for r, q in zip(mcq, vqa):
        assert (r["video_id"], r["question_id"], r["category"], r["choices"], r["answer"]) == (
            q["video_id"], q["question_id"], q["category"], q["choices"], q["answer"])
        assert (r["error"] is not None) == (r["video_id"] == "av99999")
        assert r["error"] or r["num_output_tokens"] <= 3

    run = json.loads((av / "run.json").read_text())
    assert run["checkpoint_label"] == "base" and run["engine"]["name"] == "transformers"
    assert run["prompts"]["caption"] and len(run["prompts_sha256"]["caption"]) == 64
    assert run["sampling"]["mcq"]["max_tokens"] == 3 and run["vision"]["nframes"] == 4
    assert run["versions"]["transformers"] and run["timings"]["caption"]["failed"] == 1
    assert run["timings"]["mcq"]["videos"] == 5 and run["timings"]["mcq"]["videos_per_s"] > 0

    lq = read_records(reference / "LINGOQA" / "lingoqa.jsonl")
    assert [(x["key"], x["segment_id"]) for x in lq] == lingoqa_questions(infer_data_dir)
    assert all(x["error"] is None and x["question"] for x in lq)
    with open(reference / "LINGOQA" / "lingoqa_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["question_id", "segment_id", "answer"]
    assert [(x["question_id"], x["answer"]) for x in rows] == [(x["key"], x["text"].strip()) for x in lq]


def test_rerun_skips_and_retry_errors_supersedes(reference, cfg_file, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference.parent, out / "tiny")
    cfg = load_config(cfg_file)
    before = texts(out / "tiny" / "base" / "AV_CAPTION" / "mcq.jsonl")
    summary = run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)
    assert summary["stats"]["mcq"]["skipped"] == 15 and summary["stats"]["mcq"]["done"] == 0
    summary = run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, tasks=["mcq"],
                            retry_errors=True, progress=False)
    assert summary["stats"]["mcq"]["failed"] == 3 and summary["stats"]["mcq"]["skipped"] == 12
    assert texts(out / "tiny" / "base" / "AV_CAPTION" / "mcq.jsonl") == before  # merged: no duplicates

    changed = load_config(cfg_file, {"avcap": {"prompts": {"mcq_suffix": "Just the letter."}}})
    with pytest.raises(InferError, match="different settings.*prompts"):
        run_inference(changed, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)


def test_a_resume_under_other_library_versions_is_refused(reference, cfg_file, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference.parent, out / "tiny")
    run_json = out / "tiny" / "base" / "AV_CAPTION" / "run.json"
    run = read_json(run_json)
    assert set(run["library_versions"]) >= {"avcap", "av", "torch", "transformers"}
    assert run["engine_run"]["paths"] and "fallbacks" in run["engine_run"]
    run["library_versions"]["transformers"] = "5.17.0"
    run["fingerprint"] = "0" * 64  # as made by that run
    run_json.write_text(json.dumps(run))
    now = library_versions("transformers")["transformers"]
    with pytest.raises(InferError, match=f"library versions: transformers 5.17.0 -> {now}"):
        run_inference(load_config(cfg_file), dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stuck_lock(reference, cfg_file, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference.parent, out / "tiny")
    d = out / "tiny" / "base" / "AV_CAPTION"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from avcap.core.records import WriterLock; "
         "WriterLock(sys.argv[1], '.infer.lock', 'avcap infer').__enter__(); print('held', flush=True); time.sleep(120)",
         str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InferError, match=f"another avcap infer is writing here \\(pid {holder.pid} since"):
            run_inference(load_config(cfg_file), dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    before = texts(d / "mcq.jsonl")
    summary = run_inference(load_config(cfg_file), dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)
    assert summary["merged"] and summary["stats"]["mcq"]["skipped"] == 15 and texts(d / "mcq.jsonl") == before


def _avcap(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "avcap", *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_records(reference, cfg_file, tmp_path):
    out = tmp_path / "out"
    args = ["infer", "--model-name", "tiny", "--dataset", "AV_CAPTION", "--config", str(cfg_file),
            "--outputs-dir", str(out), "--batch-size", "1", "--no-progress"]
    d = out / "tiny" / "base" / "AV_CAPTION"
    proc = _avcap(*args)
    while proc.poll() is None:  # kill as soon as two captions are on disk (18 requests to go)
        if (d / "caption.jsonl").exists() and (d / "caption.jsonl").read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_records(d / "caption.jsonl")) + len(read_records(d / "mcq.jsonl"))
    assert 2 <= done < 5 + 15 and read_json(d / "run.json")["finished_at"] is None  # settings on disk from the start
    other = load_config(cfg_file, {"avcap": {"sampling": {"caption": {"max_tokens": 3}}}})
    with pytest.raises(InferError, match="different settings.*sampling"):
        run_inference(other, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, progress=False)
    proc = _avcap(*args)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert "already done" in log and "merged" in log
    for task in ("caption", "mcq"):
        assert texts(d / f"{task}.jsonl") == texts(reference / "AV_CAPTION" / f"{task}.jsonl")


@pytest.mark.slow
def test_two_process_shards_merge_to_the_single_process_result(reference, cfg_file, tmp_path):
    out = tmp_path / "out"
    common = ["--model-name", "tiny", "--dataset", "AV_CAPTION", "--config", str(cfg_file),
              "--outputs-dir", str(out), "--no-progress"]
    # torchrun's environment (WORLD_SIZE/RANK/LOCAL_RANK), two processes at once
    procs = [_avcap("infer", *common, env={"WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    d = out / "tiny" / "base" / "AV_CAPTION"
    parts = [read_records(d / f"mcq.shard-0{i}-of-02.jsonl") for i in (0, 1)]
    videos = [{r["video_id"] for r in p} for p in parts]
    assert videos[0] and videos[1] and not videos[0] & videos[1]  # disjoint, whole videos
    assert any("merged" in log for log in logs)
    for task in ("caption", "mcq"):
        assert texts(d / f"{task}.jsonl") == texts(reference / "AV_CAPTION" / f"{task}.jsonl")
    run = json.loads((d / "run.json").read_text())
    assert [s["shard"]["shard_index"] for s in run["shards"]] == [0, 1]
    assert run["timings"]["mcq"]["requests"] == 15 and run["timings"]["mcq"]["videos"] == 5


def test_merge_names_the_missing_shard(cfg_file, infer_data_dir, tmp_path):
    out = tmp_path / "out"
    cfg = load_config(cfg_file)
    summary = run_inference(cfg, dataset="LINGOQA", model_name="tiny", outputs_dir=out, num_shards=3,
                            shard_index=1, progress=False)
    assert not summary["merged"]
    d = out / "tiny" / "base" / "LINGOQA"
    assert not (d / "lingoqa.jsonl").exists() and (d / "lingoqa.shard-01-of-03.jsonl").exists()
    status = merge_only(cfg, dataset="LINGOQA", model_name="tiny", outputs_dir=out, num_shards=3)
    assert not status.complete and "shard 0: 1 video(s)" in status.message and "shard 2: 1 video(s)" in status.message
    proc = _avcap("infer", "--merge", "--model-name", "tiny", "--dataset", "LINGOQA", "--config", str(cfg_file),
                  "--outputs-dir", str(out))
    log, _ = proc.communicate(timeout=120)
    segments = sorted({seg for _, seg in lingoqa_questions(infer_data_dir)})
    missing = sum(seg != segments[1] for _, seg in lingoqa_questions(infer_data_dir))
    assert proc.returncode == 1 and f"lingoqa: {missing} record(s) missing" in log


def test_cli_errors_are_one_line_exit_2(cfg_file, tmp_path):
    cases = [
        (["--dataset", "NOPE"], "dataset 'NOPE' is not defined"),
        (["--dataset", "AV_CAPTION", "--tasks", "lingoqa"], "does not apply to dataset AV_CAPTION"),
        (["--dataset", "AV_CAPTION", "--checkpoint", str(tmp_path / "nope")], "no such checkpoint"),
        (["--dataset", "AV_CAPTION", "--num-shards", "2"], "go together"),
        (["--dataset", "AV_CAPTION", "--engine", "vllm"], "pip install 'avcap[vllm]'"),
    ]
    for extra, message in cases:
        if "vllm" in extra:
            try:
                import vllm  # noqa: F401

                continue
            except ImportError:
                pass
        proc = _avcap("infer", "--config", str(cfg_file), "--outputs-dir", str(tmp_path / "o"), *extra)
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in log and "Traceback" not in log, (extra, log)


def test_openai_engine_through_the_runner(cfg_file, infer_data_dir, tmp_path, monkeypatch):
    from test_engines import ChatServer, completion

    monkeypatch.setenv("AVCAP_RUNNER_KEY", "sk-never-on-disk")
    with ChatServer([(200, {}, completion("Yes, a car."))]) as srv:
        cfg = load_config(cfg_file, {"avcap": {"engine": {"base_url": srv.base_url, "api_key_env": "AVCAP_RUNNER_KEY",
                                                          "model": "served-model"}}})
        summary = run_inference(cfg, dataset="LINGOQA", model_name="api", engine_name="openai",
                                outputs_dir=tmp_path, progress=False)
    assert summary["merged"] and summary["stats"]["lingoqa"]["done"] == len(lingoqa_questions(infer_data_dir))
    assert {r["headers"]["Authorization"] for r in srv.requests} == {"Bearer sk-never-on-disk"}
    assert {r["json"]["model"] for r in srv.requests} == {"served-model"}
    d = tmp_path / "api" / "base" / "LINGOQA"
    with open(d / "lingoqa_predictions.csv", newline="") as fh:
        assert {row["answer"] for row in csv.DictReader(fh)} == {"Yes, a car."}
    for f in d.iterdir():
        assert "sk-never-on-disk" not in f.read_text()
    assert json.loads((d / "run.json").read_text())["engine_config"]["api_key_env"] == "AVCAP_RUNNER_KEY"


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lingoqa"


@pytest.mark.skipif(not (SHARED / "val.parquet").exists(), reason="../shared/data (real LingoQA val.parquet) is absent")
def test_real_lingoqa_parquet_plans_500_questions_and_official_csv_columns(tmp_path):
    from avcap.eval.infer import build_plan, write_lingoqa_csv

    root = tmp_path / "LINGOQA"
    root.mkdir()
    (root / "val.parquet").write_bytes((SHARED / "val.parquet").read_bytes())
    cfg = load_config(None, {"avcap": {"datasets": {"LINGOQA": {"kind": "lingoqa", "root": str(root)}}}})
    plan = build_plan(cfg, "LINGOQA", None, None)
    items = plan.items["lingoqa"]
    assert len(items) == 500 and len(plan.units) == 100 and len({it.key for it in items}) == 500
    assert all(Path(it.video) == root / "images" / "val" / it.unit for it in items)
    assert len(build_plan(cfg, "LINGOQA", None, 3).units) == 3
    write_lingoqa_csv(tmp_path / "pred.csv", [{**it.fields, "text": " Yes. "} for it in items])
    with open(tmp_path / "pred.csv", newline="") as fh, open(SHARED / "predictions.csv", newline="") as off:
        ours, official = csv.DictReader(fh), csv.DictReader(off)
        rows = list(ours)
        assert set(ours.fieldnames) <= set(official.fieldnames)
    assert len(rows) == 500 and rows[0]["answer"] == "Yes."


@pytest.mark.slow
def test_a_full_disk_and_a_read_only_directory_are_one_line_exit_2_and_a_rerun_completes(reference, cfg_file, tmp_path,
                                                                                         private_mounts):
    """A real tmpfs of 12 KiB fills mid-run (amid the records); then, with room, the rerun completes the same records."""
    unshare = private_mounts
    out, keep = tmp_path / "out", tmp_path / "kept"
    out.mkdir()
    keep.mkdir()
    common = f"{sys.executable} -m avcap infer --model-name tiny --config {cfg_file} --outputs-dir {out} --no-progress"
    script = f"""
    mount -t tmpfs -o size=12k tmpfs {out}
    {common} --dataset AV_CAPTION 2>&1; echo "rc=$?"
    echo ==== room
    mount -o remount,size=16m {out}
    {common} --dataset AV_CAPTION 2>&1; echo "rc=$?"
    echo ==== read-only
    mount -o remount,ro {out}
    {common} --dataset LINGOQA 2>&1; echo "rc=$?"
    cp -r {out}/. {keep}/
    """
    log = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    full, room, ro = log.split("==== ")
    d = out / "tiny" / "base" / "AV_CAPTION"
    assert "rc=2" in full and "Traceback" not in full, full
    assert f"error: {d}/" in full and ": no space left on device (free some space and rerun" in full, full
    assert "rc=0" in room and "merged" in room, room
    assert "rc=2" in ro and "Traceback" not in ro and ": read-only file system (write the outputs somewhere" in ro, ro
    kept = keep / "tiny" / "base" / "AV_CAPTION"
    for task in ("caption", "mcq"):
        assert texts(kept / f"{task}.jsonl") == texts(reference / "AV_CAPTION" / f"{task}.jsonl")
    assert not [p.name for p in kept.iterdir() if p.name.endswith(".tmp")]


def test_batch_sizes_with_a_smaller_first_batch():
    from avcap.eval.infer import batch_sizes

    assert batch_sizes(10, 4) == [4, 4, 2]
    assert batch_sizes(10, 4, 1) == [1, 4, 4, 1]
    assert batch_sizes(3, 4, 2) == [2, 1]
    assert batch_sizes(2, 4, 2) == [2]
    assert batch_sizes(9, 4, 8) == [4, 4, 1]  # never larger than batch_size
    assert batch_sizes(0, 4, 2) == []
    for n in range(0, 30):
        for first in (None, 1, 3, 5):
            sizes = batch_sizes(n, 5, first)
            assert sum(sizes) == n and all(0 < s <= 5 for s in sizes)


def test_batch_sizes_in_multiples_of_the_engines_chunk():
    """With the engine's `batch_multiple`, the batches after the first are equal multiples of it and
    the first takes what is left over (a little later first records, fewer distinct row counts)."""
    from avcap.eval.infer import BALANCE_SLACK_CHUNKS, batch_sizes

    assert batch_sizes(192, 96, 8, 8) == [16, 88, 88]  # not 8, 96, 88
    assert batch_sizes(192, 96, 8) == [8, 96, 88]  # an engine without a chunk
    assert batch_sizes(192, 96, None, 8) == [96, 96]  # no first batch: full batches
    assert batch_sizes(100, 96, 8, 8) == [12, 88]
    assert batch_sizes(10, 96, 8, 8) == [8, 2]  # nothing to even out
    assert batch_sizes(1050, 96, 8, 8)[0] == 8  # the first batch would grow past its slack: the plain split
    for n in range(0, 400, 7):
        for bs, first, m in ((96, 8, 8), (64, 16, 8), (5, 2, 2), (4, 1, 1)):
            sizes, plain = batch_sizes(n, bs, first, m), batch_sizes(n, bs, first)
            assert sum(sizes) == n and all(0 < s <= bs for s in sizes) and len(sizes) == len(plain)
            if sizes != plain:
                assert first <= sizes[0] <= first + BALANCE_SLACK_CHUNKS * m
                assert len(set(sizes[1:])) == 1 and sizes[1] % m == 0


def test_a_smaller_first_batch_gives_the_same_greedy_answers(reference, cfg_file, tmp_path, monkeypatch):
    """`[avcap.engine] first_batch`: only where the batches break changes (MCQ is greedy here)."""
    from avcap.eval import infer

    seen, multiples = [], []
    real = infer.batch_sizes

    def recorded(n, bs, first=None, multiple=None):
        seen.append(real(n, bs, first, multiple))
        multiples.append(multiple)
        return seen[-1]

    monkeypatch.setattr(infer, "batch_sizes", recorded)
    cfg = load_config(cfg_file, {"avcap": {"engine": {"first_batch": 2}}})
    assert cfg.avcap.engine.first_batch == 2 and cfg.avcap.sampling.mcq.temperature == 0
    run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=tmp_path, tasks=["mcq"], progress=False)
    assert texts(tmp_path / "tiny" / "base" / "AV_CAPTION" / "mcq.jsonl") == texts(reference / "AV_CAPTION" / "mcq.jsonl")
    assert seen and seen[0][0] == 2 and len(set(seen[0][1:-1])) <= 1 and sum(seen[0]) == 15
    assert multiples[0] == cfg.avcap.engine.prefill_batch  # the fast path's chunk plans the batches


@pytest.mark.parametrize("part", ["model.safetensors", "tokenizer_config.json"], ids=["weights", "processor"])
def test_a_model_that_fails_to_load_stops_the_run_before_any_record(tiny_model_dir, infer_data_dir, tmp_path, part):
    """The transformers engine loads the weights in the background while the first videos decode; a
    checkpoint whose weights (or, earlier in the load, its processor) cannot be read stops `avcap
    infer` with one line naming it, and no request is written as failed."""
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / part).write_bytes(b"not a safetensors file" if part.endswith(".safetensors") else b"{not json")
    cfg = load_config(write_config(tmp_path / "c.toml", broken, infer_data_dir))
    out = tmp_path / "out"
    with pytest.raises(InferError, match=rf"{broken}: cannot load the model: "):
        run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, tasks=["caption"],
                      progress=False)
    assert not [p for p in out.rglob("*.jsonl") if p.read_text().strip()]


def _other_architecture(src: Path, dest: Path, **text_config) -> Path:
    """A copy of the model directory `src` at `dest` with other text-config sizes (random weights)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    shutil.copytree(src, dest)
    cfg = AutoConfig.from_pretrained(src)
    for k, v in text_config.items():
        setattr(cfg.text_config, k, v)
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(cfg).save_pretrained(dest)
    return dest


def test_every_checkpoint_in_one_engine_equals_a_fresh_engine_per_checkpoint(varied_model_dir, varied_copy,
                                                                          infer_data_dir, tmp_path, monkeypatch):
    """`avcap infer --every-checkpoint`: one engine for a run's checkpoints, each next one's weights
    put into it in place (`reload`), gives every checkpoint exactly the records a fresh engine gives;
    a checkpoint of another architecture is refused by `reload` and gets an engine of its own."""
    import avcap.engines as engines
    from avcap.eval.infer import SharedEngine

    run = tmp_path / "train"
    shutil.copytree(varied_model_dir, run / "checkpoints" / "step_10")
    varied_copy(varied_model_dir, run / "checkpoints" / "step_20", seed=1)
    _other_architecture(varied_model_dir, run / "checkpoints" / "step_30", intermediate_size=48)
    cfg = load_config(write_config(tmp_path / "c.toml", varied_model_dir, infer_data_dir))
    built = []
    real = engines.make_engine
    monkeypatch.setattr(engines, "make_engine", lambda *a, **k: built.append(k["model"]) or real(*a, **k))
    notes: list[str] = []
    shared = SharedEngine(log=notes.append)
    try:
        for step in (10, 20, 30):
            run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=tmp_path / "swept", tasks=["caption"],
                          checkpoint=str(run / "checkpoints" / f"step_{step}"), progress=False, shared=shared)
        # the same checkpoint on another dataset: the same engine and weights, a run record of its own
        run_inference(cfg, dataset="LINGOQA", model_name="tiny", outputs_dir=tmp_path / "swept",
                      checkpoint=str(run / "checkpoints" / "step_30"), progress=False, shared=shared)
    finally:
        shared.close()
    assert [Path(m).name for m in built] == ["step_10", "step_30"]  # step_20 reused step_10's engine
    lingo = read_json(tmp_path / "swept" / "tiny" / "ckpt-30" / "LINGOQA" / "run.json")["engine_run"]
    n_lingo = len(read_records(tmp_path / "swept" / "tiny" / "ckpt-30" / "LINGOQA" / "lingoqa.jsonl"))
    assert sum(lingo["paths"].values()) == n_lingo
    assert len(notes) == 1 and "another model than the engine's" in notes[0] and "intermediate_size" in notes[0]
    for step in (10, 20, 30):
        run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=tmp_path / "fresh", tasks=["caption"],
                      checkpoint=str(run / "checkpoints" / f"step_{step}"), progress=False)
    swept = {s: texts(tmp_path / "swept" / "tiny" / f"ckpt-{s}" / "AV_CAPTION" / "caption.jsonl") for s in (10, 20, 30)}
    fresh = {s: texts(tmp_path / "fresh" / "tiny" / f"ckpt-{s}" / "AV_CAPTION" / "caption.jsonl") for s in (10, 20, 30)}
    assert swept == fresh
    assert swept[10] != swept[20]  # the weights really changed
    rec = read_json(tmp_path / "swept" / "tiny" / "ckpt-20" / "AV_CAPTION" / "run.json")["engine_run"]
    # its own requests only (4: the corrupt clip fails before the model)
    assert rec["load"]["reloaded_from"].endswith("step_20") and sum(rec["paths"].values()) == 4


def test_every_checkpoint_cli(varied_model_dir, varied_copy, infer_data_dir, tmp_path):
    from typer.testing import CliRunner

    from avcap.cli import app

    run = tmp_path / "train"
    for step, seed in ((5, 4), (15, 3)):
        varied_copy(varied_model_dir, run / "checkpoints" / f"step_{step}", seed=seed)
    broken = shutil.copytree(varied_model_dir, run / "checkpoints" / "step_10")  # between the two good ones
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = write_config(tmp_path / "c.toml", varied_model_dir, infer_data_dir)
    args = ["infer", "--config", str(cfg), "--dataset", "AV_CAPTION", "--tasks", "caption", "--model-name", "tiny",
            "--outputs-dir", str(tmp_path / "out"), "--no-progress"]
    r = CliRunner().invoke(app, args + ["--every-checkpoint"])
    assert r.exit_code == 2 and "--every-checkpoint needs --checkpoint" in r.output
    r = CliRunner().invoke(app, args + ["--every-checkpoint", "--checkpoint", str(tmp_path)])
    assert r.exit_code == 2 and "no checkpoints/step_N" in r.output
    r = CliRunner().invoke(app, args + ["--every-checkpoint", "--checkpoint", str(run)])
    # the unreadable checkpoint is named and skipped, the sweep goes on, and the exit says so
    assert r.exit_code == 2, r.output
    assert f"error: {broken}: cannot load the model: " in r.output
    assert "--every-checkpoint: 1 of 3 checkpoints failed (ckpt-10); the others are done" in r.output
    for label in ("ckpt-5", "ckpt-15"):
        assert len(read_records(tmp_path / "out" / "tiny" / label / "AV_CAPTION" / "caption.jsonl")) == 5
    assert not (tmp_path / "out" / "tiny" / "ckpt-10" / "AV_CAPTION" / "caption.jsonl").exists()


def test_a_python_that_compiles_torch_at_every_start_is_named_in_the_log_and_run_json(
        tiny_model_dir, infer_data_dir, tmp_path, monkeypatch):
    """Bytecode looked for under an empty PYTHONPYCACHEPREFIX with writing off (the GPU box's image
    has none for torch and sets PYTHONDONTWRITEBYTECODE): one note with the fix; run.json keeps it."""
    import sys

    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "empty-pycache"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    cfg = load_config(write_config(tmp_path / "c.toml", tiny_model_dir, infer_data_dir))
    lines: list[str] = []
    out = tmp_path / "out"
    run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=out, tasks=["caption"], progress=False,
                  log=lines.append)
    notes = [x for x in lines if "no compiled bytecode" in x]
    assert len(notes) == 1 and "torch" in notes[0] and "compileall" in notes[0], lines
    run = read_json(out / "tiny" / "base" / "AV_CAPTION" / "run.json")
    assert run["bytecode"]["writes"] is False and "torch" in run["bytecode"]["uncached"]


def test_the_first_batch_decodes_first_and_alone_while_the_engine_imports(cfg_file, tmp_path, monkeypatch):
    """A fresh run queues the first batch's videos before the later batches' (they used to queue behind
    every prefetched video), and the transformers engine holds the decoders to those videos until its
    imports are done (run.json says when it let them go)."""
    import avcap.engines.frames as frames

    decoded = []
    real = frames.load_video
    monkeypatch.setattr(frames, "load_video", lambda path, **kw: decoded.append(str(path)) or real(path, **kw))
    cfg = load_config(cfg_file, {"avcap": {"engine": {"first_batch": 1, "decode_workers": 1,
                                                      "decode_processes": False}}})
    run_inference(cfg, dataset="AV_CAPTION", model_name="tiny", outputs_dir=tmp_path, tasks=["caption"], progress=False)
    d = tmp_path / "tiny" / "base" / "AV_CAPTION"
    first = read_records(d / "caption.jsonl")[0]
    assert decoded and Path(decoded[0]).stem == first["video_id"], (decoded, first)
    assert len(decoded) == len(set(decoded)) == 5  # four clips and the corrupt one, each once
    held = read_json(d / "run.json")["engine_run"]["startup"]["frames"]["held"]
    assert held["videos"] == 1 and held["released_at_s"] >= 0
