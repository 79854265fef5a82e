"""The packaged experiment presets still run on this quantml: ``smoke`` end to end, and every
fold of ``baselines`` (with its lockbox) passes the minimum-data checks before any model is fitted."""

from __future__ import annotations

import pytest

from quantml.experiment import run_experiment
from quantml.experiment.lockbox import resolve_lockbox
from quantml.experiment.prepare import prepare_data, reserve_lockbox
from quantml.validation import make_splitter


def test_smoke_preset_runs_end_to_end(tracking_uri, compose_cfg):
    result = run_experiment(compose_cfg(["experiment=smoke", "print_report=false", "tracking.log_model=false"]))
    assert result.fold_metrics.shape[0] == 3
    assert result.holdout is not None and len(result.holdout)


@pytest.mark.parametrize("backbone", ["ridge"])
def test_baselines_preset_folds_hold_enough_data(compose_cfg, backbone):
    cfg = compose_cfg(["experiment=baselines", f"backbone={backbone}"])
    prep = prepare_data(cfg)
    splitter = make_splitter(cfg.validation)
    prep = reserve_lockbox(prep, resolve_lockbox(cfg.validation, prep, None), splitter.embargo)
    t0, t1 = prep.data.t0[prep.samples], prep.data.t1[prep.samples]
    folds = splitter.split(t0, t1, calendar=prep.calendar)
    for fold in folds:
        splitter.inner_split(fold, t0, t1)  # raises below validation.min_inner_outcomes
    assert len(folds) == cfg.validation.n_splits and len(prep.holdout_samples)
