"""Keep the memory a training step frees for the next step, instead of handing it back to the OS.

A training step of a neural backbone allocates its activations (tens to hundreds of MB), frees them
at the end of the backward pass, and allocates the same sizes again in the next step. glibc's
malloc serves blocks above its mmap threshold with fresh ``mmap`` calls and gives the top of its
heap back to the OS when more than its trim threshold is free, so every step page-faults its
activations in again: on the TFT benchmark (2 cores) about a tenth of the step went to zeroing
those pages. :func:`keep_freed_memory` raises both thresholds while a fit runs, then gives the
free memory back (``malloc_trim``) and leaves glibc's usual ceiling (32 MiB served by mmap,
64 MiB trimmed: where its dynamic thresholds end up in any process that frees a large array).

The high-water mark does not rise: a block kept for reuse is one the next step takes again.
Elsewhere than glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
TRAINING_MMAP_THRESHOLD = 1 << 30  # every activation from the heap
TRAINING_TRIM_THRESHOLD = 2**31 - 1  # never trimmed while the fit runs (mallopt takes an int)
AFTER_MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX
AFTER_TRIM_THRESHOLD = 64 << 20  # twice the mmap threshold: glibc's dynamic rule

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc():
    """The process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (musl has mallopt but not this)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


@contextmanager
def keep_freed_memory():
    """Within the block, freed memory stays in the process for reuse; after it, the free memory goes
    back to the OS. Nested blocks (a fit inside a fit) act once, at the outermost."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_THRESHOLD, TRAINING_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
                libc.malloc_trim(0)
