"""AV_PKT_FLAG_DISCARD on the packets decoded only as references.

Both decoders send the decoder only the pictures the samples need (avcap.video.cpu,
avcap.video.nvdec). The reference pictures that are not targets go in flagged
AV_PKT_FLAG_DISCARD: FFmpeg decodes them but never returns their frames (for NVDEC, no copy out
of the hardware decoder). PyAV exposes the flag read-only, so `mark_discard` sets it in the
AVPacket itself, whose address inside PyAV's Packet object is found once on a packet of our own
(`_find_packet_ptr_offset`, memory read through /proc/self/mem so a wrong guess is a miss, not a
crash). Where that cannot be confirmed nothing is flagged and every decoded picture comes back:
the same frames, a little slower.

`set_enabled(False)` (or AVCAP_DISCARD_UNSAMPLED=0 in the environment) turns flagging off: the
benchmarks' A/B switch.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from typing import Optional

# Heavy libraries (av) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


_AV_PKT_FLAG_DISCARD = 0x0004  # libavcodec/packet.h
# benchmarks' A/B switch (read here so that spawned decoder processes see it too): "0" returns every
# decoded picture to Python as before 2026-11-25
_DISCARD_UNSAMPLED = os.environ.get("AVCAP_DISCARD_UNSAMPLED", "1") != "0"
_packet_ptr_offset: Optional[int] = None  # where PyAV's Packet object keeps its AVPacket pointer; -1: not found


# PyAV releases whose Packet layout the discard flag was checked on (tests/test_video.py's discard
# tests; the GPU runs of benchmarks/RESULTS.md ran 18.1.0): on any other release it stays off, with a warning
_DISCARD_CHECKED_PYAV = ("18.1.0", "18.1.1")


def checked_pyav() -> bool:
    """Whether the installed PyAV is a release the discard probe was checked on."""
    import av

    return av.__version__ in _DISCARD_CHECKED_PYAV


def _read_memory(address: int, size: int) -> Optional[bytes]:
    """`size` bytes of this process's memory at `address`, read through /proc/self/mem: an
    unmapped address is an OSError there (None here), never a segmentation fault."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            data = mem.read(size)
    except (OSError, OverflowError, ValueError):
        return None
    return data if len(data) == size else None


def _find_packet_ptr_offset() -> int:
    """The byte offset of `AVPacket *ptr` inside PyAV's Packet object, found on a packet of our own:
    the pointer whose AVPacket's data and size (FFmpeg >= 5 layout: buf, pts, dts, data, size,
    stream_index, flags) are the packet's; -1 when no field qualifies, when the PyAV release is not
    one the layout was checked on, or where /proc/self/mem cannot be read. Every candidate pointer
    is followed through `_read_memory`, so a wrong guess is a miss, not a crash."""
    import av

    if not checked_pyav():
        warnings.warn(f"avcap.video: PyAV {av.__version__} is not a release the AV_PKT_FLAG_DISCARD probe was "
                      f"checked on ({', '.join(_DISCARD_CHECKED_PYAV)}): every decoded picture is returned "
                      "(correct, a little slower)", stacklevel=3)
        return -1
    probe = av.Packet(b"avcap")
    for off in range(16, type(probe).__basicsize__ - 7, 8):
        raw = _read_memory(id(probe) + off, 8)
        if raw is None:
            return -1  # no /proc/self/mem: stay off
        ptr = int.from_bytes(raw, sys.byteorder)
        if not ptr or ptr < 1 << 16 or ptr % 8:
            continue
        fields = _read_memory(ptr + 24, 12)  # data pointer, size
        if fields is not None and int.from_bytes(fields[:8], sys.byteorder) == probe.buffer_ptr \
                and int.from_bytes(fields[8:12], sys.byteorder, signed=True) == probe.size:
            return off
    return -1


def mark_discard(packet) -> bool:
    """Flag `packet` AV_PKT_FLAG_DISCARD: the decoder decodes it (it stays a reference for what
    follows) but never returns its frame. For NVDEC that skips mapping and copying the picture out
    of the hardware decoder, which is GPU work in the decoding process's context; on the CPU it
    skips wrapping a frame nobody reads. PyAV exposes the flag read-only, so it is set in the
    AVPacket itself, located once on a packet of our own and confirmed through PyAV's getters on
    every packet; False (nothing changed) where that does not hold."""

    global _packet_ptr_offset
    if not _DISCARD_UNSAMPLED or not packet.size:
        return False
    if _packet_ptr_offset is None:
        _packet_ptr_offset = _find_packet_ptr_offset()
    if _packet_ptr_offset < 0:
        return False
    ptr = ctypes.c_void_p.from_address(id(packet) + _packet_ptr_offset).value
    if not ptr or ctypes.c_int.from_address(ptr + 32).value != packet.size \
            or ctypes.c_void_p.from_address(ptr + 24).value != packet.buffer_ptr:
        return False
    flags = ctypes.c_int.from_address(ptr + 40)
    old = flags.value
    flags.value = old | _AV_PKT_FLAG_DISCARD
    if not packet.is_discard:  # not the flags field after all: undo
        flags.value = old
        return False
    return True


def enabled() -> bool:
    """Whether `mark_discard` flags packets in this process (the default; see `set_enabled`)."""
    return _DISCARD_UNSAMPLED


def set_enabled(on: bool) -> None:
    """Flag reference-only packets AV_PKT_FLAG_DISCARD (True, the default) or return every decoded
    picture to Python as before 2026-11-25 (False), in this process and in the processes it starts
    from now on: the setting also goes to the environment as AVCAP_DISCARD_UNSAMPLED ("1"/"0"),
    which a process reads when it imports this module (spawned decode workers). The frames are the
    same either way; benchmarks compare the time."""
    global _DISCARD_UNSAMPLED
    _DISCARD_UNSAMPLED = bool(on)
    os.environ["AVCAP_DISCARD_UNSAMPLED"] = "1" if on else "0"
