"""The package's layout is its map: layers import only downwards and no package has an import
cycle (import-linter's contracts in pyproject.toml, checked here so CI enforces them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in res.stdout


def test_every_verb_is_registered_in_one_place_and_loads():
    from avcap.cli import VERBS, app

    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == set(VERBS)
    for verb, (target, _) in VERBS.items():
        module, attr = target.split(":")
        assert getattr(__import__(module, fromlist=[attr]), attr) is not None, verb
    out = subprocess.run([sys.executable, "-m", "avcap", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "unavailable" not in out.stdout


def test_the_cli_imports_no_torch():
    """`avcap <verb>` imports every verb's module before it runs one; torch (2.6 s on the GPU box,
    ~1 s here) is imported only by the code that uses it, so `avcap --help` stays quick and
    `avcap infer` starts its decoders before any heavy import."""
    code = "import sys, avcap.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
