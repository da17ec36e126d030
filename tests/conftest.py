"""Shared pytest fixtures (keep small; clips are generated once per session with avcap.video.write_video)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Triton kernels (avcap.engines.hf.triton_decode) run on CPU tensors through Triton's interpreter.
# It has to be chosen before Triton is first imported: triton.language's own helpers are
# decorated then. Not on a machine with an NVIDIA GPU, where it would also turn torch.compile's
# own Triton kernels into interpreted ones: there the kernel tests skip, and
# benchmarks/bench_decode_attention.py checks the kernel on the GPU.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

_CACHE: list[str] = []
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) as a module, for tests of its pure parts and smoke runs."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_configure(config):
    """avcap's caches (compiled graphs: avcap.core.compile_cache) in a folder of this session, not the
    user's ~/.cache/avcap; processes the tests start inherit it. Under pytest-xdist each worker gets a
    folder of its own (a worker inherits the controller's environment: the folder it made is
    replaced), so a worker's tests see the caches a serial run's would, never another worker's."""
    ours = os.environ.get("_AVCAP_TEST_CACHE_DIR")
    if "AVCAP_CACHE_DIR" not in os.environ or (os.environ.get("PYTEST_XDIST_WORKER")
                                               and os.environ["AVCAP_CACHE_DIR"] == ours):
        _CACHE.append(tempfile.mkdtemp(prefix="avcap-test-cache-"))
        os.environ["AVCAP_CACHE_DIR"] = os.environ["_AVCAP_TEST_CACHE_DIR"] = _CACHE[0]
    _xdist_worker_threads()


# The suite runs on pytest-xdist workers, one test file per worker at a time (pyproject.toml's
# addopts: --dist loadfile), the files handed out in this order: the longest first (seconds per file
# on the 2-core box, serial), so that the last files to start are short ones and no worker waits
# alone at the end on a long one. Files not named here follow in collection order.
LONGEST_FILES_FIRST = (
    "test_demo.py",  # ~250 s: one test, the whole `avcap demo --quick`
    "test_reliability.py",  # ~250
    "test_train_compile.py",  # ~180
    "test_label_ray.py",  # ~135
    "test_compile_cache.py",  # ~110
    "test_engine_fast.py",  # ~115
    "test_bench_multi_gpu.py",  # ~110
    "test_train_precision.py",
    "test_infer.py",  # ~85
    "test_train.py",  # ~80
    "test_train_lean.py",  # ~80
    "test_sampling_linspace.py",  # ~55
    "test_engines.py",  # ~40
    "test_openai_server.py",  # ~35
    "test_serve.py",  # ~35
    "test_bench.py",  # ~30
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def _xdist_worker_threads() -> None:
    """On an xdist worker, torch's threads are this worker's share of the cores (2 workers on 2 cores:
    1 each), so that two workers' torch work does not oversubscribe the box: in the worker itself and,
    through OMP_NUM_THREADS (unless set already), in every process its tests start, so that a test
    comparing an in-process run with a child process's (bit-identical weights) compares runs on
    the same number of threads, as a serial run does."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_unconfigure(config):
    for path in _CACHE:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("AVCAP_CACHE_DIR", None)
        os.environ.pop("_AVCAP_TEST_CACHE_DIR", None)


def pytest_addoption(parser):
    parser.addoption("--many", action="store_true", default=False,
                     help="tests/test_reliability.py: the full SIGKILL campaign (15 kills per verb instead of 2)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen3-VL checkpoint directory (avcap tiny-model, seed 0), built once per session."""
    from avcap.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)


def _make_frames(n: int, height: int, width: int, seed: int = 0):
    """Moving gradients plus noise: enough texture for real P/B-frames, deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        f = np.stack([(xx * 3 + i * 5) % 256, (yy * 2 + i * 3) % 256, (xx + yy + i * 7) % 256], -1)
        f = f + rng.integers(0, 24, f.shape)
        yield np.clip(f, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def h264_clip(tmp_path_factory):
    """A 64x48, 30 fps, 48-frame H.264 MP4 (GOP 8, B-frames on)."""
    from avcap.video import write_video

    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_video(path, _make_frames(48, 48, 64), 30, gop=8)
    return path


@pytest.fixture(scope="session")
def make_frames():
    """make_frames(n, height, width, seed=0) -> iterator of H x W x 3 uint8 test frames."""
    return _make_frames


def _varied_copy(src, dest, seed: int = 0):
    """A copy of the model directory `src` at `dest` with larger random weights (`seed`): its greedy
    output depends on the video and the prompt."""
    import shutil

    import torch
    from transformers import AutoModelForImageTextToText

    shutil.copytree(src, dest)
    model = AutoModelForImageTextToText.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / p.shape[-1] ** 0.5)
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def varied_copy():
    """varied_copy(src, dest, seed) -> dest: a model directory with other random weights."""
    return _varied_copy


@pytest.fixture(scope="session")
def varied_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights (seed 0): its greedy output depends on the video
    and the prompt, so tests that compare outputs (batching, resume, shards) can tell them apart."""
    return _varied_copy(tiny_model_dir, tmp_path_factory.mktemp("varied-model") / "model", 0)


@pytest.fixture(scope="session")
def infer_data_dir(tmp_path_factory):
    """A small synthetic evaluation set (`avcap.demo.synth.synthesize`, 96x64, 3 s at 8 fps):
    AV_CAPTION with 4 clips plus one corrupt file `av99999.mp4`, and a vqa.jsonl of 3 pool
    questions per clip (world-truth answers; the corrupt clip gets 3 too); LINGOQA with 3 segments."""
    import json

    from avcap.bench.pool import load_pool
    from avcap.bench.select import select_questions
    from avcap.demo.truth import answer
    from avcap.core.records import read_json
    from avcap.demo.synth import synthesize
    from avcap.demo.synth.scene import SceneRecord

    out = tmp_path_factory.mktemp("infer-data")
    synthesize(out, videos=4, train_videos=0, lingoqa_segments=3, seed=0, width=96, height=64, seconds=3.0, fps=8)
    av = out / "eval" / "AV_CAPTION"
    (av / "videos" / "av99999.mp4").write_bytes(b"this is not a video")
    pool = load_pool()
    with open(av / "vqa.jsonl", "w", encoding="utf-8") as fh:
        for vid in sorted(p.stem for p in (av / "videos").glob("*.mp4")):
            world = av / "world" / f"{vid}.json"
            record = SceneRecord.model_validate(read_json(world)) if world.exists() else None
            for q in select_questions(pool, vid, seed=0, questions_per_video=12)[:3]:
                fh.write(json.dumps({
                    "key": f"{vid}/{q.id}", "video_id": vid, "question_id": q.id, "category": q.category,
                    "question": q.question, "choices": q.choices,
                    "answer": answer(record, q.id) if record else "A", "provenance": "agreed",
                }) + "\n")
    return out / "eval"


@pytest.fixture(scope="session")
def private_mounts():
    """`unshare` arguments that run a shell in a private mount namespace where it may mount a small
    tmpfs (a real full disk, a real read-only directory); skips where the machine allows neither
    `unshare -m` (root) nor `unshare -rm` (user namespaces)."""
    import shutil
    import subprocess

    if shutil.which("unshare"):
        for args in (["unshare", "-m"], ["unshare", "-rm"]):
            probe = subprocess.run([*args, "sh", "-c", "mount -t tmpfs -o size=1k tmpfs /mnt 2>/dev/null || "
                                    "mount -t tmpfs -o size=1k tmpfs /tmp"], capture_output=True)
            if probe.returncode == 0:
                return args
    pytest.skip("needs a private mount namespace (unshare -m as root, or unshare -rm) to mount a small tmpfs")


@pytest.fixture
def interpreted_triton_decode():
    """avcap.engines.hf.triton_decode, its kernels run by Triton's interpreter on CPU tensors."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 is not set (a GPU machine: benchmarks/bench_decode_attention.py checks the kernel there)")
    from avcap.engines.hf import triton_decode

    return triton_decode


# ----------------------------------------------------------------------------- training (tests/test_train*.py)
# Session fixtures, so that the modules of tests/test_train*.py share one of each instead of building
# their own: each module's runs go to runs/<names of its own> under `curated`'s root, and a test that
# trains `model_and_batches` trains a deep copy of it.


@pytest.fixture(scope="session")
def curated(tmp_path_factory):
    """Two curated sources (human 2, cv 2): 4-frame clips at 64x96, served at 4 frames of 64x96."""
    from test_curate import HUMAN, make_source, write_config

    from avcap.core.config import load_config
    from avcap.data.sources import curate

    root = tmp_path_factory.mktemp("train-data")
    make_source(root / "raw/human", "human_annotated", 2, seed=0,
                annotate=lambda i: {**HUMAN, "weather": ["Sunny", "Overcast"][i]})
    make_source(root / "raw/cv", "cv_annotated", 2, seed=50)
    body = """
[custom.dataset]
dataset_root = "data/train"
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
"""
    cfg = write_config(root / "curate.toml", body)
    report = curate(load_config(cfg), echo=lambda s: None)
    assert not report.problems
    return root, body


@pytest.fixture(scope="session")
def uninterrupted(curated, tiny_model_dir):
    """4 samples, global batch 2 (2 per rank, 1 worker process): 2 steps per epoch, 2 epochs (runs/full)."""
    from test_train import train_config

    from avcap.core.config import load_config
    from avcap.train.loop import train

    cfg = load_config(train_config(curated, tiny_model_dir, "full", per_rank=2, workers=1, gc=True))
    lines: list[str] = []
    written = train(cfg, echo=lines.append)
    return cfg.resolve(cfg.train.output_dir), written, lines


@pytest.fixture(scope="session")
def model_and_batches(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights (loss and gradients depend on the video), and two
    micro-batches: three samples of one video size, and two videos of different sizes (unequal
    attention groups in the vision tower)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from avcap.train.data import Collator, encode
    from avcap.video import write_video

    d = tmp_path_factory.mktemp("compile-clips")
    clips = []
    for k, (h, w) in enumerate(((64, 96), (64, 128))):
        yy, xx = np.mgrid[0:h, 0:w]
        frames = (np.stack([(xx * 3 + i * 5 + k) % 256, (yy * 2 + i * 3) % 256, (xx + yy + i * 7) % 256], -1)
                  .astype(np.uint8) for i in range(16))
        write_video(d / f"c{k}.mp4", frames, 8, gop=8)
        clips.append(str(d / f"c{k}.mp4"))
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    collate = Collator(proc.tokenizer.pad_token_id)

    def conv(clip, i):
        return [{"role": "user", "content": [{"type": "video", "video": clip, "nframes": 4},
                                             {"type": "text", "text": "Describe the scene."}]},
                {"role": "assistant", "content": "A red car waits at the light" + " and then goes" * i}]

    same = collate([{**encode(proc, conv(clips[0], i)), "index": i} for i in range(3)])
    mixed = collate([{**encode(proc, conv(c, i)), "index": i} for i, c in enumerate(clips)])
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / p.shape[-1] ** 0.5)
    model.config.use_cache = False
    return model, same, mixed
