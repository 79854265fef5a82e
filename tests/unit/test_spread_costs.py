"""An order-book stream's quoted spread prices the book's trades; without one nothing changes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.backtest import run_backtest
from quantml.market import CostModel
from quantml.portfolio.strategy import HALF_SPREAD, RankLongShort

TS = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC")
SIGNS = [1.0, -1.0, -1.0, 1.0]


def forecasts() -> pd.DataFrame:
    return pd.DataFrame({"symbol": "X", "timestamp": TS, "horizon": "1h", "expected_return": SIGNS})


def market(half_spread=None) -> pd.DataFrame:
    frame = pd.DataFrame({"symbol": "X", "timestamp": TS, "ret_next_bar": [0.0, 0.0, 0.0, 0.0]})
    if half_spread is not None:
        frame[HALF_SPREAD] = half_spread
    return frame


def test_quoted_spread_replaces_the_constant_slippage_bar_by_bar():
    costs = CostModel(fee_bps=1.0, slippage_bps=2.0, impact_coef=0.0)
    book = RankLongShort("time_series")
    plain = run_backtest(book, forecasts(), costs, 8760, market=market())
    unknown = run_backtest(book, forecasts(), costs, 8760, market=market([np.nan] * 4))
    quoted = run_backtest(book, forecasts(), costs, 8760, market=market([5e-4, np.nan, 1e-4, 0.0]))
    # trades 1, -2, 0, 2 (fraction of capital); zero returns: the PnL is minus the cost
    pd.testing.assert_series_equal(plain.bars["pnl"], unknown.bars["pnl"])
    np.testing.assert_allclose(-plain.bars["pnl"].to_numpy(), [3e-4, 6e-4, 0.0, 6e-4])
    np.testing.assert_allclose(-quoted.bars["pnl"].to_numpy(), [1 * (1e-4 + 5e-4), 2 * 3e-4, 0.0, 2 * 1e-4])
