"""Benchmark: one LightGBM fold fit (3 heads x 4 horizons) binning the matrix once per fit against
the scikit-learn wrappers re-binning it for every head (the implementation of the pinned commit
``PINNED``, loaded from git beside the current one), on the same matrices, one after the other in
one process, best of ``REPEATS``. Writes ``tests/benchmarks/results/lightgbm_bins.json``.
Run: ``pytest -m benchmark tests/benchmarks/test_bench_lightgbm_bins.py -s``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "lightgbm_bins.json"
PINNED = "35aa449"  # the last commit whose heads each re-bin the matrix
HORIZONS = ["1h", "4h", "1d", "7d"]
ROWS, FEATURES, REPEATS = 300_000, 80, 2


def _pinned_module(tmp: Path):
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PINNED}:quantml/models/lightgbm_model.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp / "lightgbm_model_pinned.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lightgbm_model_pinned", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _panel():
    import pandas as pd

    from quantml.models.base import PanelData

    rng = np.random.default_rng(0)
    n_sym = 10
    per = ROWS // n_sym
    X = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    signal = X[:, 0] * 0.02 + X[:, 1] * 0.01
    y = np.column_stack([signal * k + rng.standard_normal(ROWS) for k in (1, 2, 4, 8)])
    times = pd.date_range("2020-01-01", periods=per, freq="5min", tz="UTC")
    keys = pd.DataFrame({"symbol": np.tile([f"S{i}" for i in range(n_sym)], per), "timestamp": np.repeat(times, n_sym)})
    t0 = keys["timestamp"].to_numpy(dtype="datetime64[ns]")
    return PanelData(
        keys=keys,
        X=X,
        feature_names=[f"f{i}" for i in range(FEATURES)],
        feature_modalities={f"f{i}": "price" for i in range(FEATURES)},
        horizons=HORIZONS,
        y_ret=y,
        y_dir=(y > 0).astype(float),
        y_vol=np.abs(y) + 0.1,
        t0=t0,
        t1=t0 + np.timedelta64(1, "h"),
        symbol_codes=np.tile(np.arange(n_sym), per),
        symbols=[f"S{i}" for i in range(n_sym)],
    )


@pytest.mark.benchmark
def test_bench_lightgbm_bins(tmp_path):
    from quantml.models import lightgbm_model as current
    from quantml.models.base import SampleSet

    pinned = _pinned_module(tmp_path)
    data = _panel()
    train, valid = SampleSet(data, np.arange(int(0.8 * ROWS))), SampleSet(data, np.arange(int(0.8 * ROWS), ROWS))
    kw = dict(seed=0, n_estimators=60, min_child_samples=50, n_jobs=1, early_stopping_rounds=30)
    wall: dict[str, list[float]] = {"pinned": [], "current": []}
    forecasts = {}
    for _ in range(REPEATS):
        for name, module in (("pinned", pinned), ("current", current)):
            model = module.LightGBMForecaster(HORIZONS, **kw)
            start = time.perf_counter()
            model.fit(train, valid)
            wall[name].append(time.perf_counter() - start)
            forecasts[name] = model.predict(valid).expected_return
    best = {k: min(v) for k, v in wall.items()}
    figures = {
        "rows": ROWS,
        "features": FEATURES,
        "horizons": len(HORIZONS),
        "heads_per_fit": 3 * len(HORIZONS),
        "threads": 1,
        "pinned_commit": PINNED,
        "wall_seconds": wall,
        "best_wall_seconds": best,
        "speedup_pinned_over_current": best["pinned"] / best["current"],
        "identical_forecasts": bool(np.array_equal(forecasts["pinned"], forecasts["current"])),
        "python": sys.version.split()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert figures["identical_forecasts"]
    assert figures["speedup_pinned_over_current"] > 1.0
