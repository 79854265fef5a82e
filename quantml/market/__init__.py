"""The market kernel every stage shares: costs, execution of positions (returns-based: ``execution``;
bar by bar with fills under horizon-tiered policies: ``fills``), performance statistics
(and the pyplot-free figure helpers every stage that draws uses)."""

from quantml.market.execution import (
    CostModel,
    execute,
    execute_bar,
    half_spread_of,
    panel_half_spread,
    participation_rate,
)
from quantml.market.fills import BarOutcome, BarQuotes, ExecutionConfig, ExecutionPolicy, Executor
from quantml.market.performance import (
    METRIC_KEYS,
    STAT_NAMES,
    compounded_drawdown,
    drawdown,
    information_ratio,
    max_drawdown,
    max_drawdown_additive,
    performance_stats,
)

__all__ = [
    "BarOutcome",
    "BarQuotes",
    "CostModel",
    "ExecutionConfig",
    "ExecutionPolicy",
    "Executor",
    "METRIC_KEYS",
    "STAT_NAMES",
    "compounded_drawdown",
    "drawdown",
    "max_drawdown",
    "max_drawdown_additive",
    "execute",
    "execute_bar",
    "half_spread_of",
    "panel_half_spread",
    "information_ratio",
    "participation_rate",
    "performance_stats",
]
