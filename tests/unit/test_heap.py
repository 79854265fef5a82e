"""``keep_freed_memory``: inside it a freed block is reused without page faults; outside it (and after
it) a large block comes back from the OS and faults in again.

Measured in a fresh interpreter: in a worker that ran fits before, glibc's heap may already hold a free
chunk as large as the block (a fit's activations, below a chunk still in use), and a request is served
from a free chunk before any threshold is consulted."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantml.models import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator only")
BLOCK = 64 << 20  # above glibc's mmap ceiling: outside the context, every allocation is a fresh mapping
PAGES = BLOCK // 4096


def _faults_of_a_second_allocation() -> int:
    first = torch.empty(BLOCK // 4)
    first.fill_(1.0)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.empty(BLOCK // 4)
    second.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_freed_blocks_are_reused_inside_and_returned_outside():
    root = Path(__file__).resolve().parents[2]
    check = "from tests.unit.test_heap import check_reuse_in_this_process as c; c()"
    done = subprocess.run([sys.executable, "-c", check], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def check_reuse_in_this_process() -> None:
    assert _faults_of_a_second_allocation() > PAGES // 2  # the block went back to the OS
    with heap.keep_freed_memory():
        # the heap settles within a few rounds (as a fit's first steps do), then reuses the block
        assert max([_faults_of_a_second_allocation() for _ in range(8)][-2:]) < PAGES // 10
        with heap.keep_freed_memory():
            pass
        assert _faults_of_a_second_allocation() < PAGES // 10  # the inner block left the outer one in force
    assert _faults_of_a_second_allocation() > PAGES // 2  # usual thresholds again
