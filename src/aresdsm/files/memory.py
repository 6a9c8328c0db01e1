"""Keep a file client's resident memory bounded by the blocks in flight (issue 12 item 4).

The files layer holds at most ``max_inflight_blocks`` blocks (plus the chunker's window) at a
time, but each block passes through buffers of about its size (frame pieces, TLS records, the
decoded value), allocated and freed thousands of times per file. glibc keeps freed heap memory
for reuse, and the heap fragments: the process's RSS then grows with the bytes it moved, not
with what it holds (measured: +140 MB after a 64 MiB put, growing with the file; a 64 MiB get
leaves 128 MB resident, 71 MB after ``malloc_trim``). A few reference cycles also keep buffers
until a collection of the older generations. So once :func:`bound_malloc_cache` was called, the
files layer collects and trims every :data:`TRIM_EVERY_BYTES` moved (:func:`moved`).

Fixing glibc's mmap threshold instead (every big buffer mapped and unmapped) bounds RSS too but
costs 3-5x in throughput here (page faults on every fresh buffer), so it is not done.

A process-wide choice, so it is made by the commands that move files (``ares file``, ``ares
bench --file-mb``), never by the library on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Any

TRIM_EVERY_BYTES = 32 * 1024 * 1024
"""Collect and trim after this many bytes moved (a trim costs about a millisecond)."""


class _Trimmer:
    def __init__(self) -> None:
        self.libc: Any = None
        self.moved = 0


_state = _Trimmer()


def bound_malloc_cache() -> bool:
    """Trim glibc's heap as files move (Linux with glibc; elsewhere nothing). Returns whether
    trimming is on."""
    if _state.libc is not None:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    _state.libc = libc
    return True


def moved(nbytes: int) -> None:
    """The files layer moved ``nbytes``: every TRIM_EVERY_BYTES, collect cycles and give free
    heap pages back -- only once :func:`bound_malloc_cache` was called (else nothing)."""
    if _state.libc is None:
        return
    _state.moved += nbytes
    if _state.moved >= TRIM_EVERY_BYTES:
        _state.moved = 0
        gc.collect()
        _state.libc.malloc_trim(0)


def peak_rss_mb() -> float:
    """This process's peak resident size since the last :func:`reset_peak_rss` (VmHWM), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: ``5`` to /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
