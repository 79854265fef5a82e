"""Residual-gate fusion (quantml.models.fusion): the gated text residual around tabular and sequence
backbones, its diagnostic columns in the prediction contract, and its fold metrics and figure."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import FORECAST_FIELDS, PREDICTION_COLUMNS, QuantmlInputError
from quantml.contracts.schema import DIAGNOSTIC_FIELDS, prediction_columns
from quantml.evaluation.diagnostics import diagnostic_metrics
from quantml.models.fusion import ResidualGateForecaster, TextColumns, wrap_fusion
from quantml.models.lightgbm_model import LightGBMForecaster
from quantml.models.ridge import RidgeForecaster
from tests.helpers.text_panels import HORIZONS, rank_ic, split_in_time, text_panel


def ridge():
    return RidgeForecaster(HORIZONS, seed=1, alpha=1.0)


def lightgbm():
    return LightGBMForecaster(HORIZONS, seed=1, n_estimators=60, min_child_samples=20, n_jobs=1)


def fit_fusion(data, make=ridge, **kw):
    train, test = split_in_time(data)
    model = ResidualGateForecaster(make(), **kw).fit(data.subset(train))
    return model, train, test


def without_text(data, rows):
    """``data`` with text missing on ``rows``: text columns NaN, the missing flag set."""
    X = data.X.copy()
    X[rows, 2:4] = np.nan
    X[rows, 4] = 1.0
    import dataclasses

    return dataclasses.replace(data, X=X)


def test_text_columns_rule():
    data = text_panel(n_per_symbol=50, n_symbols=2)
    cols = TextColumns.of(data.feature_names, data.feature_modalities)
    assert cols.names_of("base") == ["f0", "f1"]
    assert cols.names_of("activity") == ["social_velocity"]
    assert cols.names_of("content") == ["social_velocity", "sentiment"]
    assert cols.names_of("flags") == ["social_sentiment_missing"]
    X = data.X.copy()
    X[0, 4] = 1.0  # flag set
    X[1, 2:4] = np.nan  # no content
    avail = cols.available(X)
    assert not avail[0] and not avail[1]
    np.testing.assert_array_equal(avail[2:], data.X[2:, 4] == 0)


def test_fusion_recovers_planted_text_effect_in_high_activity_windows():
    data = text_panel()
    model, _, test = fit_fusion(data)
    fc = model.predict(data.subset(test))
    base = model.base_.predict(model._view(data).subset(test))
    high = data.X[test, 2] > 0.85
    gate = fc.diagnostics["gate"][:, 0]
    assert gate[high].mean() > 0.5 > gate[~high].mean()
    for j in range(len(HORIZONS)):
        y, t = data.y_ret[test][high, j], data.t0[test][high]
        fused_ic, base_ic = rank_ic(fc.expected_return[high, j], y, t), rank_ic(base.expected_return[high, j], y, t)
        assert fused_ic > base_ic + 0.05, (j, fused_ic, base_ic)
    assert np.all(fc.q10 <= fc.q50) and np.all(fc.q50 <= fc.q90)
    assert np.all((fc.diagnostics["text_contribution"] >= 0) & (fc.diagnostics["text_contribution"] <= 1))


@pytest.mark.parametrize("make", [ridge, lightgbm], ids=["ridge", "lightgbm"])
def test_noise_text_keeps_gate_closed_and_error_no_worse(make):
    data = text_panel(noise_text=True)
    model, _, test = fit_fusion(data, make)
    fc = model.predict(data.subset(test))
    base = model.base_.predict(model._view(data).subset(test))
    assert fc.diagnostics["gate"].mean() < 0.1
    y = data.y_ret[test]
    mse_fused, mse_base = np.mean((fc.expected_return - y) ** 2), np.mean((base.expected_return - y) ** 2)
    assert mse_fused <= mse_base * 1.01


@pytest.mark.parametrize("make", [ridge, lightgbm], ids=["ridge", "lightgbm"])
def test_text_missing_at_serving_gives_the_base(make):
    data = text_panel()
    model, _, test = fit_fusion(data, make)
    gone = without_text(data, test)
    fc = model.predict(gone.subset(test))
    base = model.base_.predict(model._view(data).subset(test))
    for name in FORECAST_FIELDS:
        np.testing.assert_allclose(getattr(fc, name), getattr(base, name), rtol=0, atol=1e-9)
    assert np.all(fc.diagnostics["gate"] == 0) and np.all(fc.diagnostics["text_contribution"] == 0)
    # the gate does open on the same rows with their text
    assert model.predict(data.subset(test)).diagnostics["gate"].max() > 0.5


def _no_text_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "the features have no text" in r.getMessage()]


def test_no_text_features_means_the_base_exactly(caplog, monkeypatch):
    import dataclasses

    from quantml.models.fusion import text as fusion_text

    monkeypatch.setattr(fusion_text, "_WARNED_NO_TEXT", set())

    data = text_panel(n_per_symbol=300, n_symbols=4)
    keep = [0, 1]
    no_text = dataclasses.replace(
        data,
        X=data.X[:, keep].copy(),
        feature_names=["f0", "f1"],
        feature_modalities={"f0": "price", "f1": "price"},
    )
    train, test = split_in_time(no_text)
    with caplog.at_level("WARNING", logger="quantml.models.fusion.text"):
        ResidualGateForecaster(ridge()).fit(data.subset(train))  # with text: no warning
        assert _no_text_warnings(caplog) == []
        fused = ResidualGateForecaster(lightgbm()).fit(no_text.subset(train))
        ResidualGateForecaster(lightgbm()).fit(no_text.subset(train))  # the next fold's fit: said once
    (said,) = _no_text_warnings(caplog)  # one line, naming what enables text
    assert "data.text_stream=true" in said and "feature_set=full" in said and "ablation=no_text" in said
    plain = lightgbm().fit(no_text.subset(train))
    a, b = fused.predict(no_text.subset(test)), plain.predict(no_text.subset(test))
    for name in FORECAST_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert np.all(a.diagnostics["gate"] == 0)
    assert fused.capacity_ == plain.capacity_


def test_fusion_pickles_copies_and_refuses_bad_settings():
    data = text_panel(n_per_symbol=200, n_symbols=4)
    model, _, test = fit_fusion(data)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(
        again.predict(data.subset(test)).expected_return, model.predict(data.subset(test)).expected_return
    )
    clone = model.with_capacity({})
    assert not hasattr(clone, "base_") and not hasattr(clone.base, "return_models_")
    assert "fusion_gate_vs_activity.png" in model.figures()
    with pytest.raises(QuantmlInputError, match="modality_dropout"):
        ResidualGateForecaster(ridge(), modality_dropout=1.0)
    with pytest.raises(QuantmlInputError, match="not a fusion"):
        wrap_fusion(ridge(), {"name": "gated"})
    assert wrap_fusion(ridge(), {"name": "none"}).__class__ is RidgeForecaster
    assert isinstance(wrap_fusion(ridge(), {"name": "residual_gate"}), ResidualGateForecaster)


@pytest.mark.slow
def test_gated_sequence_backbone_opens_on_text_and_falls_back_to_its_base():
    from quantml.models.fusion.neural import GatedTextMixin
    from quantml.models.sequence import MLPForecaster

    data = text_panel(n_per_symbol=300, n_symbols=4)
    train, test = split_in_time(data)
    net = MLPForecaster(HORIZONS, seed=3, lookback=4, hidden_size=8, max_epochs=2, batch_size=128, num_threads=1)
    model = wrap_fusion(net, {"name": "residual_gate", "modality_dropout": 0.3, "hidden": 8})
    assert isinstance(model, GatedTextMixin) and isinstance(model, MLPForecaster)
    model.fit(data.subset(train))
    fc = model.predict(data.subset(test))
    assert fc.diagnostics["gate"].shape == (len(test), 2) and fc.diagnostics["gate"].max() > 0
    assert np.all(fc.q10 <= fc.q50) and np.all(fc.q50 <= fc.q90)
    gone = without_text(data, test)
    X2 = gone.X.copy()
    X2[test, 2:4] = 5.0  # other text values, still flagged missing: the same base forecast
    import dataclasses

    other = dataclasses.replace(gone, X=X2)
    a, b = model.predict(gone.subset(test)), model.predict(other.subset(test))
    assert np.all(a.diagnostics["gate"] == 0) and np.all(b.diagnostics["gate"] == 0)
    np.testing.assert_allclose(a.expected_return, b.expected_return, atol=1e-9)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.predict(data.subset(test)).expected_return, fc.expected_return, atol=1e-9)
    assert "fusion_gate_vs_activity.png" in model.figures()


def test_diagnostic_contract_rule_and_metrics():
    assert prediction_columns() == PREDICTION_COLUMNS
    assert prediction_columns(["text_contribution", "gate", "unknown"]) == (*PREDICTION_COLUMNS, *DIAGNOSTIC_FIELDS)
    frame = pd.DataFrame({"horizon": ["1h", "1h", "4h"], "gate": [0.2, 0.4, np.nan], "text_contribution": [0, 1, 0.5]})
    metrics = diagnostic_metrics(frame, "test")
    assert metrics == pytest.approx(
        {"test_gate_mean/1h": 0.3, "test_text_contribution/1h": 0.5, "test_text_contribution/4h": 0.5}
    )
    assert diagnostic_metrics(frame.drop(columns=["gate", "text_contribution"]), "test") == {}


def test_bundle_declares_diagnostics_and_a_stack_or_route_follows_the_rule():
    from quantml.bundle.model import ModelBundle
    from quantml.registry.routing import RoutedBundle
    from quantml.tracking.pyfunc import _signature

    model, _, _ = fit_fusion(text_panel(n_per_symbol=150, n_symbols=3))
    bundle = ModelBundle(forecaster=model, calibrator=None, contract=None, signal={}, data_fingerprint="x")
    plain = ModelBundle(forecaster=ridge(), calibrator=None, contract=None, signal={}, data_fingerprint="x")
    assert bundle.diagnostic_fields == DIAGNOSTIC_FIELDS and plain.diagnostic_fields == ()
    from quantml.bundle import FeatureContract

    contract = FeatureContract(["timestamp", "symbol", "close"], ["f0"], {}, [], HORIZONS)
    outputs = [c.name for c in _signature(contract, bundle.diagnostic_fields).outputs.inputs]
    assert outputs[-2:] == list(DIAGNOSTIC_FIELDS) and outputs[: len(PREDICTION_COLUMNS)] == list(PREDICTION_COLUMNS)
    assert [c.name for c in _signature(contract).outputs.inputs] == list(PREDICTION_COLUMNS)
    # a route keeps a column any of its entries declares
    route = RoutedBundle.__new__(RoutedBundle)
    route.bundles = {"a": bundle, "b": plain}
    assert route.diagnostic_fields == DIAGNOSTIC_FIELDS
    route.bundles = {"b": plain}
    assert route.diagnostic_fields == ()
    # a stack declares none: its contract is PREDICTION_COLUMNS
    from quantml.stacking.model import StackBundle

    assert not getattr(StackBundle, "diagnostic_fields", ())


def test_tiny_train_run_logs_gate_metrics_and_figure(tracking_uri):
    import mlflow

    from tests.helpers import TINY
    from tests.helpers.tiny_runs import train_run

    result = train_run(
        tracking_uri,
        [
            *TINY,
            "feature_set=price",
            "+feature_set.blocks.text={fast: 6, slow: 72}",
            "backbone=ridge",
            "fusion=residual_gate",
            "validation.n_splits=2",
        ],
    )
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(result.parent_run_id)
    assert run.info.status == "FINISHED"
    assert {"test_gate_mean_mean/4h", "test_text_contribution_mean/4h"} <= set(run.data.metrics)
    folds = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert folds and all("test_gate_mean/4h" in f.data.metrics for f in folds)
    figures = [a.path for a in client.list_artifacts(result.parent_run_id, "figures")]
    assert "figures/fusion_gate_vs_activity.png" in figures
    assert {"gate", "text_contribution"} <= set(result.oos.columns)


@pytest.mark.slow
def test_lightgbm_fusion_recovers_a_weaker_planted_effect_on_a_longer_panel():
    data = text_panel(n_per_symbol=1500, n_symbols=8, seed=5, text_effect=0.6)
    model, _, test = fit_fusion(data, lambda: LightGBMForecaster(HORIZONS, seed=1, n_estimators=200, n_jobs=1))
    fc = model.predict(data.subset(test))
    base = model.base_.predict(model._view(data).subset(test))
    high = data.X[test, 2] > 0.85
    for j in range(len(HORIZONS)):
        y, t = data.y_ret[test][high, j], data.t0[test][high]
        assert rank_ic(fc.expected_return[high, j], y, t) > rank_ic(base.expected_return[high, j], y, t) + 0.03


def test_a_gated_sequence_backbone_without_text_features_trains_as_its_base(caplog, monkeypatch):
    import dataclasses

    from quantml.models.fusion import text as fusion_text
    from quantml.models.sequence import MLPForecaster

    monkeypatch.setattr(fusion_text, "_WARNED_NO_TEXT", set())

    data = text_panel(n_per_symbol=120, n_symbols=2)
    no_text = dataclasses.replace(
        data, X=data.X[:, [0, 1]].copy(), feature_names=["f0", "f1"], feature_modalities={"f0": "price", "f1": "price"}
    )
    train, test = split_in_time(no_text)
    kw = dict(seed=3, lookback=4, hidden_size=8, max_epochs=1, batch_size=64, num_threads=1)
    model = wrap_fusion(MLPForecaster(HORIZONS, **kw), {"name": "residual_gate", "modality_dropout": 0.3, "hidden": 8})
    with caplog.at_level("WARNING", logger="quantml.models.fusion.text"):
        fc = model.fit(no_text.subset(train)).predict(no_text.subset(test))  # ablation=no_text: nothing to gate
    assert np.all(fc.diagnostics["gate"] == 0) and np.isfinite(fc.expected_return).all()
    assert len(_no_text_warnings(caplog)) == 1


def _distilled():
    from quantml.models.distill import DistilledForecaster

    student = dict(lookback=4, hidden_size=8, batch_size=64, max_epochs=1, limit_train_batches=2, num_threads=1)
    teacher = dict(n_estimators=20, min_child_samples=10, n_jobs=1)
    return DistilledForecaster(
        HORIZONS, seed=0, crossfit_folds=2, latency_repeats=1, teacher=teacher, student={**student, "ff_size": 8}
    )


def test_the_fusion_wrapper_passes_the_distilled_backbones_run_and_fold_metrics_on():
    from quantml.models.distill import METRIC_LATENCY_STUDENT, METRIC_LATENCY_TEACHER

    data = text_panel(n_per_symbol=120, n_symbols=3)
    train, test = split_in_time(data)
    fused = ResidualGateForecaster(_distilled(), crossfit_folds=2)  # the tabular fusion around any base
    assert fused.run_metrics() == {} and fused.fold_metrics(data.subset(test)) == {}  # unfitted: nothing yet
    fused.fit(data.subset(train))
    run = fused.run_metrics()
    assert set(run) == {METRIC_LATENCY_STUDENT, METRIC_LATENCY_TEACHER} and all(v > 0 for v in run.values())
    fold = fused.fold_metrics(data.subset(test))
    assert {f"test_teacher_rank_ic/{h}" for h in HORIZONS} <= set(fold)
    assert ResidualGateForecaster(ridge()).fit(data.subset(train)).run_metrics() == {}  # a base without any


def _with_text_side(data, n_hash: int = 16):
    """``data`` with random sparse post/comment towers (what a raw text stream adds, docs/text.md)."""
    import dataclasses

    import scipy.sparse as sp

    side = {t: sp.random(data.n_rows, n_hash, density=0.2, format="csr", random_state=i, dtype=np.float32)
            for i, t in enumerate(("text_post", "text_comment"))}  # fmt: skip
    return dataclasses.replace(data, side=side)


@pytest.mark.parametrize("fusion", ["tabular", "neural"])
def test_the_raw_text_wrapper_passes_the_distilled_latencies_on_through_the_fusion(fusion):
    """What ``quantml train backbone=distilled fusion=residual_gate data.text_stream=true`` builds, fitted: the
    raw-text wrapper around the fusion around the distilled backbone, whose predict latencies the parent run
    logs (``run_metrics``) and whose teacher-vs-student rank IC each fold logs (``fold_metrics``)."""
    from quantml.models.distill import METRIC_LATENCY_STUDENT, METRIC_LATENCY_TEACHER
    from quantml.models.text_latents import TextLatentForecaster

    data = _with_text_side(text_panel(n_per_symbol=120, n_symbols=3))
    train, test = split_in_time(data)
    inner = (
        ResidualGateForecaster(_distilled(), crossfit_folds=2)
        if fusion == "tabular"
        else wrap_fusion(_distilled(), {"name": "residual_gate", "hidden": 8})
    )
    model = TextLatentForecaster(inner, k=2)
    assert model.run_metrics() == {}  # unfitted: nothing yet
    model.fit(data.subset(train))
    fused = model.model_.columns_ if fusion == "tabular" else model.model_.student_.text_columns_
    assert "text_post_lat_0" in fused.names_of("content")  # the fusion reads the per-fold latents
    run = model.run_metrics()
    assert set(run) == {METRIC_LATENCY_STUDENT, METRIC_LATENCY_TEACHER} and all(v > 0 for v in run.values())
    assert run == model.model_.run_metrics()
    fold = model.fold_metrics(data.subset(test))
    assert {f"test_{who}_rank_ic/{h}" for h in HORIZONS for who in ("teacher", "student")} <= set(fold)
    assert pickle.loads(pickle.dumps(model)).run_metrics() == run  # the bundle's model keeps them


def test_fusion_gives_the_distilled_student_the_gated_text_tower():
    from quantml.models.distill import DistilledForecaster
    from quantml.models.fusion.neural import GatedTextMixin
    from quantml.models.sequence.financial_loss import SumOfTerms

    data = text_panel(n_per_symbol=120, n_symbols=3)
    train, test = split_in_time(data)
    model = wrap_fusion(_distilled(), {"name": "residual_gate", "hidden": 8})
    assert isinstance(model, DistilledForecaster) and isinstance(model.student, GatedTextMixin)
    assert model.diagnostic_fields == DIAGNOSTIC_FIELDS
    model.fit(data.subset(train))
    assert isinstance(model.student_, GatedTextMixin) and model.student_.text_columns_.has_text
    fc = model.predict(data.subset(test))
    gate = fc.diagnostics["gate"]
    assert gate.shape == (len(test), len(HORIZONS)) and np.all((gate >= 0) & (gate <= 1)) and gate.max() > 0
    assert set(model.run_metrics()) and "fusion_gate_vs_activity.png" in model.figures()
    again = pickle.loads(pickle.dumps(model))  # the bundle holds the gated student alone
    assert "teacher_" not in again.__dict__
    np.testing.assert_array_equal(again.predict(data.subset(test)).expected_return, fc.expected_return)
    # the loss: distillation + gate penalty, plus the financial term exactly once when it is on
    financial = model.student.with_capacity(None)
    financial.w_sharpe = 0.2
    terms = financial._extra_loss_fn()
    assert isinstance(terms, SumOfTerms) and len(terms.terms) == 2
    from quantml.models.sequence import MLPForecaster

    plain = wrap_fusion(MLPForecaster(HORIZONS, seed=3, lookback=4, hidden_size=8), {"name": "residual_gate"})
    plain.w_sharpe = 0.2
    assert len(plain._extra_loss_fn().terms) == 2  # the gate penalty and the financial term ...
    assert plain._extra_loss({}, {}) is None  # ... which the gated term does not add a second time
