"""Whether Python keeps compiled bytecode for the heavy libraries a model process imports.

pip writes `.pyc` files when it installs a package, and Python writes them on a first import where
it may. An image built with `pip install --no-compile` that also sets PYTHONDONTWRITEBYTECODE has
neither: every process compiles every module it imports from source. The GPU box avcap is measured
on is such an image (torch: none of its 2,141 modules compiled); importing what an 8B `avcap infer`
needs took 15.3 s there and 8.1 s with a bytecode cache, and the first caption came 38.6 s after
the start instead of 26.7 s (benchmarks/runs/gpu_run63). `bytecode_state` finds such a setup
without importing the libraries; `advice` says what to do about it in one line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

# what an engine process imports (the largest first); their top-level modules are sampled
HEAVY = ("torch", "transformers", "torchvision")
_SAMPLES = ("__init__.py", "_tensor.py", "modeling_utils.py", "functional.py")


def _cached(source: Path) -> bool:
    """A bytecode file for `source` where Python would look for it (its __pycache__, or under
    sys.pycache_prefix when set), no older than the source."""
    try:
        pyc = Path(importlib.util.cache_from_source(str(source)))
        return pyc.is_file() and pyc.stat().st_mtime >= source.stat().st_mtime
    except (OSError, NotImplementedError, ValueError):
        return False


def bytecode_state(packages: tuple[str, ...] = HEAVY) -> dict[str, Any]:
    """{"writes": whether this Python writes bytecode, "prefix": sys.pycache_prefix, "uncached": the
    installed `packages` whose sampled modules have no bytecode, "folders": theirs}. Imports none of them."""
    uncached, folders = [], []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        sources = [root / s for s in _SAMPLES if (root / s).is_file()]
        if sources and not any(_cached(s) for s in sources):
            uncached.append(name)
            folders.append(str(root))
    return {"writes": not sys.dont_write_bytecode, "prefix": sys.pycache_prefix, "uncached": uncached,
            "folders": folders}


def advice(state: dict[str, Any]) -> str | None:
    """One line when Python will compile these libraries from source in every process, else None."""
    if not state["uncached"] or state["writes"]:
        return None  # cached, or written by this first import for the next process
    names = ", ".join(state["uncached"])
    env = "PYTHONDONTWRITEBYTECODE is set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "writing bytecode is off"
    return (f"{names} have no compiled bytecode and {env}: every process compiles them from source "
            f"(~7 s more per start on the GPU box measured). Run `{sys.executable} -m compileall -q "
            f"{' '.join(state['folders'])}` once, or set PYTHONPYCACHEPREFIX to a writable folder and unset "
            f"PYTHONDONTWRITEBYTECODE")
