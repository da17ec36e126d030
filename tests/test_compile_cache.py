"""avcap.core.compile_cache: compiled graphs kept across processes, one folder per library versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avcap.core.compile_cache import cache_dir_for

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


def _child(env_extra: dict[str, str], tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "AVCAP_COMPILE_CACHE")}
    env.update(env_extra)
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


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
    got = _child({"TORCHINDUCTOR_CACHE_DIR": str(mine), "AVCAP_CACHE_DIR": str(tmp_path / "cache")}, tmp_path)
    assert got["where"] == {"source": "TORCHINDUCTOR_CACHE_DIR", "dir": str(mine)}
    off = _child({"AVCAP_COMPILE_CACHE": "off", "AVCAP_CACHE_DIR": str(tmp_path / "cache")}, tmp_path)
    assert off["where"]["source"] == "off" and not (tmp_path / "cache").exists()
