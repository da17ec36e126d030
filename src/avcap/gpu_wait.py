"""Waiting for the GPU without spinning a CPU core.

`torch.cuda.synchronize()`, `Stream.synchronize()`, `.item()` and the wait inside a device-to-host
copy spin the waiting thread at 100 % of a core: with one CUDA context in the process, CUDA's default
scheduling busy-waits. The engine's threads wait for the GPU most of the time (the decode loop runs
ahead of it, the finishers wait for their resize behind the model's kernels, NVDEC workers wait for
each copy), and the decode worker processes beside them need every core. A blocking-sync event lets
the thread sleep until the GPU gets there instead.
"""

from __future__ import annotations

from typing import Any

BLOCKING = True  # False: spin like torch.cuda.synchronize (benchmarks/bench_gpu.py's same-run baseline)


def event():
    """A CUDA event whose `synchronize()` sleeps (see the module docstring)."""
    import torch

    return torch.cuda.Event(blocking=BLOCKING)


def wait(stream: Any = None) -> None:
    """Block this thread, asleep, until the work queued so far on `stream` (default: the current
    CUDA stream) is done."""
    done = event()
    done.record(stream)
    done.synchronize()
