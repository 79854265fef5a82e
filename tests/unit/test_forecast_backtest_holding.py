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


def test_weights_are_the_mean_of_the_last_k_targets():
    signs = [1, 1, -1, -1, -1, -1, 1, 1]
    one_bar = run_backtest(RankLongShort("time_series"), frame("1h", signs), CostModel(), 8760)
    held = run_backtest(RankLongShort("time_series"), frame("4h", signs), CostModel(), 8760)
    np.testing.assert_allclose(one_bar.positions["X"], signs)
    expected = pd.Series(signs, dtype=float).rolling(4, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(held.positions["X"], expected)
    # held weights 1, 1, 1/3, 0, -1/2, -1, -1/2, 0: trades 1 + 0 + 2/3 + 1/3 + 4 x 1/2
    np.testing.assert_allclose(held.turnover.sum(), 4.0)
    np.testing.assert_allclose(one_bar.turnover.sum(), 5.0)  # 1 + 2 + 2
