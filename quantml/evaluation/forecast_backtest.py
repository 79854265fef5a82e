"""After-cost long/short backtest of one horizon's forecasts.

Weights are decided at each bar's close from that bar's forecasts and held over the
next bar (``ret_next_bar``, a log return turned into a simple return with ``expm1``):

- ``cross_sectional``: dollar-neutral, from the forecast ranks across symbols, demeaned,
  scaled to gross exposure 1 (``sum |w| = 1``);
- ``time_series``: ``sign(expected_return) / n`` for each of the ``n`` symbols forecast at
  that bar (gross exposure 1 spread over the symbols).

A forecast for horizon ``h`` is a view on the next ``k = h / bar`` bars, so the book holds
the average of the last ``k`` target weight vectors (overlapping portfolios, as in
Jegadeesh & Titman): each bar re-invests 1/k of the capital. Rebalancing a 7-day view
every hour would charge costs for a holding period the forecast never claimed.

Execution and costs go through :func:`quantml.backtest.execute` (the same arithmetic as
the portfolio backtest and the paper replay). The benchmark for the information ratio is
the equal-weight buy-and-hold of the same symbols (rebalanced every bar, no cost).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.market import CostModel, execute, performance_stats
from quantml.evaluation.metrics import bar_spacing, check_ic_mode
from quantml.contracts import QuantmlInputError, SYMBOL, TIMESTAMP


@dataclass
class ForecastBacktest:
    """Per-bar series (index: timestamp) and the metric block of one horizon's backtest."""

    weights: pd.DataFrame      # [T, N] positions held over the next bar
    pnl: pd.Series             # after-cost PnL per bar (fraction of capital)
    benchmark: pd.Series       # equal-weight buy-and-hold return per bar
    turnover: pd.Series
    stats: dict[str, float]

    @property
    def equity(self) -> pd.Series:
        return self.pnl.cumsum()


def _pivot(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    dup = frame.duplicated([TIMESTAMP, SYMBOL])
    if dup.any():
        row = frame.loc[dup, [SYMBOL, TIMESTAMP]].iloc[0]
        raise QuantmlInputError(
            f"duplicate prediction for symbol={row[SYMBOL]!r} timestamp={row[TIMESTAMP]} in one "
            "horizon/path; keep one row per (symbol, timestamp, horizon[, path]) before evaluating")
    return frame.pivot(index=TIMESTAMP, columns=SYMBOL, values=column).sort_index()


def forecast_weights(forecasts: pd.DataFrame, ic_mode: str) -> pd.DataFrame:
    """Target weights [T, N] from a timestamp x symbol matrix of expected returns (NaN = no forecast)."""
    check_ic_mode(ic_mode)
    present = forecasts.notna()
    if ic_mode == "cross_sectional":
        ranks = forecasts.rank(axis=1, method="average")
        demeaned = ranks.sub(ranks.mean(axis=1), axis=0)
        gross = demeaned.abs().sum(axis=1)
        weights = demeaned.div(gross.where(gross > 0), axis=0)
    else:
        n = present.sum(axis=1)
        weights = np.sign(forecasts).div(n.where(n > 0), axis=0)
    return weights.fillna(0.0)


def backtest_forecasts(frame: pd.DataFrame, ic_mode: str, costs: CostModel,
                       periods_per_year: float) -> ForecastBacktest:
    """Backtest one horizon (and one path) of a prediction frame.

    ``frame`` needs ``symbol, timestamp, expected_return, ret_next_bar``. Returns the
    after-cost series and ``stats`` with ``ann_return, sharpe_after_cost, max_drawdown,
    turnover, information_ratio`` (plus ``ann_vol``, ``calmar``).
    """
    er = _pivot(frame, "expected_return")
    simple = np.expm1(_pivot(frame, "ret_next_bar"))
    weights = forecast_weights(er, ic_mode)
    hold = holding_bars(frame)
    if hold > 1:
        weights = weights.rolling(hold, min_periods=1).mean()
    run = execute(weights.to_numpy(), simple.to_numpy(), costs)
    index = weights.index
    pnl = pd.Series(run["pnl"], index=index, name="pnl")
    turnover = pd.Series(run["turnover"], index=index, name="turnover")
    # equal-weight buy-and-hold of the symbols forecast at that bar
    held = er.notna() & simple.notna()
    benchmark = simple.where(held).mean(axis=1).fillna(0.0).rename("benchmark")
    base = performance_stats(run["pnl"], run["turnover"], periods_per_year)
    stats = {
        "ann_return": base["ann_return"],
        "sharpe_after_cost": base["sharpe"],
        "max_drawdown": base["max_drawdown"],
        "turnover": base["turnover"],
        "information_ratio": information_ratio(pnl.to_numpy(), benchmark.to_numpy(), periods_per_year),
        "ann_vol": base["ann_vol"],
        "calmar": base["calmar"],
    }
    return ForecastBacktest(weights, pnl, benchmark, turnover, stats)


def holding_bars(frame: pd.DataFrame) -> int:
    """Bars a forecast of ``frame``'s horizon spans (1 without a ``horizon`` column)."""
    if "horizon" not in frame.columns or frame.empty:
        return 1
    from quantml.labels import parse_horizon

    horizon = parse_horizon(str(frame["horizon"].iloc[0]))
    return max(1, int(round(horizon / bar_spacing(frame))))


def information_ratio(pnl: np.ndarray, benchmark: np.ndarray, periods_per_year: float) -> float:
    """``mean(active) / std(active, ddof=1) * sqrt(periods_per_year)``, ``active = pnl - benchmark``."""
    active = np.asarray(pnl, dtype=np.float64) - np.asarray(benchmark, dtype=np.float64)
    active = active[np.isfinite(active)]
    if len(active) < 2:
        return np.nan
    std = float(np.std(active, ddof=1))
    return float(np.mean(active) / std * np.sqrt(periods_per_year)) if std > 0 else np.nan
