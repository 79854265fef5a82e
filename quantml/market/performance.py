"""Performance statistics of a per-bar PnL series (returns as fractions of capital).

Textbook definitions, so they can be checked by hand:
- annualised return = mean(pnl) * periods_per_year (arithmetic, additive PnL)
- annualised volatility = std(pnl, ddof=1) * sqrt(periods_per_year)
- Sharpe = annualised return / annualised volatility (zero risk-free rate)
- max drawdown (compounded) = min over t of (E_t / max_{s<=t} E_s - 1), E_t = prod_{s<=t}(1 + pnl_s),
  starting from E = 1; reported as a non-positive fraction (>= -1 while the book never loses
  more than its capital); ``max_drawdown_additive`` keeps the 0.1 definition
  (min of equity_t - max(0, max_{s<=t} equity_s), equity = cumulative PnL)
- Calmar = annualised return / |max drawdown| (compounded)
- information ratio = mean(pnl - benchmark) / std(pnl - benchmark, ddof=1) * sqrt(periods_per_year)

The statistic names (``STAT_NAMES``) are the keys of every backtest's ``stats``; a metric
logged from them is named by :data:`METRIC_KEYS` (``sharpe`` is logged as ``sharpe_after_cost``).
"""

from __future__ import annotations

import numpy as np

from quantml.contracts.time import periods_per_year

STAT_NAMES = ("ann_return", "ann_vol", "sharpe", "max_drawdown", "calmar", "turnover", "information_ratio")
# stat name -> metric key (``<split>_<key>/<horizon>``): the after-cost Sharpe keeps its long name.
METRIC_KEYS = {**{k: k for k in STAT_NAMES}, "sharpe": "sharpe_after_cost"}


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


def drawdown(equity: np.ndarray) -> np.ndarray:
    """``equity_t - max(0, max_{s<=t} equity_s)`` per bar (additive equity starting from 0): the
    metrics-version-1 drawdown, kept for :func:`max_drawdown_additive`; backtests' ``drawdown``
    column and :func:`max_drawdown` are :func:`compounded_drawdown`."""
    equity = np.asarray(equity, dtype=np.float64)
    return equity - np.maximum.accumulate(np.maximum(equity, 0.0))


def compounded_drawdown(pnl: np.ndarray) -> np.ndarray:
    """``E_t / max(1, max_{s<=t} E_s) - 1`` per bar, ``E_t = prod_{s<=t} (1 + pnl_s)`` (compounded
    equity starting from 1): the bar ``drawdown`` column of every backtest and :func:`max_drawdown`.
    NaN PnL counts as 0 (a flat bar)."""
    growth = 1.0 + np.nan_to_num(np.asarray(pnl, dtype=np.float64))
    equity = np.cumprod(growth)
    peak = np.maximum.accumulate(np.maximum(equity, 1.0))
    return equity / peak - 1.0


def max_drawdown(pnl: np.ndarray) -> float:
    """Compounded maximum drawdown of a per-bar PnL series (a non-positive fraction)."""
    pnl = np.asarray(pnl, dtype=np.float64)
    if not len(pnl):
        return float("nan")
    return float(np.min(compounded_drawdown(pnl)))


def max_drawdown_additive(pnl: np.ndarray) -> float:
    """The 0.1 (metrics version 1) drawdown: on additive equity ``cumsum(pnl)`` from 0."""
    equity = np.cumsum(np.asarray(pnl, dtype=np.float64))
    if not len(equity):
        return float("nan")
    return float(np.min(drawdown(equity)))


def calmar_ratio(pnl: np.ndarray, periods_per_year: float) -> float:
    mdd = max_drawdown(pnl)
    if not np.isfinite(mdd):
        return float("nan")
    ann = annualised_return(pnl, periods_per_year)
    return ann / abs(mdd) if mdd < 0 else (float("inf") if ann > 0 else 0.0)


def information_ratio(pnl: np.ndarray, benchmark: np.ndarray, periods_per_year: float) -> float:
    """``mean(active) / std(active, ddof=1) * sqrt(periods_per_year)``, ``active = pnl - benchmark``."""
    active = np.asarray(pnl, dtype=np.float64) - np.asarray(benchmark, dtype=np.float64)
    active = active[np.isfinite(active)]
    if len(active) < 2:
        return np.nan
    std = float(np.std(active, ddof=1))
    return float(np.mean(active) / std * np.sqrt(periods_per_year)) if std > 0 else np.nan


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


# Bars per year has one definition, :func:`quantml.contracts.periods_per_year`; this name is
# kept for callers not yet moved to it (tuning/source.py).
infer_periods_per_year = periods_per_year
