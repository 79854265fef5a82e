"""Execution: turn target positions into after-cost PnL.

One function does the arithmetic for the vectorised backtest and for the bar-by-bar
paper replay, so the two can only agree.

Positions decided at the close of bar ``t`` earn the return of bar ``t+1``
(``ret_next_bar``): the signal is never applied on the bar it was computed from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CostModel:
    """Costs in basis points of traded notional, one way.

    ``impact_coef`` scales a square-root participation impact: ``impact_coef *
    sqrt(|trade| / participation_cap)`` bps, a common stylised market-impact law.
    """

    fee_bps: float = 1.0
    slippage_bps: float = 1.0
    impact_bps: float = 0.0
    impact_coef: float = 0.0
    participation_cap: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "CostModel":
        keys = ("fee_bps", "slippage_bps", "impact_bps", "impact_coef", "participation_cap")
        return cls(**{k: float(cfg[k]) for k in keys if k in cfg and cfg[k] is not None})

    @property
    def one_way(self) -> float:
        """Fixed one-way cost as a fraction of notional."""
        return (self.fee_bps + self.slippage_bps + self.impact_bps) / 1e4

    @property
    def round_trip(self) -> float:
        """Fixed round-trip cost as a fraction (log-return units for small costs)."""
        return 2.0 * self.one_way

    def trade_cost(self, trade: np.ndarray) -> np.ndarray:
        """Cost of trading ``trade`` (signed change in position, fraction of capital)."""
        size = np.abs(trade)
        cost = size * self.one_way
        if self.impact_coef:
            cost = cost + size * self.impact_coef * np.sqrt(size / self.participation_cap) / 1e4
        return cost


def execute_bar(prev_position: np.ndarray, position: np.ndarray, ret_next_bar: np.ndarray,
                costs: CostModel) -> tuple[float, float, float]:
    """One bar: returns ``(gross_pnl, cost, turnover)`` for the positions held over the next bar."""
    trade = position - prev_position
    gross = float(np.nansum(position * ret_next_bar))
    cost = float(np.sum(costs.trade_cost(trade)))
    return gross, cost, float(np.sum(np.abs(trade)))


def execute(positions: np.ndarray, ret_next_bar: np.ndarray, costs: CostModel) -> dict[str, np.ndarray]:
    """Vectorised execution over a ``[T, N]`` position matrix (rows: bars, cols: assets).

    Returns arrays of length ``T``: ``gross``, ``cost``, ``pnl`` (= gross - cost),
    ``turnover`` (sum of |trade|), ``equity`` (cumulative pnl, additive) and ``drawdown``.
    """
    positions = np.nan_to_num(np.asarray(positions, dtype=np.float64))
    ret_next_bar = np.asarray(ret_next_bar, dtype=np.float64)
    if positions.ndim == 1:
        positions, ret_next_bar = positions[:, None], ret_next_bar[:, None]
    if positions.shape != ret_next_bar.shape:
        raise ValueError(f"positions {positions.shape} and returns {ret_next_bar.shape} differ in shape")
    trades = np.diff(positions, axis=0, prepend=np.zeros((1, positions.shape[1])))
    gross = np.nansum(positions * ret_next_bar, axis=1)
    cost = costs.trade_cost(trades).sum(axis=1)
    pnl = gross - cost
    equity = np.cumsum(pnl)
    drawdown = equity - np.maximum.accumulate(np.maximum(equity, 0.0))
    return {
        "gross": gross,
        "cost": cost,
        "pnl": pnl,
        "turnover": np.abs(trades).sum(axis=1),
        "equity": equity,
        "drawdown": drawdown,
    }
