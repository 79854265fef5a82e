"""Portfolio: signals per (symbol, horizon) -> target positions under risk constraints."""
from quantml.portfolio.allocator import Allocation, AllocatorConfig, allocate, allocate_panel, deduplicate
from quantml.portfolio.covariance import TrailingCovariance, trailing_covariance
from quantml.portfolio.strategy import SignalPanel, strategy_positions

__all__ = ["Allocation", "AllocatorConfig", "SignalPanel", "TrailingCovariance", "allocate", "allocate_panel",
           "deduplicate", "strategy_positions", "trailing_covariance"]
