"""Performance statistics of a per-bar PnL series (returns as fractions of capital).

Textbook definitions, so they can be checked by hand:
- annualised return = mean(pnl) * periods_per_year (arithmetic, additive PnL)
- annualised volatility = std(pnl, ddof=1) * sqrt(periods_per_year)
- Sharpe = annualised return / annualised volatility (zero risk-free rate)
- max drawdown = min over t of (equity_t - max_{s<=t} equity_s), equity = cumulative PnL,
  starting from 0; reported as a non-positive number
- Calmar = annualised return / |max drawdown|
"""
from __future__ import annotations

import numpy as np


def annualised_return(pnl: np.ndarray, periods_per_year: float) -> float:
    pnl = np.asarray(pnl, dtype=np.float64)
    return float(np.mean(pnl) * periods_per_year) if len(pnl) else float("nan")


def annualised_volatility(pnl: np.ndarray, periods_per_year: float) -> float:
    pnl = np.asarray(pnl, dtype=np.float64)
    return float(np.std(pnl, ddof=1) * np.sqrt(periods_per_year)) if len(pnl) > 1 else float("nan")


def sharpe_ratio(pnl: np.ndarray, periods_per_year: float) -> float:
    vol = annualised_volatility(pnl, periods_per_year)
    if not np.isfinite(vol) or vol == 0:
        return 0.0 if np.isfinite(vol) else float("nan")
    return annualised_return(pnl, periods_per_year) / vol


def max_drawdown(pnl: np.ndarray) -> float:
    equity = np.cumsum(np.asarray(pnl, dtype=np.float64))
    if not len(equity):
        return float("nan")
    peak = np.maximum.accumulate(np.maximum(equity, 0.0))
    return float(np.min(equity - peak))


def calmar_ratio(pnl: np.ndarray, periods_per_year: float) -> float:
    mdd = max_drawdown(pnl)
    if not np.isfinite(mdd):
        return float("nan")
    ann = annualised_return(pnl, periods_per_year)
    return ann / abs(mdd) if mdd < 0 else (float("inf") if ann > 0 else 0.0)


def performance_stats(pnl: np.ndarray, turnover: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """The backtest metric block shared by evaluation, tuning and the portfolio backtest."""
    turnover = np.asarray(turnover, dtype=np.float64)
    return {
        "ann_return": annualised_return(pnl, periods_per_year),
        "ann_vol": annualised_volatility(pnl, periods_per_year),
        "sharpe": sharpe_ratio(pnl, periods_per_year),
        "max_drawdown": max_drawdown(pnl),
        "calmar": calmar_ratio(pnl, periods_per_year),
        "turnover": float(np.mean(turnover)) if len(turnover) else float("nan"),
    }


def infer_periods_per_year(timestamps) -> float:
    """Bars per year from bar timestamps (tz-aware or naive, any order, duplicates allowed).

    Markets that trade on weekends (crypto) have 365.25 days a year, others 252. Daily bars:
    ``days_per_year``; intraday bars: ``days_per_year`` times the median number of bars per
    calendar day; bars of two days or more: ``365.25 / bar_days``.
    """
    import pandas as pd

    ts = pd.DatetimeIndex(pd.unique(pd.DatetimeIndex(timestamps))).sort_values()
    if len(ts) < 2:
        raise ValueError("need at least two distinct timestamps to infer periods per year; set periods_per_year")
    step = pd.Series(ts[1:] - ts[:-1]).median()
    day = pd.Timedelta("1D")
    if step >= 2 * day:
        return 365.25 / (step / day)
    days_per_year = 365.25 if bool((ts.dayofweek >= 5).any()) else 252.0
    if step >= day:
        return days_per_year
    per_day = pd.Series(1, index=ts).groupby(ts.normalize()).size().median()
    return float(days_per_year * per_day)
