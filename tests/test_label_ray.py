"""`avcap label --runner ray`, on a two-node Ray cluster on this machine (ray.cluster_utils.Cluster,
one CPU per node, started once for the module): several actors, an actor killed mid-run, the
driver killed mid-run and a rerun, a clip whose worker dies on every try, corrupt and missing
clips, --retry-errors, and every time the check that the output holds each clip exactly once, with
the labels the single-process runner gives the same clips (greedy sampling)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_label import write_config

from avcap.core.config import load_config
from avcap.label.run import TASKS, LabelError, label_clips
from avcap.scenarios.record import iter_scenarios, scenario_files

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("error", "caption", "caption_json", "attributes", "clip")  # what a label says about its clip


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each (the box has 2 cores), small object stores, no dashboard."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.fail("ray is missing: install the dev extra (pip install -e '.[dev]'), which brings avcap[ray]")
    node = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    c = Cluster(initialize_head=True, connect=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    c.wait_for_nodes()
    yield c.address
    ray.shutdown()
    c.shutdown()


def _manifest(path: Path, clips: list[tuple[str, Path]]) -> Path:
    path.write_text("".join(json.dumps({"clip_id": cid, "path": str(p)}) + "\n" for cid, p in clips))
    return path


@pytest.fixture(scope="module")
def world(varied_model_dir, infer_data_dir, tmp_path_factory):
    """The test set's 4 clips, the corrupt one and a missing one, labelled by the single-process
    runner: the reference every Ray run is compared with, clip by clip (by source video)."""
    root = tmp_path_factory.mktemp("label-ray")
    videos = sorted((infer_data_dir / "AV_CAPTION" / "videos").glob("*.mp4"))  # av00000..3, av99999 (corrupt)
    cfg = write_config(root / "recipe.toml", varied_model_dir)
    single = root / "single"
    label_clips(load_config(cfg), clips=str(_manifest(root / "ref.jsonl", [(p.stem, p) for p in videos])), out=single,
                model_name="tiny", progress=False, log=lambda m: None)
    ref = {r["clip_id"]: r for r in _records(single)}
    return {"root": root, "cfg": cfg, "videos": videos, "ref": ref, "good": [p for p in videos if p.stem != "av99999"]}


def _records(out: Path) -> list[dict]:
    """Every record of a label directory (schema-checked), asserting that no clip has two."""
    recs = [r.to_json() for f in scenario_files(out) for r in iter_scenarios(f)]
    ids = [r["clip_id"] for r in recs]
    assert len(ids) == len(set(ids)), sorted(i for i in set(ids) if ids.count(i) > 1)
    return recs


def _same_labels(recs: list[dict], ref: dict[str, dict], source_of) -> None:
    for r in recs:
        want = ref[source_of(r)]
        assert {k: r[k] for k in LABELS} == {k: want[k] for k in LABELS}, r["clip_id"]


def _workers() -> list[int]:
    """PIDs of the label actors (Ray titles an actor's process `ray::MapWorker(MapBatches(LabelWorker))`;
    the state API would need the dashboard, which these tests do not start)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::MapWorker") and b"LabelWorker" in cmd:
                pids.append(int(d.name))
    return pids


def _thumbs(out: Path) -> int:
    return sum(1 for _ in (out / "thumbs").rglob("*.jpg")) if (out / "thumbs").is_dir() else 0


def _in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _result(t: threading.Thread, box: dict, timeout: float = 240):
    t.join(timeout)
    assert not t.is_alive(), "the Ray run did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_the_ray_runner_is_the_single_process_runner_spread_over_actors(cluster, world, tmp_path):
    from avcap.label.ray_runner import TASKS as RAY_TASKS
    from avcap.scenarios.db import open_db

    assert RAY_TASKS == tuple(TASKS)
    late = tmp_path / "late.mp4"  # missing now: an error record; there for the --retry-errors run
    clips = [(f"fleet{k}/{p.stem}", p) for k in range(3) for p in world["videos"]] + [("late", late)]
    manifest = _manifest(tmp_path / "clips.jsonl", clips)
    out, logs = tmp_path / "out", []
    cfg = load_config(world["cfg"])
    summary = label_clips(cfg, clips=str(manifest), out=out, model_name="tiny", progress=False, log=logs.append,
                          runner="ray", ray={"actors": 2, "batch_clips": 2})
    recs = _records(out)
    assert sorted(r["clip_id"] for r in recs) == sorted(c for c, _ in clips)
    assert all(f.parent.name == "scenarios" and f.name.startswith("part-") for f in scenario_files(out))
    _same_labels([r for r in recs if r["clip_id"] != "late"], world["ref"], lambda r: Path(r["source"]).stem)
    by = {r["clip_id"]: r for r in recs}
    assert by["fleet0/av99999"]["error"].startswith(str(world["videos"][-1]))  # corrupt: the reason, the job went on
    assert by["late"]["error"].startswith(str(late))
    good = by["fleet1/av00002"]
    assert Path(good["thumbnail"]) == out / "thumbs" / "fleet1" / "av00002.jpg" and Path(good["thumbnail"]).is_file()
    assert Path(good["preview"]).is_file()
    assert {k: summary[k] for k in ("clips", "labelled", "errors", "pending", "duplicates_removed", "actors")} == {
        "clips": 16, "labelled": 12, "errors": 4, "pending": 0, "duplicates_removed": 0, "actors": 2}
    on_disk = json.loads((out / "label_summary.json").read_text())
    assert on_disk["labelled"] == 12 and sum(a["clips"] for a in on_disk["per_actor"].values()) == 16
    assert len({a["node"] for a in on_disk["per_actor"].values()}) == 2  # both nodes of the cluster labelled
    assert json.loads((out / "run.json").read_text())["runner"] == "ray"
    assert not (out / ".label_ray").exists() or not any((out / ".label_ray").iterdir())

    # the index ingests the partitions
    report = open_db(tmp_path / "db", create=True).ingest([out])
    assert (report.added, report.errors) == (12, 4)

    # a rerun has nothing to do and leaves every file as it was
    before = {f.name: f.read_bytes() for f in scenario_files(out)}
    logs.clear()
    again = label_clips(cfg, clips=str(manifest), out=out, model_name="tiny", progress=False, log=logs.append,
                        runner="ray", ray={"actors": 2, "batch_clips": 2})
    assert again["to_do"] == 0 and any("16 clips: 0 to do, 16 already done" in line for line in logs)
    assert {f.name: f.read_bytes() for f in scenario_files(out)} == before

    # --retry-errors: the late clip is there now; its new record replaces the error record
    shutil.copy(world["good"][0], late)
    third = label_clips(cfg, clips=str(manifest), out=out, model_name="tiny", progress=False, log=lambda m: None,
                        runner="ray", ray={"actors": 1, "batch_clips": 4}, retry_errors=True)
    recs = _records(out)
    assert len(recs) == 16 and third["to_do"] == 4 and third["duplicates_removed"] == 4
    assert {k: third[k] for k in ("labelled", "errors")} == {"labelled": 13, "errors": 3}
    late_rec = {r["clip_id"]: r for r in recs}["late"]
    assert {k: late_rec[k] for k in LABELS} == {k: world["ref"]["av00000"][k] for k in LABELS}

    # the single-process runner does not add a second set of records beside the partitions
    with pytest.raises(LabelError, match="labelled with --runner ray"):
        label_clips(cfg, clips=str(manifest), out=out, model_name="tiny", progress=False, log=lambda m: None)


def test_an_actor_killed_mid_run_is_retried_and_nothing_is_lost_or_doubled(cluster, world, tmp_path):
    clips = [(f"k{k}/{p.stem}", p) for k in range(6) for p in world["good"]]
    manifest = _manifest(tmp_path / "clips.jsonl", clips)
    out = tmp_path / "out"
    t, box = _in_thread(lambda: label_clips(
        load_config(world["cfg"]), clips=str(manifest), out=out, model_name="tiny", progress=False,
        log=lambda m: None, runner="ray", ray={"actors": 2, "batch_clips": 2}))
    deadline = time.monotonic() + 120
    while _thumbs(out) < 4 and time.monotonic() < deadline:  # both actors have labelled something
        time.sleep(0.05)
    victims = _workers()
    assert victims and _thumbs(out) < 2 * len(clips), "the run ended before an actor could be killed"
    os.kill(victims[0], signal.SIGKILL)
    summary = _result(t, box)
    recs = _records(out)
    assert sorted(r["clip_id"] for r in recs) == sorted(c for c, _ in clips) and summary["pending"] == 0
    assert summary["errors"] == 0 and summary["duplicates_removed"] == 0  # Ray Data handed each row over once
    _same_labels(recs, world["ref"], lambda r: Path(r["source"]).stem)
    assert victims[0] not in _workers()


def test_the_driver_killed_mid_run_loses_only_what_was_in_flight(cluster, world, tmp_path):
    # 40 clips: the driver (one actor) is killed once its first partition (4 clips) is on disk, with ~36
    # clips still to go (seconds at the 2-core box's rate); the rerun then labels those
    clips = [(f"d{k}/{p.stem}", p) for k in range(10) for p in world["good"]]
    manifest = _manifest(tmp_path / "clips.jsonl", clips)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "avcap", "label", "--clips", str(manifest), "--out", str(out), "--config",
           str(world["cfg"]), "--model-name", "tiny", "--no-progress", "--runner", "ray", "--ray-address", cluster,
           "--actors", "1", "--batch-clips", "2", "--partition-clips", "4"]
    err = tmp_path / "driver.stderr"  # a file, not a pipe nobody reads while it runs: a full pipe would stall it
    with open(err, "wb") as fh:
        driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh)
    deadline = time.monotonic() + 120
    while not any((out / "scenarios").glob("part-*.jsonl")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the first partition (4 records) is on disk: kill the driver now
    running = driver.poll() is None
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert running, err.read_text(errors="replace")[-2000:]
    assert any((out / "scenarios").glob("part-*.jsonl")), \
        "no partition on disk within 120 s (the kill would test nothing): " + err.read_text(errors="replace")[-2000:]
    first = _records(out)
    assert 0 < len(first) < len(clips) and not (out / "label_summary.json").exists()

    logs: list[str] = []
    summary = label_clips(load_config(world["cfg"]), clips=str(manifest), out=out, model_name="tiny", progress=False,
                          log=logs.append, runner="ray", ray={"actors": 2, "batch_clips": 2})
    assert summary["already_done"] == len(first) and summary["to_do"] == len(clips) - len(first)
    recs = _records(out)
    assert sorted(r["clip_id"] for r in recs) == sorted(c for c, _ in clips) and summary["pending"] == 0
    assert summary["duplicates_removed"] == 0
    _same_labels(recs, world["ref"], lambda r: Path(r["source"]).stem)
    assert not any((out / "scenarios").glob(".*"))  # no temp file of the killed driver is left

    bad = subprocess.run(cmd[:-8] + ["--batch-clips", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: --batch-clips must be >= 1 (got 0)"]


def test_a_clip_whose_worker_dies_on_every_try_becomes_an_error_record(cluster, world, tmp_path):
    """A FIFO with no writer blocks its reader for good; each time a worker is stuck on it, the
    test kills the worker (as an operator or the kernel's OOM killer would). After --max-tries
    tries the clip is an error record naming the reason, and the other clips are labelled."""
    from avcap.label.ray_runner import SCRATCH_DIR, _digest

    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)
    clips = [("a", world["good"][0]), ("b", fifo), ("c", world["good"][1])]
    out = tmp_path / "out"
    t, box = _in_thread(lambda: label_clips(
        load_config(world["cfg"]), clips=str(_manifest(tmp_path / "clips.jsonl", clips)), out=out, model_name="tiny",
        progress=False, log=lambda m: None, runner="ray", ray={"actors": 1, "batch_clips": 1, "max_tries": 2}))

    def tries_started() -> int:  # the stuck clip's tries so far: its batch's first, then its own
        def tries(name: str) -> int:
            for f in (out / SCRATCH_DIR).glob(f"*/{name}"):
                try:
                    return int(json.loads(f.read_text()).get("tries", 0))
                except (OSError, ValueError):
                    pass
            return 0

        return min(1, tries(f"batch-{_digest('b')}")) + tries(f"clip-{_digest('b')}.json")

    kills, seen = 0, 0
    try:
        while t.is_alive() and kills < 5:
            n = tries_started()
            if n > seen:
                time.sleep(0.5)  # the worker is on the FIFO now, and stays there
                for pid in _workers():
                    os.kill(pid, signal.SIGKILL)
                kills, seen = kills + 1, n
            time.sleep(0.05)
        summary = _result(t, box)
    finally:
        for _ in range(10):  # release any reader still blocked on the FIFO
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                break
    assert kills == 2
    recs = {r["clip_id"]: r for r in _records(out)}
    assert sorted(recs) == ["a", "b", "c"] and summary["pending"] == 0
    assert recs["b"]["error"] == (f"{fifo}: no label after 2 tries: the labelling worker died while labelling it "
                                  "(killed, crashed or out of memory; see the Ray worker logs)")
    _same_labels([recs["a"], recs["c"]], world["ref"], lambda r: Path(r["source"]).stem)
