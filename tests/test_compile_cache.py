"""avcap.core.compile_cache: compiled graphs kept across processes, one folder per library versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avcap.core.compile_cache import cache_dir_for, compile_context, workload_id

pytest.importorskip("torch")

CHILD = r"""
import json, sys
import torch
from avcap.core.compile_cache import compile_counters, use_compile_cache
where = use_compile_cache("cpu")
f = torch.compile(lambda x: torch.nn.functional.gelu(x * 3.0 + 1.0).sum(-1))
f(torch.randn(4, 8))
print(json.dumps({"where": where, "counters": compile_counters()}))
"""


# one compiled function called at two batch sizes, as a run with a small first batch calls its blocks
SHAPES = r"""
import json, sys
import torch
from torch._dynamo.utils import counters
from avcap.core.compile_cache import use_compile_cache
where = use_compile_cache("cpu", sys.argv[1] if len(sys.argv) > 1 else None)
f = torch.compile(lambda x: torch.nn.functional.gelu(x * 3.0 + 1.0).sum(-1))
f(torch.randn(2, 8))
f(torch.randn(5, 8))
later = use_compile_cache("cpu", sys.argv[2]) if len(sys.argv) > 2 else {}  # a second workload, same process
print(json.dumps({"where": where, "graphs": int(counters["stats"]["unique_graphs"]),
                  "later": later.get("shape_profile")}))
"""


def _start(env_extra: dict[str, str], tmp_path: Path, code: str = CHILD, args: tuple[str, ...] = ()):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHINDUCTOR_CACHE_DIR", "AVCAP_COMPILE_CACHE", "TORCH_COMPILE_JOB_ID")}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _together(*procs: subprocess.Popen) -> list[dict]:
    """The JSON line each child printed, in order. Children that do not depend on one another run at
    once (each is mostly one core's imports and C++ compilation; the box has two)."""
    try:
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-2000:]
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _child(env_extra: dict[str, str], tmp_path: Path, code: str = CHILD, args: tuple[str, ...] = ()) -> dict:
    return _together(_start(env_extra, tmp_path, code, args))[0]


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    env = {"AVCAP_CACHE_DIR": str(tmp_path / "cache")}
    first = _child(env, tmp_path)
    second = _child(env, tmp_path)
    assert first["where"]["source"] == "avcap"
    folder = Path(first["where"]["dir"])
    assert folder.parent == tmp_path / "cache" / "compile" and folder.is_dir()
    assert first["where"]["key"]["torch"] and "transformers" in first["where"]["key"]
    assert first["counters"]["fxgraph_cache_miss"] >= 1 and first["counters"]["fxgraph_cache_hit"] == 0
    assert second["where"]["dir"] == first["where"]["dir"]
    assert second["counters"]["fxgraph_cache_hit"] >= 1 and second["counters"]["fxgraph_cache_miss"] == 0


def test_other_versions_or_another_gpu_get_another_folder(tmp_path):
    base = {"torch": "2.11.0+cu130", "triton": "3.6.0", "transformers": "5.17.0", "avcap": "0.1.0",
            "python": "3.12.3", "machine": "x86_64", "cuda": "13.0", "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0"}
    here = cache_dir_for(base, tmp_path)
    assert cache_dir_for(dict(base), tmp_path) == here
    assert here.name.startswith("2.11.0_cu130-")
    for field, other in (("torch", "2.11.1+cu130"), ("transformers", "5.25.0"), ("triton", "3.6.1"),
                         ("avcap", "0.2.0"), ("gpu", "NVIDIA H200"), ("capability", "10.0")):
        assert cache_dir_for({**base, field: other}, tmp_path) != here, field


def test_the_users_folder_or_off_is_respected(tmp_path):
    mine = tmp_path / "mine"
    cache = str(tmp_path / "cache")
    got, off = _together(_start({"TORCHINDUCTOR_CACHE_DIR": str(mine), "AVCAP_CACHE_DIR": cache}, tmp_path),
                         _start({"AVCAP_COMPILE_CACHE": "off", "AVCAP_CACHE_DIR": cache}, tmp_path))
    assert got["where"] == {"source": "TORCHINDUCTOR_CACHE_DIR", "dir": str(mine)}
    assert off["where"]["source"] == "off" and not (tmp_path / "cache").exists()


def test_a_workload_compiles_shape_generic_at_once_after_its_first_process(tmp_path):
    env = {"AVCAP_CACHE_DIR": str(tmp_path / "cache")}
    first = _child(env, tmp_path, SHAPES, ("avcap-infer-aaaa", "avcap-train-cccc"))
    # after the first (its profile and graphs are on disk), three processes at once
    second, other, unnamed = _together(_start(env, tmp_path, SHAPES, ("avcap-infer-aaaa",)),
                                       _start(env, tmp_path, SHAPES, ("avcap-infer-bbbb",)),
                                       _start(env, tmp_path, SHAPES))
    assert first["graphs"] == 2 and first["where"]["shape_profile"] == {
        "job_id": "avcap-infer-aaaa", "source": "avcap", "enabled": True, "found": False}
    assert first["later"] == {"job_id": "avcap-infer-aaaa", "source": "an earlier workload of this process",
                              "enabled": True, "found": False}
    assert second["graphs"] == 1 and second["where"]["shape_profile"]["found"] is True
    assert other["graphs"] == 2 and other["where"]["shape_profile"]["found"] is False
    assert unnamed["graphs"] == 2 and "shape_profile" not in unnamed["where"]
    assert list((Path(first["where"]["dir"]) / "dynamo").glob("code_state_avcap-infer-aaaa*.pkl"))


# as `avcap infer` starts: a frame thread compiles the colour conversion before the engine names its workload
EARLY = r"""
import json, sys, threading
import torch
from torch._dynamo.utils import counters
from avcap.core.compile_cache import use_compile_cache
early = torch.compile(lambda x: (x * 2 + 1).clamp(0, 9))
thread = threading.Thread(target=early, args=(torch.randn(3, 4),))
thread.start(); thread.join()
before = int(counters["stats"]["unique_graphs"])
where = use_compile_cache("cpu", "avcap-infer-early")
f = torch.compile(lambda x: torch.nn.functional.gelu(x * 3.0 + 1.0).sum(-1))
f(torch.randn(2, 8))
f(torch.randn(5, 8))
print(json.dumps({"profile": where["shape_profile"], "graphs": int(counters["stats"]["unique_graphs"]) - before}))
"""


def test_the_profile_is_read_when_another_thread_compiled_before_the_workload_was_named(tmp_path):
    """torch reads the profile at a process's first compile, under the job id of the thread compiling;
    a frame thread that compiles first has none. avcap reads it again once it names the workload, so
    the second process still compiles the block once, shape-generic (without: static, then generic)."""
    env = {"AVCAP_CACHE_DIR": str(tmp_path / "cache")}
    first = _child(env, tmp_path, EARLY)
    second = _child(env, tmp_path, EARLY)
    assert first["graphs"] == 2 and second["graphs"] == 1
    assert second["profile"]["found"] is True and second["profile"]["read_late"] is True


def test_a_profile_that_cannot_be_read_late_is_said_and_leaves_torchs_state_as_it_was(monkeypatch):
    from torch._dynamo import pgo

    from avcap.core.compile_cache import read_profile_late

    early = {"an early compile": "its entry"}
    monkeypatch.setattr(pgo, "_CODE_STATE", early)

    def broken():
        raise OSError("profile unreadable")

    monkeypatch.setattr(pgo, "get_code_state", broken)
    with pytest.warns(UserWarning, match="could not read the shape profile.*profile unreadable"):
        assert read_profile_late() == "OSError: profile unreadable"
    assert pgo._CODE_STATE is early
    monkeypatch.setattr(pgo, "_CODE_STATE", None)
    assert read_profile_late() is None  # nothing compiled yet: torch reads it itself at the first compile


# a block as transformers 5 makes them (its class's forward wrapped in a closure), compiled by avcap's
# regional compilation and called at two sizes, as a vision block meets prefill chunks of 8 and of 4 videos
BLOCKS = r"""
import json, sys
import torch
from torch._dynamo.utils import counters
from transformers.modeling_layers import GradientCheckpointingLayer
from avcap.core.compile_cache import use_compile_cache
from avcap.models.qwen3_vl.compile import compile_blocks

class Block(GradientCheckpointingLayer):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.nn.functional.gelu(self.lin(x)) + x

class Tower(torch.nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x

use_compile_cache("cpu", "avcap-infer-blocks")
torch.manual_seed(0)
tower = Tower().eval()
compile_blocks(tower, pack_vision=False, linear_patch_embed=False)
with torch.no_grad():
    tower(torch.randn(6, 8)), tower(torch.randn(3, 8))
print(json.dumps({"graphs": int(counters["stats"]["unique_graphs"])}))
"""


def test_a_compiled_blocks_shape_profile_is_found_by_the_next_process(tmp_path):
    """transformers' checkpointing wrapper is a closure; torch keys a closure's profile by a hash that
    changes in every process. avcap compiles each block class through a function of its own, so the
    second process compiles a block once, shape-generic, not once static and again dynamic."""
    env = {"AVCAP_CACHE_DIR": str(tmp_path / "cache")}
    assert [_child(env, tmp_path, BLOCKS)["graphs"] for _ in range(2)] == [2, 1]


def test_a_job_id_the_user_set_is_kept_and_the_profile_can_be_turned_off(tmp_path):
    env = {"AVCAP_CACHE_DIR": str(tmp_path / "cache"), "TORCH_COMPILE_JOB_ID": "mine",
           "TORCH_DYNAMO_AUTOMATIC_DYNAMIC_LOCAL_PGO": "0"}
    runs = [_child(env, tmp_path, SHAPES, ("avcap-infer-aaaa",)) for _ in range(2)]
    assert runs[1]["where"]["shape_profile"] == {"job_id": "mine", "source": "user", "enabled": False, "found": False}
    assert [r["graphs"] for r in runs] == [2, 2]


def test_the_workload_is_the_architecture_and_its_use_not_the_checkpoint():
    cfg = {"_name_or_path": "/ckpt/step_10", "transformers_version": "5.17.0", "model_type": "qwen3_vl",
           "id2label": {0: "LABEL_0"},  # transformers' configs hold int keys
           "text_config": {"hidden_size": 4096, "_name_or_path": "x"}, "vision_config": {"depth": 27}}
    same = {**cfg, "_name_or_path": "/ckpt/step_20", "transformers_version": "5.25.0",
            "text_config": {"hidden_size": 4096, "_name_or_path": "y"}}
    assert workload_id("infer", cfg) == workload_id("infer", same)
    assert workload_id("infer", cfg).startswith("avcap-infer-")
    assert workload_id("train", cfg) != workload_id("infer", cfg)
    assert workload_id("infer", {**cfg, "text_config": {"hidden_size": 2048}}) != workload_id("infer", cfg)


def test_compile_settings_reach_the_thread_that_runs_the_model():
    """torch keeps a compile setting made in code per thread: one made where the engine loads never
    reached the thread that generates (seen: the profile was never written, the recompile limit
    stayed 8). `compile_context` applies them where it is entered."""
    import threading

    import torch
    import torch._dynamo

    state = {"source": "avcap", "shape_profile": {"job_id": "avcap-infer-x", "source": "avcap"}}
    seen: dict = {}

    def model_thread():
        seen["before"] = (torch.compiler.config.job_id, torch._dynamo.config.recompile_limit)
        with compile_context(state, recompile_limit=80):
            seen["inside"] = (torch.compiler.config.job_id, torch._dynamo.config.recompile_limit)
        with compile_context({**state, "shape_profile": {"job_id": "theirs", "source": "user"}}):
            seen["user"] = torch.compiler.config.job_id
        seen["after"] = (torch.compiler.config.job_id, torch._dynamo.config.recompile_limit)

    t = threading.Thread(target=model_thread)
    t.start()
    t.join()
    assert seen["inside"] == ("avcap-infer-x", 80)
    assert seen["before"] == seen["after"] and seen["after"][0] != "avcap-infer-x"
    assert seen["user"] == seen["before"][0]  # a user's job id is the environment's, not avcap's to patch
