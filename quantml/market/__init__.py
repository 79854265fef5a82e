"""The market kernel every stage shares: costs, execution of positions, performance statistics."""
from quantml.market.execution import CostModel, execute, execute_bar
from quantml.market.performance import performance_stats

__all__ = ["CostModel", "execute", "execute_bar", "performance_stats"]
