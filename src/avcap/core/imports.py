"""Heavy libraries imported by one of avcap's threads at a time.

An engine imports torch and transformers on its loading thread while the frame loader's finisher
threads import torch and torchvision for their first conversions. Python locks each module while it
initialises; when two threads import one package graph from different ends (transformers reaching
torchvision.transforms from one side, avcap.video's resize importing torchvision.transforms from the
other), its deadlock detection hands one of them a partially initialised module and that import
fails. GPU run 63 lost a whole `avcap infer` that way: `ImportError: cannot import name
'InterpolationMode' from partially initialized module 'torchvision.transforms'`. Threads that may
import heavy libraries for the first time hold `heavy_imports()` meanwhile; `first_under_lock` holds
it only until a task of its kind has run once (afterwards its imports are done)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

_LOCK = threading.RLock()
_ran: set[str] = set()
_first: dict[str, threading.Thread] = {}  # kinds whose first call is running, and its thread
_turns = threading.Condition()
_held = threading.local()  # how deep this thread is in heavy_imports()


@contextlib.contextmanager
def heavy_imports() -> Iterator[None]:
    """Held while a thread imports heavy libraries that another thread may be importing too."""
    with _LOCK:
        _held.depth = getattr(_held, "depth", 0) + 1
        try:
            yield
        finally:
            _held.depth -= 1


def first_under_lock(kind: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, under `heavy_imports()` until a call of this `kind` has returned in
    this process (the first one imports what every later one needs), unlocked afterwards.

    Calls of a kind made while its first call runs wait for that call, not for the lock: queued on
    the lock they would run one by one, each waiting for whatever else took it in between (the
    engine's imports of transformers, seconds on a GPU machine, GPU run 72). If the first call
    fails, one of them is the next first call."""
    if kind not in _ran and getattr(_held, "depth", 0):  # the lock's holder: it may not wait for a first call
        out = fn(*args, **kwargs)  # that waits for the lock
        with _turns:
            _ran.add(kind)
            _turns.notify_all()
        return out
    me = threading.current_thread()
    while kind not in _ran:
        with _turns:
            if kind in _ran:
                break
            first = _first.get(kind)
            if first is not None and first is not me:
                _turns.wait_for(lambda: kind in _ran or kind not in _first)
                continue
            _first[kind] = me
        try:
            with heavy_imports():
                out = fn(*args, **kwargs)
        except BaseException:
            with _turns:
                _first.pop(kind, None)
                _turns.notify_all()
            raise
        with _turns:
            _ran.add(kind)
            _first.pop(kind, None)
            _turns.notify_all()
        return out
    return fn(*args, **kwargs)
