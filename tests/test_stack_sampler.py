"""benchmarks/stack_sampler.py: samples every thread of the process it runs a module in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sampler_sees_each_thread_in_its_function_and_writes_at_exit(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(
        "import threading, time\n"
        "def spin_here(stop):\n"
        "    while time.perf_counter() < stop:\n"
        "        pass\n"
        "def sleep_here():\n"
        "    time.sleep(0.6)\n"
        "stop = time.perf_counter() + 0.6\n"
        "t = threading.Thread(target=spin_here, args=(stop,), name='worker-7')\n"
        "t.start()\n"
        "sleep_here()\n"
        "t.join()\n"
    )
    out = tmp_path / "stacks.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "stack_sampler.py"), "--out", str(out),
                    "--interval", "0.02", "--window", "10", "--", str(script)], check=True, timeout=60)
    doc = json.loads(out.read_text())
    assert doc["samples"] >= 5 and doc["windows"][0]["t0_s"] == 0
    threads = doc["windows"][0]["threads"]
    assert set(threads) >= {"MainThread", "worker"}  # the trailing number is dropped: one group per pool
    assert any(stack.startswith("busy.py:spin_here") or ":spin_here" in stack.split(" < ")[0]
               for stack, _ in threads["worker"])
    assert any("sleep_here" in stack for stack, _ in threads["MainThread"])
