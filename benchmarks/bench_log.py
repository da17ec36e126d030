"""The GPU benchmarks' run record: timestamped log lines and a results dict, saved side by side
as <name>.json and <name>.log in `out_dir` (bench_gpu.py, bench_multi_gpu.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, name: str, results: dict[str, Any] | None = None):
        self.name = name
        self.t0 = time.perf_counter()
        self.lines: list[str] = []
        self.results: dict[str, Any] = results if results is not None else {}
        self.out_dir = Path(".")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {msg}"
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        (self.out_dir / f"{self.name}.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        (self.out_dir / f"{self.name}.log").write_text("\n".join(self.lines) + "\n")

    def use_out_dir(self, path: str | Path) -> Path:
        self.out_dir = Path(path)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir
