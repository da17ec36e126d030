"""Decoded frames from worker processes to the engine through shared memory, not a pipe.

A process pool returns results pickled through a pipe, read by one thread of the parent in
64 KiB pieces, each taking the GIL again. Beside a model whose thread keeps the GIL busy that
slows to ~1 MB/s per result (measured: 0.8 results/s for 16 MB frame arrays while another thread
runs Python, 29/s without it). So a worker writes each result's big array to a file in a spool
directory on tmpfs (/dev/shm) and returns its name; the parent maps the file copy-on-write and
unlinks it at once, so the array costs no pipe, no copy and no file left behind once mapped.

A spool is used only where tmpfs has room (`MIN_FREE`); a worker that cannot write its file (full,
gone) returns the array in the pickle as before. The directory is removed when the loader closes
or the process exits; directories left by a killed process are removed by the next loader.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from avcap.video import DecodedVideo, VideoFrames

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

SHM = Path("/dev/shm")
PREFIX = "avcap-frames-"
MIN_FREE = 2 << 30  # bytes of free tmpfs a spool needs (a few clips in flight: ~60 MB each)
MIN_ARRAY = 1 << 20  # smaller arrays go in the pickle


@dataclass(frozen=True)
class SpooledArray:
    """Where a worker put an array: file, shape, dtype."""

    file: str
    shape: tuple[int, ...]
    dtype: str

    def load(self, pin: bool = False):
        """The array, mapped copy-on-write (writable, private); with `pin` read into page-locked
        host memory instead (a torch tensor, ready for an asynchronous copy to a GPU: no page
        faults, no staging copy). The file is unlinked."""
        try:
            size = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
            if pin:
                import torch

                t = torch.empty(self.shape, dtype=torch.from_numpy(np.empty(0, self.dtype)).dtype, pin_memory=True)
                with open(self.file, "rb", buffering=0) as f:
                    if size and f.readinto(memoryview(t.numpy()).cast("B")) != size:
                        raise OSError(f"{self.file}: short read")
                return t
            if size == 0:
                return np.empty(self.shape, dtype=self.dtype)
            with open(self.file, "rb") as f:
                mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        finally:
            try:
                os.unlink(self.file)
            except FileNotFoundError:
                pass
        return np.frombuffer(mm, dtype=self.dtype).reshape(self.shape)


class Spool:
    """A spool directory owned by this process (see module docstring)."""

    def __init__(self, path: Path):
        self.path = str(path)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    @classmethod
    def create(cls, root: Path = SHM) -> Optional["Spool"]:
        """A new spool under `root`, or None where there is no tmpfs with room."""
        try:
            st = os.statvfs(root)
            if not root.is_dir() or st.f_bavail * st.f_frsize < MIN_FREE:
                return None
            remove_stale(root)
            return cls(Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)))
        except OSError:
            return None

    def remove(self) -> None:
        self._finalizer()


def remove_stale(root: Path) -> int:
    """Remove spool directories of processes that no longer run; returns how many."""
    n = 0
    for d in root.glob(f"{PREFIX}*"):
        try:
            pid = int(d.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _spool_array(arr: np.ndarray, directory: str) -> Any:
    """A SpooledArray for `arr` written into `directory`, or `arr` itself if small or it cannot be written."""
    if arr.nbytes < MIN_ARRAY:
        return arr
    arr = np.ascontiguousarray(arr)
    file = os.path.join(directory, uuid.uuid4().hex)
    try:
        with open(file, "wb") as f:
            f.write(memoryview(arr).cast("B"))
    except OSError:
        try:
            os.unlink(file)
        except OSError:
            pass
        return arr
    return SpooledArray(file, tuple(arr.shape), arr.dtype.str)


def spooled(result: Any, directory: str) -> Any:
    """`result` (VideoFrames or DecodedVideo) with its big arrays written to `directory`."""

    if isinstance(result, VideoFrames):
        result.frames = _spool_array(result.frames, directory)
    elif isinstance(result, DecodedVideo):
        result.video = spooled(result.video, directory)
        if result.planes is not None:
            result.planes = _spool_array(result.planes, directory)
    return result


def unspool(result: Any, pin: bool = False) -> Any:
    """The inverse of `spooled`, in the parent (a result that was not spooled passes through).
    `pin`: a DecodedVideo's planes come back in page-locked memory (see SpooledArray.load)."""

    if isinstance(result, VideoFrames) and isinstance(result.frames, SpooledArray):
        result.frames = result.frames.load()
    elif isinstance(result, DecodedVideo):
        unspool(result.video)
        if isinstance(result.planes, SpooledArray):
            result.planes = result.planes.load(pin=pin)
    return result
