"""LightGBM heads grown on one binned dataset per fit: the scikit-learn wrappers' trees to the bit,
the bins never pickled, and the thread count resolved from the CPUs a job may use."""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pytest

from quantml.models import threads
from quantml.models.base import SampleSet
from quantml.models.lightgbm_model import LightGBMForecaster
from tests.unit.test_models_tabular import HORIZONS, planted_panel


def _parts():
    data = planted_panel()
    order = np.argsort(data.t0, kind="stable")
    n = len(order)
    return data, order[: int(0.6 * n)], order[int(0.6 * n) : int(0.8 * n)], order[int(0.8 * n) :]


def _wrapper(model: LightGBMForecaster, classifier: bool):
    params = {**model.params, "n_jobs": 1}
    return lgb.LGBMClassifier(**params) if classifier else lgb.LGBMRegressor(**params)


def test_heads_equal_the_scikit_learn_wrappers_fitted_one_by_one():
    data, tr, va, te = _parts()
    model = LightGBMForecaster(HORIZONS, seed=3, n_estimators=80, min_child_samples=20, n_jobs=1)
    model.fit(SampleSet(data, tr), SampleSet(data, va))
    # the fit reads its (time-ordered) rows in the matrix's order (lightgbm_model.in_matrix_order)
    tr, va = np.sort(tr), np.sort(va)
    X, Xv, Xt = data.X[tr], data.X[va], data.X[te]
    stop = [lgb.early_stopping(model.early_stopping_rounds, first_metric_only=True, verbose=False)]
    for j in range(len(HORIZONS)):
        y, yv = np.nan_to_num(data.y_ret[tr, j]), np.nan_to_num(data.y_ret[va, j])
        ref = _wrapper(model, False).fit(X, y, eval_X=(Xv,), eval_y=(yv,), callbacks=stop)
        assert np.array_equal(model.return_models_[j].predict(Xt), ref.predict(Xt))
        d, dv = data.y_dir[tr, j].astype(int), data.y_dir[va, j].astype(int)
        ref = _wrapper(model, True).fit(X, d, eval_X=(Xv,), eval_y=(dv,), callbacks=stop)
        assert np.array_equal(model.direction_models_[j].predict_proba(Xt), ref.predict_proba(Xt))
        assert model.direction_models_[j].best_iteration_ == ref.best_iteration_


def test_fixed_capacity_refit_and_pickle_hold_no_bins():
    data, tr, va, te = _parts()
    model = LightGBMForecaster(HORIZONS, seed=3, n_estimators=80, min_child_samples=20, n_jobs=1)
    model.fit(SampleSet(data, tr), SampleSet(data, va))
    assert "_binned" not in model.__dict__
    final = model.with_capacity(model.capacity_).fit(SampleSet(data, np.concatenate([tr, va])))
    assert final.capacity_ == model.capacity_  # each head grew exactly its trees
    again = pickle.loads(pickle.dumps(final))
    a, b = final.predict(SampleSet(data, te)), again.predict(SampleSet(data, te))
    assert np.array_equal(a.expected_return, b.expected_return) and np.array_equal(a.prob_up, b.prob_up)


def test_thread_count_is_this_jobs_share_of_the_cpus(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setenv(threads.PARALLEL_JOBS_ENV, "3")
    assert threads.resolve_threads("auto") == 2
    assert threads.resolve_threads(-1) == 8 and threads.resolve_threads(5) == 5
    monkeypatch.setenv(threads.PARALLEL_JOBS_ENV, "16")
    assert threads.resolve_threads("auto") == 1
    monkeypatch.delenv(threads.PARALLEL_JOBS_ENV)
    assert threads.resolve_threads(None) == 8
    assert threads.launcher_parallel_jobs({"_target_": "hydra_plugins.hydra_joblib_launcher.X", "n_jobs": 4}) == 4
    assert threads.launcher_parallel_jobs({"_target_": "hydra_plugins.hydra_joblib_launcher.X", "n_jobs": -1}) == 8
    assert threads.launcher_parallel_jobs({"_target_": "hydra_plugins.hydra_submitit_launcher.SlurmLauncher"}) == 1
    with pytest.raises(ValueError, match="backbone.n_jobs='many'"):
        LightGBMForecaster(HORIZONS, n_jobs="many")


def test_thread_count_does_not_change_the_trees():
    data, tr, va, te = _parts()
    fits = [
        LightGBMForecaster(HORIZONS, seed=3, n_estimators=40, min_child_samples=20, n_jobs=n).fit(
            SampleSet(data, tr), SampleSet(data, va)
        )
        for n in (1, 2)
    ]
    assert [m.threads_ for m in fits] == [1, 2]
    a, b = (m.predict(SampleSet(data, te)) for m in fits)
    assert np.array_equal(a.expected_return, b.expected_return) and np.array_equal(a.vol_forecast, b.vol_forecast)
