"""Execution and performance of positions: shared by evaluation, tuning and the portfolio backtest.

``execution`` (CostModel, execute, execute_bar) and ``performance`` are imported here; the
vectorised backtest (``quantml.backtest.vectorised``), the paper replay
(``quantml.backtest.paper``), figures and MLflow logging are imported from their modules.
"""
from quantml.backtest.execution import CostModel, execute, execute_bar
from quantml.backtest.performance import performance_stats

__all__ = ["CostModel", "execute", "execute_bar", "performance_stats"]
