"""Where torch.compile keeps what it compiled, so that the next process starts warm.

torch's inductor stores compiled graphs (FX graph cache, AOTAutograd cache, Triton kernels) in
TORCHINDUCTOR_CACHE_DIR, by default a folder under /tmp shared by every version of every library.
avcap points it at one folder per (torch, triton, transformers, avcap, Python, CUDA, GPU) before
anything compiles: `<cache>/compile/<torch version>-<key>/`, `<cache>` being $AVCAP_CACHE_DIR or
~/.cache/avcap. Another library version or another GPU model gets another folder, so a cache
compiled for something else is never read; within a folder torch's own keys (the graph, its
shapes and dtypes, the inductor configuration) pick the entry, so another model's graphs never
match. `AVCAP_COMPILE_CACHE=off` leaves torch's default alone; a TORCHINDUCTOR_CACHE_DIR the user
set is kept and reported as theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

ENV = "AVCAP_COMPILE_CACHE"  # "off", or a folder used as is (no version key appended)
_STATE: dict[str, Any] = {}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cache_key_fields(device_type: str) -> dict[str, Any]:
    """What the compiled artefacts depend on beyond the graph itself."""
    import torch

    fields: dict[str, Any] = {
        "torch": torch.__version__, "triton": _version("triton") or _version("pytorch-triton"),
        "transformers": _version("transformers"), "avcap": _version("avcap"),
        "python": platform.python_version(), "machine": platform.machine(), "cuda": torch.version.cuda,
    }
    if device_type == "cuda" and torch.cuda.is_available():
        fields["gpu"] = torch.cuda.get_device_name()
        fields["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return fields


def cache_dir_for(fields: dict[str, Any], root: Path) -> Path:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return root / "compile" / f"{fields['torch']}-{digest}".replace("+", "_")


def default_root() -> Path:
    return Path(os.environ.get("AVCAP_CACHE_DIR") or Path.home() / ".cache" / "avcap")


def use_compile_cache(device_type: str) -> dict[str, Any]:
    """Point torch.compile's caches at avcap's folder for these versions (once per process, before
    the first compile); returns where they are and why, for the run's record."""
    if _STATE:
        return dict(_STATE)
    setting = os.environ.get(ENV, "")
    user = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if user and user == _torch_default():  # torch writes its default there once it has looked: not the user's
        user = None
    if setting.lower() == "off":
        _STATE.update(source="off", dir=user)
    elif user:
        _STATE.update(source="TORCHINDUCTOR_CACHE_DIR", dir=user)
    else:
        fields = cache_key_fields(device_type)
        path = Path(setting) if setting else cache_dir_for(fields, default_root())
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
            _STATE.update(source="avcap", dir=str(path), key=fields)
        except OSError as exc:  # an unwritable home: torch's default, said in the record
            _STATE.update(source="default", dir=None, error=f"{path}: {exc.strerror or exc}")
    return dict(_STATE)


def _torch_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def compile_counters() -> dict[str, int]:
    """torch's cache hits and misses so far in this process (FX graph, AOTAutograd)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    out: dict[str, int] = {}
    for group, names in (("inductor", ("fxgraph_cache_hit", "fxgraph_cache_miss")),
                         ("aot_autograd", ("autograd_cache_hit", "autograd_cache_miss"))):
        for name in names:
            out[name] = int(counters[group].get(name, 0))
    return out


def dynamo_compile_seconds() -> float | None:
    """Seconds torch.compile has spent so far in this process turning frames into graphs (dynamo's
    tracing plus loading each graph from the cache or compiling it), from torch's own timing record
    (`torch._dynamo.utils.compilation_time_metrics`, internal; torch < 2.15); None where this torch
    keeps no such record. For run records only: nothing depends on it."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return None
    inner = [sum(v) for k, v in compilation_time_metrics.items() if k.endswith("compile_inner")]
    if compilation_time_metrics and not inner:
        return None  # timings kept under other names: unknown, not zero
    return round(sum(inner), 3)


def require_compiler(device_type: str, key: str) -> None:
    """torch.compile's inductor builds C++ on the CPU: without a compiler the first forward would
    fail deep inside; say so up front, naming the config key that asked for compilation. Imports
    nothing heavy: the engine asks before its decoders start."""
    if device_type != "cuda" and not any(shutil.which(c) for c in ("c++", "g++", "gcc", "clang")):
        raise ValueError(f"{key} = true on the CPU needs a C++ compiler for torch.compile (inductor): none of "
                         "c++, g++, gcc, clang is on PATH; install one or set it to false")
