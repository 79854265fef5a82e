"""As-of joins on publication time: exact values, staleness, late revisions, events, errors."""

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.data import join_streams

T = lambda s: pd.Timestamp(f"2024-01-01 {s}", tz="UTC")  # noqa: E731


@pytest.fixture
def bars():
    ts = pd.date_range(T("01:00"), periods=6, freq="1h")  # bar closes 01:00 .. 06:00
    c = np.arange(1, 7, dtype=float) + 10
    frames = [
        pd.DataFrame({"timestamp": ts, "symbol": s, "open": c, "high": c, "low": c, "close": c, "volume": 1.0})
        for s in ("X", "Y")
    ]
    return pd.concat(frames, ignore_index=True)


def _stream(rows, symbol=True):
    cols = ["symbol", "event_time", "available_at", "v"] if symbol else ["event_time", "available_at", "v"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("event_time", "available_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df


def test_asof_values_flags_staleness_and_late_revisions(bars):
    funding = _stream(
        [
            ("X", T("00:30"), T("01:00"), 1.0),  # available exactly at the 01:00 close: used there
            ("X", T("01:30"), T("02:10"), 2.0),  # visible from the 03:00 bar
            ("X", T("01:00"), T("04:30"), 7.0),  # late copy of an OLDER observation: never overrides 2.0
        ]
    ).rename(columns={"v": "funding_rate"})
    out = join_streams(bars, {"funding": funding}, max_staleness={"funding": "4h"})
    x = out[out["symbol"] == "X"]
    # 06:00: latest event_time 01:30 is 4.5h old > 4h -> NaN and flagged
    np.testing.assert_array_equal(x["funding_rate"], [1.0, 1.0, 2.0, 2.0, 2.0, np.nan])
    np.testing.assert_array_equal(x["funding_rate_missing"], [0, 0, 0, 0, 0, 1.0])
    y = out[out["symbol"] == "Y"]  # no rows for Y: absent everywhere
    assert y["funding_rate"].isna().all() and (y["funding_rate_missing"] == 1.0).all()
    assert list(out.columns[:7]) == list(bars.columns) and len(out) == len(bars)


def test_market_wide_stream_joins_every_symbol(bars):
    macro = _stream(
        [(T("00:00") - pd.Timedelta("5D"), T("02:30"), 0.5), (T("00:00") - pd.Timedelta("4D"), T("05:00"), -1.0)],
        symbol=False,
    )
    macro = macro.rename(columns={"v": "macro_surprise"})
    out = join_streams(bars, {"macro": macro})
    for s in ("X", "Y"):
        v = out.loc[out["symbol"] == s, "macro_surprise"].to_numpy()
        np.testing.assert_array_equal(v, [np.nan, np.nan, 0.5, 0.5, -1.0, -1.0])
    assert out["macro_surprise_missing"].tolist() == [1, 1, 0, 0, 0, 0] * 2


def test_staleness_default_scales_with_bar(bars):
    s = _stream([("X", T("00:00"), T("00:00"), 3.0)]).rename(columns={"v": "basis"})
    out = join_streams(bars, {"basis": s})  # default 3h for "basis"
    x = out[out["symbol"] == "X"]
    np.testing.assert_array_equal(x["basis_missing"], [0, 0, 0, 1, 1, 1])


def test_events_bucketed_on_arrival_bar(bars):
    ev = pd.DataFrame(
        {
            "symbol": ["X", "X", "X", "Y"],
            "event_time": [T("01:10"), T("01:40"), T("05:00"), T("03:00")],
            "available_at": [T("01:20"), T("01:50"), T("07:00"), T("05:59")],
            "event_count": [1.0, 2.0, 1.0, 1.0],
            "event_sentiment": [0.5, -1.0, 0.9, 0.2],
        }
    )
    out = join_streams(bars, {"events": ev})
    x, y = out[out["symbol"] == "X"], out[out["symbol"] == "Y"]
    np.testing.assert_array_equal(x["event_count"], [0, 3.0, 0, 0, 0, 0])  # 07:00 arrival is after the data
    assert x["event_sentiment"].iloc[1] == pytest.approx((0.5 * 1 - 1.0 * 2) / 3)
    assert x["event_sentiment"].isna().sum() == 5
    np.testing.assert_array_equal(y["event_count"], [0, 0, 0, 0, 0, 1.0])
    assert "event_count_missing" not in out.columns


def test_row_order_preserved(bars):
    shuffled = bars.sample(frac=1.0, random_state=1)
    s = _stream([("X", T("00:30"), T("01:00"), 1.0)]).rename(columns={"v": "basis"})
    out = join_streams(shuffled, {"basis": s}, {"basis": "10h"})
    assert out.index.equals(shuffled.index)
    assert (out.loc[out["symbol"] == "X", "basis"] == 1.0).all()


def test_available_before_event_is_an_error(bars):
    s = _stream([("X", T("02:00"), T("01:00"), 1.0)])
    with pytest.raises(QuantmlInputError, match="available_at earlier than event_time"):
        join_streams(bars, {"s": s})


def test_naive_stream_time_is_an_error(bars):
    s = _stream([("X", T("00:30"), T("01:00"), 1.0)])
    s["available_at"] = s["available_at"].dt.tz_localize(None)
    with pytest.raises(QuantmlInputError, match=r"stream 's' column 'available_at' is timezone-naive"):
        join_streams(bars, {"s": s})


def test_stream_without_available_at(bars):
    s = _stream([("X", T("00:30"), T("01:00"), 1.0)]).drop(columns="available_at")
    with pytest.raises(QuantmlInputError, match=r"lacks column\(s\) \['available_at'\]"):
        join_streams(bars, {"s": s})


def test_stream_column_clash(bars):
    s = _stream([("X", T("00:30"), T("01:00"), 1.0)]).rename(columns={"v": "close"})
    with pytest.raises(QuantmlInputError, match="already exist in the bars"):
        join_streams(bars, {"s": s})


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_row = st.tuples(st.sampled_from(["X", "Y"]), st.integers(0, 400), st.integers(0, 300), st.floats(-5, 5))


@settings(max_examples=30, deadline=None)
@given(st.lists(_row, min_size=1, max_size=25, unique_by=lambda r: (r[0], r[1] + r[2])), st.integers(30, 500))
def test_asof_matches_brute_force(rows, limit_min):
    """Random streams with late and out-of-order publications vs a direct definition:
    latest event_time among rows published at or before the bar, stale beyond the limit."""
    base = T("00:00")
    ts = pd.date_range(T("01:00"), periods=8, freq="1h")
    bars = pd.concat(
        [pd.DataFrame({"timestamp": ts, "symbol": s, "close": 1.0}) for s in ("X", "Y")], ignore_index=True
    )
    stream = pd.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "event_time": [base + pd.Timedelta(minutes=r[1]) for r in rows],
            "available_at": [base + pd.Timedelta(minutes=r[1] + r[2]) for r in rows],
            "v": [r[3] for r in rows],
        }
    )
    out = join_streams(bars, {"s": stream}, {"s": f"{limit_min}min"})
    limit = pd.Timedelta(minutes=limit_min)
    for i, bar in bars.iterrows():
        seen = stream[(stream["symbol"] == bar["symbol"]) & (stream["available_at"] <= bar["timestamp"])]
        if len(seen):
            newest = seen[seen["event_time"] == seen["event_time"].max()]
            pick = newest.loc[newest["available_at"].idxmax()]
            fresh = bar["timestamp"] - pick["event_time"] <= limit
        if len(seen) and fresh:
            assert out.loc[i, "v"] == pick["v"] and out.loc[i, "v_missing"] == 0.0
        else:
            assert np.isnan(out.loc[i, "v"]) and out.loc[i, "v_missing"] == 1.0
