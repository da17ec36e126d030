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


def _first_call_in_a_thread(kind: str, fn):
    """first_under_lock(kind, fn) in a thread started now; its result or exception lands in `box`."""
    box: dict = {}

    def run():
        try:
            box["out"] = imports.first_under_lock(kind, fn)
        except BaseException as exc:  # noqa: BLE001 — the test looks at it
            box["exc"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _waiting_for_the_first_call(kind: str, thread: threading.Thread) -> None:
    """Give `thread` (a later call of `kind`, started just now) time to reach its wait. The tests hold
    either way: a call that starts after the first one returned runs unlocked too."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with imports._turns:
            waiting = thread.is_alive() and imports._first.get(kind) is not thread
        if waiting:
            break
        time.sleep(0.01)
    time.sleep(0.05)


def test_calls_made_during_the_first_call_wait_for_it_not_for_the_lock():
    # A GPU run's frame finishers queued on the lock behind the first one ran one by one, each after
    # the engine's imports had taken the lock in between (seconds)
    kind = _kind()
    first_running, first_go = threading.Event(), threading.Event()
    first, first_box = _first_call_in_a_thread(kind, lambda: (first_running.set(), first_go.wait(5))[1])
    assert first_running.wait(5)
    follower, box = _first_call_in_a_thread(kind, lambda: imports._LOCK._is_owned())
    _waiting_for_the_first_call(kind, follower)
    assert "out" not in box  # not before the first call has returned
    holder_in, holder_go = threading.Event(), threading.Event()

    def hold():
        with imports.heavy_imports():
            holder_in.set()
            holder_go.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()  # queued on the lock, which the first call holds
    first_go.set()
    first.join(5)
    try:
        follower.join(5)  # returns although the holder may hold the lock now
        assert not follower.is_alive()
        assert box == {"out": False}  # and it ran outside the lock
        assert first_box == {"out": True}
    finally:
        holder_go.set()
        holder.join(5)
    assert holder_in.is_set()


def test_when_the_first_call_fails_a_waiting_call_becomes_the_first():
    kind = _kind()
    first_running, first_go = threading.Event(), threading.Event()

    def fail():
        first_running.set()
        first_go.wait(5)
        raise OSError("no GPU memory")

    first, first_box = _first_call_in_a_thread(kind, fail)
    assert first_running.wait(5)
    follower, box = _first_call_in_a_thread(kind, lambda: imports._LOCK._is_owned())
    _waiting_for_the_first_call(kind, follower)
    first_go.set()
    first.join(5)
    follower.join(5)
    assert isinstance(first_box.get("exc"), OSError)
    assert box == {"out": True}  # under the lock: its imports may not be done
    assert kind in imports._ran


def test_the_locks_holder_does_not_wait_for_a_first_call_that_waits_for_the_lock():
    kind = _kind()
    inside, leave = threading.Event(), threading.Event()

    def hold_then_call():
        with imports.heavy_imports():
            inside.set()
            leave.wait(5)  # meanwhile another thread's first call of `kind` waits for the lock
            return imports.first_under_lock(kind, lambda: "holder")

    holder, box = _first_call_in_a_thread(_kind(), hold_then_call)
    assert inside.wait(5)
    first, first_box = _first_call_in_a_thread(kind, lambda: "first")
    deadline = time.monotonic() + 5
    while imports._first.get(kind) is not first and time.monotonic() < deadline:
        time.sleep(0.01)
    leave.set()
    holder.join(5)
    first.join(5)
    assert not holder.is_alive() and not first.is_alive()  # no deadlock
    assert box == {"out": "holder"} and first_box == {"out": "first"}
