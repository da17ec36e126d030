"""How long a fresh process takes to import what an `avcap infer` engine needs, on an idle machine
and beside busy CPUs (issue 26, item 2: the first caption of a fresh process is import-bound).

    python3 benchmarks/bench_imports.py --out $OUT/imports          # ~1-2 min on the GPU box
    python3 benchmarks/bench_imports.py --repeats 1 --out /tmp/imp  # CPU box

Not a test. Each sample is a new `python -c` child that imports, in the engine's order, and times
each stage with perf_counter: `torch`, `transformers` (the package: its lazy module map),
`qwen3_vl` (transformers' Qwen3-VL model classes), `processor` (its processor classes),
`compiler` (torch._dynamo and inductor's compile_fx, which `compile = true` needs). Conditions, in
this order, --repeats children each:

- `idle`: nothing else running;
- `busy_nice10`: one pure-Python busy loop per CPU at nice +10 (what the engine's decode worker
  processes are: avcap.engines.frames.WORKER_NICE);
- `busy_nice0`: the same loops at the importing process's own priority.

Also records how the installed packages' bytecode is kept (a `.py` without an up-to-date `.pyc`
is compiled at every import when its folder is not writable), and with --importtime one idle
child's `python -X importtime` output (the modules with the largest own time).

Writes bench_imports.json and bench_imports.log to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = {
    "torch": "import torch",
    "transformers": "import transformers",
    "qwen3_vl": "from transformers import Qwen3VLForConditionalGeneration",
    "processor": "from transformers import Qwen3VLProcessor",
    "compiler": "import torch._dynamo, torch._inductor.compile_fx",
}

CHILD = """
import json, time
out = {}
t = time.perf_counter()
for name, stmt in STAGES.items():
    exec(stmt)
    now = time.perf_counter()
    out[name] = round(now - t, 4)
    t = now
print(json.dumps(out))
"""

BUSY = "import os, sys\nos.nice(int(sys.argv[1]))\nwhile True:\n    pass\n"


def child_code() -> str:
    return f"STAGES = {STAGES!r}\n{CHILD}"


def one_sample(env: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", child_code()], check=False, capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"import child failed ({p.returncode}): {p.stderr[-2000:]}")
    stages = json.loads(p.stdout.strip().splitlines()[-1])
    return {**stages, "sum": round(sum(stages.values()), 4), "wall": round(wall, 4)}


def with_busy(nice: int | None, n: int):
    """Start n busy loops at `nice` (None: none); returns a stopper."""
    procs = [] if nice is None else [subprocess.Popen([sys.executable, "-c", BUSY, str(nice)]) for _ in range(n)]
    time.sleep(0.5 if procs else 0)

    def stop():
        for q in procs:
            q.kill()
        for q in procs:
            q.wait()
    return stop


def bytecode_state() -> dict[str, object]:
    """For torch's and transformers' folders: writable?, and how many .py files lack a current .pyc."""
    import importlib.util

    res: dict[str, object] = {"dont_write_bytecode": bool(sys.flags.dont_write_bytecode),
                              "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX")}
    for pkg in ("torch", "transformers"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        py = list(root.rglob("*.py"))
        # where Python looks for each module's bytecode: its __pycache__, or under PYTHONPYCACHEPREFIX
        missing = sum(1 for p in py if not Path(importlib.util.cache_from_source(str(p))).exists())
        res[pkg] = {"folder": str(root), "writable": os.access(root, os.W_OK), "py_files": len(py),
                    "without_pyc": missing}
    return res


def importtime_top(env: dict[str, str], k: int = 40) -> list[tuple[int, int, str]]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", child_code()], check=False, capture_output=True, text=True,
                       env=env, timeout=300)
    rows = []
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.split("|")
        if len(parts) == 3:
            rows.append((int(parts[0].split(":")[1]), int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return rows[:k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy loops in the busy conditions")
    ap.add_argument("--conditions", default="idle,busy_nice10,busy_nice0")
    ap.add_argument("--importtime", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    log_path = a.out / "bench_imports.log"
    log_path.write_text("")

    def say(msg: str) -> None:
        print(msg, flush=True)
        with log_path.open("a") as log:
            log.write(msg + "\n")

    nice_of = {"idle": None, "busy_nice10": 10, "busy_nice0": 0}
    result: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "busy": a.busy,
                                 "bytecode": bytecode_state(), "conditions": {}}
    say(f"bytecode: {json.dumps(result['bytecode'])}")
    one_sample(env)  # the first import after install reads cold files and may write .pyc: not timed
    for cond in a.conditions.split(","):
        stop = with_busy(nice_of[cond], a.busy)
        try:
            samples = [one_sample(env) for _ in range(a.repeats)]
        finally:
            stop()
        med = {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]}
        result["conditions"][cond] = {"samples": samples, "median": med}
        say(f"{cond:12s} " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()))
    if a.importtime:
        top = importtime_top(env)
        result["importtime_top_self_us"] = top
        say("largest own import times (us, cumulative us, module):")
        for s, c, m in top[:25]:
            say(f"  {s:>9d} {c:>10d} {m}")
    (a.out / "bench_imports.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
