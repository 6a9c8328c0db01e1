"""Keep a file client's resident memory bounded by the blocks in flight (issue 12 item 4).

The files layer holds at most ``max_inflight_blocks`` blocks (plus the chunker's window) at a
time, but each block passes through buffers of about its size (a frame, its TLS records, the
decoded value), allocated and freed thousands of times per file. glibc serves such buffers from
``mmap`` only until the first one is freed: it then raises its mmap threshold (up to 32 MiB) and
serves them from the heap, whose freed space it keeps -- the process's RSS then grows with the
bytes it moved, not with what it holds (measured: +140 MB after a 64 MiB put, growing with the
file). Fixing the threshold keeps big buffers in ``mmap``: freed, they go back to the system.
A process-wide setting, so it is made by the commands that move files (``ares file``, ``ares
bench --file-mb``), never by the library on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024
"""Buffers this big or bigger are mapped (and unmapped when freed)."""
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Free heap space above this is given back to the system."""


@functools.cache
def bound_malloc_cache() -> bool:
    """Fix glibc's mmap and trim thresholds (Linux with glibc; elsewhere nothing). Returns
    whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok)


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
