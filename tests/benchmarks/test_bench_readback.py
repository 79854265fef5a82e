"""Benchmark: reading a staged prediction frame back (``quantml.experiment.artifacts.read_staged_oos``)
one column at a time against a whole-file ``read_parquet`` (converted with ``split_blocks`` and
``self_destruct``, the earlier implementation), on the same file: a frame shaped like the final model's
out-of-fold frame of the 8.4M-row panel (30M long rows, the calibrator's columns), each read in a fresh
process, alternating, ``REPEATS`` each. Peak RSS (``VmHWM``) over the process's own after its imports.
Writes ``tests/benchmarks/results/readback.json``. Run:
``pytest -m benchmark tests/benchmarks/test_bench_readback.py -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "readback.json"
ROWS = int(float(os.environ.get("QUANTML_BENCH_READBACK_ROWS", 30_000_000)))
REPEATS = 2

READ = """
import json, sys, time
import pandas as pd
import pyarrow.parquet
from quantml.experiment.artifacts import read_staged_oos
from quantml.features.memory import trim
mode, path = sys.argv[1], sys.argv[2]


def high_water_mb():  # this process's own (ru_maxrss would start from the forking parent's)
    with open("/proc/self/status") as fh:
        return next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:")) / 1024


trim()
start = high_water_mb()
t = time.perf_counter()
if mode == "whole":
    frame = pd.read_parquet(path, to_pandas_kwargs={"split_blocks": True, "self_destruct": True})
    trim()
else:
    frame = read_staged_oos(path)
print(json.dumps({
    "seconds": time.perf_counter() - t,
    "peak_over_start_mb": high_water_mb() - start,
    "frame_mb": frame.memory_usage(deep=True).sum() / 2**20,
}))
"""


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    horizon = pd.Categorical.from_codes(np.repeat(np.arange(4), n // 4), categories=["1d", "1h", "4h", "7d"])
    columns = {"horizon": horizon, "prob_up": rng.random(len(horizon))}
    for name in ("q10", "q50", "q90", "expected_return", "vol_forecast", "prob_up_raw"):
        columns[name] = rng.standard_normal(len(horizon)).astype(np.float32)
    columns["ret"] = rng.standard_normal(len(horizon))
    columns["dir"] = (rng.random(len(horizon)) > 0.5).astype(np.float32)
    return pd.DataFrame(columns)


def _read(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", READ, mode, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark
def test_bench_readback(tmp_path):
    from quantml.experiment.artifacts import write_parquet

    path = tmp_path / "oof.parquet"
    frame = _frame(ROWS)
    write_parquet(frame, path)
    del frame
    runs = {"whole_file": [], "by_column": []}
    for _ in range(REPEATS):
        runs["whole_file"].append(_read("whole", path))
        runs["by_column"].append(_read("columns", path))
    best = {side: min(r["peak_over_start_mb"] for r in rs) for side, rs in runs.items()}
    result = {
        "rows": ROWS,
        "frame_mb": runs["by_column"][0]["frame_mb"],
        "runs": runs,
        "peak_over_start_mb": best,
        "peak_ratio_by_column_vs_whole_file": best["by_column"] / best["whole_file"],
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert best["by_column"] < best["whole_file"]
