"""The market kernel every stage shares: costs, execution of positions, performance statistics
(and the pyplot-free figure helpers every stage that draws uses)."""

from quantml.market.execution import CostModel, execute, execute_bar, participation_rate
from quantml.market.performance import METRIC_KEYS, STAT_NAMES, drawdown, information_ratio, performance_stats

__all__ = [
    "CostModel",
    "METRIC_KEYS",
    "STAT_NAMES",
    "drawdown",
    "execute",
    "execute_bar",
    "information_ratio",
    "participation_rate",
    "performance_stats",
]
