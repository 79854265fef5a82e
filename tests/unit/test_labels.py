"""Multi-horizon labels: exact values on a hand-made daily panel with a weekend gap."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantml.contracts import QuantmlInputError
from quantml.data import validate_panel
from quantml.labels import make_labels, parse_horizon


def _bars(symbol, days, closes):
    ts = pd.to_datetime(days).tz_localize("UTC") + pd.Timedelta("21h")
    c = np.asarray(closes, dtype=float)
    return pd.DataFrame(
        {"timestamp": ts, "symbol": symbol, "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1000.0}
    )


@pytest.fixture
def weekend_panel():
    # A: Thu, Fri, (weekend), Mon, Tue, Wed.  B: Thu, Fri, Mon.
    a = _bars("A", ["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09", "2024-01-10"], [100, 110, 99, 99, 120])
    b = _bars("B", ["2024-01-04", "2024-01-05", "2024-01-08"], [50, 40, 60])
    return validate_panel(pd.concat([b, a], ignore_index=True))  # sorted: A first


def test_parse_horizon_units():
    assert parse_horizon("30m") == pd.Timedelta(minutes=30)
    assert parse_horizon("1h") == pd.Timedelta(hours=1)
    assert parse_horizon("4H") == pd.Timedelta(hours=4)
    assert parse_horizon("7d") == pd.Timedelta(days=7)
    assert parse_horizon("2w") == pd.Timedelta(days=14)
    assert parse_horizon("15min") == pd.Timedelta(minutes=15)


@pytest.mark.parametrize("bad", ["", "1x", "h", "0d", "-1d", "1.5h", "swing"])
def test_parse_horizon_rejects(bad):
    with pytest.raises(QuantmlInputError, match="not a duration"):
        parse_horizon(bad)


def test_swing_hint():
    with pytest.raises(QuantmlInputError, match="horizon=swing"):
        parse_horizon("swing")


def test_exact_labels_with_weekend(weekend_panel):
    lab = make_labels(weekend_panel, ["1d", "3d"], round_trip_cost=0.05)
    ln = np.log
    # rows 0..4 = A (Thu, Fri, Mon, Tue, Wed), rows 5..7 = B (Thu, Fri, Mon)
    ret_1d = [ln(110 / 100), ln(99 / 110), 0.0, ln(120 / 99), np.nan, ln(40 / 50), ln(60 / 40), np.nan]
    # 3d: Thu+3d = Sun 21:00 -> Mon; Fri+3d = Mon 21:00 exactly -> Mon; Mon+3d = Thu -> past the data
    ret_3d = [ln(99 / 100), ln(99 / 110), np.nan, np.nan, np.nan, ln(60 / 50), ln(60 / 40), np.nan]
    np.testing.assert_allclose(lab.ret[:, 0], ret_1d, rtol=0, atol=1e-15)
    np.testing.assert_allclose(lab.ret[:, 1], ret_3d, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(lab.dir[:, 0], [1, 0, 0, 1, np.nan, 0, 1, np.nan])
    after = np.sign(lab.ret) * np.maximum(np.abs(lab.ret) - 0.05, 0)
    np.testing.assert_allclose(lab.ret_after_cost, after, atol=1e-15)
    assert lab.ret_after_cost[0, 0] == pytest.approx(ln(1.1) - 0.05)
    assert lab.ret_after_cost[2, 0] == 0.0
    # vol over (t, t1]: sqrt of the sum of squared 1-bar log returns
    assert lab.vol[0, 1] == pytest.approx(np.sqrt(ln(1.1) ** 2 + ln(0.9) ** 2), abs=1e-15)
    assert lab.vol[0, 0] == pytest.approx(ln(1.1), abs=1e-15)
    assert lab.vol[2, 0] == 0.0
    np.testing.assert_allclose(lab.ret_next_bar, ret_1d, atol=1e-15)  # daily: next bar = 1d label here
    day = lambda s: np.datetime64(f"{s}T21:00:00", "ns")  # noqa: E731
    assert lab.t1[1, 0] == day("2024-01-08")  # Friday's 1d label ends Monday
    assert lab.t1[0, 1] == day("2024-01-08")
    assert np.isnat(lab.t1[2, 1])
    assert lab.t1_max[0] == day("2024-01-08")
    assert np.isnat(lab.t1_max[2])  # 3d runs past the data
    assert lab.t0[0] == day("2024-01-04")
    assert lab.ret.shape == (8, 2) and lab.horizons == ["1d", "3d"]


def test_ret_next_bar_differs_from_horizon_label(weekend_panel):
    lab = make_labels(weekend_panel, ["3d"], 0.0)
    assert lab.ret_next_bar[0] == pytest.approx(np.log(1.1))
    assert lab.ret[0, 0] == pytest.approx(np.log(0.99))
    assert np.isnan(lab.ret_next_bar[4]) and np.isnan(lab.ret_next_bar[7])  # end of each symbol


def test_horizon_shorter_than_bar(weekend_panel):
    with pytest.raises(QuantmlInputError, match=r"horizon=1h is shorter than one bar.*use horizon=1d or swing"):
        make_labels(weekend_panel, ["1h"], 0.0)


def test_horizon_longer_than_data(weekend_panel):
    with pytest.raises(QuantmlInputError, match="longer than every symbol's history"):
        make_labels(weekend_panel, ["30d"], 0.0)


@pytest.mark.parametrize("cost", [-0.01, float("nan"), "x"])
def test_bad_cost(weekend_panel, cost):
    with pytest.raises(QuantmlInputError, match="round_trip_cost"):
        make_labels(weekend_panel, ["1d"], cost)


def test_no_or_duplicate_horizons(weekend_panel):
    with pytest.raises(QuantmlInputError, match="at least one horizon"):
        make_labels(weekend_panel, [], 0.0)
    with pytest.raises(QuantmlInputError, match="duplicates"):
        make_labels(weekend_panel, ["1d", "1d"], 0.0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.5, 2.0), min_size=4, max_size=40), st.integers(1, 5))
def test_label_properties_on_regular_bars(steps, k):
    """On gap-free hourly bars an ``k``h label equals the k-bar log return and its vol
    the root sum of the k squared 1-bar returns."""
    close = 100 * np.cumprod(steps)
    n = len(close)
    ts = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    p = validate_panel(
        pd.DataFrame(
            {"timestamp": ts, "symbol": "X", "open": close, "high": close, "low": close, "close": close, "volume": 1.0}
        )
    )
    if k >= n:
        return
    lab = make_labels(p, [f"{k}h"], 0.0)
    lc = np.log(close)
    np.testing.assert_allclose(lab.ret[: n - k, 0], lc[k:] - lc[:-k], atol=1e-12)
    assert np.isnan(lab.ret[n - k :, 0]).all()
    r = np.diff(lc)
    expect_vol = np.sqrt([np.sum(r[i : i + k] ** 2) for i in range(n - k)])
    # vol comes from differences of a cumulative sum of squares: a tiny window after large
    # moves keeps ~1e-7 relative precision (cancellation), far below any trading relevance
    np.testing.assert_allclose(lab.vol[: n - k, 0], expect_vol, rtol=1e-6, atol=1e-12)
