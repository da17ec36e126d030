"""avcap train: LR schedule, label masking, CPU steps on the tiny model, checkpoints, exact resume,
a 2-process FSDP2/gloo run, and the cosmos-rl dataset module."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Optional

import pytest
import torch
from test_curate import HUMAN, curated_human_source, write_config

from avcap.core.config import load_config
from avcap.train.schedule import lr_factor

# ----------------------------------------------------------------------------- LR schedule


@pytest.mark.parametrize("decay,expected", [
    # T = 100, warmup 0.05 -> 5 steps: 0, .25, .5, .75, 1 ; step 5: 1 ; then p = (k - 5) / 95
    ("linear", {0: 0.0, 2: 0.5, 4: 1.0, 5: 1.0, 24: 1 - 19 / 95, 99: 1 - 94 / 95}),
    ("sqrt", {1: 0.25, 5: 1.0, 24: 1 - math.sqrt(19 / 95), 99: 1 - math.sqrt(94 / 95)}),
    ("cosine", {3: 0.75, 5: 1.0, 52.5: None, 24: 0.5 * (1 + math.cos(math.pi * 19 / 95)), 99: 0.5 * (1 + math.cos(math.pi * 94 / 95))}),
    ("none", {0: 0.0, 4: 1.0, 50: 1.0, 99: 1.0}),
])
def test_lr_schedule_values(decay, expected):
    from avcap.core.config import Train

    t = Train(optm_warmup_steps=0.05, optm_decay_type=decay)
    w = t.warmup_steps(100)
    assert w == 5
    for step, value in expected.items():
        if value is None:
            continue
        assert lr_factor(step, total_steps=100, warmup_steps=w, decay_type=decay) == pytest.approx(value, abs=1e-12)


def test_lr_schedule_warmup_steps_min_factor_and_torch_scheduler():
    from avcap.core.config import Train
    from avcap.train.schedule import build_scheduler

    t = Train(optm_warmup_steps=3, optm_decay_type="linear", optm_min_lr_factor=0.1, optm_lr=1.0)
    assert t.warmup_steps(10) == 3 and Train(optm_warmup_steps=0.03).warmup_steps(50) == 1  # int(1.5): cosmos-rl
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, t, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen[:4] == [0.0, 0.5, 1.0, 1.0]
    assert seen[4] == pytest.approx(0.1 + 0.9 * (1 - 1 / 7)) and seen[9] == pytest.approx(0.1 + 0.9 * (1 - 6 / 7))
    assert min(seen[3:]) > 0.1


# ----------------------------------------------------------------------------- data


# `curated` (two curated sources of tiny clips) is a session fixture of conftest.py: the modules of
# tests/test_train*.py share one, each writing its runs under runs/<its own names>.


def test_label_mask_covers_exactly_the_assistant_turn(curated, tiny_model_dir):
    from transformers import AutoProcessor

    from avcap.data.sources import load_conversation
    from avcap.train.data import IGNORE_INDEX, encode

    root, _ = curated
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    conv = load_conversation(next((root / "data/train/cv_annotated/conversations").glob("*.json")))
    s = encode(proc, conv)
    ids, labels = s["input_ids"][0], s["labels"][0]
    assert labels.shape == ids.shape
    sel = labels != IGNORE_INDEX
    assert torch.equal(labels[sel], ids[sel])
    assert proc.tokenizer.decode(ids[sel]) == conv[2]["content"] + "<|im_end|>"
    # the labelled tokens are one contiguous run at the end (only the final "\n" after <|im_end|> is not)
    pos = sel.nonzero().squeeze(1)
    assert pos.tolist() == list(range(int(pos[0]), int(pos[-1]) + 1)) and int(pos[-1]) == len(ids) - 2
    video_token = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert (ids == video_token).sum() > 0 and not sel[ids == video_token].any()


def test_label_mask_multi_turn_text_and_alignment(tiny_model_dir):
    from transformers import AutoProcessor

    from avcap.train.data import IGNORE_INDEX, align_labels, encode

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    conv = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Is the light red?"}]},
            {"role": "assistant", "content": "Yes, it is red."},
            {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
            {"role": "assistant", "content": "Green."}]
    s = encode(proc, conv)
    ids, labels = s["input_ids"][0], s["labels"][0]
    text = proc.tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert text == "Yes, it is red.<|im_end|>Green.<|im_end|>"
    # alignment: an expansion in the middle shifts the tail labels, keeps the head labels
    assert align_labels([1, 2, 9, 3, 4], [True, False, False, False, True], [1, 2, 9, 9, 9, 9, 3, 4]) == \
        [1, -100, -100, -100, -100, -100, -100, 4]
    with pytest.raises(ValueError):
        align_labels([1, 9, 2], [False, True, False], [1, 7, 7, 2])  # a labelled token that was expanded


def test_sample_over_model_max_length_is_skipped(curated, tiny_model_dir):
    from transformers import AutoProcessor

    from avcap.data.sources import load_conversation
    from avcap.train.data import SampleSkipped, encode

    root, _ = curated
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    conv = load_conversation(next((root / "data/train/human_annotated/conversations").glob("*.json")))
    n = encode(proc, conv)["input_ids"].shape[1]
    assert encode(proc, conv, model_max_length=n)["input_ids"].shape[1] == n
    with pytest.raises(SampleSkipped, match="model_max_length"):
        encode(proc, conv, model_max_length=n - 1)


# ----------------------------------------------------------------------------- training runs

TRAIN = """
[train]
output_dir = "{out}"
epoch = 2
train_batch_per_replica = {per_rank}
optm_lr = 3e-3
optm_warmup_steps = 0
optm_decay_type = "cosine"
optm_min_lr_factor = 0.5
seed = 7
[train.train_policy]
mini_batch = 1
dataloader_num_workers = {workers}
[train.ckpt]
save_freq = 2
[policy]
model_name_or_path = "{model}"
model_max_length = {max_len}
model_gradient_checkpointing = {gc}
[logging]
logger = ["console", "wandb"]
wandb_mode = "offline"
"""


def train_config(curated, tiny_model_dir, name: str, *, per_rank: int = 4, workers: int = 0,
                 max_len: int = 4096, gc: bool = False) -> Path:
    root, body = curated
    text = body + TRAIN.format(out=f"runs/{name}", per_rank=per_rank, workers=workers, model=tiny_model_dir,
                               max_len=max_len, gc=str(gc).lower())
    return write_config(root / f"{name}.toml", text)


def log_of(run: Path) -> dict[int, dict]:
    from avcap.core.records import iter_records, latest_by_key

    return {int(k): v for k, v in latest_by_key(iter_records(run / "train_log.jsonl")).items()}


def weights_of(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(ckpt / "model.safetensors")


# `uninterrupted` (the 4-step reference run) is a session fixture of conftest.py (test_train_host_inputs.py
# reads it too); the tests here only read its run.


def test_cpu_training_reduces_loss_and_writes_loadable_checkpoints(uninterrupted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out, written, lines = uninterrupted
    # 4 samples with global batch 2 -> 2 steps per epoch, 2 epochs -> 4 steps; save_freq 2
    assert [p.name for p in written] == ["step_2", "step_4"]
    log = log_of(out)
    assert sorted(log) == [1, 2, 3, 4]
    # both epochs cover the same 4 samples: the second epoch's loss is lower
    assert log[3]["loss"] + log[4]["loss"] < log[1]["loss"] + log[2]["loss"]
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["samples_skipped_total"] == 0 for r in log.values())
    assert any(line.startswith("step 4/4 ") and "loss" in line and "lr" in line and "grad_norm" in line
               and "tokens/s" in line and "skipped 0" in line for line in lines)
    assert any("wandb" in line for line in lines)  # listed in [logging]: used, or a warning says why not
    # the blend order: each epoch holds both sources half and half
    epoch1 = sorted(log[1]["batch"] + log[2]["batch"])
    assert sum(i < 2 for i in epoch1) == 2 and sum(i >= 2 for i in epoch1) == 2

    ckpt = out / "checkpoints/step_4"
    state = json.loads((ckpt / "avcap_train_state.json").read_text())
    assert state["step"] == 4 and state["total_steps"] == 4 and (ckpt / state["optimizer_file"]).is_file()
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    proc = AutoProcessor.from_pretrained(ckpt)
    assert proc.tokenizer.chat_template and (ckpt / "chat_template.jinja").is_file()
    trained = weights_of(ckpt)
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items() if k in trained)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Describe the scene."}]}]
    inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3


def test_checkpoint_loads_in_avcap_infer(uninterrupted, curated, tmp_path):
    pytest.importorskip("avcap.engines.hf.engine", reason="avcap infer's transformers engine not built yet")
    from typer.testing import CliRunner

    from avcap.cli import app
    from test_curate import write_clip

    out, _, _ = uninterrupted
    av = tmp_path / "AV"
    write_clip(av / "videos/v1.mp4", seed=3)
    (av / "annotations").mkdir()
    (av / "annotations/v1.json").write_text(json.dumps(HUMAN))
    cfg = write_config(tmp_path / "infer.toml", f"""
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap]
outputs_dir = "{tmp_path / 'outputs'}"
[avcap.engine]
device = "cpu"
[avcap.sampling.caption]
max_tokens = 4
[avcap.datasets.AV]
kind = "av_caption"
root = "{av}"
""")
    res = CliRunner().invoke(app, ["infer", "--config", str(cfg), "--model-name", "tiny", "--checkpoint",
                                   str(out / "checkpoints/step_4"), "--dataset", "AV", "--tasks", "caption"])
    assert res.exit_code == 0, res.output
    rec = [json.loads(x) for x in (tmp_path / "outputs/tiny/ckpt-4/AV/caption.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and rec[0]["error"] is None


def test_resume_after_interruption_equals_uninterrupted_run(uninterrupted, curated, tiny_model_dir, monkeypatch):
    import avcap.train.loop as tr
    import avcap.train.checkpoint as ck
    from avcap.core.records import read_records
    from avcap.train.loop import train

    full_out, _, _ = uninterrupted
    cfg = load_config(train_config(curated, tiny_model_dir, "resumed", per_rank=2, workers=0, gc=True))
    out = cfg.resolve(cfg.train.output_dir)
    real_step = tr.Logger.step

    def log_then_die(self, rec):
        real_step(self, rec)
        if rec["step"] == 3:
            raise KeyboardInterrupt  # killed after step 3 was logged, before its checkpoint (step 4)

    monkeypatch.setattr(tr.Logger, "step", log_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, echo=lambda s: None)
    monkeypatch.setattr(tr.Logger, "step", real_step)
    assert [p.name for _, p in ck.list_checkpoints(out)] == ["step_2"]
    assert [r["key"] for r in read_records(out / "train_log.jsonl")] == ["1", "2", "3"]
    lines: list[str] = []
    written = train(cfg, echo=lines.append)  # resume = true (the default)
    assert [p.name for p in written] == ["step_4"]
    assert any(line.startswith("resuming from") and "step 2/4" in line for line in lines)
    # step 3 is redone from the step-2 checkpoint: logged once, the redone record
    assert [r["key"] for r in read_records(out / "train_log.jsonl")] == ["1", "2", "3", "4"]
    full, resumed = log_of(full_out), log_of(out)
    for step in (1, 2, 3, 4):
        assert resumed[step]["batch"] == full[step]["batch"]  # same data order
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5)
        assert resumed[step]["lr"] == pytest.approx(full[step]["lr"], rel=1e-9)
    a, b = weights_of(full_out / "checkpoints/step_4"), weights_of(out / "checkpoints/step_4")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_trim_log_keeps_one_record_per_step_up_to_the_start(tmp_path):
    from avcap.core.records import read_records, write_records_atomic
    from avcap.train.loop import TrainError, trim_log

    log = tmp_path / "train_log.jsonl"
    assert trim_log(log, 5) == 0 and not log.exists()
    # a log from before this fix: steps 3-4 logged, killed, resumed at 2 and logged again
    write_records_atomic(log, [{"key": str(k), "loss": v} for k, v in
                               [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7), (3, 0.81), (4, 0.71), (5, 0.6)]])
    with open(log, "a") as fh:
        fh.write('{"key": "6", "lo')  # torn by a kill
    assert trim_log(log, 4) == 3
    assert read_records(log) == [{"key": "1", "loss": 1.0}, {"key": "2", "loss": 0.9}, {"key": "3", "loss": 0.81},
                                 {"key": "4", "loss": 0.71}]
    before = log.stat().st_mtime_ns
    assert trim_log(log, 4) == 0 and log.stat().st_mtime_ns == before  # nothing to change: not rewritten
    assert trim_log(log, 0) == 4 and read_records(log) == []  # a fresh run (resume = false) starts a fresh log
    log.write_text('{"key": "1"}\nnot json\n')
    with pytest.raises(TrainError, match="train_log.jsonl:2"):
        trim_log(log, 1)


def test_resume_refuses_a_changed_blend(uninterrupted, curated, tiny_model_dir):
    from avcap.train.loop import TrainError, train

    full_out, _, _ = uninterrupted
    root, body = curated
    text = train_config(curated, tiny_model_dir, "full", per_rank=2).read_text()
    cfg = load_config(write_config(root / "changed.toml", text.replace("weights = [0.5, 0.5]", "weights = [0.9, 0.1]")))
    assert cfg.resolve(cfg.train.output_dir) == full_out
    with pytest.raises(TrainError, match="resume"):
        train(cfg, echo=lambda s: None)


def test_too_long_samples_are_skipped_and_counted(curated, tiny_model_dir):
    from avcap.train.loop import train

    # the human annotations are long JSON targets (> 400 tokens), the CV targets short
    cfg = load_config(train_config(curated, tiny_model_dir, "short", per_rank=4, max_len=400))
    cfg.train.max_num_steps = 1
    lines: list[str] = []
    train(cfg, echo=lines.append)
    log = log_of(cfg.resolve(cfg.train.output_dir))
    assert log[1]["samples_skipped"] == log[1]["samples_skipped_total"] == sum(i < 2 for i in log[1]["batch"]) > 0
    assert sum("skipped" in line and "model_max_length 400" in line for line in lines) == log[1]["samples_skipped"]


@pytest.mark.slow
def test_two_process_gloo_fsdp_matches_one_process(uninterrupted, curated, tiny_model_dir):
    """torchrun, 2 CPU processes, FSDP2 over gloo, 1 sample per rank: the same global batch of 2
    as the 1-process run, so the same data, losses and final weights."""
    full_out, _, _ = uninterrupted
    cfg_path = train_config(curated, tiny_model_dir, "ddp2", per_rank=1, workers=1, gc=True)
    out = load_config(cfg_path).resolve("runs/ddp2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "avcap.train", "--config", str(cfg_path)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 x cpu" in proc.stdout
    full, two = log_of(full_out), log_of(out)
    for step in (1, 2, 3, 4):
        assert two[step]["batch"] == full[step]["batch"]
        assert two[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-4)
    a, b = weights_of(full_out / "checkpoints/step_4"), weights_of(out / "checkpoints/step_4")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_two_process_rank_with_only_skipped_samples_stays_in_step(tmp_path, tiny_model_dir):
    """One sample is too long: the rank that draws it runs a zero-weight pass instead (FSDP ranks
    must run the same collectives), the other rank's sample still trains, the skip is counted."""
    long_text = "The ego vehicle keeps its lane behind a gray SUV. " * 200  # > 2000 tokens; the short one ~500
    cfg_path = curated_human_source(tmp_path, f"""
[train]
output_dir = "run"
epoch = 2
train_batch_per_replica = 1
[train.train_policy]
mini_batch = 1
dataloader_num_workers = 0
[train.ckpt]
enable_checkpoint = false
[policy]
model_name_or_path = "{tiny_model_dir}"
model_max_length = 1500
""", annotate=lambda i: {**HUMAN, "safety_analysis": long_text if i == 0 else "Short."})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "avcap.train", "--config", str(cfg_path)],
        check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = log_of(tmp_path / "run")
    assert sorted(log) == [1, 2]  # 2 samples, global batch 2: one step per epoch, each with both samples
    assert [log[k]["samples_skipped"] for k in (1, 2)] == [1, 1] and log[2]["samples_skipped_total"] == 2
    assert all(math.isfinite(log[k]["loss"]) and log[k]["assistant_tokens"] > 0 for k in (1, 2))
    assert "model_max_length 1500" in proc.stderr


def _proc_stat(pid: int) -> Optional[list[str]]:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_of(pid: int) -> set[int]:
    kids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _proc_stat(int(d.name))
            if st is not None and int(st[1]) == pid:
                kids.add(int(d.name))
    return kids


def _running(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie has exited (nobody may reap it here)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_dataloader_workers_exit_at_once_when_train_is_killed(tmp_path, tiny_model_dir):
    """SIGKILL to `avcap train`: its DataLoader worker goes within a second (PR_SET_PDEATHSIG), not
    at PyTorch's 5-second parent check."""
    import signal
    import time

    cfg_path = curated_human_source(tmp_path, f"""
[train]
output_dir = "run"
epoch = 1000
train_batch_per_replica = 1
[train.train_policy]
mini_batch = 1
dataloader_num_workers = 1
[train.ckpt]
enable_checkpoint = false
[policy]
model_name_or_path = "{tiny_model_dir}"
""")
    workers: set[int] = set()
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "avcap.train", "--config", str(cfg_path)], stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not workers and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = _children_of(proc.pid)  # the worker starts with the first batch's loading
        time.sleep(1.0)  # let it get to work (a worker killed earlier, before its set-up, is covered too)
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        # the children alive now: a short-lived helper process seen above may have finished meanwhile
        # (the suite on the newest libraries caught one once, gone after the second)
        workers = {w for w in workers | _children_of(proc.pid) if _running(w)}
        assert workers
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while any(_running(w) for w in workers) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        assert time.monotonic() - t0 < 1.0, f"workers {sorted(workers)} outlived the killed trainer"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)


def test_train_cli_errors_exit_2(tmp_path, curated, tiny_model_dir):
    from typer.testing import CliRunner

    from avcap.cli import app

    bad = write_config(tmp_path / "bad.toml", "[train]\nepochs = 3\n")
    res = CliRunner().invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "epochs" in res.output and "Traceback" not in res.output
    nodata = write_config(tmp_path / "nodata.toml", f'[custom.dataset]\ndataset_root = "{tmp_path}/none"\n'
                                                    f'[policy]\nmodel_name_or_path = "{tiny_model_dir}"\n')
    res = CliRunner().invoke(app, ["train", "--config", str(nodata)])
    assert res.exit_code == 2 and "meta.json" in res.output


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_nothing_half_written(uninterrupted, curated, tiny_model_dir,
                                                                                 tmp_path, private_mounts):
    """A real 6 MiB tmpfs fills while the first checkpoint is written (torch's own message would be
    "unexpected pos ..."); avcap says which path and why, exits 2, and removes step_N.tmp; with room
    the rerun ends with the uninterrupted run's weights."""
    import subprocess
    import sys

    out, keep = tmp_path / "out", tmp_path / "kept"
    out.mkdir()
    keep.mkdir()
    cfg = train_config(curated, tiny_model_dir, "fulldisk", per_rank=2, workers=1, gc=True)
    cmd = f"{sys.executable} -m avcap train --config {cfg} --output-dir {out}"
    script = f"""
    mount -t tmpfs -o size=6m tmpfs {out}
    {cmd} 2>&1; echo "rc=$?"; ls {out}/checkpoints 2>/dev/null; echo "==== room"
    mount -o remount,size=256m {out}
    {cmd} 2>&1; echo "rc=$?"
    cp -r {out}/. {keep}/
    """
    log = subprocess.run([*private_mounts, "sh", "-c", script], capture_output=True, text=True, timeout=900).stdout
    full, room = log.split("==== room")
    assert "rc=2" in full and "Traceback" not in full and "unexpected pos" not in full, full
    assert f"error: {out}/checkpoints/step_" in full and ".tmp: no space left on device" in full, full
    assert ".tmp" not in full.strip().splitlines()[-1], full  # the listing after the failure: no step_N.tmp
    assert "rc=0" in room, room
    ref_dir, _, _ = uninterrupted
    last = max((p.name for p in (ref_dir / "checkpoints").iterdir()), key=lambda n: int(n.split("_")[1]))
    a, b = weights_of(ref_dir / "checkpoints" / last), weights_of(keep / "checkpoints" / last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- cosmos-rl module


def _load_script():
    """Import the module from its file path, the way `cosmos-rl --config F <path>` runs it."""
    import avcap.train.cosmos_rl_dataset as m

    spec = importlib.util.spec_from_file_location("cosmos_rl_user_script", m.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_conversation(conv, vision_nframes: int):
    assert [m["role"] for m in conv] == ["system", "user", "assistant"]
    assert isinstance(conv[0]["content"], str) and isinstance(conv[2]["content"], str)
    video, text = conv[1]["content"]
    assert video["type"] == "video" and Path(video["video"]).is_absolute() and Path(video["video"]).is_file()
    assert video["nframes"] == vision_nframes and video["min_pixels"] == 3136 and video["max_pixels"] == 6144
    assert text["type"] == "text" and text["text"]


def test_cosmos_rl_module_serves_conversations(curated, tmp_path, monkeypatch):
    root, body = curated
    mod = _load_script()
    # cosmos-rl hands the script a temporary copy of the TOML and runs it from the launch directory
    copy = write_config(tmp_path / "cosmos-rl-copy.toml", body.replace("nframes = 4", "nframes = 2") +
                        '\nredis = "12800"\n[train]\ntrain_batch_per_replica = 2\nseed = 3\n'
                        '[train.train_policy]\ntype = "sft"\nmini_batch = 1\n')
    monkeypatch.chdir(root)
    dataset, make_sampler = mod.from_config_file(copy)
    assert len(dataset) == 4 and dataset.sizes == [2, 2]
    for i in range(len(dataset)):
        _check_conversation(dataset[i], vision_nframes=2)  # [custom.vision] of the TOML, not of curation time
    # cosmos-rl's sampler call: sampler(train_dataset, num_replicas=, rank=, shuffle=, drop_last=)
    s0 = make_sampler(object(), num_replicas=2, rank=0, shuffle=True, drop_last=False)
    s1 = make_sampler(object(), num_replicas=2, rank=1, shuffle=True, drop_last=False)
    assert len(s0) == len(s1) == 2 and sorted(list(s0) + list(s1)) == [0, 1, 2, 3]

    # the factory path: cosmos-rl calls dataset.setup(config) with its Config (config.custom = [custom])
    import tomllib

    factory_ds = mod.AvcapConversations(base_dirs=[root])
    factory_ds.setup(types.SimpleNamespace(custom=tomllib.loads(body)["custom"]))
    _check_conversation(factory_ds[0], vision_nframes=4)


def test_cosmos_rl_module_main_calls_worker_entry(curated, tmp_path, monkeypatch, capsys):
    root, body = curated
    mod = _load_script()
    cfg = write_config(root / "cosmos.toml", body)
    seen = {}
    fake = types.ModuleType("cosmos_rl.launcher.worker_entry")
    fake.main = lambda dataset=None, sampler=None, **kw: seen.update(dataset=dataset, sampler=sampler, kw=kw)
    for name in ("cosmos_rl", "cosmos_rl.launcher"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "cosmos_rl.launcher.worker_entry", fake)
    mod.main(["--config", str(cfg), "--port", "8000"])  # cosmos-rl's own flags are passed through
    assert len(seen["dataset"]) == 4 and callable(seen["sampler"])
    assert seen["kw"] == {"data_packer": mod.data_packer, "val_data_packer": mod.data_packer}  # a factory cosmos-rl calls
    _check_conversation(seen["dataset"][3], vision_nframes=4)

    monkeypatch.setitem(sys.modules, "cosmos_rl.launcher.worker_entry", None)  # not installed
    with pytest.raises(SystemExit) as exc:
        mod.main(["--config", str(cfg)])
    assert exc.value.code == 2 and "cosmos-rl is not installed" in capsys.readouterr().err
    mod.main(["--print-path"])
    assert capsys.readouterr().out.strip().endswith("avcap/train/cosmos_rl_dataset.py")


def test_per_sample_loss_is_the_mean_of_each_samples_token_mean(tiny_model_dir):
    """loss_reduction = "sample": every sample weighs the same, however many tokens it is labelled on;
    "token" sums over tokens (the trainer divides by the batch's token count)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from avcap.train.loop import loss_units, micro_batch_loss
    from avcap.train.data import Collator, encode

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    convs = [[{"role": "user", "content": [{"type": "text", "text": "Which letter?"}]},
              {"role": "assistant", "content": "B"}],
             [{"role": "user", "content": [{"type": "text", "text": "Describe the scene."}]},
              {"role": "assistant", "content": "A red car waits at the light while a cyclist crosses the road."}]]
    samples = [{**encode(proc, c), "index": i} for i, c in enumerate(convs)]
    collate = Collator(proc.tokenizer.pad_token_id)
    with torch.no_grad():
        alone = [micro_batch_loss(model, collate([s]), "cpu", slice_logits=True) for s in samples]
        summed, n_tok = micro_batch_loss(model, collate(samples), "cpu", slice_logits=True)
        per_sample, n_smp = micro_batch_loss(model, collate(samples), "cpu", slice_logits=True, per_sample=True)
    means = [float(loss) / n for loss, n in alone]
    assert n_smp == 2 and n_tok == sum(n for _, n in alone) and alone[0][1] == 2  # "B" + <|im_end|>
    assert float(per_sample) / n_smp == pytest.approx(sum(means) / 2, rel=1e-5)
    assert float(summed) / n_tok == pytest.approx(sum(float(l) for l, _ in alone) / n_tok, rel=1e-5)
    assert float(summed) / n_tok != pytest.approx(float(per_sample) / n_smp, rel=1e-3)
    batch = collate(samples)
    assert loss_units(batch["labels"], True) == 2 and loss_units(batch["labels"], False) == n_tok


# ----------------------------------------------------------------------------- bad samples


def _conv_file(src: Path, i: int) -> Path:
    return src / json.loads((src / "meta.json").read_text())["samples"][i]["conversation"]


def _edit_conv(src: Path, i: int, edit) -> Path:
    f = _conv_file(src, i)
    conv = json.loads(f.read_text())
    f.write_text(json.dumps(edit(conv)))
    return f


def _set_video(conv: list, video: str) -> list:
    conv[1]["content"][0]["video"] = video
    return conv


def _missing_conversation(src, i, tmp):
    f = _conv_file(src, i)
    f.unlink()
    return [str(f), "no such file"]


def _not_a_list(src, i, tmp):
    f = _conv_file(src, i)
    f.write_text(json.dumps({"role": "user", "content": "hello"}))
    return [str(f), "expected a non-empty list of messages, got object"]


def _malformed_json(src, i, tmp):
    f = _conv_file(src, i)
    f.write_text('[{"role": "system", ')
    return [str(f), "malformed JSON"]


def _video_part_without_path(src, i, tmp):
    f = _edit_conv(src, i, lambda c: _set_video(c, 5))
    return [str(f), "[1].content[0].video: expected a video path"]


def _no_assistant_turn(src, i, tmp):
    f = _edit_conv(src, i, lambda c: c[:2])
    return [str(f), "no assistant turn"]


def _meta_sample_without_conversation(src, i, tmp):
    meta = json.loads((src / "meta.json").read_text())
    del meta["samples"][i]["conversation"]
    (src / "meta.json").write_text(json.dumps(meta))
    return [str(src / "meta.json"), f"samples[{i}].conversation: missing"]


def _narrow_clip(src, i, tmp):
    """150:1, accepted by an older curate (or curated with a larger max_pixels): height 0 at 6144 pixels."""
    from test_curate import write_clip

    clip = write_clip(tmp / f"strip{i}.mp4", seed=9, frames=4, size=(10, 1504))
    f = _edit_conv(src, i, lambda c: _set_video(c, str(clip)))
    return [str(f), "[1].content[0].video", str(clip), "short side falls below 32"]


def _unreadable_video(src, i, tmp):
    clip = tmp / f"broken{i}.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    f = _edit_conv(src, i, lambda c: _set_video(c, str(clip)))
    return [str(f), "[1].content[0].video", str(clip)]


BAD_SAMPLES = [  # (how the sample is broken, the reason it is counted under)
    (_missing_conversation, "missing_conversation"),
    (_not_a_list, "bad_conversation"),
    (_malformed_json, "bad_conversation"),
    (_video_part_without_path, "bad_conversation"),
    (_no_assistant_turn, "bad_conversation"),
    (_meta_sample_without_conversation, "bad_meta_sample"),
    (_narrow_clip, "bad_video"),
    (_unreadable_video, "bad_video"),
]


@pytest.mark.parametrize("breaks,reason", BAD_SAMPLES, ids=[f.__name__.strip("_") for f, _ in BAD_SAMPLES])
def test_a_bad_sample_is_skipped_with_its_reason_file_and_field(tmp_path, tiny_model_dir, breaks, reason):
    from transformers import AutoProcessor

    from avcap.data.sources import CurateError
    from avcap.train.data import SFTDataset, index_sources

    cfg = load_config(curated_human_source(tmp_path, "", n=2))
    expect = breaks(tmp_path / "data/human_annotated", 0, tmp_path)
    index = index_sources(tmp_path / "data", ["human_annotated"], skip_bad=True)
    assert index.sizes == [2]  # a skipped sample keeps its place: the global sample order is meta.json's
    ds = SFTDataset(index, AutoProcessor.from_pretrained(tiny_model_dir), vision=cfg.custom.vision)
    bad, good = ds[0], ds[1]
    assert bad["index"] == 0 and bad["reason"] == reason and "input_ids" not in bad
    assert all(text in bad["skipped"] for text in expect), (bad["skipped"], expect)
    assert "\n" not in bad["skipped"] and good["index"] == 1 and good["input_ids"].shape[1] > 0
    if reason == "bad_meta_sample":  # cosmos-rl cannot skip: without skip_bad it is one clear error
        with pytest.raises(CurateError, match=r"meta\.json: samples\[0\]\.conversation: missing"):
            index_sources(tmp_path / "data", ["human_annotated"])


def test_training_skips_and_counts_every_bad_sample_by_reason(tmp_path, tiny_model_dir):
    """One step over a source whose samples are all broken in a different way but the last: the run
    finishes, every skip is one warning naming file and field, and the counts by reason are in
    train_log.jsonl and the checkpoint's state (a DataLoader worker process does the loading)."""
    from collections import Counter

    from avcap.train.loop import train

    n = len(BAD_SAMPLES) + 1
    cfg = load_config(curated_human_source(tmp_path, f"""
[train]
output_dir = "run"
epoch = 1
train_batch_per_replica = {n}
[train.train_policy]
mini_batch = 1
dataloader_num_workers = 1
[train.ckpt]
save_freq = 1
[policy]
model_name_or_path = "{tiny_model_dir}"
""", n=n))
    expect = [breaks(tmp_path / "data/human_annotated", i, tmp_path) for i, (breaks, _) in enumerate(BAD_SAMPLES)]
    lines: list[str] = []
    train(cfg, echo=lines.append)
    log = log_of(tmp_path / "run")
    counts = dict(Counter(reason for _, reason in BAD_SAMPLES))
    assert sorted(log) == [1] and sorted(log[1]["batch"]) == list(range(n))
    assert log[1]["samples_skipped"] == len(BAD_SAMPLES) and log[1]["assistant_tokens"] > 0
    assert log[1]["samples_skipped_by_reason"] == log[1]["samples_skipped_by_reason_total"] == counts
    warnings = [line for line in lines if line.startswith("warning: rank 0 step 1: skipped sample")]
    assert len(warnings) == len(BAD_SAMPLES)
    for i, ((_, reason), texts) in enumerate(zip(BAD_SAMPLES, expect)):
        (line,) = [w for w in warnings if w.startswith(f"warning: rank 0 step 1: skipped sample {i} ({reason}): ")]
        assert all(t in line for t in texts), (line, texts)
    state = json.loads((tmp_path / "run/checkpoints/step_1/avcap_train_state.json").read_text())
    assert state["samples_skipped"] == len(BAD_SAMPLES) and state["samples_skipped_by_reason"] == counts
    assert any(line.startswith("done:") and "bad_conversation 4" in line for line in lines)


def test_conversation_sizes_count_an_unreadable_file_as_zero(tmp_path):
    from avcap.train.data import conversation_sizes

    (tmp_path / "a.json").write_text("[1, 2, 3]")
    assert conversation_sizes([tmp_path / "a.json", tmp_path / "gone.json"]) == [9, 0]


def test_right_padded_micro_batches_need_no_attention_mask(curated, tiny_model_dir, monkeypatch):
    """The Collator right-pads, so `micro_batch_loss` leaves the mask out (sdpa's causal kernel, not a
    masked one): the loss and every gradient equal those computed with the mask, videos included."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from avcap.data.sources import load_conversation
    from avcap.train.data import Collator, encode
    from avcap.train.loop import micro_batch_loss, right_padded

    root, _ = curated
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    files = sorted((root / "data/train").glob("*/conversations/*.json"))
    samples = [{**encode(proc, load_conversation(f)), "index": i} for i, f in enumerate(files)]
    text = [{"role": "user", "content": [{"type": "text", "text": "Say something short."}]},
            {"role": "assistant", "content": "Short."}]
    samples.append({**encode(proc, text), "index": len(samples)})
    batch = Collator(proc.tokenizer.pad_token_id)(samples)
    mask = batch["attention_mask"]
    assert right_padded(mask) and len(set(mask.sum(1).tolist())) > 1  # rows of several lengths
    assert not right_padded(mask.flip(1)) and not right_padded(torch.tensor([[1, 0, 1]]))

    def loss_and_grads(b):
        model.zero_grad()
        loss, n = micro_batch_loss(model, b, "cpu", slice_logits=True)
        loss.backward()
        return float(loss), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    from avcap.train import loop

    without = loss_and_grads(batch)
    calls = []
    monkeypatch.setattr(loop, "right_padded", lambda m: calls.append(m) or False)  # the mask goes in, as before
    with_mask = loss_and_grads(batch)
    assert calls  # the reference really passed the mask
    assert without[1] == with_mask[1]
    assert without[0] == pytest.approx(with_mask[0], rel=1e-6, abs=1e-6)
    assert without[2].keys() == with_mask[2].keys()
    for k, g in without[2].items():
        ref = with_mask[2][k]
        assert torch.allclose(g, ref, rtol=1e-4, atol=1e-6 * (1 + float(ref.abs().max()))), k
