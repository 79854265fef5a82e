"""Execution and performance of positions: shared by evaluation, tuning and the portfolio backtest."""
from quantml.backtest.execution import CostModel, execute, execute_bar
from quantml.backtest.performance import performance_stats

__all__ = ["CostModel", "execute", "execute_bar", "performance_stats"]
