"""A horizon-h forecast is held h/bar bars (overlapping portfolios), not re-traded every bar."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.backtest import run_backtest
from quantml.market import CostModel
from quantml.portfolio.strategy import RankLongShort, holding_bars


def frame(horizon: str, signs: list[float]) -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=len(signs), freq="1h", tz="UTC")
    return pd.DataFrame(
        {"symbol": "X", "timestamp": ts, "horizon": horizon, "expected_return": signs, "ret_next_bar": 0.01}
    )


def test_holding_bars_from_horizon_and_bar_spacing():
    assert holding_bars(frame("1h", [1, 1, 1])) == 1
    assert holding_bars(frame("4h", [1, 1, 1])) == 4
    assert holding_bars(frame("1d", [1, 1, 1])) == 24


def test_each_target_is_a_one_kth_tranche():
    # metrics version 2: each bar's target is a tranche of 1/k of capital held k bars (the book is
    # fully invested after k bars; version 1 averaged the targets seen so far: 1, 1, 1/3, ...)
    signs = [1, 1, -1, -1, -1, -1, 1, 1]
    one_bar = run_backtest(RankLongShort("time_series"), frame("1h", signs), CostModel(), 8760)
    held = run_backtest(RankLongShort("time_series"), frame("4h", signs), CostModel(), 8760)
    np.testing.assert_allclose(one_bar.positions["X"], signs)
    expected = pd.Series(signs, dtype=float).rolling(4, min_periods=1).sum().to_numpy() / 4
    np.testing.assert_allclose(held.positions["X"], [0.25, 0.5, 0.25, 0.0, -0.5, -1.0, -0.5, 0.0])
    np.testing.assert_allclose(held.positions["X"], expected)
    # trades 1/4, 1/4, 1/4, 1/4, 1/2, 1/2, 1/2, 1/2
    np.testing.assert_allclose(held.turnover.sum(), 3.0)
    np.testing.assert_allclose(one_bar.turnover.sum(), 5.0)  # 1 + 2 + 2
