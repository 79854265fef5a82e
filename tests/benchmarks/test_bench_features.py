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
import numpy as np
from omegaconf import OmegaConf
t0 = time.perf_counter()
from quantml.data import load_panel, join_streams, validate_panel
from quantml.data.synthetic import generate_synthetic
from quantml.features import build_features
from quantml.labels import make_labels
n_symbols, n_bars = int(sys.argv[1]), int(sys.argv[2])
t_import = time.perf_counter() - t0
t = time.perf_counter(); syn = generate_synthetic("5m", n_symbols, n_bars, seed=0); t_gen = time.perf_counter() - t
t = time.perf_counter(); joined = join_streams(syn.bars, syn.streams); t_join = time.perf_counter() - t
t = time.perf_counter(); panel = validate_panel(joined); t_val = time.perf_counter() - t
rss_panel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = OmegaConf.load(sys.argv[3])
t = time.perf_counter(); fm = build_features(panel, cfg); t_feat = time.perf_counter() - t
t = time.perf_counter(); lab = make_labels(panel, ["1h", "4h", "1d", "7d"], 0.001); t_lab = time.perf_counter() - t
rows = len(panel)
print(json.dumps({
    "rows": rows, "n_symbols": n_symbols, "n_bars_per_symbol": n_bars, "freq": "5m",
    "n_features": fm.frame.shape[1], "n_horizons": 4, "n_panel_columns": panel.shape[1],
    "seconds": {"import": t_import, "generate": t_gen, "join_streams": t_join, "validate": t_val,
                "features": t_feat, "labels": t_lab},
    "rows_per_second": {"generate+join+validate": rows / (t_gen + t_join + t_val),
                        "features": rows / t_feat, "labels": rows / t_lab,
                        "features+labels": rows / (t_feat + t_lab)},
    "feature_cells_per_second": rows * fm.frame.shape[1] / t_feat,
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
        [sys.executable, "-c", SCRIPT, str(n_symbols), str(n_bars),
         str(REPO / "quantml" / "conf" / "feature_set" / "full.yaml")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["cpu_count"] = os.cpu_count()
    res["python"] = sys.version.split()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    assert res["rows"] == n_symbols * n_bars
    assert res["n_features"] > 60
