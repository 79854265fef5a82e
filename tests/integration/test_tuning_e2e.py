"""End to end on a real (tiny, synthetic) quantml-train run: train -> quantml-tune -> register ->
attach -> quantml-predict applies the tuned thresholds."""

import numpy as np
import pytest

from quantml.portfolio import AllocatorConfig
from quantml.signals import SignalConfig
from quantml.tuning.run import run_tuning
from quantml.tuning.source import load_source_run
from quantml.tuning.thresholds import TuneSettings
from tests.helpers import TINY


def test_tune_a_real_run_attach_and_predict_with_the_tuned_thresholds(tracking_uri, compose_cfg):
    from quantml.data.asof import join_streams
    from quantml.data.synthetic import generate_synthetic
    from quantml.experiment import run_experiment
    from quantml.market import CostModel
    from quantml.registry.commands import register
    from quantml.registry.store import RegistryStore
    from quantml.serving.predict import predict_panel

    cfg = compose_cfg([*TINY, "backbone.n_estimators=40", "tracking.experiment=tune_e2e"])
    result = run_experiment(cfg)
    source = load_source_run(result.parent_run_id, tracking_uri)
    # what the MLflow UI shows: the layout tags, the results table as the description
    assert source.tags["quantml.layout_version"] == "2" and source.tags["quantml.metrics_version"]
    assert source.tags["mlflow.note.content"].startswith("Out-of-sample results (")
    assert result.report.summary in source.tags["mlflow.note.content"]
    assert source.cfg.cost.fee_bps == cfg.cost.fee_bps  # the logged resolved config
    assert len(source.frame) == len(result.oos) and source.horizons == list(cfg.horizon.horizons)
    assert source.periods_per_year() == pytest.approx(float(source.params["derived.periods_per_year"]))
    costs = CostModel.from_config(cfg.cost)
    assert source.costs() == costs
    assert source.signal_config(costs).cost == pytest.approx(costs.round_trip, rel=1e-9)

    store = RegistryStore(tracking_uri)
    version = register(store, result.parent_run_id, "tune_e2e")
    outcome = run_tuning(
        result.parent_run_id,
        tracking_uri,
        TuneSettings(target_vol=None),
        AllocatorConfig(cov_window=24, cov_min_periods=8),
        storage=None,
        n_trials=6,
        n_startup_trials=3,
        attach=f"tune_e2e:{version.version}",
    )
    m = outcome.metrics
    assert np.isfinite(m["tune_sharpe_after_cost"]) and np.isfinite(m["selection_sharpe_after_cost"])
    child = store.client.get_run(outcome.tune_run_id)
    assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert child.data.params["split_method"] == "folds"  # walk-forward folds are time-disjoint

    synth = generate_synthetic(freq="1h", n_symbols=3, n_bars=400, seed=3)
    panel = join_streams(synth.bars, synth.streams)
    tuned = outcome.attached  # a new version whose bundle carries the tuned settings
    assert int(tuned.version) == int(version.version) + 1
    frame, resolved = predict_panel(f"models:/tune_e2e/{tuned.version}", panel, store=store, last_only=False)
    assert resolved.signal is None  # nothing re-applied from tags: the bundle's own settings
    # the served actions are the tuned thresholds applied to the served scores
    h = cfg.horizon.horizons[0]
    rows = frame[frame["horizon"] == h]
    thr, conf = outcome.signal.threshold_for(h), outcome.signal.min_confidence_for(h)
    expected = np.where(
        (rows["score"] >= thr) & (rows["score"] > 0) & (rows["confidence"] >= conf),
        "long",
        np.where((-rows["score"] >= thr) & (rows["score"] < 0) & (rows["confidence"] >= conf), "short", "flat"),
    )
    assert (rows["action"].to_numpy() == expected).all()
    assert thr > 0 and thr != SignalConfig.from_config(cfg.signal, costs.round_trip).threshold_for(h)
