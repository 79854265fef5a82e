"""Regime features as combiner inputs (quantml.stacking.regime) and the regime gate's figure: the
regime block built causally on the experts' panel, absent parts absent (not zeros), joined to the OOF
table without moving a row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.data.synthetic import generate_synthetic
from quantml.features.causality import perturb_after
from quantml.market.figures import figure_png
from quantml.stacking.figures import regime_gate_figure
from quantml.stacking.regime import REGIME_PREFIX, attach_regime, default_regime_params, regime_columns, regime_features

ALL_PARTS = [
    "atr_slope",
    "funding_slope",
    "gap_high_96",
    "gap_low_96",
    "momentum_96",
    "oi_slope",
    "range_pos_96",
    "regime_vol_z",
    "regime_volume",
]


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    """A small synthetic OHLCV panel with funding and open interest columns (every regime part)."""
    bars = generate_synthetic("1h", n_symbols=3, n_bars=700, seed=3).bars.copy()
    rng = np.random.default_rng(0)
    bars["funding_rate"] = 1e-4 + 1e-4 * rng.standard_normal(len(bars))
    bars["open_interest"] = np.exp(10 + 0.01 * rng.standard_normal(len(bars)).cumsum())
    return bars


def test_regime_features_are_the_regime_block_and_causal(panel):
    reg = regime_features(panel)
    assert regime_columns(reg) == sorted(REGIME_PREFIX + n for n in ALL_PARTS)
    assert list(reg.columns[:2]) == ["symbol", "timestamp"] and reg.index.equals(panel.index)
    assert default_regime_params()["regime_window"] == 480  # conf/feature_set/full.yaml's regime block
    late = reg["timestamp"] > reg["timestamp"].iloc[600]
    assert np.isfinite(reg.loc[late, regime_columns(reg)].to_numpy()).all()
    # perturb every bar after the cut: every regime value at or before it is bit-identical
    cut = pd.Timestamp(np.sort(panel["timestamp"].unique())[550])
    moved = regime_features(perturb_after(panel, cut, seed=1))
    past = (panel["timestamp"] <= cut).to_numpy()
    for col in regime_columns(reg):
        a, b = reg[col].to_numpy()[past], moved[col].to_numpy()[past]
        assert np.array_equal(a.view(np.uint64), b.view(np.uint64)), col
    assert not np.allclose(reg["regime__momentum_96"].to_numpy()[~past], moved["regime__momentum_96"].to_numpy()[~past])


def test_regime_features_skip_absent_parts_and_keep_the_panel_order(panel):
    close_only = panel[["timestamp", "symbol", "close"]]
    reg = regime_features(close_only, {"vol_window": 12, "regime_window": 48, "momentum_window": 24})
    # no volume, high/low, funding or open interest: those parts are absent columns, never zeros
    assert regime_columns(reg) == ["regime__momentum_24", "regime__regime_vol_z"]
    assert "regime.regime_volume" in reg.attrs["skipped"] and "regime.funding_slope" in reg.attrs["skipped"]
    shuffled = close_only.sample(frac=1.0, random_state=0)
    again = regime_features(shuffled, {"vol_window": 12, "regime_window": 48, "momentum_window": 24})
    assert again.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(again.loc[reg.index], reg, check_exact=True)
    with pytest.raises(QuantmlInputError, match="regime_windo"):
        regime_features(close_only, {"regime_windo": 48})


def test_attach_regime_is_a_left_join_that_keeps_rows_order_and_index(panel):
    reg = regime_features(panel)
    sub = reg[reg["timestamp"] > reg["timestamp"].iloc[500]]
    table = panel[["symbol", "timestamp"]].iloc[::-7].copy()
    table["e0__expected_return"] = 1.0
    table.index = np.arange(len(table))[::-1] * 10  # a non-trivial index
    table.loc[table.index[0], "timestamp"] = pd.Timestamp("2030-01-01", tz="UTC")  # a key regime lacks
    out = attach_regime(table, sub)
    assert out.index.equals(table.index) and list(out.columns[:3]) == list(table.columns)
    pd.testing.assert_frame_equal(out[table.columns], table)
    assert regime_columns(out) == regime_columns(reg)
    keyed = reg.set_index(["symbol", "timestamp"])
    for i in (3, 40, len(table) - 1):
        row = out.iloc[i]
        key = (row["symbol"], row["timestamp"])
        inside = row["timestamp"] > reg["timestamp"].iloc[500]
        expected = keyed.loc[key, "regime__momentum_96"] if inside else np.nan
        assert row["regime__momentum_96"] == expected or (np.isnan(expected) and np.isnan(row["regime__momentum_96"]))
    assert out[regime_columns(out)].iloc[0].isna().all()
    # attaching again replaces the regime columns, it does not duplicate them
    assert list(attach_regime(out, sub).columns) == list(out.columns)
    with pytest.raises(QuantmlInputError, match="repeats a"):
        attach_regime(table, pd.concat([sub, sub.iloc[:1]]))
    with pytest.raises(QuantmlInputError, match="regime_features"):
        attach_regime(table, sub[["symbol", "timestamp"]])


def test_regime_gate_figure_draws_the_weights_and_the_regime():
    ts = np.repeat(pd.date_range("2024-01-01", periods=50, freq="1h", tz="UTC"), 3)
    w0 = np.repeat(np.linspace(0.1, 0.9, 50), 3)
    weights = pd.DataFrame({"e0": w0, "e1": 1 - w0})
    weights.iloc[5] = np.nan  # a row whose regime input was NaN
    fig = regime_gate_figure(weights, pd.Series(np.linspace(-1, 1, 150), name="regime__regime_vol_z"), ts)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "regime__regime_vol_z"
    assert len(fig.axes[0].collections) == 2  # one stacked area per expert
    assert figure_png(fig)[:4] == b"\x89PNG"
    assert len(regime_gate_figure(weights, None, ts).axes) == 1
    with pytest.raises(QuantmlInputError, match="timestamps"):
        regime_gate_figure(weights, None, ts[:10])
