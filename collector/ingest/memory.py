"""Keep large message buffers from pinning memory after a flood (glibc only).

glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB) with ``mmap`` and returns
them to the system on ``free``, but after the first such free it raises the threshold to
that size (up to 32 MiB), so later 1 MiB message buffers come from the heap and the heap
stays large after they are freed: a 600 x 1 MiB junk flood left the collector 200 MB
bigger for good. Setting the threshold explicitly turns that adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["release_large_buffers"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 256 * 1024


def release_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 256 KiB; False where that is not possible (not glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    if not done:
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; large buffers may stay in the heap")
    return done
