"""Benchmark: synthetic load + full feature set + 4-horizon labels on ~1M rows (10 x 100k 5m bars).

Runs the build in a subprocess so its peak RSS is its own; writes
``tests/benchmarks/results/features.json``. Run: ``pytest -m benchmark tests/benchmarks/test_bench_features.py -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "features.json"

SCRIPT = r"""
import json, resource, sys, time
from omegaconf import OmegaConf
t0 = time.perf_counter()
from quantml.data import join_streams, validate_panel
from quantml.data.synthetic import generate_synthetic
from quantml.features import build_features
from quantml.labels import make_labels
n_symbols, n_bars = int(sys.argv[1]), int(sys.argv[2])
t_import = time.perf_counter() - t0
wall, cpu = {}, {}
def timed(name, fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    wall[name], cpu[name] = time.perf_counter() - w, time.process_time() - c
    return out
syn = timed("generate", lambda: generate_synthetic("5m", n_symbols, n_bars, seed=0))
joined = timed("join_streams", lambda: join_streams(syn.bars, syn.streams))
panel = timed("validate", lambda: validate_panel(joined))
del syn, joined
rss_panel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = OmegaConf.load(sys.argv[3])
fm = timed("features", lambda: build_features(panel, cfg))
lab = timed("labels", lambda: make_labels(panel, ["1h", "4h", "1d", "7d"], 0.001))
rows = len(panel)
print(json.dumps({
    "rows": rows, "n_symbols": n_symbols, "n_bars_per_symbol": n_bars, "freq": "5m",
    "n_features": fm.frame.shape[1], "n_horizons": 4, "n_panel_columns": panel.shape[1],
    "wall_seconds": {"import": t_import, **wall},
    "cpu_seconds": cpu,
    "rows_per_second_wall": {"generate+join+validate": rows / (wall["generate"] + wall["join_streams"]
                                                               + wall["validate"]),
                             "features": rows / wall["features"], "labels": rows / wall["labels"],
                             "features+labels": rows / (wall["features"] + wall["labels"])},
    "rows_per_second_cpu": {"generate+join+validate": rows / (cpu["generate"] + cpu["join_streams"]
                                                              + cpu["validate"]),
                            "features": rows / cpu["features"], "labels": rows / cpu["labels"],
                            "features+labels": rows / (cpu["features"] + cpu["labels"])},
    "feature_cells_per_second_cpu": rows * fm.frame.shape[1] / cpu["features"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_rss_after_load_mb": rss_panel / 1024,
    "feature_matrix_mb": fm.frame.memory_usage(deep=False).sum() / 2**20,
}))
"""


@pytest.mark.benchmark
def test_bench_features_1m_rows():
    n_symbols, n_bars = 10, 100_000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(n_symbols),
            str(n_bars),
            str(REPO / "quantml" / "conf" / "feature_set" / "full.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=1800,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["cpu_count"] = os.cpu_count()
    res["load_average_1m"] = os.getloadavg()[0]  # the machine may be shared: wall times vary, cpu times less
    res["python"] = sys.version.split()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    assert res["rows"] == n_symbols * n_bars
    assert res["n_features"] > 60
