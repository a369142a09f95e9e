"""Process-level tuning, applied once at start by the command line (and the benchmarks).

- glibc gives every thread that allocates its own malloc arena; with the worker threads of the
  sinks that fragmentation doubled peak RSS on large fleets. Two arenas are plenty here.
- The cyclic garbage collector walks every live container object on each full pass; a fleet of
  100,000 objects makes that costly, while secretsync creates few reference cycles. Higher
  thresholds make full passes rare.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys

M_ARENA_MAX = -8


def tune() -> None:
    gc.set_threshold(50_000, 50, 100)
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
                ctypes.CDLL(libc_name).mallopt(M_ARENA_MAX, 2)


def release_memory() -> None:
    """Hand freed heap pages back to the OS (after a cycle of a long-running process)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(libc_name).malloc_trim(0)
