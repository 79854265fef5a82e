"""An order-book stream's quoted spread prices the book's trades; without one nothing changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def test_allocator_book_pays_the_quoted_spread_too():
    from quantml.contracts import SYMBOL, TIMESTAMP
    from quantml.portfolio import AllocatorConfig, AllocatorStrategy
    from quantml.signals import SignalConfig
    from tests.helpers.synthetic_oos import synthetic_oos_frame

    frame = synthetic_oos_frame(n_symbols=3, n_bars=120, horizons=("1d",))
    strategy = AllocatorStrategy(
        AllocatorConfig(cov_window=30, cov_min_periods=10, symbol_cap=0.5, bucket_cap=1.0, max_gross=2.0),
        SignalConfig.build({"default": 0.02}, {"default": 0.05}),
    )
    bars = frame.drop_duplicates([SYMBOL, TIMESTAMP])[[SYMBOL, TIMESTAMP, "ret_next_bar"]].reset_index(drop=True)
    costs = CostModel(fee_bps=1.0, slippage_bps=2.0, impact_coef=0.0)
    plain = strategy.book(frame, 252.0, market=bars)
    assert plain.half_spread is None
    quoted = strategy.book(frame, 252.0, market=bars.assign(**{HALF_SPREAD: 1e-3}))
    np.testing.assert_array_equal(quoted.positions, plain.positions)  # the spread prices trades, never moves them
    np.testing.assert_allclose(quoted.half_spread, 1e-3)
    a = run_backtest(strategy, frame, costs, 252.0, market=bars)
    b = run_backtest(strategy, frame, costs, 252.0, market=bars.assign(**{HALF_SPREAD: 1e-3}))
    # one unit of turnover pays fee + slippage (1 + 2 bps) without quotes, fee + half-spread (1 + 10 bps) with
    turnover = a.bars["turnover"].sum()
    assert turnover > 1.0 and b.bars["turnover"].sum() == pytest.approx(turnover)
    assert a.bars["cost"].sum() == pytest.approx(3e-4 * turnover) and b.bars["cost"].sum() == pytest.approx(
        11e-4 * turnover
    )
