"""backbone=distilled (quantml.models.distill) and the financial loss term (quantml.models.sequence.financial_loss)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from quantml.contracts import QuantmlInputError
from quantml.models.distill import (
    METRIC_LATENCY_STUDENT,
    METRIC_LATENCY_TEACHER,
    DistilledForecaster,
    DistilledStudent,
)
from quantml.models.sequence import TFTForecaster, TSMixerForecaster
from quantml.models.sequence.financial_loss import FinancialLoss, SumOfTerms
from quantml.validation.crossfit import crossfit_parts
from tests.helpers import TINY
from tests.unit.test_sequence import ARCH, FAST, HORIZONS, split_rows, toy_panel

TEACHER = dict(n_estimators=40, min_child_samples=10, n_jobs=1, early_stopping_rounds=10)
STUDENT = {**FAST, **ARCH["tsmixer"], "checkpoint_every_n_epochs": 0}


def labelled_panel():
    """The sequence tests' toy panel with real label intervals: t1 = t0 + 5 days (the longest horizon)."""
    panel = toy_panel()
    panel.t1 = panel.t0 + np.timedelta64(5, "D")
    return panel


def distilled(weight=1.0, **student):
    return DistilledForecaster(HORIZONS, seed=0, distill_weight=weight, teacher=TEACHER, student={**STUDENT, **student})


@pytest.fixture(scope="module")
def panel():
    return labelled_panel()


@pytest.fixture(scope="module")
def fitted(panel):
    tr, va, _ = split_rows()
    return distilled().fit(panel.subset(tr), panel.subset(va))


def test_teacher_targets_are_out_of_fold(panel, fitted):
    """Perturbing the labels of one cross-fit block leaves that block's teacher targets unchanged (they
    come from teachers fitted on the other blocks) and changes the other blocks' (their teachers saw it)."""
    tr, _, _ = split_rows()
    model = fitted
    base = model._oof_teacher_targets(panel.subset(tr), model.teacher_)
    parts = crossfit_parts(tr, panel.t0, panel.t1, model.crossfit_folds, model.embargo)
    _, block = parts[1]
    shaken = labelled_panel()
    rng = np.random.default_rng(7)
    shaken.y_ret[block] = np.where(np.isfinite(shaken.y_ret[block]), rng.normal(0, 0.5, (len(block), 2)), np.nan)
    moved = model._oof_teacher_targets(shaken.subset(tr), model.teacher_)
    assert np.isfinite(base[tr]).all(axis=1).mean() > 0.9  # nearly every training row has a teacher target
    np.testing.assert_array_equal(moved[block], base[block])
    others = np.setdiff1d(tr, block)
    assert not np.allclose(moved[others], base[others])
    assert np.isnan(base[np.setdiff1d(np.arange(panel.n_rows), tr)]).all()  # nothing outside the part
    # the embargo is the longest horizon
    assert model.embargo == pd.Timedelta("5d")


def test_zero_weight_is_the_plain_tsmixer_to_the_bit(panel):
    tr, va, te = split_rows()
    plain = TSMixerForecaster(HORIZONS, seed=0, **STUDENT).fit(panel.subset(tr), panel.subset(va))
    zero = distilled(0.0).fit(panel.subset(tr), panel.subset(va))
    a = zero.predict(panel.subset(te))
    b = plain.predict(panel.subset(te))
    for name in ("expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert zero.capacity_["epochs"] == plain.capacity_["epochs"]


def test_distillation_moves_the_student_and_serving_needs_no_teacher(panel, fitted):
    tr, va, te = split_rows()
    plain = TSMixerForecaster(HORIZONS, seed=0, **STUDENT).fit(panel.subset(tr), panel.subset(va))
    student = fitted.predict(panel.subset(te)).expected_return
    assert not np.array_equal(student, plain.predict(panel.subset(te)).expected_return)
    # the student learned towards its (out-of-fold) teacher targets: closer to them than the plain TSMixer
    targets = fitted.teacher_targets_[tr]
    ok = np.isfinite(targets)

    def gap(model):
        return float(np.mean((model.predict(panel.subset(tr)).expected_return[ok] - targets[ok]) ** 2))

    assert gap(fitted) < gap(plain)
    served = pickle.loads(pickle.dumps(fitted))
    assert not hasattr(served, "teacher_") and not hasattr(served, "teacher_targets_")
    np.testing.assert_array_equal(served.predict(panel.subset(te)).expected_return, student)
    assert not hasattr(fitted.student_, "teacher_targets_")  # the targets never travel with the student


def test_fold_metrics_compare_teacher_and_student_and_time_both(panel, fitted):
    _, _, te = split_rows()
    metrics = fitted.fold_metrics(panel.subset(te))
    for h in HORIZONS:
        assert -1 <= metrics[f"test_teacher_rank_ic/{h}"] <= 1 and -1 <= metrics[f"test_student_rank_ic/{h}"] <= 1
    assert metrics[METRIC_LATENCY_STUDENT] > 0 and metrics[METRIC_LATENCY_TEACHER] > 0
    assert set(fitted.run_metrics()) == {METRIC_LATENCY_STUDENT, METRIC_LATENCY_TEACHER}
    assert "distill_teacher_vs_student.png" in fitted.figures()


def test_capacity_is_the_students_epochs_plus_the_teachers_trees(panel, fitted):
    cap = fitted.capacity_
    assert cap["epochs"] == fitted.student_.capacity_["epochs"]
    assert {k for k in cap if k.startswith("teacher/")} == {f"teacher/{k}" for k in fitted.teacher_.capacity_}
    assert DistilledForecaster.capacity_grows_with_rows is False
    tr, va, _ = split_rows()
    refit = fitted.with_capacity(cap).fit(panel.subset(np.r_[tr, va]), None)
    assert refit.capacity_["epochs"] == cap["epochs"]
    assert all(refit.capacity_[k] == v for k, v in cap.items() if k.startswith("teacher/return"))


def test_bad_settings_are_refused():
    with pytest.raises(QuantmlInputError, match="crossfit_folds"):
        DistilledForecaster(HORIZONS, crossfit_folds=1)
    with pytest.raises(QuantmlInputError, match="distill_weight"):
        DistilledForecaster(HORIZONS, distill_weight=-1)
    with pytest.raises(QuantmlInputError, match="unknown"):
        DistilledForecaster(HORIZONS, student={"no_such_key": 1})
    with pytest.raises(QuantmlInputError, match="sharpe_surrogate"):
        TSMixerForecaster(HORIZONS, sharpe_surrogate="rank")
    with pytest.raises(QuantmlInputError, match="w_sharpe"):
        TSMixerForecaster(HORIZONS, w_sharpe=-0.1)


# ---- the financial loss term ------------------------------------------------------------------------
def _batch(y):
    n = len(y)
    return {"y_ret": y, "row": torch.arange(n), "mask": torch.ones(n, 4, dtype=torch.bool)}


@pytest.mark.parametrize("surrogate", ["tanh", "softmax"])
@pytest.mark.parametrize("kind", ["sharpe", "sortino"])
def test_financial_term_rewards_forecasts_that_trade_the_target(surrogate, kind):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(64, 2, generator=gen)
    y[0, 1] = float("nan")  # an unlabelled entry is left out
    term = FinancialLoss(1.0, surrogate, kind)
    aligned = term({"mean": y.nan_to_num()}, _batch(y))
    opposed = term({"mean": -y.nan_to_num()}, _batch(y))
    assert aligned < 0 < opposed  # minus the Sharpe: lower is better
    mean = torch.zeros(64, 2, requires_grad=True)
    term({"mean": mean}, _batch(y)).backward()
    assert torch.isfinite(mean.grad).all()
    # one gradient step along -grad raises the surrogate Sharpe
    assert term({"mean": -0.5 * mean.grad}, _batch(y)) < term({"mean": mean.detach()}, _batch(y))


def test_financial_cost_charges_the_turnover_of_consecutive_rows():
    y = torch.ones(8, 1) * 0.1
    flip = torch.tensor([1.0, -1.0] * 4).unsqueeze(-1)  # positions that flip every bar
    free = FinancialLoss(1.0, cost_bps=None)({"mean": 3 * flip}, _batch(y))
    costly = FinancialLoss(1.0, cost_bps=50.0, ret_scale=np.ones(1))({"mean": 3 * flip}, _batch(y))
    assert costly > free


def test_the_term_is_off_at_zero_and_composes_with_the_distillation_term():
    assert TSMixerForecaster(HORIZONS, **STUDENT)._extra_loss_fn() is None  # the loss of before, to the bit
    assert isinstance(TSMixerForecaster(HORIZONS, w_sharpe=0.2, **STUDENT)._extra_loss_fn(), FinancialLoss)
    both = DistilledStudent(HORIZONS, distill_weight=1.0, w_sharpe=0.2, **STUDENT)._extra_loss_fn()
    assert isinstance(both, SumOfTerms) and len(both.terms) == 2
    alone = DistilledStudent(HORIZONS, distill_weight=0.0, w_sharpe=0.2, **STUDENT)._extra_loss_fn()
    assert isinstance(alone, FinancialLoss)
    assert DistilledStudent(HORIZONS, distill_weight=0.0, **STUDENT)._extra_loss_fn() is None


def test_the_tft_trains_with_the_financial_term(panel):
    tr, va, te = split_rows()
    kw = {**FAST, **ARCH["tft"], "checkpoint_every_n_epochs": 0, "max_epochs": 2}
    plain = TFTForecaster(HORIZONS, seed=0, **kw).fit(panel.subset(tr), panel.subset(va))
    sharpe = TFTForecaster(HORIZONS, seed=0, w_sharpe=0.5, **kw).fit(panel.subset(tr), panel.subset(va))
    assert isinstance(sharpe._extra_loss_fn(), FinancialLoss)
    assert not np.array_equal(
        plain.predict(panel.subset(te)).expected_return, sharpe.predict(panel.subset(te)).expected_return
    )
    assert pickle.loads(pickle.dumps(sharpe)).w_sharpe == 0.5


# ---- a tiny quantml train run --------------------------------------------------------------------
TINY_DISTILLED = [
    *TINY,
    "backbone=distilled",
    "backbone.teacher.n_estimators=30",
    "backbone.teacher.n_jobs=1",
    "backbone.student.lookback=8",
    "backbone.student.hidden_size=8",
    "backbone.student.symbol_dim=4",
    "backbone.student.ff_size=16",
    "backbone.student.max_epochs=2",
    "backbone.student.limit_train_batches=2",
    "backbone.student.batch_size=64",
    "backbone.latency_repeats=2",
    "tracking.experiment=distill",
]


def test_a_tiny_distilled_train_run_finishes_and_logs_the_latencies(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.helpers.tiny_runs import temp_store, train_run

    uri, _ = temp_store(tmp_path)
    result = train_run(uri, TINY_DISTILLED)
    run = MlflowClient(uri).get_run(result.parent_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics[METRIC_LATENCY_STUDENT] > 0 and run.data.metrics[METRIC_LATENCY_TEACHER] > 0
    assert result.fold_metrics.filter(like="test_rank_ic").notna().all().all()


# the financial term on the real book (slow): tests/unit/test_financial_loss.py
