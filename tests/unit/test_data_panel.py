"""The panel contract: one test per bad input, frequency inference, fingerprint."""

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.data import data_fingerprint, infer_bar_frequency, periods_per_year, validate_panel


def make_panel(freq="1h", n=48, symbols=("AAA", "BBB"), start="2024-01-01"):
    rows = []
    for i, s in enumerate(symbols):
        ts = pd.date_range(start, periods=n, freq=freq, tz="UTC")
        c = 100.0 + i + np.arange(n) * 0.1
        rows.append(
            pd.DataFrame(
                {"timestamp": ts, "symbol": s, "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 10.0}
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_valid_panel_normalised():
    raw = make_panel().sample(frac=1.0, random_state=0)  # shuffled
    raw["volume"] = raw["volume"].astype(int)
    raw["macro_x"] = 1
    p = validate_panel(raw)
    assert list(p["symbol"].unique()) == ["AAA", "BBB"]
    assert p.groupby("symbol")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert p.index.equals(pd.RangeIndex(len(p)))
    assert str(p["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert p["volume"].dtype == np.float64 and p["macro_x"].dtype == np.float64


def test_other_timezone_converted_to_utc():
    raw = make_panel()
    raw["timestamp"] = raw["timestamp"].dt.tz_convert("America/New_York")
    p = validate_panel(raw)
    assert p["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")


def test_iso_strings_with_offset_parse():
    raw = make_panel()
    raw["timestamp"] = raw["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert str(validate_panel(raw)["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_missing_column():
    with pytest.raises(
        QuantmlInputError, match=r"panel lacks column\(s\) \[.close.\].*open, high, low and volume are optional"
    ):
        validate_panel(make_panel().drop(columns=["close", "volume"]))
    # the optional bar columns may be missing (tests/unit/test_close_only.py)
    assert "volume" not in validate_panel(make_panel().drop(columns="volume")).columns


def test_empty_panel():
    with pytest.raises(QuantmlInputError, match="no rows"):
        validate_panel(make_panel().iloc[:0])


def test_duplicate_symbol_timestamp():
    raw = make_panel()
    raw = pd.concat([raw, raw.iloc[[5]]], ignore_index=True)
    with pytest.raises(
        QuantmlInputError, match=r"duplicate \(symbol, timestamp\).*AAA.*2024-01-01 05:00.*drop_duplicates"
    ):
        validate_panel(raw)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_inf_price(value):
    raw = make_panel()
    raw.loc[7, "close"] = value
    with pytest.raises(QuantmlInputError, match=r"'close' has NaN/inf prices at \(AAA, 2024-01-01 07:00"):
        validate_panel(raw)


def test_non_positive_price():
    raw = make_panel()
    raw.loc[3, ["low", "open"]] = [0.0, 0.0]
    with pytest.raises(QuantmlInputError, match=r"non-positive prices.*AAA"):
        validate_panel(raw)


def test_bad_volume():
    raw = make_panel()
    raw.loc[60, "volume"] = -1.0
    with pytest.raises(QuantmlInputError, match=r"'volume'.*BBB"):
        validate_panel(raw)


def test_high_below_low():
    raw = make_panel()
    raw.loc[50, ["high", "low"]] = [90.0, 110.0]
    with pytest.raises(QuantmlInputError, match=r"high < low at \(BBB, 2024-01-01 02:00.*swap or drop"):
        validate_panel(raw)


def test_close_outside_range():
    raw = make_panel()
    raw.loc[2, "close"] = 1000.0
    with pytest.raises(QuantmlInputError, match="close outside"):
        validate_panel(raw)


def test_naive_timestamps():
    raw = make_panel()
    raw["timestamp"] = raw["timestamp"].dt.tz_localize(None)
    with pytest.raises(QuantmlInputError, match=r"timezone-naive.*tz_localize\('UTC'\)"):
        validate_panel(raw)


def test_inf_in_exogenous_column():
    raw = make_panel()
    raw["funding_rate"] = 0.0
    raw.loc[9, "funding_rate"] = np.inf
    with pytest.raises(QuantmlInputError, match="exogenous column 'funding_rate' has inf"):
        validate_panel(raw)


def test_mixed_frequency_interleaved():
    raw = make_panel("1h", n=24)
    extra = raw[raw["symbol"] == "AAA"].iloc[[10]].copy()
    extra["timestamp"] += pd.Timedelta("30min")
    with pytest.raises(QuantmlInputError, match=r"mixed bar frequencies for symbol 'AAA'.*10:30.*0 days 00:30"):
        validate_panel(pd.concat([raw, extra], ignore_index=True))


def test_mixed_frequency_switch_mid_series():
    five = pd.date_range("2024-01-01", periods=200, freq="5min", tz="UTC")
    hourly = pd.date_range(five[-1] + pd.Timedelta("1h"), periods=40, freq="1h")
    ts = five.append(hourly)
    c = np.full(len(ts), 10.0)
    raw = pd.DataFrame({"timestamp": ts, "symbol": "X", "open": c, "high": c, "low": c, "close": c, "volume": 1.0})
    with pytest.raises(
        QuantmlInputError, match=r"mixed bar frequencies for symbol 'X'.*0 days 01:00:00 apart.*changes mid-series"
    ):
        validate_panel(raw)


def test_outages_are_not_mixed_frequency():
    raw = make_panel("5min", n=400, symbols=("X",))
    raw = raw.drop(index=list(range(100, 130)) + list(range(300, 303)))  # two outages
    p = validate_panel(raw)
    assert infer_bar_frequency(p) == pd.Timedelta("5min")


def test_weekends_are_not_mixed_frequency():
    days = pd.bdate_range("2024-01-01", periods=120, tz="UTC") + pd.Timedelta("21h")
    days = days.delete([15, 40])  # two holidays
    c = np.linspace(10, 20, len(days))
    raw = pd.DataFrame({"timestamp": days, "symbol": "X", "open": c, "high": c, "low": c, "close": c, "volume": 1.0})
    p = validate_panel(raw)
    assert infer_bar_frequency(p) == pd.Timedelta("1D")
    assert 245 < periods_per_year(p) < 260


def test_daily_dst_close_is_not_mixed_frequency():
    days = pd.bdate_range("2024-03-01", periods=40)
    ts = (days + pd.Timedelta("16h")).tz_localize("America/New_York").tz_convert("UTC")  # 21:00 then 20:00 UTC
    c = np.linspace(10, 20, len(ts))
    raw = pd.DataFrame({"timestamp": ts, "symbol": "X", "open": c, "high": c, "low": c, "close": c, "volume": 1.0})
    assert infer_bar_frequency(validate_panel(raw)) == pd.Timedelta("1D")


def test_symbols_with_different_frequencies():
    raw = pd.concat([make_panel("1h", symbols=("A",)), make_panel("5min", symbols=("B",))], ignore_index=True)
    with pytest.raises(QuantmlInputError, match="symbols use different bar frequencies"):
        validate_panel(raw)


def test_periods_per_year_hourly_24_7():
    p = validate_panel(make_panel("1h", n=500))
    assert periods_per_year(p) == pytest.approx(365.25 * 24)
    assert infer_bar_frequency(p) == pd.Timedelta("1h")


def test_fingerprint_stable_and_sensitive():
    p = validate_panel(make_panel())
    fp = data_fingerprint(p)
    assert fp == data_fingerprint(validate_panel(make_panel())) and len(fp) == 16
    q = p.copy()
    q.loc[3, "close"] = np.nextafter(q.loc[3, "close"], np.inf)
    assert data_fingerprint(q) != fp
    assert data_fingerprint(p.rename(columns={"volume": "vol"})) != fp
