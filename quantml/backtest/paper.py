"""Bar-by-bar paper replay of the signal strategy.

:class:`PaperTrader` is fed one bar at a time and sees only that bar's signals and the
return realised at its close: it keeps its own trailing covariance, applies the
thresholds, allocates, and books each bar with :func:`execute_bar`, the function the
vectorised backtest's arithmetic mirrors. Its PnL equals :func:`backtest_signals` to
rounding, which checks that the vectorised path uses no information from later bars.

With ``execution`` (an :class:`~quantml.market.fills.ExecutionConfig`) the trader books through the
one execution path instead: each bar's per-bucket attribution is the :class:`~quantml.market.fills.Executor`'s
targets, ``quotes`` (the bar's :class:`~quantml.market.fills.BarQuotes`) its prices; fills and PnL rows
land in :attr:`PaperTrader.fills` / :attr:`PaperTrader.pnl` (the last bar's in ``last_outcome``), and
the result equals :func:`quantml.backtest.executed.executed_backtest` of the same book.
:meth:`PaperTrader.state_dict` / :meth:`PaperTrader.from_state` resume a trader mid-stream bit for bit
(covariance window, held positions, the pending decision, the executor).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.backtest.executed import quote_planes, result_from_pnl
from quantml.backtest.vectorised import BacktestResult, result_stats
from quantml.contracts import QuantmlInputError
from quantml.market.execution import CostModel, execute_bar
from quantml.market.fills import BarOutcome, BarQuotes, ExecutionConfig, Executor
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
        execution: ExecutionConfig | None = None,
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
        self.execution = execution
        self._executor = None if execution is None else Executor(self.symbols, self.horizons, execution, costs)
        self._started = False  # executed mode: a bar has been seen (its successor updates the covariance)
        self._timestamps: list = []
        self.fills: list[pd.DataFrame] = []
        self.pnl: list[pd.DataFrame] = []
        self.last_outcome: BarOutcome | None = None

    def on_bar(
        self,
        timestamp,
        realised_return: np.ndarray,
        score: np.ndarray,
        confidence: np.ndarray,
        vol_forecast: np.ndarray,
        volume: np.ndarray | None = None,
        quotes: BarQuotes | None = None,
    ) -> np.ndarray:
        """Process the close of one bar; returns the new target positions ``[N]``.

        ``realised_return [N]``: return of the bar ending now (close t-1 -> close t; NaN on
        the first bar); ``score, confidence, vol_forecast [N, H]``: this bar's signals;
        ``quotes``: the bar's prices (required with ``execution``; ``volume`` is then unused).
        """
        if self._executor is not None:
            if quotes is None:
                raise QuantmlInputError(
                    "a PaperTrader with execution needs the bar's quotes: on_bar(..., quotes=BarQuotes(...))"
                )
            if self._started:
                self._cov.update(realised_return)
            pos, attribution = self._allocate(score, confidence, vol_forecast)
            out = self._executor.on_bar(timestamp, quotes, attribution)
            self._record(out)
            self._timestamps.append(timestamp)
            self._started = True
            return pos
        if self._pending is not None:
            self._book(realised_return)
            self._cov.update(realised_return)
        pos, _ = self._allocate(score, confidence, vol_forecast)
        self._pending = (timestamp, pos, volume)
        return pos

    def _allocate(self, score, confidence, vol_forecast) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``[N]`` and attribution ``[N, H]`` of this bar's signals."""
        cov = self._cov.current()[None]
        active = decide_actions(score, confidence, self._thr, self._conf)[None]
        pos, attribution = allocate_panel(
            np.nan_to_num(score)[None],
            np.nan_to_num(confidence)[None],
            np.nan_to_num(vol_forecast, nan=1.0)[None],
            active,
            cov,
            self.horizons,
            self.allocator,
            self.periods_per_year,
        )
        return pos[0], attribution[0]

    def _record(self, out: BarOutcome) -> None:
        self.last_outcome = out
        if len(out.fills):
            self.fills.append(out.fills)
        if len(out.pnl):
            self.pnl.append(out.pnl)

    def close(self) -> None:
        """End of data: book the last decision with an unknown next return (no gross PnL)."""
        if self._executor is not None:
            if self._started:
                self._record(self._executor.finish())
                self._started = False
            return
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
        """The ledger as a :class:`BacktestResult` (same columns as the vectorised one); with execution,
        the executor's PnL rows folded by :func:`~quantml.backtest.executed.result_from_pnl` (of the bars
        this trader object saw: a resumed trader's result starts at the resume)."""
        if self._executor is not None:
            pnl = (
                pd.concat(self.pnl, ignore_index=True)
                if self.pnl
                else pd.DataFrame(columns=["timestamp", "symbol", "bucket", "position", "gross", "cost", "pnl"])
            )
            return result_from_pnl(pnl, self._timestamps, self.symbols, self.horizons, self.periods_per_year)
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

    def state_dict(self) -> dict:
        """JSON-serialisable state: covariance window, held positions, the pending decision, the executor
        (not the ledger or logged rows: those belong to the caller's logs)."""
        pending = None
        if self._pending is not None:
            ts, position, volume = self._pending
            pending = {
                "timestamp": pd.Timestamp(ts).isoformat(),
                "position": [float(x) for x in position],
                "volume": None if volume is None else [float(x) for x in np.asarray(volume, dtype=np.float64)],
            }
        return {
            "version": PAPER_STATE_VERSION,
            "symbols": list(self.symbols),
            "horizons": list(self.horizons),
            "covariance": self._cov.state_dict(),
            "held": [float(x) for x in self._held],
            "pending": pending,
            "started": self._started,
            "executor": None if self._executor is None else self._executor.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict, *args, **kwargs) -> PaperTrader:
        """A trader resumed from :meth:`state_dict`; ``args``/``kwargs`` are :class:`PaperTrader`'s own
        (the same symbols, buckets and settings as the trader that wrote ``state``)."""
        trader = cls(*args, **kwargs)
        if state.get("version") != PAPER_STATE_VERSION:
            raise QuantmlInputError(f"paper trader state version {state.get('version')!r} is not {PAPER_STATE_VERSION}")
        if list(state["symbols"]) != trader.symbols or list(state["horizons"]) != trader.horizons:
            raise QuantmlInputError(
                f"the trader state was written for symbols {state['symbols']} and horizons {state['horizons']}, "
                f"not {trader.symbols} / {trader.horizons}; start a fresh state"
            )
        if (state.get("executor") is None) != (trader.execution is None):
            raise QuantmlInputError(
                "the trader state was written "
                + ("without" if state.get("executor") is None else "with")
                + " an execution config; resume it with the same settings or start a fresh state"
            )
        cov = state["covariance"]
        if (int(cov["window"]), int(cov["min_periods"])) != (trader._cov.window, trader._cov.min_periods):
            raise QuantmlInputError(
                f"the trader state's covariance window {cov['window']}/{cov['min_periods']} is not the allocator's "
                f"{trader._cov.window}/{trader._cov.min_periods}; resume with the same allocator settings"
            )
        trader._cov = TrailingCovariance.from_state(cov)
        trader._held = np.asarray(state["held"], dtype=np.float64)
        p = state.get("pending")
        trader._pending = (
            None
            if p is None
            else (
                pd.Timestamp(p["timestamp"]),
                np.asarray(p["position"], dtype=np.float64),
                None if p["volume"] is None else np.asarray(p["volume"], dtype=np.float64),
            )
        )
        trader._started = bool(state.get("started", False))
        if trader.execution is not None:
            trader._executor = Executor.from_state(
                state["executor"], trader.symbols, trader.horizons, trader.execution, trader.costs
            )
        return trader


PAPER_STATE_VERSION = 1


def paper_replay(
    panel: SignalPanel,
    signal: SignalConfig,
    allocator: AllocatorConfig,
    costs: CostModel,
    periods_per_year: float,
    capital: float = 1.0,
    execution: ExecutionConfig | None = None,
    quotes: pd.DataFrame | None = None,
) -> BacktestResult:
    """Replay ``panel`` bar by bar through a :class:`PaperTrader`.

    At bar ``t`` the trader is given the return realised at ``t`` (``next_return[t-1]``)
    and bar ``t``'s signals, never ``next_return[t]``. With ``execution``, ``quotes`` (a long panel
    frame: ``symbol, timestamp, open, high, low, close[, volume]``) prices the executor's fills.
    """
    trader = PaperTrader(
        panel.symbols, panel.horizons, signal, allocator, costs, periods_per_year, capital, execution=execution
    )
    planes = None
    if execution is not None:
        if quotes is None:
            raise QuantmlInputError("paper_replay with execution needs quotes (the panel's OHLCV frame)")
        planes = quote_planes(quotes, panel.timestamps, panel.symbols)
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
            quotes=None if planes is None else _bar_quotes(planes, t),
        )
    trader.close()
    return trader.result()


def _bar_quotes(planes: dict, t: int) -> BarQuotes:
    vol = planes["volume"]
    return BarQuotes(
        planes["open"][t], planes["high"][t], planes["low"][t], planes["close"][t], None if vol is None else vol[t]
    )
