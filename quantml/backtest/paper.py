"""Bar-by-bar paper replay of the signal strategy.

:class:`PaperTrader` is fed one bar at a time and sees only that bar's signals and the
return realised at its close: it keeps its own trailing covariance, applies the
thresholds, allocates, and books each bar with :func:`execute_bar`, the function the
vectorised backtest's arithmetic mirrors. Its PnL equals :func:`backtest_signals` to
rounding, which checks that the vectorised path uses no information from later bars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.backtest.vectorised import BacktestResult, result_stats
from quantml.market.execution import CostModel, execute_bar
from quantml.market.performance import compounded_drawdown
from quantml.portfolio.allocator import AllocatorConfig, allocate_panel
from quantml.portfolio.covariance import TrailingCovariance
from quantml.portfolio.strategy import SignalPanel
from quantml.signals.core import SignalConfig, decide_actions


class PaperTrader:
    """Streaming strategy + broker for ``N`` symbols and ``H`` horizon buckets."""

    def __init__(
        self,
        symbols: list[str],
        horizons: list[str],
        signal: SignalConfig,
        allocator: AllocatorConfig,
        costs: CostModel,
        periods_per_year: float,
        capital: float = 1.0,
    ) -> None:
        self.symbols, self.horizons = list(symbols), list(horizons)
        self.signal, self.allocator, self.costs = signal, allocator, costs
        self.periods_per_year, self.capital = float(periods_per_year), float(capital)
        self._cov = TrailingCovariance(len(symbols), allocator.cov_window, allocator.cov_min_periods)
        self._thr = np.array([signal.threshold_for(h) for h in horizons])
        self._conf = np.array([signal.min_confidence_for(h) for h in horizons])
        self._held = np.zeros(len(symbols))  # position before the pending decision
        self._pending: tuple | None = None  # (timestamp, position, volume) awaiting its return
        self.ledger: list[dict] = []

    def on_bar(
        self,
        timestamp,
        realised_return: np.ndarray,
        score: np.ndarray,
        confidence: np.ndarray,
        vol_forecast: np.ndarray,
        volume: np.ndarray | None = None,
    ) -> np.ndarray:
        """Process the close of one bar; returns the new target positions ``[N]``.

        ``realised_return [N]``: return of the bar ending now (close t-1 -> close t; NaN on
        the first bar); ``score, confidence, vol_forecast [N, H]``: this bar's signals.
        """
        if self._pending is not None:
            self._book(realised_return)
            self._cov.update(realised_return)
        cov = self._cov.current()[None]
        active = decide_actions(score, confidence, self._thr, self._conf)[None]
        pos, _ = allocate_panel(
            np.nan_to_num(score)[None],
            np.nan_to_num(confidence)[None],
            np.nan_to_num(vol_forecast, nan=1.0)[None],
            active,
            cov,
            self.horizons,
            self.allocator,
            self.periods_per_year,
        )
        self._pending = (timestamp, pos[0], volume)
        return pos[0]

    def close(self) -> None:
        """End of data: book the last decision with an unknown next return (no gross PnL)."""
        if self._pending is not None:
            self._book(np.full(len(self.symbols), np.nan))
            self._pending = None

    def _book(self, ret: np.ndarray) -> None:
        timestamp, position, volume = self._pending
        gross, cost, turnover = execute_bar(self._held, position, ret, self.costs, volume, self.capital)
        self.ledger.append(
            {
                "timestamp": timestamp,
                "gross": gross,
                "cost": cost,
                "pnl": gross - cost,
                "turnover": turnover,
                **{f"pos_{s}": p for s, p in zip(self.symbols, position)},
            }
        )
        self._held = position

    def result(self) -> BacktestResult:
        """The ledger as a :class:`BacktestResult` (same columns as the vectorised one)."""
        led = pd.DataFrame(self.ledger).set_index("timestamp")
        bars = led[["gross", "cost", "pnl", "turnover"]].copy()
        bars["equity"] = bars["pnl"].cumsum()
        bars["drawdown"] = compounded_drawdown(bars["pnl"].to_numpy())
        positions = led[[f"pos_{s}" for s in self.symbols]].set_axis(self.symbols, axis=1)
        return BacktestResult(
            bars,
            positions,
            None,
            result_stats(bars["pnl"].to_numpy(), bars["turnover"].to_numpy(), self.periods_per_year),
            self.periods_per_year,
        )


def paper_replay(
    panel: SignalPanel,
    signal: SignalConfig,
    allocator: AllocatorConfig,
    costs: CostModel,
    periods_per_year: float,
    capital: float = 1.0,
) -> BacktestResult:
    """Replay ``panel`` bar by bar through a :class:`PaperTrader`.

    At bar ``t`` the trader is given the return realised at ``t`` (``next_return[t-1]``)
    and bar ``t``'s signals, never ``next_return[t]``.
    """
    trader = PaperTrader(panel.symbols, panel.horizons, signal, allocator, costs, periods_per_year, capital)
    n = len(panel.symbols)
    for t, ts in enumerate(panel.timestamps):
        realised = panel.next_return[t - 1] if t > 0 else np.full(n, np.nan)
        trader.on_bar(
            ts,
            realised,
            panel.score[t],
            panel.confidence[t],
            panel.vol_forecast[t],
            None if panel.volume is None else panel.volume[t],
        )
    trader.close()
    return trader.result()
