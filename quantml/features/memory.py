"""Memory for the feature build: large outputs faulted in at once, per-symbol temporaries reused.

On this kind of virtual machine the first touch of a fresh page is expensive (about 4 ms per MB,
measured: filling a new 228 MB array takes 0.9 s, refilling it 0.02 s). The feature build writes a
float32 matrix of several GB and, for every symbol, allocates a few hundred arrays of one symbol's
length. Two measures keep that cost down without changing a value:

- :func:`populated`: the outputs are one anonymous ``mmap`` with ``MAP_POPULATE`` (the kernel maps
  every page in one call: 0.1 s for 304 MB instead of 0.6-0.9 s);
- :func:`reused_heap`: while the per-symbol blocks run, glibc serves the per-symbol temporaries
  (< 32 MB each) from its heap and keeps freed heap memory instead of giving it back, so the next
  symbol reuses the pages the previous one touched (a symbol's blocks: 2.6 s on fresh pages, 0.9 s on
  reused ones, 841k rows). On exit the heap is trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX = 32 << 20  # glibc's largest heap-served request (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
_TRIM_AFTER = 64 << 20  # the trim threshold glibc itself converges to (twice the mmap threshold)


def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallopt.argtypes, lib.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
        return lib
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return None


_LIBC = _libc()


@contextmanager
def reused_heap() -> Iterator[None]:
    """Within the block: requests under 32 MB from glibc's heap, freed heap memory kept (no trim).
    After it: the heap trimmed, thresholds left where glibc's own adaptive ones settle (32 MB / 64 MB).
    A no-op without glibc."""
    if _LIBC is None:
        yield
        return
    _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
        _LIBC.malloc_trim(0)


def populated(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array [shape] whose pages are mapped at once (``MAP_POPULATE``); ``np.empty``
    where the platform has no such flag. The memory is freed when the array (and every view) is."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    flag = getattr(mmap, "MAP_POPULATE", 0)
    if size < (1 << 20) or not flag:
        return np.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flag)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14: fault a range in, writable, in one call


def lazy(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array [shape] of its own anonymous mapping, faulted in as written (or in bulk
    by :func:`prefault`); freed when the array (and every view) is."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < (1 << 20):
        return np.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def prefault(rows: np.ndarray) -> None:
    """Fault in the pages of each row of a 2-D view (a column range of a C-ordered matrix) in one call per
    row, before it is written. A no-op where the kernel or libc cannot."""
    global _MADV_POPULATE_WRITE
    if _LIBC is None or _MADV_POPULATE_WRITE is None or rows.ndim != 2 or rows.shape[1] == 0:
        return
    page = mmap.PAGESIZE
    length = rows.shape[1] * rows.itemsize
    for j in range(rows.shape[0]):
        start = rows[j].ctypes.data
        lo = start - start % page
        hi = start + length
        if _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_POPULATE_WRITE) != 0:
            _MADV_POPULATE_WRITE = None  # not supported here: pages fault in as written
            return


_TRACE_START = time.perf_counter()


def mark(label: str) -> None:
    """With ``QUANTML_MEMORY_TRACE=<file>`` set: append one JSON line to it, ``{"s", "at", "rss_mb",
    "high_water_mb"}`` (seconds since import, ``label``, this process's resident memory now and its peak
    so far). The scale benchmark reads these to say in which step a run's peak fell; otherwise nothing."""
    path = os.environ.get("QUANTML_MEMORY_TRACE")
    if not path:
        return
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * mmap.PAGESIZE / 2**20
    except OSError:  # not Linux: the peak only
        rss = float("nan")
    line = {
        "s": round(time.perf_counter() - _TRACE_START, 2),
        "at": label,
        "rss_mb": round(rss),
        "high_water_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


def trim(label: str | None = None) -> None:
    """Give freed memory back to the system: glibc's free heap pages and, when pyarrow is loaded, what
    its memory pool (mimalloc or jemalloc) keeps of freed buffers (reading a 5M-row parquet frame
    leaves about 0.8 GB there at 0.5 GB of frame). ``label``: the step about to start, for :func:`mark`."""
    if label is not None:
        mark(f"{label} (before trim)")
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    if label is not None:
        mark(label)
