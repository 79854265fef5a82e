"""Metrics version 2, by hand: holding to each label's end, the full bar calendar, compounded
drawdown, the benchmark that fits the book, the not-tradable mark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.backtest import run_backtest
from quantml.contracts import run_layout as L
from quantml.contracts.metrics import METRICS_VERSION
from quantml.evaluation.report import NOT_TRADABLE_NOTE, summary_table
from quantml.market import CostModel, max_drawdown, max_drawdown_additive, performance_stats
from quantml.portfolio.strategy import RankLongShort
from quantml.tuning.objectives import objective_value

ZERO = CostModel(0.0, 0.0)
BDAYS = pd.bdate_range("2024-01-01", periods=10, tz="UTC")  # Mon 1 Jan .. Fri 12 Jan 2024


def one_symbol(ts, er, ret_next, horizon, t1=None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "symbol": "X",
            "timestamp": ts,
            "horizon": horizon,
            "expected_return": np.asarray(er, dtype=float),
            "ret_next_bar": np.log1p(np.asarray(ret_next, dtype=float)),
        }
    )
    if t1 is not None:
        frame["t1"] = pd.DatetimeIndex(t1)
    return frame


def test_a_7d_label_on_daily_bars_is_held_its_5_bars_not_7():
    # Mon 1 Jan, 7d: the label ends Mon 8 Jan, 5 business bars later -> 1/5 on Mon..Fri, then flat
    # (the 0.1 rule round(7d / 1d) held 1/7 for 7 bars)
    er = [1.0] + [0.0] * 9
    t1 = BDAYS + pd.Timedelta("7D")
    bt = run_backtest(RankLongShort("time_series"), one_symbol(BDAYS, er, [0.01] * 10, "7d", t1), ZERO, 252)
    np.testing.assert_allclose(bt.positions["X"], [0.2] * 5 + [0.0] * 5)
    # without t1 (an old run's frame) the 0.1 rule still applies: 1/7 for 7 bars
    old = run_backtest(RankLongShort("time_series"), one_symbol(BDAYS, er, [0.01] * 10, "7d"), ZERO, 252)
    np.testing.assert_allclose(old.positions["X"], [1 / 7] * 7 + [0.0] * 3)


def test_tranches_of_different_spans_overlap():
    # row 0: +1 held 2 bars (1/2 each); row 1: -1 held 3 bars (1/3 each); rows 2-4: no view (0)
    ts = BDAYS[:5]
    t1 = [ts[2], ts[4], ts[3], ts[4], ts[4]]
    r = [0.01, 0.02, -0.01, 0.03, 0.0]
    bt = run_backtest(RankLongShort("time_series"), one_symbol(ts, [1, -1, 0, 0, 0], r, "1d", t1), ZERO, 252)
    # positions 1/2, 1/2 - 1/3, -1/3, -1/3, 0
    np.testing.assert_allclose(bt.positions["X"], [0.5, 1 / 6, -1 / 3, -1 / 3, 0.0], atol=1e-15)
    # pnl = position x simple next return: 0.005, 0.02/6, 0.01/3, -0.01, 0
    np.testing.assert_allclose(bt.pnl, [0.005, 0.02 / 6, 0.01 / 3, -0.01, 0.0], atol=1e-15)


def test_a_mondays_only_oracle_is_annualised_on_every_bar():
    # market: every business bar; forecasts only on Mondays 1 and 8 Jan (1d: t1 = the Tuesday),
    # oracle signs. The book runs Mon 1 .. Mon 8 (6 bars): pnl 0.01, 0, 0, 0, 0, 0.02.
    # mean 0.005, sample var = (0.005^2 + 4 x 0.005^2 + 0.015^2) / 5 = 7e-5
    # Sharpe = 0.005 / sqrt(7e-5) * sqrt(252) = sqrt(252 x 5 / 14) = sqrt(90)
    r = np.array([0.01, -0.05, -0.05, -0.05, -0.05, 0.02, -0.05, -0.05, -0.05, -0.05])
    market = pd.DataFrame({"symbol": "X", "timestamp": BDAYS, "ret_next_bar": np.log1p(r)})
    mondays = [0, 5]
    frame = one_symbol(BDAYS[mondays], [1.0, 1.0], r[mondays], "1d", BDAYS[[1, 6]])
    bt = run_backtest(RankLongShort("time_series"), frame, ZERO, 252, market=market)
    assert list(bt.pnl.index) == list(BDAYS[:6])
    np.testing.assert_allclose(bt.pnl, [0.01, 0, 0, 0, 0, 0.02], atol=1e-15)
    assert bt.stats["sharpe"] == pytest.approx(np.sqrt(90.0))
    # forecast rows only (the 0.1 calendar): pnl 0.01, 0.02 -> 0.015 / (0.01 / sqrt 2) x sqrt 252 = sqrt(1134)
    rows_only = run_backtest(RankLongShort("time_series"), frame, ZERO, 252)
    assert rows_only.stats["sharpe"] == pytest.approx(np.sqrt(1134.0))


def test_max_drawdown_is_compounded_and_return_dd_uses_it():
    pnl = np.array([0.1, -0.1, -0.1])
    # equity 1.1, 0.99, 0.891 from the peak 1.1 -> 0.891 / 1.1 - 1 = -0.19; additive 0.1, 0, -0.1 -> -0.2
    assert max_drawdown(pnl) == pytest.approx(-0.19)
    assert max_drawdown_additive(pnl) == pytest.approx(-0.2)
    stats = performance_stats(pnl, np.zeros(3), 252)
    # per-year arithmetic return -0.1 / 3 x 252 = -8.4; minus 1 x |compounded drawdown| 0.19
    assert stats["ann_return"] == pytest.approx(-8.4)
    assert objective_value(stats, "return_dd", dd_penalty=1.0) == pytest.approx(-8.59)
    assert stats["calmar"] == pytest.approx(-8.4 / 0.19)


def test_dollar_neutral_book_has_no_benchmark():
    ts = BDAYS[:3]
    frame = pd.concat(
        [
            one_symbol(ts, [1, 2, 3], [0.01, 0.0, -0.01], "1d").assign(symbol=s, expected_return=e)
            for s, e in (("A", [1.0, 2.0, 3.0]), ("B", [2.0, 1.0, 1.0]))
        ]
    )
    bt = run_backtest(RankLongShort("cross_sectional"), frame, ZERO, 252)
    assert bt.benchmark is None and "information_ratio" not in bt.stats
    ts_book = run_backtest(RankLongShort("time_series"), frame, ZERO, 252)
    assert ts_book.benchmark is not None and "information_ratio" in ts_book.stats


def test_not_tradable_validations_are_marked():
    from quantml.experiment.run import _tradable

    assert L.TAG_TRADABLE == "quantml.tradable"
    assert METRICS_VERSION == "2"
    assert _tradable(OmegaConf.create({"validation": {"method": "walk_forward"}}))
    assert not _tradable(OmegaConf.create({"validation": {"method": "purged_kfold"}}))
    assert not _tradable(OmegaConf.create({"validation": {"method": "cpcv"}}))
    rows = pd.DataFrame([{"symbol": "ALL", "horizon": "1d", **{k: 0.5 for k in ("ic", "rank_ic", "icir")}}])
    from quantml.evaluation.report import SUMMARY_METRICS

    rows = rows.reindex(columns=["symbol", "horizon", *SUMMARY_METRICS], fill_value=0.0)
    marked = summary_table(rows, tradable=False)
    assert "tradable" in marked.splitlines()[0] and marked.splitlines()[-1] == NOT_TRADABLE_NOTE
    assert "tradable" not in summary_table(rows)
