"""One seed fixes every result: same seed -> identical predictions and metrics; the seed is logged."""

from __future__ import annotations

import mlflow
import pandas as pd

from quantml.experiment import run_experiment
from tests.helpers import TINY


def test_same_seed_same_results_other_seed_other_results(tracking_uri, compose_cfg):
    base = [
        *TINY,
        "backbone=lightgbm",
        "backbone.n_estimators=30",
        "tracking.log_model=false",
        "tracking.experiment=repro",
    ]
    first = run_experiment(compose_cfg([*base, "seed=7"]))
    second = run_experiment(compose_cfg([*base, "seed=7"]))
    other = run_experiment(compose_cfg([*base, "seed=8"]))
    pd.testing.assert_frame_equal(first.oos, second.oos)
    # NaN-aware (a dollar-neutral book has no information ratio): equal values, NaN where NaN
    pd.testing.assert_series_equal(pd.Series(first.metrics), pd.Series(second.metrics), check_exact=True)
    assert not first.oos["expected_return"].equals(other.oos["expected_return"])
    run = mlflow.MlflowClient().get_run(first.parent_run_id)
    assert run.data.tags["quantml.seed"] == "7" and run.data.params["seed"] == "7"
    assert run.data.params["data.seed"] == "7"  # the synthetic generator follows the top-level seed


def test_a_fold_scored_before_the_next_fit_gives_the_same_figures(tracking_uri, compose_cfg, monkeypatch):
    """Large fold frames are scored before the next fold fits (``folds.OVERLAP_MAX_ROWS``), small ones
    while it fits: the same fold metrics and OOS frame either way."""
    import quantml.experiment.folds as folds

    waits = []
    real_wait = folds.wait
    monkeypatch.setattr(folds, "wait", lambda fs: waits.append(len(fs)) or real_wait(fs))
    overrides = [*TINY, "backbone=lightgbm", "backbone.n_estimators=20", "tracking.log_model=false"]
    overlapped = run_experiment(compose_cfg(overrides))
    assert waits == []
    monkeypatch.setattr(folds, "OVERLAP_MAX_ROWS", 0)
    serial = run_experiment(compose_cfg(overrides))
    assert waits == [1, 1]  # before folds 1 and 2
    pd.testing.assert_frame_equal(overlapped.fold_metrics, serial.fold_metrics)
    pd.testing.assert_frame_equal(overlapped.oos, serial.oos)
