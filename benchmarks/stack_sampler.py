"""Where a Python process's threads spend their time, sampled from inside it: a benchmark tool.

    python3 benchmarks/stack_sampler.py --out stacks.json [--interval 0.05] [--seconds 120] [--window 2] \
        -- -m avcap infer --config F ...        # or -- path/to/script.py args

Runs the module (or script) after `--` in this process, as `python -m` would, with a daemon thread
that every `--interval` seconds takes every other thread's Python stack (`sys._current_frames`).
At exit (or after `--seconds`) it writes, per `--window` seconds from the start, each thread
group's most frequent stacks (innermost frames first, `package/file.py:function`) with their
sample counts, and how late the sampler woke up: it needs the GIL to run, so lateness far above
the interval says the threads of the process were fighting for it. Thread groups are thread
names without their trailing number (`avcap-frames-cpu-3` -> `avcap-frames-cpu`).

No ptrace (py-spy needs it, and containers often refuse it); stacks are Python frames only, so a
thread inside a C call shows the Python line that called it.
"""

from __future__ import annotations

import argparse
import atexit
import json
import re
import runpy
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

DEPTH = 10  # innermost frames kept per stack
TOP = 4  # stacks kept per thread group and window


def frame_name(code_file: str, func: str) -> str:
    parts = Path(code_file).parts
    for anchor in ("site-packages", "src", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + 1:]) + ":" + func
    return "/".join(parts[-2:]) + ":" + func


def collapse(frame) -> str:
    names = []
    while frame is not None and len(names) < DEPTH:
        names.append(frame_name(frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    return " < ".join(names)


def group_of(name: str) -> str:
    return re.sub(r"[-_]\d+$", "", name)


class Sampler:
    def __init__(self, out: Path, interval: float, seconds: float, window: float):
        self.out, self.interval, self.seconds, self.window = out, interval, seconds, window
        self.t0 = time.perf_counter()
        self.stacks: dict[tuple[int, str], Counter] = defaultdict(Counter)
        self.late: dict[int, list[float]] = defaultdict(list)
        self.samples = 0
        self._lock = threading.Lock()
        self._written = False
        self.thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> None:
        self.thread.start()
        atexit.register(self.write)

    def _run(self) -> None:
        me = threading.get_ident()
        due = time.perf_counter()
        while True:
            due += self.interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            now = time.perf_counter()
            if now - self.t0 > self.seconds:
                self.write()
                return
            w = int((now - self.t0) // self.window)
            names = {t.ident: t.name for t in threading.enumerate()}
            frames = sys._current_frames()
            with self._lock:
                self.late[w].append(now - due)
                self.samples += 1
                for tid, frame in frames.items():
                    if tid != me:
                        self.stacks[(w, group_of(names.get(tid, f"thread {tid}")))][collapse(frame)] += 1
            due = max(due, now)  # a late wake-up does not make the next ones come in a burst

    def write(self) -> None:
        with self._lock:
            if self._written:
                return
            self._written = True
            windows = []
            for w in sorted(self.late):
                groups = {g: [[s, n] for s, n in c.most_common(TOP)] for (ww, g), c in sorted(self.stacks.items())
                          if ww == w}
                late = self.late[w]
                windows.append({"t0_s": round(w * self.window, 2), "samples": len(late),
                                "sampler_late_ms": {"mean": round(1e3 * sum(late) / len(late), 1),
                                                    "max": round(1e3 * max(late), 1)},
                                "threads": groups})
            doc = {"interval_s": self.interval, "window_s": self.window, "samples": self.samples,
                   "argv": sys.argv, "windows": windows}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(doc, indent=1))


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: stack_sampler.py [options] -- -m module args | script.py args")
    cut = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--window", type=float, default=2.0)
    args = ap.parse_args(argv[:cut])
    target = argv[cut + 1:]
    if not target:
        raise SystemExit("stack_sampler.py: nothing to run after --")
    Sampler(Path(args.out), args.interval, args.seconds, args.window).start()
    if target[0] == "-m":
        sys.argv = [target[1]] + target[2:]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
