"""Benchmark: ``quantml train`` on the 8.4M-row panel, LightGBM walk-forward, wall time and peak RSS.

Reads the partitioned parquet cache of ``test_bench_scale_features.py`` (10 symbols x 841,536 5-minute
bars, every stream joined; generated once under ``$QUANTML_BENCH_CACHE``, default ``/tmp/quantml-bench``)
as ``data=parquet data.path=<cache>`` (a hive-partitioned directory is one pyarrow dataset, docs/data.md)
and trains ``backbone=lightgbm validation=walk_forward horizon=intraday feature_set=full`` with the trees
capped (``backbone.n_estimators``, early stopping as configured) so the run takes about an hour at most
on 2 cores. A sampler polls ``/proc`` for the summed RSS of the whole process tree; the kernel's
high-water mark of the largest process (``ru_maxrss`` of the children) is recorded beside it.
Target: peak RSS <= 8 GB, the out-of-sample frame and the report included. Writes
``tests/benchmarks/results/train_scale.json``.

Run (on a shared machine, under the heavy-job lock):
``flock /tmp/quantml-heavy.lock .venv/bin/python -m pytest -m benchmark tests/benchmarks/test_bench_train_scale.py -s``.
``QUANTML_BENCH_ROWS=1000000`` runs a smaller cached panel (its own cache folder), ``QUANTML_BENCH_TREES``
caps the trees (default 40).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.benchmarks.test_bench_scale_features import FULL_BARS, N_SYMBOLS, _cached_panel
from tests.helpers import train_cli

RESULTS = Path(__file__).resolve().parent / "results" / "train_scale.json"
TARGET_PEAK_GB = 8.0
TREES = int(os.environ.get("QUANTML_BENCH_TREES", "40"))


def _n_bars() -> int:
    rows = os.environ.get("QUANTML_BENCH_ROWS")
    return FULL_BARS if not rows else max(1000, int(float(rows)) // N_SYMBOLS)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _tree_rss_mb(root: int) -> float:
    """Summed resident set of ``root`` and its descendants (MB)."""
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next((int(x.split()[1]) for x in fh if x.startswith("VmRSS:")), 0) / 1024
        except OSError:
            continue
        stack.extend(_children(pid))
    return total


class TreeRssSampler(threading.Thread):
    """Polls a process tree's summed RSS every ``interval`` seconds; ``peak_mb`` and a coarse trace."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_mb, self.trace, self.done = 0.0, [], threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.done.is_set():
            rss = _tree_rss_mb(self.pid)
            self.peak_mb = max(self.peak_mb, rss)
            elapsed = time.perf_counter() - start
            if not self.trace or elapsed - self.trace[-1][0] >= 30:
                self.trace.append((round(elapsed, 1), round(rss)))
            self.done.wait(self.interval)


def _peak_step(trace: Path, high_water_mb: float) -> dict:
    """The run's step marks (``quantml.features.memory.mark``) and the two between which its
    high-water mark (``high_water_mb``, the process's own at its exit) was reached."""
    if not trace.exists():
        return {}
    marks = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    if not marks:
        return {}
    top = max(m["high_water_mb"] for m in marks)
    if high_water_mb > top + 1:  # after the last mark
        return {"peak_between_steps": [marks[-1]["at"], "exit"], "memory_marks": marks}
    i = next(k for k, m in enumerate(marks) if m["high_water_mb"] == top)
    return {
        "peak_between_steps": [marks[i - 1]["at"] if i else "start", marks[i]["at"]],
        "memory_marks": marks,
    }


# Walk-forward settings for panels of about a year (1M rows of 10 symbols' 5-minute bars): the 7d horizon
# needs longer inner validation slices than five default splits give (fold 0's slice would hold under 2
# outcomes of 7 days, and no early-stopping row once its calibration part is purged). The 8.4M-row panel
# (8 years) runs the defaults.
SHORT_PANEL_VALIDATION = [
    "validation=walk_forward",
    "validation.n_splits=3",
    "validation.valid_fraction=0.35",
    "validation.min_inner_outcomes=2",
]


def overrides(data: Path, output: Path, n_bars: int = FULL_BARS) -> list[str]:
    validation = ["validation=walk_forward"] if n_bars >= FULL_BARS else SHORT_PANEL_VALIDATION
    return [
        "data=parquet",
        f"data.path={data}",
        "backbone=lightgbm",
        f"backbone.n_estimators={TREES}",
        *validation,
        "horizon=intraday",
        "feature_set=full",
        "print_report=false",
        f"hydra.run.dir={output}",
    ]


@pytest.mark.benchmark
def test_bench_train_scale(tmp_path):
    from tests.helpers.registry_fakes import sqlite_store

    n_bars = _n_bars()
    data = _cached_panel(n_bars)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": sqlite_store(tmp_path),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONWARNINGS": "ignore",
        "QUANTML_MEMORY_TRACE": str(tmp_path / "memory.jsonl"),  # quantml.features.memory.mark
    }
    cmd = [train_cli(), *overrides(data, tmp_path / "out", n_bars)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeRssSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate(timeout=3 * 3600)
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    max_child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "rows": N_SYMBOLS * n_bars,
        "n_symbols": N_SYMBOLS,
        "n_bars_per_symbol": n_bars,
        "cache": str(data),
        "command": ["quantml", "train", *overrides(data, Path("<tmp>/out"), n_bars)],
        "returncode": proc.returncode,
        "wall_seconds": wall,
        "peak_rss_gb": {
            "process_tree_sampled": sampler.peak_mb / 1024,
            "largest_process_high_water": max_child_mb / 1024,
        },
        "rss_trace_mb": sampler.trace,
        **_peak_step(tmp_path / "memory.jsonl", max_child_mb),
        "target_peak_gb": TARGET_PEAK_GB,
        "within_target": max(sampler.peak_mb, max_child_mb) / 1024 <= TARGET_PEAK_GB,
        "cpu_count": os.cpu_count(),
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if proc.returncode != 0:
        result["output_tail"] = output[-4000:]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert proc.returncode == 0, output[-4000:]
