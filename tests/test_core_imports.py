"""avcap.core.imports: a task's first run waits for a thread that holds the heavy imports; later runs do not."""

from __future__ import annotations

import threading
import time

import pytest

from avcap.core import imports


class Holder:
    """A thread inside heavy_imports() until `let_go()`; `released` is set just before it leaves."""

    def __init__(self):
        self.inside, self.go, self.released = threading.Event(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        self.inside.wait()

    def _run(self):
        with imports.heavy_imports():
            self.inside.set()
            self.go.wait()
            self.released.set()

    def let_go(self, after_s: float = 0.0):
        threading.Timer(after_s, self.go.set).start()


def _kind() -> str:
    return f"test-{time.perf_counter_ns()}"


def test_the_first_call_of_a_kind_waits_for_the_holder_and_later_ones_do_not():
    kind = _kind()
    holder = Holder()
    holder.let_go(after_s=0.2)
    assert imports.first_under_lock(kind, lambda: holder.released.is_set()) is True  # ran only after the holder left
    holder.thread.join()

    holder = Holder()
    holder.let_go(after_s=5.0)  # a call that waited for the holder would run only after this
    try:
        assert imports.first_under_lock(kind, lambda: holder.released.is_set()) is False
    finally:
        holder.let_go()
        holder.thread.join()


def test_a_first_call_that_fails_leaves_the_next_one_under_the_lock():
    kind = _kind()

    def fail():
        raise OSError("no GPU memory")

    with pytest.raises(OSError):
        imports.first_under_lock(kind, fail)
    holder = Holder()
    holder.let_go(after_s=0.2)
    assert imports.first_under_lock(kind, lambda: holder.released.is_set()) is True
    holder.thread.join()


def test_the_lock_is_reentrant_for_its_holder():
    with imports.heavy_imports():
        assert imports.first_under_lock(_kind(), lambda: 3) == 3
