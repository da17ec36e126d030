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

In its own folder avcap also names the workload (torch.compiler.config.job_id, from the model's
architecture and what compiles it: inference or training), which turns on torch's profile-guided
dynamic shapes: a first process compiles a block for its first shape and again, shape-generic, when
the batch or prompt size changes; it writes down which sizes varied
(`<folder>/dynamo/code_state_<job>*.pkl`), so the next process of that workload compiles the generic
graph at once, and finds it in the cache. A job id the user set (TORCH_COMPILE_JOB_ID) is kept;
TORCH_DYNAMO_AUTOMATIC_DYNAMIC_LOCAL_PGO=0 turns the profile off.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

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


def workload_id(use: str, model_config: dict[str, Any]) -> str:
    """A name for one compiled workload: `use` ("infer", "train") and the model's architecture, its
    checkpoint's path and library version left out (every checkpoint of a sweep is the same
    workload; another size or architecture is another)."""
    def arch(d: Any) -> Any:
        if isinstance(d, dict):
            return {str(k): arch(v) for k, v in d.items()
                    if not str(k).startswith("_") and k not in ("transformers_version", "name_or_path")}
        return d

    text = json.dumps({"use": use, "model": arch(model_config)}, sort_keys=True, default=str)
    return f"avcap-{use}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def use_compile_cache(device_type: str, workload: str | None = None) -> dict[str, Any]:
    """Point torch.compile's caches at avcap's folder for these versions (once per process, before
    the first compile) and, in that folder, name the `workload` (see the module's docstring); returns
    where they are and why, for the run's record."""
    if not _STATE:
        _STATE.update(_choose_folder(device_type))
    state = dict(_STATE)
    if workload and state["source"] == "avcap":
        state["shape_profile"] = name_workload(workload, Path(state["dir"]))
    return state


def _choose_folder(device_type: str) -> dict[str, Any]:
    setting = os.environ.get(ENV, "")
    user = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if user and user == _torch_default():  # torch writes its default there once it has looked: not the user's
        user = None
    if setting.lower() == "off":
        return {"source": "off", "dir": user}
    if user:
        return {"source": "TORCHINDUCTOR_CACHE_DIR", "dir": user}
    fields = cache_key_fields(device_type)
    path = Path(setting) if setting else cache_dir_for(fields, default_root())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an unwritable home: torch's default, said in the record
        return {"source": "default", "dir": None, "error": f"{path}: {exc.strerror or exc}"}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return {"source": "avcap", "dir": str(path), "key": fields}


_NAMED: dict[str, Any] = {}  # the job id of this process: torch reads a profile once per process


def name_workload(workload: str, folder: Path) -> dict[str, Any]:
    """Set torch.compiler.config.job_id to `workload`, for this thread (a thread that runs the model
    elsewhere enters `compile_context`), unless the user set one or an earlier workload of this
    process named it (the demo trains, then captions, in one process); returns the record: the job
    id in force, who set it, whether a profile of it was there when this process began."""
    import torch
    import torch._dynamo.config as dynamo_config

    config = getattr(getattr(torch, "compiler", None), "config", None)
    if config is None or not hasattr(config, "job_id"):
        return {"job_id": None, "source": "unsupported"}  # torch < 2.6: no profile-guided shapes
    if not _NAMED:
        user = config.job_id
        if not user:
            config.job_id = workload
        found = any((folder / "dynamo").glob(f"code_state_{config.job_id}*.pkl"))
        _NAMED.update(job_id=config.job_id, source="user" if user else "avcap", found=found)
        if not user:
            _NAMED["read_late"] = read_profile_late()
    source = _NAMED["source"]
    if source == "avcap" and _NAMED["job_id"] != workload:
        source = "an earlier workload of this process"
    record = {"job_id": _NAMED["job_id"], "source": source,
              "enabled": bool(getattr(dynamo_config, "automatic_dynamic_local_pgo", False)), "found": _NAMED["found"]}
    if _NAMED.get("read_late") is not None:
        record["read_late"] = _NAMED["read_late"]
    return record


def read_profile_late() -> bool | str | None:
    """Read the named workload's profile now if something in this process compiled before it was named.

    torch reads the profile of dynamic shapes once per process, at its first compile, under the job id
    that thread sees (a setting made in code is per thread). A frame thread's compiled colour conversion
    (avcap.video.colour) usually compiles before the engine has loaded the model and named its workload:
    torch then read no profile, and kept none for the whole process, so every block compiled static
    for its first batch size and again, shape-generic, at the next (benchmarks/runs/gpu_run69: the
    decoder layer's halves recompiled at the first 88-row batch in each run that converted colour
    compiled). Here the profile is read again under the job id now in force, keeping what the early
    compiles recorded beside it. Uses `torch._dynamo.pgo`'s module state (internal; torch < 2.15).
    Returns True when read late, None when nothing had compiled yet (torch reads it itself), or why
    it could not (said once as a warning; in the run's record as `read_late`)."""
    try:
        from torch._dynamo import pgo

        early = pgo._CODE_STATE
        if early is None:
            return None
        pgo._CODE_STATE = None
        try:
            state = pgo.get_code_state()
        except Exception:
            pgo._CODE_STATE = early
            raise
        for code_id, code_state in early.items():
            if code_id not in state:
                state[code_id] = code_state
        return True
    except Exception as exc:  # noqa: BLE001 — another torch's internals: the profile is then only unread
        import warnings

        why = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"avcap compile cache: could not read the shape profile after an earlier compile ({why}); "
                      "blocks compile static first, then shape-generic")
        return why


@contextmanager
def compile_context(state: dict[str, Any] | None, recompile_limit: int | None = None) -> Iterator[None]:
    """torch's compile settings for the code inside, which must run where the model runs: recent torch
    keeps a setting made in code per thread (a context variable), so one made on a loading thread
    never reaches the thread that compiles. Applies the workload's job id of a `use_compile_cache`
    record `state` (where avcap named it) and at least `recompile_limit` compiled versions per function.

    With a `state` (compiling), a compiled function called while another thread of the process is
    tracing runs eagerly instead of raising: torch 2.11 keeps "FX is tracing" per process, and a
    frame thread's first compiled colour conversion could otherwise fail the model's whole batch
    (benchmarks/runs/gpu_run65). The same math, without fusion, for that call only."""
    with ExitStack() as stack:
        if state:
            import torch._dynamo

            if hasattr(torch._dynamo.config, "error_on_nested_fx_trace"):
                stack.enter_context(torch._dynamo.config.patch(error_on_nested_fx_trace=False))
        profile = (state or {}).get("shape_profile") or {}
        if profile.get("job_id") and profile.get("source") != "user":
            import torch

            stack.enter_context(torch.compiler.config.patch(job_id=profile["job_id"]))
        if recompile_limit:
            import torch._dynamo

            c = torch._dynamo.config
            name = "recompile_limit" if hasattr(c, "recompile_limit") else "cache_size_limit"
            limits = {name: max(getattr(c, name), recompile_limit)}
            if hasattr(c, "accumulated_recompile_limit"):
                limits["accumulated_recompile_limit"] = max(c.accumulated_recompile_limit, 4 * recompile_limit)
            stack.enter_context(c.patch(**limits))
        yield


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
