"""Feature windows as durations: per-symbol resolution, names, skips, errors, pinning, gaps."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.data import load_panel, validate_panel
from quantml.features import build_features, causality_violations

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "feature_set"


def _equity_hours(days: int, start: str = "2024-01-01") -> pd.DatetimeIndex:
    d = pd.bdate_range(start, periods=days, tz="UTC")
    open_ = pd.Timedelta(hours=14, minutes=30)
    return pd.DatetimeIndex([t + open_ + pd.Timedelta(hours=h) for t in d for h in range(7)])


def _bars(ts: pd.DatetimeIndex, symbol: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
    w = np.abs(rng.normal(0, 0.003, len(ts)))
    return pd.DataFrame(
        {"timestamp": ts, "symbol": symbol, "open": c, "high": c * (1 + w), "low": c * (1 - w), "close": c,
         "volume": rng.uniform(1e3, 2e3, len(ts))}
    )  # fmt: skip


@pytest.fixture(scope="module")
def mixed():
    """One panel, two calendars: 24/7 hourly crypto (BTC) and hourly equities, 7 bars a day (XYZ)."""
    crypto = pd.date_range("2024-01-01", periods=24 * 42, freq="1h", tz="UTC")
    return validate_panel(pd.concat([_bars(crypto, "BTC", 1), _bars(_equity_hours(42), "XYZ", 2)]))


def test_a_duration_resolves_on_each_symbols_calendar(mixed):
    fm = build_features(mixed, {"name": "d", "blocks": {"returns": {"lags": [1, "1d", "1w", "4h"]}}})
    assert fm.names == ["ret_1", "ret_1d", "ret_1w", "ret_4h"]
    assert fm.resolved == {
        "returns.lags=1d": {"BTC": 24, "XYZ": 7},
        "returns.lags=1w": {"BTC": 168, "XYZ": 35},
        "returns.lags=4h": {"BTC": 4, "XYZ": 4},
    }
    assert fm.calendar["XYZ"] == {"step": "0 days 01:00:00", "bars_per_day": 7.0, "bars_per_week": 35.0}
    for sym, k in (("BTC", 24), ("XYZ", 7)):
        rows = (mixed["symbol"] == sym).to_numpy()
        lc = np.log(mixed.loc[rows, "close"].to_numpy())
        want = np.r_[np.full(k, np.nan), lc[k:] - lc[:-k]].astype(np.float32)
        np.testing.assert_array_equal(fm.frame.loc[rows, "ret_1d"].to_numpy(), want)


def test_a_duration_equal_to_a_bar_count_gives_the_same_bits():
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 2, "n_bars": 600, "seed": 3})
    bars = {
        "returns": {"lags": [24]},
        "volatility": {"windows": [12, 48]},
        "event": {"halflives": [6]},
        "macro": {"halflife": 24, "change_lag": 168},
        "text": {"fast": 6, "slow": 72, "sentiment_halflife": 12},
    }
    spans = {"returns": {"lags": ["1d"]}, "volatility": {"windows": ["12h", "2d"]}, "event": {"halflives": ["6h"]},
             "macro": {"halflife": "1d", "change_lag": "1w"},
             "text": {"fast": "6h", "slow": "3d", "sentiment_halflife": "12h"}}  # fmt: skip
    a = build_features(p, {"name": "b", "blocks": bars}).frame
    b = build_features(p, {"name": "d", "blocks": spans}).frame
    rename = {"ret_24": "ret_1d", "rv_12": "rv_12h", "rv_48": "rv_2d", "rv_ratio_12_48": "rv_ratio_12h_2d",
              "pk_vol_12": "pk_vol_12h", "event_intensity_6": "event_intensity_6h", "event_sent_6": "event_sent_6h",
              "macro_rate_chg_168": "macro_rate_chg_1w"}  # fmt: skip
    pd.testing.assert_frame_equal(a.rename(columns=rename), b)


def test_daily_stocks_skip_sub_bar_durations_and_report_them():
    p = load_panel({"source": "stocks_daily", "symbols": ["IBM", "MSFT"], "start": "2011-01-01"})
    fm = build_features(p, OmegaConf.load(CONF / "price_durations.yaml"))
    assert [n for n in fm.names if n.startswith("ret_")] == ["ret_1d", "ret_5d", "ret_21d"]
    assert fm.resolved["returns.lags=5d"] == {"IBM": 5, "MSFT": 5}  # 5 trading days, not 7 bars
    assert fm.skipped["returns.lags=1h"].startswith("returns.lags='1h' is shorter than one bar (1 days")
    assert "returns.lags=4h" in fm.skipped
    lc = np.log(p["close"].to_numpy()[: (p["symbol"] == "IBM").sum()])
    np.testing.assert_array_equal(fm.frame["ret_5d"].to_numpy()[5 : len(lc)], (lc[5:] - lc[:-5]).astype(np.float32))
    # a single-valued window under one bar skips its block, with the reason
    fm = build_features(p, {"name": "r", "blocks": {"regime": {"vol_window": "4h"}, "returns": {"lags": [1]}}})
    assert "regime" in fm.skipped and "regime.vol_window='4h' is shorter than one bar" in fm.skipped["regime"]
    with pytest.raises(QuantmlInputError, match="produced no features"):
        build_features(p, {"name": "r", "blocks": {"returns": {"lags": ["1h", "4h"]}}})


@pytest.mark.parametrize(
    "value,match",
    [
        ("abc", r"volatility\.windows='abc' is neither a whole number of bars nor a duration; write a positive"),
        (1.5, r"volatility\.windows=1\.5 must be positive whole numbers of bars, or durations"),
        (0, r"volatility\.windows=0 must be positive whole numbers of bars"),
        (True, r"volatility\.windows=True must be a positive whole number of bars \(24\) or a duration"),
        ("-1d", r"volatility\.windows='-1d' is neither"),
        (float("nan"), r"volatility\.windows=nan must be positive whole numbers of bars"),
    ],
)
def test_bad_windows_name_the_parameter_and_the_fix(mixed, value, match):
    with pytest.raises(QuantmlInputError, match=match):
        build_features(mixed, {"name": "x", "blocks": {"volatility": {"windows": [value]}}})


def test_names_use_canonical_units_and_digit_strings_are_bars(mixed):
    fm = build_features(mixed, {"name": "x", "blocks": {"returns": {"lags": ["90m", "4H", "2 days", "24"]}}})
    assert fm.names == ["ret_90min", "ret_4h", "ret_2d", "ret_24"]
    assert fm.resolved["returns.lags=90min"] == {"BTC": 2, "XYZ": 2}


def test_pinned_calendar_rebuilds_the_training_features_on_a_short_panel(mixed):
    """Serving: the training calendar (FeatureMatrix.calendar) resolves the durations on a recent
    panel exactly as at training, even where that panel alone would infer another one."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "price_volume_regime_durations.yaml"))
    train = build_features(mixed, cfg)
    tail = mixed.groupby("symbol").tail(24 * 30).reset_index(drop=True)  # 30 days of BTC, all of XYZ
    again = build_features(tail, cfg, calendar=train.calendar, expected=train.names)
    assert again.resolved == train.resolved
    full = train.frame.loc[mixed.groupby("symbol").tail(24 * 30).index].reset_index(drop=True)
    for sym in ("BTC", "XYZ"):
        rows = (tail["symbol"] == sym).to_numpy()
        last = slice(-5, None)  # past the warm-up of every window
        assert np.isfinite(again.frame[rows].iloc[last].to_numpy()).all()
        np.testing.assert_array_equal(again.frame[rows].iloc[last].to_numpy(), full[rows].iloc[last].to_numpy())
    # under a day of history reads as continuous trading: without the pin 1d would be 24 bars of XYZ
    short = mixed.groupby("symbol").tail(5).reset_index(drop=True)
    alone = build_features(short, {"name": "r", "blocks": {"returns": {"lags": ["1d"]}}})
    assert alone.resolved["returns.lags=1d"]["XYZ"] == 24
    pinned = build_features(short, {"name": "r", "blocks": {"returns": {"lags": ["1d"]}}}, calendar=train.calendar)
    assert pinned.resolved["returns.lags=1d"] == {"BTC": 24, "XYZ": 7}


@pytest.mark.parametrize("name", ["price_durations", "price_volume_regime_durations", "full_durations"])
def test_duration_feature_sets_are_causal(name):
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 2, "n_bars": 900, "seed": 4})
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert cfg["name"] == name
    cut = p["timestamp"].sort_values().iloc[len(p) * 3 // 4]
    assert causality_violations(p, cfg, cut=cut, seed=5) == {}


def test_durations_on_two_calendars_are_causal(mixed):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "price_volume_regime_durations.yaml"))
    for q in (0.3, 0.8):
        assert causality_violations(mixed, cfg, cut=mixed["timestamp"].quantile(q), seed=6) == {}


def _with_outage(mixed: pd.DataFrame, hours: int) -> pd.DataFrame:
    btc = mixed["symbol"] == "BTC"
    drop = mixed.index[btc][500 : 500 + hours]
    return mixed.drop(index=drop).reset_index(drop=True)


def test_gaps_are_flagged_per_row_and_reported(mixed):
    cfg = {"name": "g", "blocks": {"returns": {"lags": [1]}}}
    p = _with_outage(mixed, 6)
    fm = build_features(p, cfg)
    assert len(fm.bars_missing) == len(p) and fm.bars_missing.sum() == 6  # XYZ nights/weekends: 0
    assert fm.gaps.to_dict("records") == [
        {"symbol": "BTC", "timestamp": p["timestamp"][500], "previous": p["timestamp"][499], "bars_missing": 6.0}
    ]
    assert len(build_features(_with_outage(mixed, 4), cfg).gaps) == 0  # under 5 usual bars
    assert len(build_features(p, {**cfg, "gaps": {"min_missing": 7}}).gaps) == 0
    # one lost session of hourly equities (7 bars) reads as a holiday; two are flagged
    xyz = (mixed["symbol"] == "XYZ").to_numpy()
    day = mixed["timestamp"].dt.normalize()
    one = mixed[~(xyz & (day == pd.Timestamp("2024-01-17", tz="UTC")).to_numpy())].reset_index(drop=True)
    assert build_features(one, cfg).bars_missing.max() == 7 and len(build_features(one, cfg).gaps) == 0
    two = mixed[~(xyz & day.isin(pd.to_datetime(["2024-01-17", "2024-01-18"], utc=True)).to_numpy())]
    gaps = build_features(two.reset_index(drop=True), cfg).gaps
    assert gaps["symbol"].tolist() == ["XYZ"] and gaps["bars_missing"].tolist() == [14.0]
    with pytest.raises(QuantmlInputError, match=r"gaps has no setting\(s\) \['fill'\]"):
        build_features(p, {**cfg, "gaps": {"fill": True}})


def test_no_window_spans_a_flagged_gap_when_asked(mixed):
    p = _with_outage(mixed, 6)
    blocks = {"returns": {"lags": [1, "4h"]}, "volatility": {"windows": ["12h"], "parkinson": False}}
    spans = build_features(p, {"name": "g", "blocks": blocks}).frame
    broken = build_features(p, {"name": "g", "gaps": {"break_windows": True}, "blocks": blocks}).frame
    assert np.isfinite(spans["ret_1"][500]) and np.isnan(broken["ret_1"][500])  # 1 bar back is before the gap
    assert np.isnan(broken["rv_12h"][500:512]).all() and np.isfinite(broken["rv_12h"][512])
    # after the gap the window restarts: the values are those of the post-gap history alone
    after = p[(p["symbol"] == "BTC") & (p.index >= 500)].reset_index(drop=True)
    alone = build_features(after, {"name": "g", "blocks": blocks}).frame
    n = len(after)
    np.testing.assert_array_equal(broken[500 : 500 + n].to_numpy(), alone.to_numpy())
    other = (p["symbol"] == "XYZ").to_numpy()  # the other symbol has no flagged gap: unchanged
    np.testing.assert_array_equal(broken[other].to_numpy(), spans[other].to_numpy())
    assert causality_violations(p, {"name": "g", "gaps": {"break_windows": True}, "blocks": blocks}) == {}


def test_sequence_windows_restart_after_a_flagged_gap_when_asked(mixed):
    from quantml.models.base import PanelData

    p = _with_outage(mixed, 6)
    blocks = {"returns": {"lags": [1]}}
    spans = PanelData.assemble(p, build_features(p, {"name": "g", "blocks": blocks}), ["1h"])
    broken = PanelData.assemble(
        p, build_features(p, {"name": "g", "gaps": {"break_windows": True}, "blocks": blocks}), ["1h"]
    )
    btc = np.flatnonzero((p["symbol"] == "BTC").to_numpy())
    assert spans.segment_start[500] == btc[0]  # the look-back window reaches across the outage ...
    assert broken.segment_start[500] == 500 and broken.segment_start[499] == btc[0]  # ... or restarts at it
    other = (p["symbol"] == "XYZ").to_numpy()
    np.testing.assert_array_equal(broken.segment_start[other], spans.segment_start[other])


def test_bar_count_sets_are_unchanged_by_gaps(mixed):
    """The shipped bar-count sets keep windows spanning gaps (bit for bit as before)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "price.yaml"))
    assert "gaps" not in cfg
    p = _with_outage(mixed, 6)
    fm = build_features(p, cfg)
    assert len(fm.gaps) == 1 and np.isfinite(fm.frame["ret_1"][500])
    assert fm.resolved == {} and fm.calendar == {}
