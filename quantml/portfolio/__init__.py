"""Portfolio: signals per (symbol, horizon) -> target positions under risk constraints, and the
strategies (books) the one backtest engine executes."""

from quantml.portfolio.allocator import Allocation, AllocatorConfig, allocate, allocate_panel, deduplicate
from quantml.portfolio.covariance import TrailingCovariance, trailing_covariance
from quantml.portfolio.strategy import (
    AllocatorStrategy,
    Book,
    RankLongShort,
    SignalPanel,
    build_strategy,
    market_returns,
    strategy_positions,
)

__all__ = [
    "Allocation",
    "AllocatorConfig",
    "AllocatorStrategy",
    "Book",
    "RankLongShort",
    "SignalPanel",
    "TrailingCovariance",
    "allocate",
    "allocate_panel",
    "build_strategy",
    "deduplicate",
    "market_returns",
    "strategy_positions",
    "trailing_covariance",
]
