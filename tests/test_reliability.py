"""Reliability (issue 21): `avcap infer`, `avcap train`, `avcap bench build` and `avcap curate` are
SIGKILLed at random points and rerun to completion, and every run is compared with one
uninterrupted run of the same verb: no record lost, duplicated, torn or changed (timing fields
aside), no temp file left behind, no process left running, and resumed training bit-identical.
Then the bad inputs of the issue, as one table driving the CLI end to end.

CI runs 2 kills per verb. The full campaign (15 per verb) prints its figures:

    python -m pytest -q -n 0 -s tests/test_reliability.py --many

Kills are placed three ways, drawn from a seeded generator (SEED): after a random delay (from 0 to
1.1 x the uninterrupted run's wall time: start-up, mid-run, or after the run ended), when the record
files reach a random number of lines (mid-records), or when the run enters its last phase (all
records written: infer's merge, bench's pairs, curate's meta/report; train: a `step_N.tmp`
checkpoint being written). A trial is a fresh output directory that takes 1-3 kills, each followed
by a rerun, the last rerun running to completion. Where each kill landed is read from what it left
on disk: before the process wrote a record ("start-up"), among the records ("mid-run"), while a
checkpoint was being saved ("checkpoint save"), after every record was written ("final write"), in
a rerun that found every record on disk already ("rerun of a run with every record"), or the
process had already exited ("completed before the kill": not a kill). The moment a random kill
rarely hits, a temp file written and not yet renamed, gets a kill of its own
(test_a_kill_between_a_temp_file_and_its_rename_leaves_nothing_behind).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_bench import ChatServer, Oracle, _policy
from test_bench import _config as bench_config
from test_curate import HUMAN, make_source, vqa_record, write_clip
from test_infer import write_config as infer_config

from avcap.core.config import load_config

pytestmark = pytest.mark.slow

SEED = 20261206
KILLS_CI, KILLS_MANY = 2, 15
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN_TIMEOUT_S = 600  # one run to completion
TEMP_NAME = re.compile(r"^(\..+\.tmp|step_\d+\.tmp)$")  # write_text_atomic's and the trainer's temp names


@pytest.fixture(scope="module")
def kills(request) -> int:
    return KILLS_MANY if request.config.getoption("--many") else KILLS_CI


def avcap(*args: Any) -> list[str]:
    return [sys.executable, "-m", "avcap", *map(str, args)]


class Started:
    """A run started now (its output to `log`), awaited by `done()`: (exit code, output).
    Runs that do not depend on one another start together and are awaited in turn (the box has two
    cores; much of each run is one core's start-up)."""

    def __init__(self, cmd: list[str], log: Path, started: list[Started]):
        self.log = log
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV)
        started.append(self)

    def done(self) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return rc, self.log.read_text()


def run_to_end(cmd: list[str], log: Path) -> tuple[int, str, float]:
    """(exit code, output, seconds) of one run, started and awaited alone."""
    t0 = time.monotonic()
    rc, out = Started(cmd, log, []).done()
    return rc, out, time.monotonic() - t0


# ----------------------------------------------------------------------------- what a run left on disk


def lines_of(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def parse_jsonl(path: Path, problems: list[str]) -> list[dict]:
    """Every line of a finished file must be a whole JSON object: a torn or foreign line is a problem."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        problems.append(f"{path}: torn last line {data.splitlines()[-1][:60]!r}")
    out = []
    for n, raw in enumerate(data.splitlines(), 1):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc.msg}): {raw[:60]!r}")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path}:{n}: not a JSON object")
            continue
        out.append(obj)
    return out


def normalize(obj: Any, run_dir: Path) -> Any:
    """The run directory's own path as `<run>` (the reference and each trial live in sibling
    directories of the same depth, so relative paths agree as they are)."""
    if isinstance(obj, str):
        return obj.replace(str(run_dir), "<run>")
    if isinstance(obj, list):
        return [normalize(x, run_dir) for x in obj]
    if isinstance(obj, dict):
        return {k: normalize(v, run_dir) for k, v in obj.items()}
    return obj


def compare_records(ref: Path, got: Path, ref_dir: Path, run_dir: Path, timing: frozenset[str]) -> list[str]:
    """Lost, duplicated, unexpected and changed records of `got` against `ref` (keyed by "key";
    `timing` names the fields that measure time and may differ)."""
    problems: list[str] = []
    if not got.is_file():
        return [f"{got}: missing"]
    ref_recs = {r["key"]: normalize(r, ref_dir) for r in parse_jsonl(ref, [])}
    got_list = parse_jsonl(got, problems)
    keys = Counter(r.get("key") for r in got_list)
    problems += [f"{got}: key {k!r} appears {n} times" for k, n in keys.items() if n > 1]
    got_recs = {r.get("key"): normalize(r, run_dir) for r in got_list}
    problems += [f"{got}: record {k!r} lost" for k in ref_recs if k not in got_recs]
    problems += [f"{got}: record {k!r} is not in the uninterrupted run" for k in got_recs if k not in ref_recs]
    for k in ref_recs.keys() & got_recs.keys():
        a, b = ref_recs[k], got_recs[k]
        diff = sorted(f for f in a.keys() | b.keys() if f not in timing and a.get(f) != b.get(f))
        if diff:
            problems.append(f"{got}: record {k!r} changed in {diff}: "
                            + "; ".join(f"{f}: {a.get(f)!r:.80} -> {b.get(f)!r:.80}" for f in diff[:3]))
    return problems


def leftovers(run_dir: Path) -> list[str]:
    """Temp files / directories anywhere under a finished run, and any JSON file that does not parse."""
    problems = []
    for p in sorted(run_dir.rglob("*")):
        if TEMP_NAME.match(p.name):
            problems.append(f"{p}: temp {'directory' if p.is_dir() else 'file'} left after completion")
        elif p.suffix == ".jsonl" and p.is_file():
            parse_jsonl(p, problems)
        elif p.suffix == ".json" and p.is_file():
            try:
                json.loads(p.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems.append(f"{p}: not JSON ({exc})")
    return problems


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group (the run was started in its own session)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                state, _ppid, pgrp = Path(d / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, IndexError, ValueError):
                continue
            if int(pgrp) == pgid and state not in ("Z", "X"):
                out.append(int(d.name))
    return out


# ----------------------------------------------------------------------------- the campaign


@dataclass
class Verb:
    name: str
    base: Path  # reference and trials are base/<name>
    prepare: Callable[[Path], None]  # a fresh run directory (inputs a run writes into)
    command: Callable[[Path], list[str]]
    progress: Callable[[Path], int]  # records on disk now
    in_final_phase: Callable[[Path], bool]  # the run is in its last phase (see module doc)
    compare: Callable[[Path, Path], list[str]]  # anomalies of a finished run against the reference
    # identities of the checkpoint temp directories now (one that was not there at start: a save in progress)
    checkpointing: Callable[[Path], frozenset] = lambda run: frozenset()
    total: int = 0  # records of a complete run (from the reference)
    t_ref: float = 0.0  # the reference's wall time
    ref: Path = Path()

    def reference(self) -> Verb:
        self.ref = self.base / "ref"
        self.prepare(self.ref)
        rc, log, self.t_ref = run_to_end(self.command(self.ref), self.base / "ref.log")
        assert rc == 0, log[-3000:]
        self.total = self.progress(self.ref)
        assert self.total > 2, (self.name, self.total)
        problems = leftovers(self.ref)
        assert not problems, problems
        return self


@dataclass
class Figures:
    attempts: int = 0
    landed: Counter = field(default_factory=Counter)  # phase -> kills
    completed_before_kill: int = 0
    trials: int = 0
    completed_trials: int = 0
    torn_tails: int = 0  # a kill left a partial last line (to be repaired by the rerun)
    kills: list[str] = field(default_factory=list)  # "<trial> <mode> at <s>: <phase> (<records> records)"
    anomalies: list[str] = field(default_factory=list)

    def line(self, verb: str, t_ref: float, total: int) -> str:
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.landed.items())) or "none"
        return (f"reliability: {verb} (uninterrupted {t_ref:.1f} s, {total} records): {self.attempts} kill attempts "
                f"-> {sum(self.landed.values())} kills ({phases}), {self.completed_before_kill} completed before the kill; "
                f"{self.completed_trials}/{self.trials} trials completed; torn tails left by kills {self.torn_tails}; "
                f"anomalies {len(self.anomalies)}")


def kill_once(verb: Verb, run: Path, rng: random.Random, log: Path, figures: Figures) -> None:
    before, stale = verb.progress(run), verb.checkpointing(run)  # stale: left by an earlier kill
    mode = rng.choice(["delay", "records", "final"])
    if before >= verb.total:  # every record is on disk already: the rerun is all start-up and final write
        mode = "delay"
    elif mode == "records" and before + 1 > verb.total - 1:
        mode = "final"
    delay = rng.uniform(0.0, 1.1 * verb.t_ref)
    target = rng.randint(before + 1, verb.total - 1) if mode == "records" else verb.total

    def fire() -> bool:
        if mode == "delay":
            return time.monotonic() - t0 >= delay
        if mode == "records":
            return verb.progress(run) >= target
        return bool(verb.checkpointing(run) - stale) or verb.in_final_phase(run)

    with open(log, "w") as fh:
        proc = subprocess.Popen(verb.command(run), stdout=fh, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    t0 = time.monotonic()
    figures.attempts += 1
    hung = False
    while proc.poll() is None and not fire():
        if time.monotonic() - t0 > RUN_TIMEOUT_S:
            hung = True
            break
        time.sleep(0.003)
    at = time.monotonic() - t0
    if proc.poll() is not None:  # it ended first: a kill now would hit nothing
        figures.completed_before_kill += 1
        figures.kills.append(f"{run.name} {mode} at {at:.2f} s: completed before the kill")
        if proc.returncode != 0:
            figures.anomalies.append(f"{run} ({mode}): exited {proc.returncode} before the kill: {log.read_text()[-1500:]}")
        return
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if hung:
        figures.anomalies.append(f"{run}: still running after {RUN_TIMEOUT_S} s (mode {mode}); killed")
    after = verb.progress(run)
    if verb.checkpointing(run) - stale:
        phase = "checkpoint save"
    elif before >= verb.total:
        phase = "rerun of a run with every record"
    elif after >= verb.total:
        phase = "final write"
    elif after <= before:  # no new record (a resumed trainer first rewinds its log to its checkpoint)
        phase = "start-up"
    else:
        phase = "mid-run"
    figures.landed[phase] += 1
    figures.kills.append(f"{run.name} {mode} at {at:.2f} s: {phase} ({before} -> {after} records)")
    for f in run.rglob("*.jsonl"):
        data = f.read_bytes()
        figures.torn_tails += bool(data) and not data.endswith(b"\n")
    t_dead = time.monotonic()
    while (alive := _group_members(proc.pid)) and time.monotonic() - t_dead < 3.0:
        time.sleep(0.05)
    if alive:
        figures.anomalies.append(f"{run}: processes {alive} outlived the killed {verb.name} by 3 s")
        os.killpg(proc.pid, signal.SIGKILL)


def campaign(verb: Verb, kills: int) -> Figures:
    rng = random.Random(f"{SEED}:{verb.name}")
    figures = Figures()
    left = kills
    while left > 0:
        chain = min(left, rng.choice([1, 1, 2, 3]))
        left -= chain
        figures.trials += 1
        run = verb.base / f"t{figures.trials:02d}"
        verb.prepare(run)
        for n in range(chain):
            kill_once(verb, run, rng, verb.base / f"t{figures.trials:02d}.kill{n}.log", figures)
        rc, log, _ = run_to_end(verb.command(run), verb.base / f"t{figures.trials:02d}.final.log")
        if rc != 0:
            figures.anomalies.append(f"{run}: the rerun after the kills exited {rc}: {log[-2000:]}")
            continue
        figures.completed_trials += 1
        figures.anomalies += verb.compare(verb.ref, run) + leftovers(run)
    print("\n" + figures.line(verb.name, verb.t_ref, verb.total))
    for k in figures.kills:
        print(f"  {k}")
    for a in figures.anomalies:
        print(f"  anomaly: {a}")
    return figures


def check(figures: Figures, kills: int) -> None:
    assert figures.attempts == kills and figures.trials >= 1
    assert not figures.anomalies, "\n".join(figures.anomalies)
    assert figures.completed_trials == figures.trials


# ----------------------------------------------------------------------------- avcap infer


@pytest.fixture(scope="module")
def infer_verb(varied_model_dir, infer_data_dir, tmp_path_factory) -> Verb:
    """AV_CAPTION of conftest (4 clips + a corrupt one, 15 MCQ questions), caption + mcq, the
    varied tiny model (its answers depend on the video and the question), batch 2."""
    base = tmp_path_factory.mktemp("rel-infer")
    cfg = infer_config(base / "recipe.toml", varied_model_dir, infer_data_dir)

    def out(run: Path) -> Path:
        return run / "out" / "tiny" / "base" / "AV_CAPTION"

    def progress(run: Path) -> int:
        return lines_of(out(run) / "caption.jsonl") + lines_of(out(run) / "mcq.jsonl")

    def compare(ref: Path, run: Path) -> list[str]:
        problems = []
        for task in ("caption", "mcq"):
            problems += compare_records(out(ref) / f"{task}.jsonl", out(run) / f"{task}.jsonl", ref, run,
                                        timing=frozenset({"time_s"}))
        a, b = json.loads((out(ref) / "run.json").read_text()), json.loads((out(run) / "run.json").read_text())
        if b.get("finished_at") is None:
            problems.append(f"{out(run) / 'run.json'}: finished_at is null after a completed rerun")
        for k in ("fingerprint", "input_problems"):
            if a.get(k) != b.get(k):
                problems.append(f"{out(run) / 'run.json'}: {k} differs from the uninterrupted run's")
        return problems

    verb = Verb("infer", base, prepare=lambda run: run.mkdir(),
                command=lambda run: avcap("infer", "--model-name", "tiny", "--dataset", "AV_CAPTION", "--config", cfg,
                                          "--outputs-dir", run / "out", "--no-progress"),
                progress=progress, in_final_phase=lambda run: progress(run) >= verb.total, compare=compare)
    return verb.reference()


def test_infer_survives_sigkill_anywhere(infer_verb, kills):
    check(campaign(infer_verb, kills), kills)


# ----------------------------------------------------------------------------- avcap train

TRAIN_TOML = """
[custom.dataset]
dataset_root = "data"
subdirectories = ["human_annotated", "cv_annotated"]
weights = [0.5, 0.5]
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.curate.sources.human_annotated]
kind = "human_annotated"
path = "raw/human"
[avcap.curate.sources.cv_annotated]
kind = "cv_annotated"
path = "raw/cv"
[train]
epoch = 3
train_batch_per_replica = 2
optm_lr = 3e-3
optm_warmup_steps = 0
optm_decay_type = "cosine"
optm_min_lr_factor = 0.5
seed = 7
[train.train_policy]
mini_batch = 1
dataloader_num_workers = 1
[train.ckpt]
save_freq = 2
[policy]
model_name_or_path = "{model}"
"""


def weights_of(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def same_tensors(a: Any, b: Any) -> bool:
    """Bit for bit, through dicts/lists of tensors (optimizer and RNG state)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def train_verb(tiny_model_dir, tmp_path_factory) -> Verb:
    """2 human + 2 CV samples curated once; 3 epochs of global batch 2 = 6 steps, a checkpoint every
    2 steps, one DataLoader worker process."""
    import torch

    from avcap.data.sources import curate

    base = tmp_path_factory.mktemp("rel-train")
    make_source(base / "raw/human", "human_annotated", 2, seed=0,
                annotate=lambda i: {**HUMAN, "weather": ["Sunny", "Overcast"][i]})
    make_source(base / "raw/cv", "cv_annotated", 2, seed=50)
    cfg = base / "recipe.toml"
    cfg.write_text(TRAIN_TOML.format(model=tiny_model_dir))
    assert not curate(load_config(cfg), echo=lambda s: None).problems

    def out(run: Path) -> Path:
        return run / "run"

    def checkpointing(run: Path) -> frozenset:
        ids = set()
        for p in out(run).glob("checkpoints/step_*.tmp"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            ids.add((p.name, st.st_ino, st.st_ctime_ns))  # a directory rewritten by a save changes its ctime
        return frozenset(ids)

    def compare(ref: Path, run: Path) -> list[str]:
        problems = compare_records(out(ref) / "train_log.jsonl", out(run) / "train_log.jsonl", ref, run,
                                   timing=frozenset({"tokens_per_s", "step_time_s", "data_wait_s"}))
        keys = [r.get("key") for r in parse_jsonl(out(run) / "train_log.jsonl", [])]
        if keys != [str(k) for k in range(1, verb.total + 1)]:
            problems.append(f"{out(run) / 'train_log.jsonl'}: steps logged {keys}, expected each of 1..{verb.total} once")
        ref_ck = sorted(p.name for p in (out(ref) / "checkpoints").iterdir())
        got_ck = sorted(p.name for p in (out(run) / "checkpoints").iterdir())
        if got_ck != ref_ck:
            problems.append(f"{out(run) / 'checkpoints'}: {got_ck}, expected {ref_ck}")
        for name in sorted(set(ref_ck) & set(got_ck)):
            a, b = out(ref) / "checkpoints" / name, out(run) / "checkpoints" / name
            wa, wb = weights_of(a / "model.safetensors"), weights_of(b / "model.safetensors")
            differ = [k for k in wa if k not in wb or not same_tensors(wa[k], wb[k])]
            if differ or wa.keys() != wb.keys():
                problems.append(f"{b}: weights differ from the uninterrupted run's bit for bit: {differ[:5]}")
            oa, ob = (torch.load(x / "avcap_optimizer.pt", weights_only=False) for x in (a, b))
            for part in sorted(oa.keys() | ob.keys()):  # optimizer, scheduler, rng: what a resume continues from
                if not same_tensors(oa.get(part), ob.get(part)):
                    problems.append(f"{b / 'avcap_optimizer.pt'}: its {part} state differs from the uninterrupted run's")
            sa, sb = (normalize(json.loads((x / "avcap_train_state.json").read_text()), d) for x, d in ((a, ref), (b, run)))
            if sa != sb:
                problems.append(f"{b}: avcap_train_state.json differs: "
                                f"{sorted(k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k))}")
        return problems

    verb = Verb("train", base, prepare=lambda run: run.mkdir(),
                command=lambda run: avcap("train", "--config", cfg, "--output-dir", out(run)),
                progress=lambda run: lines_of(out(run) / "train_log.jsonl"),
                in_final_phase=lambda run: lines_of(out(run) / "train_log.jsonl") >= verb.total,
                checkpointing=checkpointing, compare=compare)
    verb.reference()
    assert verb.total == 6 and sorted(p.name for p in (out(verb.ref) / "checkpoints").iterdir()) == \
        ["step_2", "step_4", "step_6"]
    return verb


def test_train_survives_sigkill_anywhere_and_ends_bit_identical(train_verb, kills):
    check(campaign(train_verb, kills), kills)


# ----------------------------------------------------------------------------- avcap bench build


@pytest.fixture(scope="module")
def bench_verb(tmp_path_factory):
    """4 synthetic videos x 12 questions; the annotation answerer an openai engine on a local
    chat-completions server (0.1 s per request, 2 at a time), the video answerer the world truth:
    96 answer records, 48 pairs."""
    base = tmp_path_factory.mktemp("rel-bench")
    subprocess.run(avcap("synth", "--out", base / "synth", "--videos", 4, "--seed", 3, "--train-videos", 0,
                         "--lingoqa-segments", 0, "--workers", 2), check=True, capture_output=True, env=ENV)
    source = base / "synth" / "eval" / "AV_CAPTION"
    oracle = Oracle(source, load_config(None).avcap.prompts.mcq_suffix)

    def ds(run: Path) -> Path:
        return run / "AV_CAPTION"

    with ChatServer(_policy(oracle), delay_s=0.1) as srv:
        srv.httpd.handle_error = lambda request, address: None  # a killed client's broken pipe is expected
        cfg = bench_config(base, srv.url)

        def prepare(run: Path) -> None:
            run.mkdir()
            shutil.copytree(source, ds(run), ignore=shutil.ignore_patterns("bench", "vqa.jsonl"))

        def compare(ref: Path, run: Path) -> list[str]:
            problems = []
            for name in ("answers.jsonl", "pairs.jsonl"):
                problems += compare_records(ds(ref) / "bench" / name, ds(run) / "bench" / name, ref, run, timing=frozenset())
            a, b = (json.loads((ds(x) / "bench" / "build.json").read_text()) for x in (ref, run))
            for k in ("pairs", "agreed", "review", "review_reasons", "answerers"):
                if a.get(k) != b.get(k):
                    problems.append(f"{ds(run) / 'bench/build.json'}: {k} {b.get(k)!r}, uninterrupted {a.get(k)!r}")
            return problems

        def progress(run: Path) -> int:
            return lines_of(ds(run) / "bench" / "answers.jsonl")

        verb = Verb("bench build", base, prepare=prepare,
                    command=lambda run: avcap("bench", "build", "--config", cfg, "--dataset", ds(run)),
                    progress=progress, in_final_phase=lambda run: progress(run) >= verb.total, compare=compare)
        verb.reference()
        assert verb.total == 2 * 12 * 4
        yield verb


def test_bench_build_survives_sigkill_anywhere(bench_verb, kills):
    check(campaign(bench_verb, kills), kills)


# ----------------------------------------------------------------------------- avcap curate


CURATE_TOML = """
[custom.dataset]
dataset_root = "data"
subdirectories = ["human_annotated", "cv_annotated", "vqa"]
[custom.vision]
nframes = 4
max_pixels = 6144
[avcap.curate.sources.human_annotated]
kind = "human_annotated"
path = "raw/human"
[avcap.curate.sources.cv_annotated]
kind = "cv_annotated"
path = "raw/cv"
[avcap.curate.sources.vqa]
kind = "vqa"
path = "raw/eval"
"""


@pytest.fixture(scope="module")
def curate_verb(tmp_path_factory) -> Verb:
    """24 human + 24 CV clips and a vqa source of 12 questions, plus unusable inputs (an orphan
    video, malformed JSON, a bad vqa line) so the report's problems are compared too."""
    base = tmp_path_factory.mktemp("rel-curate")
    make_source(base / "raw/human", "human_annotated", 24, seed=0,
                annotate=lambda i: {**HUMAN, "driving_difficulty": i % 5 + 1})
    make_source(base / "raw/cv", "cv_annotated", 24, seed=100)
    write_clip(base / "raw/human/videos/orphan.mp4", seed=7)
    write_clip(base / "raw/cv/videos/badjson.mp4", seed=8)
    (base / "raw/cv/annotations/badjson.json").write_text('{"event_start_frame": 40,')
    for v in range(3):
        write_clip(base / f"raw/eval/videos/e{v}.mp4", seed=200 + v)
    lines = [json.dumps(vqa_record(f"e{v}", f"q{q}", "ABCD"[(v + q) % 4])) for v in range(3) for q in range(4)]
    (base / "raw/eval/vqa.jsonl").write_text("\n".join(lines + ['{"key": "e0/q9", ']) + "\n")
    cfg = base / "recipe.toml"
    cfg.write_text(CURATE_TOML)
    subs = ("human_annotated", "cv_annotated", "vqa")

    def data(run: Path) -> Path:
        return run / "data"

    def progress(run: Path) -> int:
        return sum(lines_of(data(run) / s / ".progress.jsonl") for s in subs)

    def compare(ref: Path, run: Path) -> list[str]:
        problems = []
        for s in subs:
            a, b = data(ref) / s, data(run) / s
            problems += compare_records(a / ".progress.jsonl", b / ".progress.jsonl", ref, run, timing=frozenset())
            ca = {p.name: p.read_bytes() for p in (a / "conversations").iterdir()}
            cb = {p.name: p.read_bytes() for p in (b / "conversations").iterdir()} if (b / "conversations").is_dir() else {}
            problems += [f"{b}/conversations/{n}: lost" for n in ca.keys() - cb.keys()]
            problems += [f"{b}/conversations/{n}: not in the uninterrupted run" for n in cb.keys() - ca.keys()]
            problems += [f"{b}/conversations/{n}: changed" for n in ca.keys() & cb.keys() if ca[n] != cb[n]]
            if (b / "meta.json").read_bytes() != (a / "meta.json").read_bytes():
                problems.append(f"{b / 'meta.json'}: differs from the uninterrupted run's")
        ra = normalize(json.loads((data(ref) / "report.json").read_text()), ref)
        rb = normalize(json.loads((data(run) / "report.json").read_text()), run)
        for r in (ra, rb):  # `reused` counts what that very run found done: not a property of the records
            for counts in r["sources"].values():
                counts.pop("reused")
        if ra != rb:
            problems.append(f"{data(run) / 'report.json'}: differs from the uninterrupted run's")
        return problems

    verb = Verb("curate", base, prepare=lambda run: run.mkdir(),
                command=lambda run: avcap("curate", "--config", cfg, "--out", data(run)),
                progress=progress, in_final_phase=lambda run: progress(run) >= verb.total, compare=compare)
    verb.reference()
    assert verb.total == 25 + 25 + 13
    report = json.loads((data(verb.ref) / "report.json").read_text())
    assert len(report["problems"]) == 3
    return verb


def test_curate_survives_sigkill_anywhere(curate_verb, kills):
    check(campaign(curate_verb, kills), kills)


# ----------------------------------------------------------------------------- a kill between a temp file and its rename

INJECT = """
import os, runpy, signal, sys
hook, target, nth = sys.argv.pop(1), sys.argv.pop(1), int(sys.argv.pop(1))
real, seen = getattr(os, hook), [0]
def killed_first(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == target:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
setattr(os, hook, killed_first)
sys.argv[0] = "avcap"
runpy.run_module("avcap", run_name="__main__", alter_sys=True)
"""

KILL_AT_RENAME = [  # (verb, os function, the file or directory whose rename the kill precedes, which time)
    ("infer", "replace", "run.json", 1),  # the settings, written before the first record
    ("infer", "replace", "run.json", 2),  # the finished run's description, after the last record
    ("infer", "replace", "caption.jsonl", 1),  # the final merge's atomic rewrite
    ("bench build", "replace", "pairs.jsonl", 1),
    ("curate", "replace", "meta.json", 1),
    ("train", "rename", "step_4", 1),  # a complete checkpoint directory about to be renamed from step_4.tmp
]


@pytest.mark.parametrize("verb_name,hook,target,nth", KILL_AT_RENAME,
                         ids=[f"{v}-{t}-{n}" for v, _, t, n in KILL_AT_RENAME])
def test_a_kill_between_a_temp_file_and_its_rename_leaves_nothing_behind(request, verb_name, hook, target, nth):
    """A real SIGKILL (the process sends it to itself) at the one moment a random kill rarely hits:
    the temp file (directory) is complete and not yet renamed. The rerun must complete the same
    records and leave no temp file behind."""
    verb: Verb = request.getfixturevalue({"infer": "infer_verb", "bench build": "bench_verb", "curate": "curate_verb",
                                          "train": "train_verb"}[verb_name])
    run = verb.base / f"at-{hook}-{target}-{nth}"
    verb.prepare(run)
    argv = verb.command(run)
    cmd = [sys.executable, "-c", INJECT, hook, target, str(nth), *argv[3:]]  # argv = python -m avcap ...
    with open(verb.base / f"{run.name}.log", "w") as fh:
        proc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, env=ENV, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, (verb.base / f"{run.name}.log").read_text()[-2000:]
    left = [p for p in run.rglob("*") if TEMP_NAME.match(p.name)]
    assert left, "the kill left no temp file: the injection missed its moment"
    rc, log, _ = run_to_end(verb.command(run), verb.base / f"{run.name}.rerun.log")
    assert rc == 0, log[-3000:]
    problems = verb.compare(verb.ref, run) + leftovers(run)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- bad inputs, end to end


def one_line_naming(output: str, where: str, *says: str) -> list[str]:
    """The output must hold exactly one line naming `where`, and that line must say `says`."""
    lines = [line for line in output.splitlines() if where in line]
    if len(lines) != 1:
        return [f"{len(lines)} lines name {where!r} (expected one): {lines[:3]}"]
    return [f"the line naming {where!r} does not say {s!r}: {lines[0]!r}" for s in says if s not in lines[0]]


@dataclass
class BadRun:
    rc: int
    output: str
    paths: dict[str, Any]


def _infer_bad(varied_model_dir, infer_data_dir, tmp_path_factory, started: list[Started]) -> Callable[[], BadRun]:
    """conftest's AV_CAPTION (its av99999.mp4 is a corrupt file) plus four unusable vqa.jsonl lines
    and a question about a video that does not exist; one `avcap infer` run."""
    from avcap.bench.pool import load_pool
    from avcap.bench.select import select_questions

    base = tmp_path_factory.mktemp("bad-infer")
    shutil.copytree(infer_data_dir, base / "data")
    av = base / "data" / "AV_CAPTION"
    vqa = av / "vqa.jsonl"
    good = vqa.read_text().splitlines()
    q = select_questions(load_pool(), "av00000", seed=0, questions_per_video=12)[5]  # not among its 3 questions
    rec = {"key": f"av00000/{q.id}", "video_id": "av00000", "question_id": q.id, "category": q.category,
           "question": q.question, "choices": dict(q.choices), "answer": "A", "provenance": "agreed"}
    bad = {
        "answer E": json.dumps({**rec, "answer": "E"}),
        "not JSON": '{"key": "av00000/' + q.id + '", "video_id": ',
        "choices a list": json.dumps({**rec, "choices": list(q.choices.values())}),
        "choices missing": json.dumps({k: v for k, v in rec.items() if k != "choices"}),
        "missing video": json.dumps({**rec, "key": f"av55555/{q.id}", "video_id": "av55555"}),
    }
    vqa.write_text("\n".join(good + list(bad.values())) + "\n")
    lineno = {name: len(good) + 1 + i for i, name in enumerate(bad)}
    cfg = infer_config(base / "recipe.toml", varied_model_dir, base / "data")
    out = base / "out"
    run = Started(avcap("infer", "--model-name", "tiny", "--dataset", "AV_CAPTION", "--config", cfg,
                        "--outputs-dir", out, "--no-progress"), base / "infer.log", started)
    return lambda: BadRun(*run.done(), {"vqa": vqa, "lineno": lineno, "good": [json.loads(x)["key"] for x in good],
                                        "out": out / "tiny" / "base" / "AV_CAPTION", "videos": av / "videos"})


def _infer_vqa_line(name: str, field: str):
    def check(r: BadRun) -> list[str]:
        where = f"{r.paths['vqa']}:{r.paths['lineno'][name]}:"
        problems = one_line_naming(r.output, where, field)
        recorded = json.loads((r.paths["out"] / "run.json").read_text())["input_problems"]
        if sum(p.startswith(where) for p in recorded) != 1:
            problems.append(f"run.json input_problems does not hold {where}: {recorded}")
        return problems
    return check


def _infer_video(video_id: str):
    def check(r: BadRun) -> list[str]:
        from avcap.core.records import read_records

        path = r.paths["videos"] / f"{video_id}.mp4"
        problems = one_line_naming(r.output, str(path))
        d = r.paths["out"]
        failed = [x for t in ("caption", "mcq") for x in read_records(d / f"{t}.jsonl") if x["video_id"] == video_id]
        if not failed or not all(x["error"] and x["error"].startswith(str(path)) and "\n" not in x["error"] for x in failed):
            problems.append(f"the error records of {video_id} do not name {path} in one line: {failed}")
        timings = json.loads((d / "run.json").read_text())["timings"]
        if sum(timings[t]["failed"] for t in ("caption", "mcq")) != 3 + 1 + 1:  # av99999: caption + 3 mcq; av55555: 1 mcq
            problems.append(f"run.json timings do not count the failed requests: {timings}")
        return problems
    return check


def _curate_bad(tmp_path_factory, started: list[Started]) -> Callable[[], BadRun]:
    """A human source with 2 good clips plus malformed JSON, a wrong schema and a 150:1 clip; a vqa
    source with 2 good lines, an identical duplicate and a conflicting duplicate; one `avcap curate`."""
    base = tmp_path_factory.mktemp("bad-curate")
    human = make_source(base / "raw/human", "human_annotated", 2, seed=0)
    write_clip(human / "videos/badjson.mp4", seed=3)
    (human / "annotations/badjson.json").write_text('{"weather": "Sunny",')
    write_clip(human / "videos/schema.mp4", seed=4)
    (human / "annotations/schema.json").write_text(json.dumps({k: v for k, v in HUMAN.items() if k != "safety_analysis"}))
    write_clip(human / "videos/strip.mp4", seed=5, frames=4, size=(10, 1504))  # 150:1
    (human / "annotations/strip.json").write_text(json.dumps(HUMAN))
    write_clip(base / "raw/eval/videos/e1.mp4", seed=6)
    lines = [vqa_record("e1", "q1", "B"), vqa_record("e1", "q2", "C"), vqa_record("e1", "q1", "B"),
             vqa_record("e1", "q3", "A"), vqa_record("e1", "q3", "D")]
    (base / "raw/eval/vqa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = base / "recipe.toml"
    cfg.write_text(CURATE_TOML.replace('subdirectories = ["human_annotated", "cv_annotated", "vqa"]',
                                       'subdirectories = ["human_annotated", "vqa"]')
                   .replace('[avcap.curate.sources.cv_annotated]\nkind = "cv_annotated"\npath = "raw/cv"\n', ""))
    run = Started(avcap("curate", "--config", cfg), base / "curate.log", started)
    return lambda: BadRun(*run.done(), {"raw": base / "raw", "data": base / "data"})


def _curate(file: str, *says: str):
    def check(r: BadRun) -> list[str]:
        where = str(r.paths["raw"] / file)
        problems = one_line_naming(r.output, where, *says)
        report = json.loads((r.paths["data"] / "report.json").read_text())
        hits = [p for p in report["problems"] if p["file"] == where]
        if len(hits) != 1 or not all(s in hits[0]["reason"] for s in says):
            problems.append(f"report.json problems do not hold {where} once with {says}: {hits}")
        counts = {k: (v["written"], v["unusable"]) for k, v in report["sources"].items()}
        if counts != {"human_annotated": (2, 3), "vqa": (2, 3)}:  # the rest is curated, the rest is counted
            problems.append(f"report.json counts {counts}, expected human (2 written, 3 unusable), vqa (2, 3)")
        return problems
    return check


def _train_bad(tiny_model_dir, tmp_path_factory, started: list[Started]) -> Callable[[], BadRun]:
    """4 curated samples, three of them broken after curation (conversation file gone, a
    conversation that is not a list of messages, a meta.json sample without `conversation`); one
    `avcap train` step over all four."""
    from test_curate import curated_human_source

    base = tmp_path_factory.mktemp("bad-train")
    cfg = curated_human_source(base, f"""
[train]
output_dir = "run"
epoch = 1
train_batch_per_replica = 4
[train.train_policy]
mini_batch = 1
dataloader_num_workers = 1
[train.ckpt]
save_freq = 1
[policy]
model_name_or_path = "{tiny_model_dir}"
""", n=4)
    src = base / "data/human_annotated"
    meta = json.loads((src / "meta.json").read_text())
    convs = [src / s["conversation"] for s in meta["samples"]]
    convs[0].unlink()
    convs[1].write_text(json.dumps({"role": "user", "content": "hello"}))
    del meta["samples"][2]["conversation"]
    (src / "meta.json").write_text(json.dumps(meta))
    run = Started(avcap("train", "--config", cfg), base / "train.log", started)
    return lambda: BadRun(*run.done(), {"conv": convs, "meta": src / "meta.json", "run": base / "run"})


def _train(where: Callable[[dict], str], reason: str, *says: str):
    def check(r: BadRun) -> list[str]:
        from avcap.core.records import read_records

        problems = one_line_naming(r.output, f"({reason}): {where(r.paths)}", *says)
        log = read_records(r.paths["run"] / "train_log.jsonl")
        counts = log[-1]["samples_skipped_by_reason_total"] if log else {}
        if counts != {"missing_conversation": 1, "bad_conversation": 1, "bad_meta_sample": 1}:
            problems.append(f"train_log.jsonl counts {counts}")
        state = r.paths["run"] / "checkpoints/step_1/avcap_train_state.json"
        if not state.is_file() or json.loads(state.read_text())["samples_skipped_by_reason"] != counts:
            problems.append(f"{state}: missing, or its samples_skipped_by_reason is not {counts}")
        return problems
    return check


def _config_bad(tmp_path_factory, infer_data_dir, started: list[Started]) -> Callable[[], dict[str, BadRun]]:
    """A recipe with an unknown key, given to every verb: the config is the whole job."""
    base = tmp_path_factory.mktemp("bad-config")
    data = base / "AV_CAPTION"
    shutil.copytree(infer_data_dir / "AV_CAPTION", data)
    cfg = base / "recipe.toml"
    cfg.write_text(f'[train]\noptm_lrr = 1e-4\n[avcap.datasets.AV_CAPTION]\nkind = "av_caption"\nroot = "{data}"\n')
    written = {"infer": base / "out", "train": base / "run", "curate": base / "data", "bench build": data / "bench"}
    runs = {verb: Started(avcap(*args, "--config", cfg), base / f"{verb}.log", started)
            for verb, args in {"infer": ["infer", "--dataset", "AV_CAPTION", "--outputs-dir", written["infer"]],
                               "train": ["train", "--output-dir", written["train"]],
                               "curate": ["curate", "--out", written["curate"]],
                               "bench build": ["bench", "build", "--dataset", data]}.items()}
    return lambda: {verb: BadRun(*run.done(), {"cfg": cfg, "written": written[verb]}) for verb, run in runs.items()}


@pytest.fixture(scope="module")
def bad_runs(varied_model_dir, infer_data_dir, tiny_model_dir, tmp_path_factory) -> dict[str, Any]:
    """The table's runs (one infer, one curate, one train, four with a bad config): independent of one
    another, each started as soon as its inputs are written, then all awaited."""
    started: list[Started] = []
    try:
        finish = {"config_bad": _config_bad(tmp_path_factory, infer_data_dir, started),
                  "infer_bad": _infer_bad(varied_model_dir, infer_data_dir, tmp_path_factory, started),
                  "curate_bad": _curate_bad(tmp_path_factory, started),
                  "train_bad": _train_bad(tiny_model_dir, tmp_path_factory, started)}
        return {name: fn() for name, fn in finish.items()}
    finally:
        for run in started:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


@pytest.fixture(scope="module")
def infer_bad(bad_runs) -> BadRun:
    return bad_runs["infer_bad"]


@pytest.fixture(scope="module")
def curate_bad(bad_runs) -> BadRun:
    return bad_runs["curate_bad"]


@pytest.fixture(scope="module")
def train_bad(bad_runs) -> BadRun:
    return bad_runs["train_bad"]


@pytest.fixture(scope="module")
def config_bad(bad_runs) -> dict[str, BadRun]:
    return bad_runs["config_bad"]


BAD_INPUTS = [  # (case, fixture, expected exit code, check of that run's output and records)
    ("infer vqa answer E", "infer_bad", 0, _infer_vqa_line("answer E", "answer")),
    ("infer vqa not JSON", "infer_bad", 0, _infer_vqa_line("not JSON", "malformed JSON")),
    ("infer vqa choices a list", "infer_bad", 0, _infer_vqa_line("choices a list", "choices")),
    ("infer vqa choices missing", "infer_bad", 0, _infer_vqa_line("choices missing", "choices")),
    ("infer corrupt video", "infer_bad", 0, _infer_video("av99999")),
    ("infer missing video", "infer_bad", 0, _infer_video("av55555")),
    ("curate malformed annotation JSON", "curate_bad", 0, _curate("human/annotations/badjson.json", "malformed JSON")),
    ("curate wrong schema", "curate_bad", 0, _curate("human/annotations/schema.json", "wrong schema", "safety_analysis")),
    ("curate duplicated vqa key", "curate_bad", 0, _curate("eval/vqa.jsonl:3", "duplicate of line 1")),
    ("curate conflicting vqa key", "curate_bad", 0, _curate("eval/vqa.jsonl:5", "different content")),
    ("curate 150:1 clip", "curate_bad", 0, _curate("human/videos/strip.mp4", "unusable video", "short side")),
    ("train missing conversation file", "train_bad", 0,
     _train(lambda p: p["conv"][0], "missing_conversation", "no such file")),
    ("train conversation of wrong shape", "train_bad", 0,
     _train(lambda p: p["conv"][1], "bad_conversation", "expected a non-empty list of messages")),
    ("train meta.json sample without conversation", "train_bad", 0,
     _train(lambda p: p["meta"], "bad_meta_sample", "samples[2].conversation")),
] + [
    (f"config unknown key ({verb})", "config_bad", 2, verb) for verb in ("infer", "train", "curate", "bench build")
]


@pytest.mark.parametrize("case,fixture,exit_code,check", BAD_INPUTS, ids=[c for c, *_ in BAD_INPUTS])
def test_a_bad_input_is_one_line_naming_it_counted_and_not_fatal(request, case, fixture, exit_code, check):
    """Exit 0 with the rest done and the input counted in the run's record; or, when the input is the
    whole job (the config), exit 2 with one line and nothing written."""
    r = request.getfixturevalue(fixture)
    if fixture == "config_bad":
        r = r[check]
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.rc == 2 and "Traceback" not in r.output, r.output[-3000:]
        assert lines == [f"error: {r.paths['cfg']}: train.optm_lrr: unknown key (did you mean 'optm_lr'?)"], lines
        assert not r.paths["written"].exists(), f"{r.paths['written']} was written"
        return
    assert r.rc == exit_code and "Traceback" not in r.output, r.output[-3000:]
    problems = check(r)
    assert not problems, "\n".join(problems) + "\n--- output ---\n" + r.output[-3000:]
