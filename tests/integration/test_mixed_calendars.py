"""A mixed panel: hourly crypto around the clock beside hourly NYSE equities (7 bars a session)
over three weeks with the 2024-07-04 holiday and the 2024-07-03 half day. Labels, per-symbol
annualisation, cross-sectional features and IC, and the book, each against values computed here
by hand (from the bars and the exchange's published schedule), not by the code under test."""

from __future__ import annotations

import exchange_calendars as xc
import numpy as np
import pandas as pd
import pytest

from quantml.backtest import run_backtest
from quantml.contracts.exchange_calendars import declared_calendar, panel_bars_missing, resolve_calendars
from quantml.contracts.time import YEAR, PeriodsPerYear, panel_periods_per_year, periods_for
from quantml.data import validate_panel
from quantml.evaluation.metrics import ic_series
from quantml.features import build_features
from quantml.labels import make_labels
from quantml.market import CostModel
from quantml.portfolio.strategy import RankLongShort, market_returns

CRYPTO = ["BTC", "ETH", "SOL"]
EQUITY = ["AAA", "BBB"]
START, END = "2024-06-24", "2024-07-12"
H = pd.Timedelta("1h")


def _nyse_hours() -> pd.DatetimeIndex:
    """Clock-hour bar closes of every NYSE session: whole hours after the open, and the close."""
    sched = xc.get_calendar("XNYS", start=START, end=END).schedule
    out = []
    for o, c in zip(sched["open"], sched["close"]):
        t = o.floor("h") + H
        while t < c:
            out.append(t)
            t += H
        out.append(c)
    return pd.DatetimeIndex(sorted(set(out))).tz_convert("UTC")


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    crypto_ts = pd.date_range(f"{START} 01:00", "2024-07-13 00:00", freq="h", tz="UTC")
    eq_ts = _nyse_hours()
    frames = []
    for sym in CRYPTO:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(crypto_ts))))
        frames.append(pd.DataFrame({"timestamp": crypto_ts, "symbol": sym, "close": close}))
    for sym in EQUITY:
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.005, len(eq_ts))))
        frames.append(pd.DataFrame({"timestamp": eq_ts, "symbol": sym, "close": close}))
    return validate_panel(pd.concat(frames, ignore_index=True))


DECLARED = {"BTC": "24/7", "ETH": "24/7", "SOL": "24/7", "default": "XNYS"}


def _close(panel, sym, ts) -> float:
    row = panel[(panel.symbol == sym) & (panel.timestamp == pd.Timestamp(ts, tz="UTC"))]
    assert len(row) == 1, (sym, ts)
    return float(row["close"].iloc[0])


def test_equity_sessions_have_seven_bars_and_the_half_day_four(panel):
    eq = panel[panel.symbol == "AAA"].timestamp
    per_day = eq.dt.date.value_counts()
    assert pd.Timestamp("2024-07-04").date() not in per_day.index  # the holiday: no bar
    assert per_day[pd.Timestamp("2024-07-03").date()] == 4  # 13:30-17:00 UTC: 14, 15, 16, 17
    assert (per_day.drop(pd.Timestamp("2024-07-03").date()) == 7).all()


def test_labels_resolve_wall_clock_horizons_to_the_next_bar_of_the_symbol(panel):
    labels = make_labels(panel, ["1h", "4h", "1d"], 0.0)
    j4, jd = labels.horizons.index("4h"), labels.horizons.index("1d")

    def row(sym, ts):
        return int(np.flatnonzero((panel.symbol == sym) & (panel.timestamp == pd.Timestamp(ts, tz="UTC")))[0])

    # the equity's last bar before the holiday (half day, 17:00): 4h later the exchange is shut
    # until 2024-07-05 13:30, so the label ends at that session's first bar, 14:00
    r = row("AAA", "2024-07-03 17:00")
    assert pd.Timestamp(labels.t1[r, j4]) == pd.Timestamp("2024-07-05 14:00")
    want = np.log(_close(panel, "AAA", "2024-07-05 14:00") / _close(panel, "AAA", "2024-07-03 17:00"))
    assert labels.ret[r, j4] == pytest.approx(want, abs=1e-12)
    # 1d from 2024-07-03 15:00: 2024-07-04 15:00 falls on the holiday -> the next bar, 07-05 14:00
    r = row("AAA", "2024-07-03 15:00")
    assert pd.Timestamp(labels.t1[r, jd]) == pd.Timestamp("2024-07-05 14:00")
    # 1d from 2024-07-05 15:00 (a Friday): Saturday 15:00 -> Monday's 15:00 bar is not the first: 14:00
    r = row("AAA", "2024-07-05 15:00")
    assert pd.Timestamp(labels.t1[r, jd]) == pd.Timestamp("2024-07-08 14:00")
    # Friday's close (20:00) + 4h -> Monday's first bar
    r = row("BBB", "2024-07-05 20:00")
    assert pd.Timestamp(labels.t1[r, j4]) == pd.Timestamp("2024-07-08 14:00")
    # crypto at the same bar: 4h later, the same day
    r = row("BTC", "2024-07-03 17:00")
    assert pd.Timestamp(labels.t1[r, j4]) == pd.Timestamp("2024-07-03 21:00")
    want = np.log(_close(panel, "BTC", "2024-07-03 21:00") / _close(panel, "BTC", "2024-07-03 17:00"))
    assert labels.ret[r, j4] == pytest.approx(want, abs=1e-12)


def test_declared_calendars_and_gaps(panel):
    declared = resolve_calendars(DECLARED, panel.symbol.unique())
    assert declared == {"BTC": "24/7", "ETH": "24/7", "SOL": "24/7", "AAA": "XNYS", "BBB": "XNYS"}
    eq = declared_calendar("XNYS", panel[panel.symbol == "AAA"].timestamp)
    cr = declared_calendar("24/7", panel[panel.symbol == "BTC"].timestamp)
    assert (eq.step, eq.bars_per_day, eq.bars_per_week) == (H, 7.0, 35.0)
    assert (cr.step, cr.bars_per_day, cr.bars_per_week) == (H, 24.0, 168.0)
    # the holiday, the nights and the weekends expect no bar: nothing is missing
    assert (panel_bars_missing(panel.timestamp, panel.symbol, declared) == 0).all()


def _nyse_bars_in_year_to(last: pd.Timestamp) -> int:
    """Clock-hour bars of NYSE sessions in (last - 365.25 days, last], from the published schedule."""
    sched = xc.get_calendar("XNYS", start="2023-06-01", end=END).schedule
    n = 0
    lo = last - YEAR
    for o, c in zip(sched["open"], sched["close"]):
        t = o.floor("h") + H
        stamps = []
        while t < c:
            stamps.append(t)
            t += H
        stamps.append(c)
        n += sum(lo < s <= last for s in stamps)
    return n


def test_each_symbol_annualises_with_its_own_bars_and_the_book_with_the_union(panel):
    declared = resolve_calendars(DECLARED, panel.symbol.unique())
    ppy = panel_periods_per_year(panel, declared)
    assert isinstance(ppy, PeriodsPerYear)
    assert ppy.by_symbol["BTC"] == 24 * 365.25  # 8766 hourly bars a year around the clock
    last = panel[panel.symbol == "AAA"].timestamp.max()
    expected = _nyse_bars_in_year_to(last)
    assert ppy.by_symbol["AAA"] == expected
    assert 7 * 252 - 30 < expected < 7 * 252 + 10  # ~7 bars x 252 sessions, less the half days
    # the union calendar: every crypto hour (the equities' bars fall on it): 8766 a year
    union = pd.DatetimeIndex(panel.timestamp.unique()).sort_values()
    assert len(union) == len(panel[panel.symbol == "BTC"])
    hand = (len(union) - 1) / ((union[-1] - union[0]) / YEAR)
    assert float(ppy) == pytest.approx(hand, rel=1e-12) and float(ppy) == pytest.approx(8766.0)
    assert periods_for(ppy, ["AAA"]) == expected
    assert periods_for(ppy, ["AAA", "BBB"]) == expected  # one calendar: its own
    assert periods_for(ppy, ["AAA", "BTC"]) == float(ppy)  # two calendars: the union
    # inferred calendars (no declaration) see the two calendars too
    inferred = panel_periods_per_year(panel)
    assert isinstance(inferred, PeriodsPerYear) and float(inferred) == pytest.approx(8766.0)


def test_cross_sectional_features_rank_only_the_open_symbols(panel):
    fm = build_features(panel, {"name": "xs", "blocks": {"cross_section": {"lags": [1], "vol_window": 4}}})
    x = fm.frame["xs_rank_ret_1"].to_numpy()
    lc = np.log(panel["close"].to_numpy())
    r1 = pd.Series(lc).groupby(panel.symbol.to_numpy()).diff().to_numpy()
    for ts, open_syms in (("2024-07-04 15:00", CRYPTO), ("2024-07-05 16:00", CRYPTO + EQUITY)):
        rows = np.flatnonzero((panel.timestamp == pd.Timestamp(ts, tz="UTC")).to_numpy())
        assert sorted(panel.symbol.to_numpy()[rows]) == sorted(open_syms)
        order = np.argsort(np.argsort(r1[rows])) + 1  # ranks 1..n by hand
        np.testing.assert_allclose(x[rows], order / len(rows))


def _spearman(a, b) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def preds(panel) -> pd.DataFrame:
    labels = make_labels(panel, ["1h"], 0.0)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "symbol": panel.symbol.to_numpy(),
            "timestamp": panel.timestamp.to_numpy(),
            "horizon": "1h",
            "expected_return": rng.normal(0, 1e-3, len(panel)),
            "ret": labels.ret[:, 0],
            "ret_next_bar": labels.ret_next_bar,
            "t1": pd.to_datetime(labels.t1[:, 0]).tz_localize("UTC"),
        }
    )
    return frame[np.isfinite(frame["ret"])].reset_index(drop=True)


def test_rank_ic_uses_only_the_symbols_open_at_each_timestamp(preds):
    ic = ic_series(preds, "cross_sectional", "spearman")
    for ts, n_open in (("2024-07-04 15:00", 3), ("2024-07-05 16:00", 5)):
        t = pd.Timestamp(ts, tz="UTC")
        part = preds[preds.timestamp == t]
        assert len(part) == n_open
        assert ic.loc[t] == pytest.approx(_spearman(part.expected_return, part.ret), abs=1e-12)
    # every timestamp has an IC: 3 crypto when the exchange is shut, 5 symbols when it is open
    assert len(ic) == preds.timestamp.nunique()


def test_the_book_never_trades_a_closed_market_and_annualises_on_the_union(panel, preds):
    declared = resolve_calendars(DECLARED, panel.symbol.unique())
    ppy = panel_periods_per_year(panel, declared)
    market = market_returns(panel)
    costs = CostModel(fee_bps=5.0, slippage_bps=0.0)
    bt = run_backtest(RankLongShort(mode="cross_sectional"), preds, costs, ppy, market=market)
    pos = bt.positions
    assert bt.periods_per_year == float(ppy) == pytest.approx(8766.0)  # the union calendar
    eq_bars = set(panel[panel.symbol == "AAA"].timestamp)
    closed = np.array([t not in eq_bars for t in pos.index])
    assert closed.sum() > 300  # nights, weekends, the holiday
    trade = pos.diff().fillna(pos.iloc[:1])
    # no trade in a closed market: the equity position is carried flat while the exchange is shut
    assert (trade.loc[closed, EQUITY].abs() < 1e-15).all().all()
    assert (pos.loc[closed, EQUITY].abs().sum(axis=1) > 0).any()  # ... and it is carried, not flattened
    # hand-computed PnL per bar: positions x simple next-bar return (0 where the symbol has no bar),
    # less 5 bps of every trade; the equities' closed bars earn and cost nothing
    simple = np.expm1(market.pivot(index="timestamp", columns="symbol", values="ret_next_bar"))
    simple = simple.reindex(index=pos.index, columns=pos.columns)
    gross = (pos * simple.fillna(0.0)).sum(axis=1)
    cost = trade.abs().sum(axis=1) * 5e-4
    np.testing.assert_allclose(bt.bars["pnl"].to_numpy(), (gross - cost).to_numpy(), atol=1e-15)
    eq_cost = (trade.loc[closed, EQUITY].abs() * 5e-4).to_numpy().sum()
    assert eq_cost == 0.0
    # annualised on the union calendar: mean x 8766, std x sqrt(8766)
    pnl = bt.bars["pnl"].to_numpy()
    assert bt.stats["ann_return"] == pytest.approx(pnl.mean() * float(ppy), rel=1e-12)
    assert bt.stats["ann_vol"] == pytest.approx(pnl.std(ddof=1) * np.sqrt(float(ppy)), rel=1e-12)
    # one equity's own book annualises with its own bars per year (NYSE hours), on its own bars
    one = run_backtest(RankLongShort(mode="time_series"), preds[preds.symbol == "AAA"], costs, ppy, market=market)
    assert one.periods_per_year == ppy.by_symbol["AAA"]
    assert set(one.bars.index) <= eq_bars
