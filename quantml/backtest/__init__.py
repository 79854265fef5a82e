"""The one backtest engine and result type (``vectorised``: :func:`run_backtest`,
:class:`BacktestResult`), the backtest through the executor (``executed``: :func:`executed_backtest`),
the bar-by-bar paper replay (``paper``); figures and MLflow logging
of a backtest. Costs, execution and statistics live in :mod:`quantml.market`; strategies in
:mod:`quantml.portfolio.strategy`.
"""

from quantml.backtest.executed import executed_backtest
from quantml.backtest.vectorised import BacktestResult, backtest, backtest_signals, run_backtest

__all__ = ["BacktestResult", "backtest", "backtest_signals", "executed_backtest", "run_backtest"]
