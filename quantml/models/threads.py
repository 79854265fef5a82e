"""How many threads a backbone trains on: the CPUs this process may use, shared by the jobs a
launcher runs side by side.

``quantml train -m hydra/launcher=joblib hydra.launcher.n_jobs=4`` runs four jobs at once; each
would otherwise start one thread per core of the machine (LightGBM's and torch's default), and
four jobs on two cores then fight over eight threads. The train entry point records the launcher's
parallel jobs in ``QUANTML_PARALLEL_JOBS`` (1 for a single run); a backbone configured with
``n_jobs: auto`` trains on ``usable_cpus() // parallel_jobs()`` threads (at least one).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from quantml.contracts.cpus import PARALLEL_JOBS_ENV, parallel_jobs, usable_cpus

__all__ = [
    "PARALLEL_JOBS_ENV",
    "AUTO",
    "launcher_parallel_jobs",
    "parallel_jobs",
    "resolve_threads",
    "torch_threads",
    "usable_cpus",
]

AUTO = "auto"


def resolve_threads(n_jobs) -> int:
    """``n_jobs`` of a backbone config as a thread count: ``"auto"`` (or None) = this job's share of the
    usable CPUs, ``-1`` = every usable CPU, a positive int = itself."""
    if n_jobs is None or str(n_jobs).strip().lower() == AUTO:
        return max(1, usable_cpus() // parallel_jobs())
    problem = f"backbone.n_jobs={n_jobs!r}: use auto, -1 (every CPU) or a positive number of threads"
    try:
        value = int(n_jobs)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if value == -1:
        return usable_cpus()
    if value < 1:
        raise ValueError(problem)
    return value


def launcher_parallel_jobs(launcher) -> int:
    """Jobs a Hydra launcher config (``hydra.launcher``) runs at once: joblib's ``n_jobs`` (-1: every
    CPU). Anything else 1: a SLURM task runs on CPUs of its own (its affinity mask says how many)."""
    if launcher is None:
        return 1
    target = str(launcher.get("_target_", "") or "")
    if "joblib" in target.lower():
        n = int(launcher.get("n_jobs", 1) or 1)
        return usable_cpus() if n < 0 else max(1, n)
    return 1


@contextmanager
def torch_threads(n: int | None):
    """Run the block on ``n`` torch CPU threads (None or 0: the current count, at most the CPUs), then
    restore the count: a fit or predict of one backbone never changes the threads of the next."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n or min(before, os.cpu_count() or before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
