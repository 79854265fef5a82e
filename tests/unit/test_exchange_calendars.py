"""Declared exchange calendars: resolution, bars_missing from the schedule, max_gap, out-of-session bars,
the allocator's closed markets."""

from __future__ import annotations

import exchange_calendars as xc
import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.contracts.exchange_calendars import (
    check_max_gap,
    declared_bars_missing,
    declared_calendar,
    declared_periods_per_year,
    panel_bars_missing,
    resolve_calendars,
)
from quantml.contracts.time import PeriodsPerYear, panel_periods_per_year, periods_per_year
from quantml.features import build_features
from quantml.portfolio.allocator import AllocatorConfig, allocate_panel

H = pd.Timedelta("1h")


def _nyse(start="2024-11-18", end="2024-12-06", anchor="clock") -> pd.DatetimeIndex:
    """Hourly NYSE bar closes (Thanksgiving 2024-11-28 closed, 2024-11-29 a half day)."""
    sched = xc.get_calendar("XNYS", start=start, end=end).schedule
    out = []
    for o, c in zip(sched["open"], sched["close"]):
        t = (o.floor("h") if anchor == "clock" else o) + H
        while t < c:
            out.append(t)
            t += H
        out.append(c)
    return pd.DatetimeIndex(sorted(set(out))).tz_convert("UTC")


def _panel(ts, sym="AAA") -> pd.DataFrame:
    return pd.DataFrame({"timestamp": ts, "symbol": sym, "close": 100.0 + np.arange(len(ts))})


def test_resolve_calendars_default_inferred_and_errors():
    assert resolve_calendars(None, ["A", "B"]) == {}
    assert resolve_calendars("24/7", ["A", "B"]) == {"A": "24/7", "B": "24/7"}
    assert resolve_calendars({"A": "XNYS", "B": None}, ["A", "B"]) == {"A": "XNYS"}
    assert resolve_calendars({"default": "XNYS", "B": "24/7"}, ["A", "B"]) == {"A": "XNYS", "B": "24/7"}
    with pytest.raises(QuantmlInputError, match=r"'NOPE'.*not an exchange calendar"):
        resolve_calendars({"A": "NOPE"}, ["A"])
    with pytest.raises(QuantmlInputError, match=r"\['ZZZ'\] that are not in the panel"):
        resolve_calendars({"ZZZ": "XNYS"}, ["A"])
    with pytest.raises(QuantmlInputError, match="must be null"):
        resolve_calendars(["XNYS"], ["A"])


@pytest.mark.parametrize("anchor", ["clock", "open"])
def test_declared_calendar_from_the_sessions(anchor):
    ts = _nyse(anchor=anchor)
    cal = declared_calendar("XNYS", ts)
    assert (cal.step, cal.bars_per_day, cal.bars_per_week) == (H, 7.0, 35.0)
    # holiday and half day expect no extra bar: nothing missing on complete bars
    missing = declared_bars_missing(ts, np.array(["A"] * len(ts)), {"A": "XNYS"})["A"][1]
    assert (missing == 0).all()
    daily = pd.DatetimeIndex(sorted({t.normalize() + pd.Timedelta("21h") for t in ts}))
    dcal = declared_calendar("XNYS", daily)
    assert (dcal.step, dcal.bars_per_day, dcal.bars_per_week) == (pd.Timedelta("1D"), 1.0, 5.0)
    crypto = pd.date_range("2024-11-18 01:00", periods=24 * 21, freq="h", tz="UTC")
    ccal = declared_calendar("24/7", crypto)
    assert (ccal.bars_per_day, ccal.bars_per_week) == (24.0, 168.0)
    assert declared_periods_per_year("24/7", crypto) == 8766.0
    # 2024 has 252 NYSE sessions: the daily schedule's year up to 2024-12-31
    full = xc.get_calendar("XNYS", start="2024-01-01", end="2024-12-31").sessions
    year_daily = pd.DatetimeIndex(full).tz_localize("UTC") + pd.Timedelta("21h")
    assert declared_periods_per_year("XNYS", year_daily) == 252.0


def test_bars_missing_holiday_is_zero_a_lost_hour_counts():
    ts = _nyse()
    # drop one session hour (2024-11-20 16:00) and the whole session of 2024-12-03
    lost_hour = pd.Timestamp("2024-11-20 16:00", tz="UTC")
    lost_day = ts[ts.normalize() == pd.Timestamp("2024-12-03", tz="UTC")]
    keep = ts[(ts != lost_hour) & ~ts.isin(lost_day)]
    panel = _panel(keep)
    missing = panel_bars_missing(panel.timestamp, panel.symbol, {"AAA": "XNYS"})
    after_hour = np.flatnonzero(keep == lost_hour + H)[0]
    after_day = np.flatnonzero(keep == pd.Timestamp("2024-12-04 15:00", tz="UTC"))[0]
    assert missing[after_hour] == 1
    assert missing[after_day] == 7  # a lost session of hourly NYSE bars
    thanksgiving = np.flatnonzero(keep == pd.Timestamp("2024-11-29 15:00", tz="UTC"))[0]
    assert missing[thanksgiving] == 0  # the holiday expects no bar
    assert missing.sum() == 8
    # features see the declared gaps: FeatureMatrix.bars_missing, and a flagged gap from 5 missing bars
    fm = build_features(panel, {"name": "r", "blocks": {"returns": {"lags": [1]}}}, declared={"AAA": "XNYS"})
    np.testing.assert_array_equal(fm.bars_missing, missing)
    assert list(fm.gaps.timestamp) == [pd.Timestamp("2024-12-04 15:00", tz="UTC")]


def test_out_of_session_and_off_grid_bars_are_errors():
    ts = _nyse()
    # a bar at 03:00 UTC (a local-time stamp, say) is outside every session
    bad = _panel(ts.append(pd.DatetimeIndex([pd.Timestamp("2024-11-19 03:00", tz="UTC")])).sort_values())
    with pytest.raises(QuantmlInputError, match=r"'AAA' has a bar at 2024-11-19 03:00:00\+00:00 outside the sessions"):
        panel_bars_missing(bad.timestamp, bad.symbol, {"AAA": "XNYS"})
    # Thanksgiving 15:00: the exchange is closed that day
    hol = _panel(ts.append(pd.DatetimeIndex([pd.Timestamp("2024-11-28 15:00", tz="UTC")])).sort_values())
    with pytest.raises(QuantmlInputError, match="2024-11-28 15:00:00.*outside the sessions.*wrong calendar"):
        panel_bars_missing(hol.timestamp, hol.symbol, {"AAA": "XNYS"})


def test_max_gap_turns_a_long_outage_into_an_error():
    crypto = pd.date_range("2024-11-18 01:00", periods=24 * 14, freq="h", tz="UTC")
    gap = crypto[(crypto < "2024-11-22 03:00") | (crypto >= "2024-11-22 09:00")]  # 6 hours lost
    panel = _panel(gap, "BTC")
    missing = panel_bars_missing(panel.timestamp, panel.symbol, {"BTC": "24/7"})
    assert missing.max() == 6
    cals = {"BTC": declared_calendar("24/7", panel.timestamp)}
    check_max_gap(panel, missing, cals, "6h")  # 6 missing bars fit in 6 hours
    check_max_gap(panel, missing, cals, None)
    with pytest.raises(QuantmlInputError) as err:
        check_max_gap(panel, missing, cals, "4h")
    msg = str(err.value)
    assert "'BTC' has a gap from 2024-11-22 02:00:00+00:00 to 2024-11-22 09:00:00+00:00" in msg
    assert "6 missing bar(s)" in msg and "data.max_gap=4h" in msg and "raise data.max_gap" in msg
    # a trading day on hourly NYSE bars is 7 bars: a lost session passes max_gap=1d, two do not
    ts = _nyse()
    lost = ts[(ts.normalize() != pd.Timestamp("2024-12-03", tz="UTC"))]
    p = _panel(lost)
    m = panel_bars_missing(p.timestamp, p.symbol, {"AAA": "XNYS"})
    check_max_gap(p, m, {"AAA": declared_calendar("XNYS", p.timestamp)}, "1d")
    with pytest.raises(QuantmlInputError, match="longer than data.max_gap=4h"):
        check_max_gap(p, m, {"AAA": declared_calendar("XNYS", p.timestamp)}, "4h")


def test_single_calendar_periods_per_year_is_unchanged():
    crypto = pd.date_range("2024-01-01 01:00", periods=24 * 30, freq="h", tz="UTC")
    panel = pd.concat([_panel(crypto, "A"), _panel(crypto, "B")], ignore_index=True)
    got = panel_periods_per_year(panel)
    assert type(got) is float and got == periods_per_year(panel)
    both = panel_periods_per_year(panel, {"A": "24/7", "B": "24/7"})
    assert type(both) is float and both == 8766.0
    mixed = panel_periods_per_year(panel, {"A": "24/7"})  # one declared, one inferred: two calendars
    assert isinstance(mixed, PeriodsPerYear) and mixed.by_symbol == {"A": 8766.0, "B": periods_per_year(crypto)}


def test_allocator_carries_closed_symbols_and_solves_the_open_ones():
    rng = np.random.default_rng(0)
    T, N, Hn = 6, 3, 1
    score = rng.normal(0, 1, (T, N, Hn))
    conf = np.ones((T, N, Hn))
    vol = np.ones((T, N, Hn))
    cov = np.broadcast_to(np.eye(N) * 1e-4, (T, N, N)).copy()
    cfg = AllocatorConfig(target_vol=10.0, corr_threshold=None, max_gross=10.0, symbol_cap=10.0, bucket_cap=10.0)
    is_open = np.ones((T, N), dtype=bool)
    is_open[2:5, 2] = False  # symbol 2's market is shut for bars 2..4
    open_pos, _ = allocate_panel(score, conf, vol, np.ones_like(score), cov, ["1h"], cfg, 8766.0)
    pos, attr = allocate_panel(score, conf, vol, np.ones_like(score), cov, ["1h"], cfg, 8766.0, is_open=is_open)
    np.testing.assert_array_equal(pos[2:5, 2], [pos[1, 2]] * 3)  # carried, not re-targeted
    np.testing.assert_array_equal(pos[:2], open_pos[:2])
    np.testing.assert_array_equal(pos[5], open_pos[5])
    np.testing.assert_allclose(attr.sum(axis=2), pos)
    # the open symbols: a solve over them alone (symbol 2 out of it), scaled down so that the book
    # with the carried weight stays within the target vol and the gross cap (one of them binds)
    score2 = score.copy()
    score2[2:5, 2] = 0.0
    alone, _ = allocate_panel(score2, conf, vol, np.ones_like(score), cov, ["1h"], cfg, 8766.0)
    for t in range(2, 5):
        ratio = pos[t, :2] / alone[t, :2]
        assert ratio[0] == pytest.approx(ratio[1]) and 0 < ratio[0] <= 1
        vol_t, gross_t = np.sqrt(pos[t] @ cov[t] @ pos[t] * 8766.0), np.abs(pos[t]).sum()
        assert vol_t <= 10.0 + 1e-9 and gross_t <= 10.0 + 1e-9
        assert vol_t == pytest.approx(10.0) or gross_t == pytest.approx(10.0)
    # a binding gross cap scales the open symbols only
    tight = AllocatorConfig(target_vol=10.0, corr_threshold=None, max_gross=1.0, symbol_cap=10.0, bucket_cap=10.0)
    p2, _ = allocate_panel(score, conf, vol, np.ones_like(score), cov, ["1h"], tight, 8766.0, is_open=is_open)
    assert p2[3, 2] == p2[1, 2]
    assert np.abs(p2[2:5]).sum(axis=1).max() <= 1.0 + 1e-12
