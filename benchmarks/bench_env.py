"""What the GPU scripts share before avcap can be imported: avcap's dependencies made importable on a
bare device image, the GPUs as nvidia-smi sees them, stopping a child process group, and writing a
script's JSON result. No avcap import here, on purpose."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def ensure_deps(wheels: Path) -> list[str]:
    """Make avcap importable here and in every child process: src/ on the path and, when its
    dependencies are missing (a bare device image), the carried wheels installed to /tmp/avcap-site.
    Returns the paths put on PYTHONPATH."""
    paths = [str(REPO / "src")]
    sys.path[:0] = [p for p in paths if p not in sys.path]
    try:
        import av  # noqa: F401
        import pydantic  # noqa: F401
        import typer  # noqa: F401
    except ImportError as exc:
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not found:
            raise SystemExit(f"avcap's dependencies are missing ({exc}) and {wheels} holds no wheels: "
                             "pip install -e . (or carry the wheels in .whl/)")
        site = Path("/tmp/avcap-site")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(site), *map(str, found)], check=True)
        paths.insert(0, str(site))
        sys.path.insert(0, str(site))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    return paths


def gpus_present() -> list[dict[str, Any]]:
    """GPUs from nvidia-smi (no CUDA context in this process: the children own the GPUs)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append({"index": int(parts[0]), "name": parts[1], "memory_mib": float(parts[2]), "driver": parts[3]})
    return gpus


def stop_group(proc: subprocess.Popen, wait: float = 20.0) -> None:
    """SIGTERM, then SIGKILL, to a child started with `start_new_session=True` and its own children
    (its process group), waiting up to `wait` seconds after each."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def write_result(out_dir: str | os.PathLike, name: str, result: Any) -> Path:
    """`result` as `<out_dir>/<name>.json` (the folder made if missing); its path."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
