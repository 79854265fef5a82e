"""Objectives a threshold study maximises, computed from a backtest's ``performance_stats``.

- ``sharpe``: annualised after-cost Sharpe ratio (default);
- ``calmar``: annualised return / |max drawdown|;
- ``return_dd``: annualised return - ``dd_penalty`` * |max drawdown|, with the per-year
  arithmetic return (``mean(pnl) * periods_per_year``) and the compounded max drawdown
  (``min(E / running peak - 1)``, ``E = cumprod(1 + pnl)``), both fractions of capital
  (metrics version 2; version 1 subtracted the additive drawdown).

Non-finite values (a Calmar with no drawdown) are clipped to +-``CLIP`` so Optuna can rank them.
"""

from __future__ import annotations

import math

from quantml.contracts import QuantmlInputError

OBJECTIVES = ("sharpe", "calmar", "return_dd")
CLIP = 1e6


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise QuantmlInputError(f"objective.name={name!r} is not known; use one of {OBJECTIVES}")
    return name


def objective_value(stats: dict[str, float], name: str, dd_penalty: float = 1.0) -> float:
    """The objective (higher is better) from ``performance_stats`` output."""
    check_objective(name)
    if name == "sharpe":
        value = stats["sharpe"]
    elif name == "calmar":
        value = stats["calmar"]
    else:
        value = stats["ann_return"] - dd_penalty * abs(stats["max_drawdown"])
    if math.isnan(value):
        return value
    return max(-CLIP, min(CLIP, value))
