"""Feature blocks: causality per block, exact values, modalities, ablations, skipping, errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import MODALITIES, QuantmlInputError
from quantml.data import load_panel, validate_panel
from quantml.features import BLOCKS, build_features, causality_violations, event_activity_mask
from quantml.features.blocks import BlockSpec

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "feature_set"
FULL = OmegaConf.to_container(OmegaConf.load(CONF / "full.yaml"))
FULL_DURATIONS = OmegaConf.to_container(OmegaConf.load(CONF / "full_durations.yaml"))


@pytest.fixture(scope="module")
def panel():
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 3, "n_bars": 700, "seed": 5, "orderbook": True})
    p["macro_custom"] = np.sin(np.arange(len(p)) / 50.0)  # a user column, tagged by prefix
    return p


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_block_is_causal(panel, block):
    """Perturb every column of every row after t; every feature at or before t is bit-identical."""
    cfg = {"name": block, "blocks": {block: FULL["blocks"][block]}}
    cut = panel["timestamp"].sort_values().iloc[len(panel) * 2 // 3]
    assert build_features(panel, cfg).frame.shape[1] > 0
    assert causality_violations(panel, cfg, cut=cut, seed=1) == {}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_block_is_causal_with_duration_windows(panel, block):
    """The same with every window, lag and half-life written as a duration (full_durations)."""
    cfg = {"name": block, "gaps": FULL_DURATIONS["gaps"], "blocks": {block: FULL_DURATIONS["blocks"][block]}}
    cut = panel["timestamp"].sort_values().iloc[len(panel) // 2]
    fm = build_features(panel, cfg)
    assert fm.frame.shape[1] > 0
    assert fm.resolved or block in ("calendar", "passthrough")  # every other block has a duration
    assert causality_violations(panel, cfg, cut=cut, seed=4) == {}


def test_full_set_causal_at_several_cuts(panel):
    for q in (0.1, 0.5, 0.9):
        cut = panel["timestamp"].quantile(q)
        assert causality_violations(panel, FULL, cut=cut, seed=2) == {}


def test_detector_catches_a_leak(panel, monkeypatch):
    def leaky(ctx):  # centred mean: uses the next bar
        c = ctx.col("close")
        ctx.add("leak", (ctx.ops.shift(c, 1) + c + np.r_[c[1:], np.nan]) / 3, "price")

    monkeypatch.setitem(BLOCKS, "leaky", BlockSpec(leaky, ("price",)))
    bad = causality_violations(panel, {"name": "x", "blocks": {"leaky": {}}})
    assert set(bad) == {"leak"} and bad["leak"] >= 1


def _tiny():
    ts = pd.date_range("2024-01-05 04:00", periods=6, freq="1h", tz="UTC")  # a Friday
    c = np.array([100.0, 110.0, 99.0, 99.0, 120.0, 118.0])
    df = pd.DataFrame(
        {
            "timestamp": ts,
            "symbol": "A",
            "open": c,
            "high": c * 1.02,
            "low": c * 0.98,
            "close": c,
            "volume": [10.0, 20.0, 30.0, 40.0, 50.0, 0.0],
            "event_count": [0.0, 2.0, 0.0, 0.0, 1.0, 0.0],
            "event_sentiment": [np.nan, 0.5, np.nan, np.nan, -1.0, np.nan],
            "macro_surprise": [np.nan, np.nan, 2.0, 2.0, 2.0, -1.0],
        }
    )
    return validate_panel(df)


def test_exact_values_on_tiny_panel():
    p = _tiny()
    cfg = {
        "name": "t",
        "blocks": {
            "returns": {"lags": [1, 2]},
            "volatility": {"windows": [2, 3], "parkinson": False},
            "event": {"halflives": [1]},
            "macro": {"halflife": 1, "change_lag": 1},
            "calendar": {},
        },
    }
    f = build_features(p, cfg).frame
    lc = np.log(p["close"].to_numpy())
    r = np.r_[np.nan, np.diff(lc)]
    np.testing.assert_allclose(f["ret_1"], r.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(f["ret_2"], np.r_[np.nan, np.nan, lc[2:] - lc[:-2]].astype(np.float32), rtol=1e-6)
    rv2 = np.sqrt(
        [
            np.nan,
            np.nan,
            (r[1] ** 2 + r[2] ** 2) / 2,
            (r[2] ** 2 + r[3] ** 2) / 2,
            (r[3] ** 2 + r[4] ** 2) / 2,
            (r[4] ** 2 + r[5] ** 2) / 2,
        ]
    )
    np.testing.assert_allclose(f["rv_2"], rv2.astype(np.float32), rtol=1e-6)
    assert np.isnan(f["rv_3"].iloc[2]) and np.isfinite(f["rv_3"].iloc[3])
    np.testing.assert_allclose(f["rv_ratio_2_3"].iloc[3], np.log(rv2[3] / np.sqrt((r[1:4] ** 2).mean())), rtol=1e-5)
    # event intensity, half-life 1 bar: y_t = 0.5 y_{t-1} + count_t
    np.testing.assert_allclose(f["event_intensity_1"], [0, 2, 1, 0.5, 1.25, 0.625])
    np.testing.assert_allclose(f["event_sent_1"], [0, 1.0, 0.5, 0.25, -0.875, -0.4375])
    np.testing.assert_allclose(f["bars_since_event"], np.log1p([np.nan, 0, 1, 2, 0, 1]).astype(np.float32))
    # macro: released at bar 2 (2.0), a new value at bar 5 (-1.0)
    np.testing.assert_allclose(f["macro_surprise_decay"], [np.nan, np.nan, 2.0, 1.0, 0.5, -1.0])
    # calendar: 04:00 UTC -> hour angle 2*pi*4/24; Friday = day 4
    assert f["hour_sin"].iloc[0] == pytest.approx(np.sin(2 * np.pi * 4 / 24), abs=1e-6)
    assert f["dow_cos"].iloc[0] == pytest.approx(np.cos(2 * np.pi * 4 / 7), abs=1e-6)


def test_symbols_do_not_bleed():
    a = _tiny()
    b = a.assign(symbol="B", close=a["close"] * 3, open=a["open"] * 3, high=a["high"] * 3, low=a["low"] * 3)
    p = validate_panel(pd.concat([a, b], ignore_index=True))
    f = build_features(p, {"name": "t", "blocks": {"returns": {"lags": [1]}}}).frame
    assert np.isnan(f["ret_1"].iloc[6])  # first bar of B has no previous bar of B
    np.testing.assert_array_equal(f["ret_1"].iloc[:6].to_numpy(), f["ret_1"].iloc[6:].to_numpy())


def test_feature_matrix_contract(panel):
    fm = build_features(panel, FULL)
    assert fm.frame.shape[0] == len(panel) and fm.frame.index.equals(panel.index)
    assert (fm.frame.dtypes == np.float32).all()
    assert not np.isinf(fm.frame.to_numpy()).any()
    assert set(fm.modalities) == set(fm.frame.columns)
    assert set(fm.modalities.values()) == set(MODALITIES)  # every modality on the synthetic panel
    assert fm.known_future == ["hour_sin", "hour_cos", "dow_sin", "dow_cos"]
    assert fm.skipped == {}
    assert {"close", "funding_rate", "event_count", "macro_custom", "social_sentiment"} <= set(fm.input_columns)
    assert "timestamp" not in fm.input_columns
    assert fm.modalities["x_macro_custom"] == "macro"
    assert fm.modalities["funding_slope"] == "derivatives" and fm.modalities["oi_slope"] == "derivatives"
    assert fm.modalities["social_velocity"] == "text" and fm.modalities["event_intensity_6"] == "event"


@pytest.mark.parametrize(
    "drop,gone", [(["text", "event"], {"text", "event"}), (["macro"], {"macro"}), (["derivatives"], {"derivatives"})]
)
def test_drop_modalities(panel, drop, gone):
    full = build_features(panel, FULL)
    fm = build_features(panel, FULL, drop_modalities=drop)
    assert not gone & set(fm.modalities.values())
    kept = [c for c in full.frame.columns if full.modalities[c] not in gone]
    assert list(fm.frame.columns) == kept
    pd.testing.assert_frame_equal(fm.frame, full.frame[kept])
    if "derivatives" in drop:  # regime's funding/OI slopes go, the rest of regime stays
        assert "funding_slope" in fm.dropped and "regime_vol_z" in fm.frame
    if "macro" in drop:
        assert "macro_custom" not in fm.input_columns


def test_unknown_modality(panel):
    with pytest.raises(QuantmlInputError, match=r"drop_modalities \['news'\] are not modalities"):
        build_features(panel, FULL, drop_modalities=["news"])


def test_blocks_without_sources_are_skipped():
    p = _tiny().drop(columns=["event_count", "event_sentiment", "macro_surprise"])
    fm = build_features(p, FULL)
    for b in (
        "derivatives",
        "onchain",
        "text",
        "event",
        "macro",
        "passthrough",
        "cross_section",
        "regime.funding_slope",
        "regime.oi_slope",
        "microstructure",
    ):
        assert b in fm.skipped, b
    assert "onchain_netflow" in fm.skipped["onchain"]
    partial = build_features(_tiny().drop(columns=["macro_surprise"]).assign(macro_rate=1.0), FULL)
    assert partial.skipped["macro.macro_surprise"] == "column 'macro_surprise' absent from the panel"
    assert "macro_rate" in partial.frame.columns
    assert "ret_1" in fm.frame.columns


def test_feature_set_configs(panel):
    mods = {}
    for name in ("price", "price_volume_regime", "full"):
        for variant in (name, f"{name}_durations"):
            cfg = OmegaConf.load(CONF / f"{variant}.yaml")
            fm = build_features(panel, cfg)
            assert cfg.name == variant
            mods[variant] = set(fm.modalities.values())
        assert mods[name] == mods[f"{name}_durations"]
    assert mods["price"] == {"price", "calendar"}
    assert mods["price_volume_regime"] == {"price", "volume", "calendar", "derivatives"}
    assert mods["full"] == set(MODALITIES)


def test_daily_panel_has_no_hour_features():
    p = load_panel({"source": "stocks_daily", "symbols": ["IBM"], "start": "2012-01-01"})
    fm = build_features(p, OmegaConf.load(CONF / "price.yaml"))
    assert fm.known_future == ["dow_sin", "dow_cos"]


def test_unknown_block_and_param(panel):
    with pytest.raises(QuantmlInputError, match=r"unknown feature block 'rsi'.*available blocks"):
        build_features(panel, {"name": "x", "blocks": {"rsi": {}}})
    with pytest.raises(QuantmlInputError, match=r"block 'returns' has no parameter\(s\) \['window'\].*\['lags'\]"):
        build_features(panel, {"name": "x", "blocks": {"returns": {"window": 3}}})
    with pytest.raises(QuantmlInputError, match="positive whole numbers of bars"):
        build_features(panel, {"name": "x", "blocks": {"returns": {"lags": [0]}}})
    with pytest.raises(QuantmlInputError, match="no 'blocks'"):
        build_features(panel, {"name": "x"})


def test_unsorted_panel_rejected(panel):
    with pytest.raises(QuantmlInputError, match="not sorted"):
        build_features(panel.iloc[::-1].reset_index(drop=True), FULL)


def test_no_features_left(panel):
    with pytest.raises(QuantmlInputError, match="produced no features"):
        build_features(panel, {"name": "x", "blocks": {"text": {}}}, drop_modalities=["text"])


def test_event_activity_mask_exact():
    p = _tiny()  # events arrive at bars 1 (05:00) and 4 (08:00)
    np.testing.assert_array_equal(event_activity_mask(p, "2h"), [False, True, True, False, True, True])
    np.testing.assert_array_equal(event_activity_mask(p, "1h"), [False, True, False, False, True, False])
    with pytest.raises(QuantmlInputError, match="needs an 'event_count' column"):
        event_activity_mask(p.drop(columns="event_count"), "1d")


def test_expected_features_for_serving(panel):
    fm = build_features(panel, FULL)
    want = list(reversed(fm.names[:5]))
    again = build_features(panel, FULL, expected=want)
    assert again.names == want
    pd.testing.assert_frame_equal(again.frame, fm.frame[want])
    with pytest.raises(QuantmlInputError, match=r"needs feature\(s\) \['funding_bps'\].*funding_rate"):
        build_features(
            panel.drop(columns=["funding_rate"]), {"name": "d", "blocks": {"derivatives": {}}}, expected=["funding_bps"]
        )
