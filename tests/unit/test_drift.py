"""Prediction drift: PSI of each fold's forecasts against the previous fold's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.evaluation import population_stability_index, prediction_drift


def test_psi_is_zero_for_identical_samples():
    x = np.random.default_rng(0).normal(size=5000)
    assert population_stability_index(x, x) == 0.0
    assert population_stability_index(x, x.copy()[::-1]) == 0.0


def test_psi_small_for_same_distribution_large_for_shifted():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=20000)
    assert population_stability_index(ref, rng.normal(size=20000)) < 0.01
    assert population_stability_index(ref, rng.normal(0.25, 1, 20000)) == pytest.approx(0.0625, abs=0.02)
    assert population_stability_index(ref, rng.normal(1.0, 1, 20000)) > 0.25
    assert population_stability_index(ref, rng.normal(0.0, 3, 20000)) > 0.25


def test_psi_hand_computed_two_bins():
    ref = np.array([0.0, 0.0, 1.0, 1.0])  # median 0.5 -> bins (-inf, .5], (.5, inf): 50% / 50%
    cur = np.array([0.0, 1.0, 1.0, 1.0])  # 25% / 75%
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert population_stability_index(ref, cur, bins=2) == pytest.approx(expected)


def test_psi_ignores_nan_and_rejects_bad_bins():
    x = np.r_[np.random.default_rng(2).normal(size=100), np.nan]
    assert population_stability_index(x, x) == 0.0
    assert np.isnan(population_stability_index([], x))
    with pytest.raises(QuantmlInputError, match="bins"):
        population_stability_index(x, x, bins=1)


def test_prediction_drift_compares_each_fold_with_the_previous():
    rng = np.random.default_rng(3)
    parts = []
    for fold, shift in enumerate([0.0, 0.0, 2.0]):
        for h in ("1d", "7d"):
            parts.append(pd.DataFrame({"fold": fold, "horizon": h, "expected_return": rng.normal(shift, 1, 4000)}))
    drift = prediction_drift(pd.concat(parts, ignore_index=True))
    assert list(drift.index) == [0, 1, 2]
    assert list(drift.columns) == ["test_psi/1d", "test_psi/7d"]
    assert drift.loc[0].isna().all()
    assert (drift.loc[1] < 0.02).all() and (drift.loc[2] > 1.0).all()
    with pytest.raises(QuantmlInputError, match="'fold'"):
        prediction_drift(parts[0].drop(columns="fold"))
