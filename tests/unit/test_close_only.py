"""Optional bar columns: absent and degenerate detection, what the features skip, the errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.data import degenerate_symbols, load_panel, unavailable_columns, validate_panel
from quantml.features import build_features, causality_violations

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "feature_set"
PVR = OmegaConf.to_container(OmegaConf.load(CONF / "price_volume_regime.yaml"))
# what price_volume_regime cannot build without volume and without high/low ranges
NEEDS_VOLUME = {"volume", "regime.regime_volume"}
NEEDS_RANGE = {"volatility.pk_vol", "regime.atr_slope", "regime.structure_gap"}
# skipped on any panel without derivatives columns (the bundled stocks too)
NO_DERIVATIVES = {"regime.funding_slope", "regime.oi_slope"}
ABSENT = "absent from the panel (missing, or NaN on every bar)"


def bars(n=48, symbols=("AAA", "BBB")) -> pd.DataFrame:
    rows = []
    for i, s in enumerate(symbols):
        ts = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
        c = 100.0 + i + np.arange(n) * 0.1
        rows.append(pd.DataFrame({"timestamp": ts, "symbol": s, "open": c, "high": c + 1, "low": c - 1, "close": c}))
    return pd.concat(rows, ignore_index=True).assign(volume=10.0)


def collapse(df: pd.DataFrame) -> pd.DataFrame:
    """The close-only form of a panel: volume NaN, open = high = low = close."""
    return df.assign(open=df["close"], high=df["close"], low=df["close"], volume=np.nan)


@pytest.fixture(scope="module")
def synthetic():
    """Synthetic OHLCV bars, without the derivatives/social/... streams."""
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 3, "n_bars": 700, "seed": 5})
    return p[["timestamp", "symbol", "open", "high", "low", "close", "volume"]]


@pytest.fixture(scope="module")
def close_only(synthetic):
    return validate_panel(collapse(synthetic))


# --------------------------------------------------------------------------- the panel contract
def test_only_timestamp_symbol_close_are_required():
    p = validate_panel(bars()[["timestamp", "symbol", "close"]])
    assert list(p.columns) == ["timestamp", "symbol", "close"]
    assert unavailable_columns(p) == dict.fromkeys(("high", "low", "open", "volume"), ABSENT)


def test_column_nan_on_every_bar_is_absent_and_dropped():
    raw = bars().assign(volume=np.nan)
    p = validate_panel(raw)
    assert "volume" not in p.columns and "volume" in raw.columns  # the caller's frame is untouched
    assert unavailable_columns(p) == {"volume": ABSENT}
    # NaN as None in an object column (a parquet null column) is absent too
    assert "high" not in validate_panel(bars().assign(high=None, volume=None)).columns


def test_column_nan_for_one_symbol_only_is_an_error_naming_it():
    raw = bars()
    raw.loc[raw["symbol"] == "BBB", "volume"] = np.nan
    with pytest.raises(QuantmlInputError, match=r"'volume' is NaN on every bar of symbol\(s\) \['BBB'\] \(1 of 2\)"):
        validate_panel(raw)
    raw = bars()
    raw.loc[raw["symbol"] == "AAA", "high"] = np.nan
    with pytest.raises(QuantmlInputError, match=r"'high' is NaN on every bar of symbol\(s\) \['AAA'\].*drop\(columns="):
        validate_panel(raw)


def test_partly_nan_volume_is_an_error_naming_the_rows():
    raw = bars()
    raw.loc[[3, 60], "volume"] = np.nan
    with pytest.raises(
        QuantmlInputError,
        match=r"'volume' has NaN/inf or negative values at \(AAA, 2024-01-01 03:00:00\+00:00, volume=nan\); "
        r"\(BBB, 2024-01-01 12:00:00\+00:00, volume=nan\)",
    ):
        validate_panel(raw)


def test_degenerate_ohlc_is_detected_and_kept():
    p = validate_panel(collapse(bars()))
    assert {"open", "high", "low"} <= set(p.columns)  # valid bars: kept, but not read by features
    assert set(unavailable_columns(p)) == {"open", "high", "low", "volume"}
    assert unavailable_columns(p)["high"].startswith("degenerate: open = high = low = close")
    assert degenerate_symbols(p) == ["AAA", "BBB"]
    # rounding of a rescaled close stays degenerate; one real range on one bar of each symbol does not
    wobble = collapse(bars()).assign(high=lambda d: d["close"] * (1 + 1e-12))
    assert "high" in unavailable_columns(validate_panel(wobble))
    real = collapse(bars())
    real.loc[[5, 50], "high"] += 0.5
    assert unavailable_columns(validate_panel(real)) == {"volume": ABSENT}
    assert unavailable_columns(validate_panel(bars())) == {}


def test_volume_zero_on_every_bar_is_degenerate():
    p = validate_panel(bars().assign(volume=0.0))
    assert unavailable_columns(p) == {"volume": "degenerate: 0 on every bar (no volume information)"}
    some = bars().assign(volume=0.0)
    some.loc[7, "volume"] = 3.0
    assert unavailable_columns(validate_panel(some)) == {}


def test_degenerate_ohlc_for_one_symbol_only_is_an_error_naming_it():
    raw = bars()
    b = raw["symbol"] == "BBB"
    raw.loc[b, ["open", "high", "low"]] = np.repeat(raw.loc[b, ["close"]].to_numpy(), 3, axis=1)
    with pytest.raises(
        QuantmlInputError,
        match=r"symbol\(s\) \['BBB'\] \(1 of 2\) have open/high/low equal to the close on every bar.*"
        r"separate run, or drop \['open', 'high', 'low'\]",
    ):
        validate_panel(raw)


def test_high_without_low_still_bounds_the_close():
    raw = bars().drop(columns=["low", "open"])
    validate_panel(raw)
    raw.loc[4, "high"] = raw.loc[4, "close"] - 0.5
    with pytest.raises(QuantmlInputError, match=r"close outside \[low, high\] at \(AAA, 2024-01-01 04:00:00\+00:00"):
        validate_panel(raw)


def test_non_numeric_price_names_column_symbol_bar_and_value():
    raw = bars()
    raw["close"] = raw["close"].map(repr).astype(object)  # numeric strings: parsed
    assert validate_panel(raw)["close"].dtype == np.float64
    raw.loc[50, "close"] = "n/a"
    raw.loc[51, "close"] = "-"
    with pytest.raises(
        QuantmlInputError,
        match=r"column 'close' has a non-numeric value 'n/a' at \(BBB, 2024-01-01 02:00:00\+00:00\) and 1 more; "
        r"convert those values",
    ):
        validate_panel(raw)
    raw = bars().astype({"volume": object})
    raw.loc[2, "volume"] = "12k"
    with pytest.raises(
        QuantmlInputError, match=r"column 'volume' has a non-numeric value '12k' at \(AAA, 2024-01-01 02"
    ):
        validate_panel(raw)


# --------------------------------------------------------------------------- the features
def test_close_only_skips_what_needs_volume_or_ranges(synthetic, close_only):
    full = build_features(synthetic, PVR)
    fm = build_features(close_only, PVR)
    assert set(full.skipped) == NO_DERIVATIVES
    assert set(fm.skipped) == NEEDS_VOLUME | NEEDS_RANGE | NO_DERIVATIVES
    assert "degenerate: open = high = low = close" in fm.skipped["volatility.pk_vol"]
    assert "'volume', absent from the panel" in fm.skipped["volume"]
    assert fm.input_columns == ["close"]
    assert fm.unavailable == unavailable_columns(close_only)
    lost = set(full.names) - set(fm.names)
    volume_features = {"volume_z_24", "volume_z_96", "amihud_24", "regime_volume"}
    assert lost == volume_features | {"pk_vol_12", "atr_slope", "gap_high_96", "gap_low_96", "range_pos_96"}
    # nothing computed into silent zeros or constants; what is kept is what the full panel gives
    values = fm.frame.to_numpy(dtype=np.float64)
    assert np.isfinite(values).any(axis=0).all()
    assert (np.nanmax(np.abs(values), axis=0) > 0).all() and (np.nanstd(values, axis=0) > 0).all()
    for name in fm.names:
        np.testing.assert_array_equal(fm.frame[name].to_numpy(), full.frame[name].to_numpy(), err_msg=name)


def test_volume_missing_but_real_ranges_keeps_range_features(synthetic):
    fm = build_features(validate_panel(synthetic.drop(columns="volume")), PVR)
    assert NEEDS_VOLUME <= set(fm.skipped) and not NEEDS_RANGE & set(fm.skipped)
    assert {"pk_vol_12", "atr_slope", "gap_high_96"} <= set(fm.names)
    assert "volume" not in fm.input_columns and {"close", "high", "low"} <= set(fm.input_columns)


def test_unvalidated_nan_volume_is_skipped_not_zero(synthetic):
    """build_features on a panel that never went through validate_panel: NaN volume is absent too."""
    fm = build_features(synthetic.assign(volume=np.nan), PVR)
    assert NEEDS_VOLUME <= set(fm.skipped) and "volume_z_24" not in fm.names


def test_close_only_features_are_causal(close_only):
    cut = close_only["timestamp"].sort_values().iloc[len(close_only) // 2]
    assert causality_violations(close_only, PVR, cut=cut, seed=3) == {}


def test_model_that_read_ranges_refuses_a_close_only_panel(synthetic, close_only):
    names = build_features(synthetic, PVR).names
    with pytest.raises(QuantmlInputError, match=r"needs feature\(s\) \[.*'pk_vol_12'.*degenerate: open = high"):
        build_features(close_only, PVR, expected=names)
