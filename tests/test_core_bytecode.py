"""avcap.core.bytecode: a package installed without compiled bytecode, in a Python that will not write
any, is found (without importing it) and named in one line; compiled or writable, it is not."""

from __future__ import annotations

import importlib.util
import py_compile
import sys

import pytest

from avcap.core.bytecode import advice, bytecode_state


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "site" / "heavylib"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (root / "functional.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(sys, "pycache_prefix", None)
    return root


def test_a_package_without_bytecode_where_python_writes_none_gets_advice(package, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    state = bytecode_state(("heavylib", "not_installed_anywhere"))
    assert state == {"writes": False, "prefix": None, "uncached": ["heavylib"], "folders": [str(package)]}
    line = advice(state)
    assert line.startswith("heavylib have no compiled bytecode and PYTHONDONTWRITEBYTECODE is set")
    assert f"-m compileall -q {package}`" in line and "PYTHONPYCACHEPREFIX" in line
    assert "heavylib" not in sys.modules  # found without importing it


def test_compiled_or_writable_needs_no_advice(package, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    state = bytecode_state(("heavylib",))
    assert state["uncached"] == ["heavylib"] and advice(state) is None  # this import writes it

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    py_compile.compile(str(package / "__init__.py"))  # where pip's install would have put it
    assert bytecode_state(("heavylib",))["uncached"] == []

    prefix = tmp_path / "pyc"
    monkeypatch.setattr(sys, "pycache_prefix", str(prefix))  # PYTHONPYCACHEPREFIX: looked for there instead
    assert bytecode_state(("heavylib",))["uncached"] == ["heavylib"]
    source = str(package / "functional.py")
    py_compile.compile(source, cfile=importlib.util.cache_from_source(source))
    assert bytecode_state(("heavylib",)) == {"writes": False, "prefix": str(prefix), "uncached": [], "folders": []}
