"""avcap.core.imports: a task's first run waits for a thread that holds the heavy imports; later runs do not."""

from __future__ import annotations

import threading
import time

import pytest

from avcap.core import imports


def _holder(hold_s: float, started: threading.Event):
    def run():
        with imports.heavy_imports():
            started.set()
            time.sleep(hold_s)
    return threading.Thread(target=run)


def test_the_first_call_of_a_kind_waits_for_the_holder_and_later_ones_do_not():
    kind = f"test-{time.perf_counter_ns()}"
    started = threading.Event()
    holder = _holder(0.3, started)
    holder.start()
    started.wait()
    t0 = time.perf_counter()
    assert imports.first_under_lock(kind, lambda x: x + 1, 1) == 2
    waited = time.perf_counter() - t0
    holder.join()
    assert waited >= 0.2  # it ran only after the holder let go

    started2 = threading.Event()
    holder2 = _holder(0.5, started2)
    holder2.start()
    started2.wait()
    t0 = time.perf_counter()
    assert imports.first_under_lock(kind, lambda: "again") == "again"
    assert time.perf_counter() - t0 < 0.2  # the kind has run once: no lock
    holder2.join()


def test_a_first_call_that_fails_leaves_the_next_one_under_the_lock():
    kind = f"test-{time.perf_counter_ns()}"

    def fail():
        raise OSError("no GPU memory")

    with pytest.raises(OSError):
        imports.first_under_lock(kind, fail)
    started = threading.Event()
    holder = _holder(0.3, started)
    holder.start()
    started.wait()
    t0 = time.perf_counter()
    imports.first_under_lock(kind, lambda: None)
    assert time.perf_counter() - t0 >= 0.2
    holder.join()


def test_the_lock_is_reentrant_for_its_holder():
    with imports.heavy_imports():
        assert imports.first_under_lock(f"test-{time.perf_counter_ns()}", lambda: 3) == 3
