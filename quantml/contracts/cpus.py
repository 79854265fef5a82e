"""How many CPUs a job may use: the process's affinity mask shared by the jobs a launcher runs side by side.

``quantml train -m hydra/launcher=joblib hydra.launcher.n_jobs=4`` runs four jobs at once. The train entry
point records that count in ``QUANTML_PARALLEL_JOBS`` (1 for a single run), and every step that runs
threads (a backbone's fit, the feature build) takes ``job_threads()`` of them, so four jobs on two cores
do not start eight threads each.
"""

from __future__ import annotations

import os

PARALLEL_JOBS_ENV = "QUANTML_PARALLEL_JOBS"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a SLURM task's ``cpus_per_task``), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def parallel_jobs() -> int:
    """Jobs the launcher runs at once (``QUANTML_PARALLEL_JOBS``; 1 when unset or unreadable)."""
    try:
        return max(1, int(os.environ.get(PARALLEL_JOBS_ENV, "1")))
    except ValueError:
        return 1


def job_threads() -> int:
    """This job's share of the usable CPUs (at least one)."""
    return max(1, usable_cpus() // parallel_jobs())
