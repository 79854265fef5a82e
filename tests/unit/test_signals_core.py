"""Signals: edge, score, action thresholds, the quantml.signal tag round trip."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantml.contracts import QuantmlInputError
from quantml.portfolio.strategy import SignalPanel
from quantml.signals import SIGNAL_TAG, SignalConfig, apply_thresholds, compute_signals, decide_actions
from tests.helpers.synthetic_oos import synthetic_oos_frame


def _frame(er, vol, horizon="1d", prob=None):
    er = np.asarray(er, dtype=float)
    prob = np.where(er > 0, 0.9, 0.1) if prob is None else np.asarray(prob, dtype=float)
    return pd.DataFrame(
        {
            "horizon": horizon,
            "expected_return": er,
            "q10": er - 0.001,
            "q50": er,
            "q90": er + 0.001,
            "prob_up": prob,
            "vol_forecast": vol,
        }
    )


def test_edge_subtracts_cost_in_forecast_direction_and_score_divides_by_vol():
    out = compute_signals(_frame([0.003, -0.003, 0.0005, -0.0005], [0.01, 0.02, 0.01, 0.0]), SignalConfig(cost=0.001))
    np.testing.assert_allclose(out["edge"], [0.002, -0.002, 0.0, 0.0], atol=1e-15)
    # vol 0 is floored at eps, edge 0 stays 0
    np.testing.assert_allclose(out["score"], [0.2, -0.1, 0.0, 0.0], atol=1e-12)


def test_actions_follow_per_horizon_thresholds_and_min_confidence():
    frame = pd.concat(
        [_frame([0.003, -0.003, 0.0015], 0.01, "1d"), _frame([0.003, -0.003, 0.0015], 0.01, "7d")], ignore_index=True
    )
    cfg = SignalConfig(threshold={"1d": 0.15}, default_threshold=0.25, cost=0.001)
    out = compute_signals(frame, cfg)
    # scores: 0.2, -0.2, 0.05 for both horizons; 1d threshold 0.15, 7d (default) 0.25
    assert list(out["action"]) == ["long", "short", "flat", "flat", "flat", "flat"]
    strict = compute_signals(
        frame, SignalConfig(threshold={"1d": 0.15}, min_confidence={"1d": 0.9999}, default_threshold=0.0, cost=0.001)
    )
    assert list(strict["action"][:3]) == ["flat", "flat", "flat"]
    assert list(strict["action"][3:]) == ["long", "short", "long"]


def test_apply_thresholds_matches_compute_signals_and_panel_actions():
    frame = synthetic_oos_frame(n_symbols=3, n_bars=120, seed=3)
    cfg = SignalConfig(threshold={"1d": 0.03, "5d": 0.06}, min_confidence={"5d": 0.1}, cost=0.0008)
    full = compute_signals(frame, cfg)
    assert (apply_thresholds(full, cfg) == full["action"]).all()
    panel = SignalPanel.from_frame(full)
    sign = panel.actions(cfg)
    t = panel.timestamps.get_indexer(full["timestamp"])
    n = pd.Index(panel.symbols).get_indexer(full["symbol"])
    h = pd.Index(panel.horizons).get_indexer(full["horizon"])
    expected = full["action"].map({"long": 1.0, "flat": 0.0, "short": -1.0}).to_numpy()
    np.testing.assert_array_equal(sign[t, n, h], expected)
    assert (full["action"] != "flat").sum() > 0 and (full["action"] == "flat").sum() > 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=30), st.floats(0, 0.5), st.floats(0, 0.5))
def test_raising_a_threshold_never_adds_trades(scores, low, extra):
    score = np.asarray(scores)
    conf = np.full_like(score, 0.5)
    loose = decide_actions(score, conf, low, 0.0)
    tight = decide_actions(score, conf, low + extra, 0.0)
    assert np.all(np.abs(tight) <= np.abs(loose))
    assert np.all((tight == 0) | (tight == np.sign(score)))


def test_signal_config_json_round_trip_is_the_model_version_tag():
    cfg = SignalConfig(
        threshold={"1d": 0.2, "7d": 0.4},
        min_confidence={"1d": 0.1},
        cost=0.0012,
        eps=1e-5,
        default_threshold=0.3,
        default_min_confidence=0.05,
    )
    text = cfg.to_json()
    assert SIGNAL_TAG == "quantml.signal"
    back = SignalConfig.from_json(text)
    assert back == cfg
    assert back.threshold_for("4h") == 0.3 and back.min_confidence_for("7d") == 0.05


def test_bad_inputs_name_the_setting_and_fix():
    with pytest.raises(QuantmlInputError, match=r"signal.threshold.1d = -0.1"):
        SignalConfig(threshold={"1d": -0.1})
    with pytest.raises(QuantmlInputError, match="vol_forecast"):
        compute_signals(_frame([0.01], 0.01).drop(columns="vol_forecast"), SignalConfig())
    with pytest.raises(QuantmlInputError, match="not JSON"):
        SignalConfig.from_json("{oops")


def test_signals_in_place_equal_the_copy_and_leave_a_copied_input_alone():
    frame = _frame([0.003, -0.003, 0.0015], [0.01, 0.02, 0.0])
    before = frame.copy()
    copied = compute_signals(frame, SignalConfig(cost=0.001))
    pd.testing.assert_frame_equal(frame, before)
    in_place = compute_signals(frame, SignalConfig(cost=0.001), copy=False)
    assert in_place is frame
    pd.testing.assert_frame_equal(in_place, copied)


def test_thresholds_are_read_per_row_horizon_whatever_its_dtype():
    """A long frame's horizon column, categorical (unused categories, any order) or strings: each row
    gets its horizon's threshold and minimum confidence, a horizon without an entry the defaults."""
    cfg = SignalConfig(threshold={"1h": 0.5, "1d": 0.1}, min_confidence={"4h": 0.7}, default_threshold=0.2)
    rng = np.random.default_rng(1)
    names = rng.choice(["1d", "4h", "1h", "7d"], 400)
    base = pd.DataFrame({"score": rng.normal(size=400), "confidence": rng.random(400)})
    expected = decide_actions(
        base["score"].to_numpy(),
        base["confidence"].to_numpy(),
        np.array([cfg.threshold_for(h) for h in names]),
        np.array([cfg.min_confidence_for(h) for h in names]),
    )
    for horizon in (names, pd.Categorical(names, categories=["7d", "unused", "4h", "1h", "1d"])):
        actions = apply_thresholds(base.assign(horizon=horizon), cfg)
        sign = actions.map({"long": 1.0, "flat": 0.0, "short": -1.0}).to_numpy()
        np.testing.assert_array_equal(sign, expected)
