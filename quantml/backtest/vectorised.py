"""The one backtest engine: a strategy's book -> after-cost bars, stats and per-horizon PnL.

:func:`run_backtest` asks a strategy (:mod:`quantml.portfolio.strategy`: the rank
long/short book of evaluation, the allocator book of tuning) for its :class:`Book` and
executes it with :func:`backtest`. Positions decided at the close of bar ``t`` are held
over bar ``t+1`` and earn ``next_return[t]`` (a simple return: PnL = position x simple
return); the trade into them pays fees, slippage and impact at ``t``. All the arithmetic
is :func:`quantml.market.execution.execute`, shared with the paper replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts.time import periods_for
from quantml.market.execution import CostModel, execute, participation_rate
from quantml.market.performance import compounded_drawdown, information_ratio, performance_stats
from quantml.portfolio.allocator import AllocatorConfig
from quantml.portfolio.strategy import AllocatorStrategy, Book, SignalPanel
from quantml.signals.core import SignalConfig

BAR_COLUMNS = ("gross", "cost", "pnl", "turnover", "equity", "drawdown")


def result_stats(
    pnl: np.ndarray, turnover: np.ndarray, periods_per_year: float, benchmark: np.ndarray | None = None
) -> dict[str, float]:
    """:func:`performance_stats`, plus ``information_ratio`` against ``benchmark`` when there is one."""
    stats = performance_stats(pnl, turnover, periods_per_year)
    if benchmark is not None:
        stats["information_ratio"] = information_ratio(pnl, benchmark, periods_per_year)
    return stats


@dataclass
class BacktestResult:
    """The one backtest result type (the engine, the paper replay, evaluation, tuning).

    ``bars``: per bar (index timestamp) gross, cost, pnl, turnover, equity, drawdown (and
    ``benchmark`` when the strategy has one); ``positions``: ``[T, N]`` target positions
    (index timestamp, columns symbols); ``horizon_pnl``: ``[T, H]`` after-cost PnL attributed
    to each horizon bucket (or None); ``stats``: :func:`result_stats` of ``bars.pnl``
    (``ann_return, ann_vol, sharpe, max_drawdown, calmar, turnover`` [+ ``information_ratio``])."""

    bars: pd.DataFrame
    positions: pd.DataFrame
    horizon_pnl: pd.DataFrame | None
    stats: dict[str, float]
    periods_per_year: float

    @property
    def pnl(self) -> pd.Series:
        return self.bars["pnl"]

    @property
    def turnover(self) -> pd.Series:
        return self.bars["turnover"]

    @property
    def equity(self) -> pd.Series:
        return self.bars["equity"]

    @property
    def benchmark(self) -> pd.Series | None:
        return self.bars["benchmark"] if "benchmark" in self.bars.columns else None

    def slice(self, start=None, stop=None) -> BacktestResult:
        """Bars with ``start <= timestamp < stop``; equity and drawdown restart at 0, stats recomputed."""
        idx = self.bars.index
        keep = np.ones(len(idx), dtype=bool)
        if start is not None:
            keep &= idx >= start
        if stop is not None:
            keep &= idx < stop
        bars = self.bars.loc[keep].copy()
        bars["equity"] = bars["pnl"].cumsum()
        bars["drawdown"] = compounded_drawdown(bars["pnl"].to_numpy())
        hp = None if self.horizon_pnl is None else self.horizon_pnl.loc[keep]
        bench = None if "benchmark" not in bars.columns else bars["benchmark"].to_numpy()
        return BacktestResult(
            bars,
            self.positions.loc[keep],
            hp,
            result_stats(bars["pnl"].to_numpy(), bars["turnover"].to_numpy(), self.periods_per_year, bench),
            self.periods_per_year,
        )

    def horizon_stats(self) -> dict[str, dict[str, float]]:
        """Performance of each horizon bucket's attributed PnL (turnover not attributed: NaN)."""
        if self.horizon_pnl is None:
            return {}
        return {
            h: performance_stats(self.horizon_pnl[h].to_numpy(), np.array([]), self.periods_per_year)
            for h in self.horizon_pnl.columns
        }


def attribute_pnl(
    attribution: np.ndarray,
    ret_next_bar: np.ndarray,
    costs: CostModel,
    volume: np.ndarray | None = None,
    capital: float = 1.0,
    half_spread: np.ndarray | None = None,
) -> np.ndarray:
    """After-cost PnL per horizon bucket ``[T, H]`` from attribution ``[T, N, H]``.

    Gross PnL is ``sum_n w[t, n, h] * r[t, n]``; each symbol's trading cost is split across
    buckets in proportion to ``|change of w[., n, h]|``. Sums over ``h`` to the total PnL.
    """
    w = np.nan_to_num(np.asarray(attribution, dtype=np.float64))
    r = np.nan_to_num(np.asarray(ret_next_bar, dtype=np.float64))
    gross = np.einsum("tnh,tn->th", w, r)
    pos = w.sum(axis=2)
    trades = np.diff(pos, axis=0, prepend=np.zeros((1, pos.shape[1])))
    sym_cost = costs.trade_cost(
        trades, participation_rate(trades, volume, capital, costs.participation_cap), half_spread
    )
    dw = np.abs(np.diff(w, axis=0, prepend=np.zeros((1, *w.shape[1:]))))
    tot = dw.sum(axis=2, keepdims=True)
    share = np.where(tot > 0, dw / np.where(tot > 0, tot, 1.0), 1.0 / w.shape[2])
    return gross - np.einsum("tn,tnh->th", sym_cost, share)


def backtest(
    positions: np.ndarray | pd.DataFrame,
    ret_next_bar: np.ndarray | pd.DataFrame,
    costs: CostModel,
    periods_per_year: float,
    *,
    volume: np.ndarray | None = None,
    capital: float = 1.0,
    attribution: np.ndarray | None = None,
    timestamps=None,
    symbols=None,
    horizons=None,
    benchmark: np.ndarray | None = None,
    half_spread: np.ndarray | None = None,
) -> BacktestResult:
    """Backtest a ``[T, N]`` position matrix against next-bar returns ``[T, N]``.

    DataFrame inputs (index timestamps, columns symbols) supply ``timestamps``/``symbols``;
    ``ret_next_bar`` is aligned to ``positions``. ``attribution [T, N, H]`` (optional, with
    ``horizons``) adds per-horizon PnL; ``benchmark [T]`` adds a ``benchmark`` bar column and
    the ``information_ratio``; ``half_spread [T, N]`` (NaN: unknown) prices trades at the quoted
    spread instead of the constant ``slippage_bps``. ``periods_per_year``: a float, or a
    mixed-calendar panel's :class:`~quantml.contracts.time.PeriodsPerYear`, resolved for the book's
    ``symbols`` (:func:`~quantml.contracts.time.periods_for`: one symbol or one calendar annualises
    with its own bars per year, several calendars with the union calendar's).
    """
    if isinstance(positions, pd.DataFrame):
        timestamps = positions.index if timestamps is None else timestamps
        symbols = list(positions.columns) if symbols is None else symbols
        if isinstance(ret_next_bar, pd.DataFrame):
            ret_next_bar = ret_next_bar.reindex(index=positions.index, columns=positions.columns)
        positions = positions.to_numpy(dtype=np.float64)
    ret = np.asarray(ret_next_bar, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    T = len(pos)
    # a mixed-calendar panel's PeriodsPerYear: the book's symbols' own (one calendar) or the union's
    periods_per_year = periods_for(periods_per_year, symbols) if symbols is not None else float(periods_per_year)
    timestamps = pd.RangeIndex(T) if timestamps is None else pd.Index(timestamps, name="timestamp")
    symbols = list(range(pos.shape[1])) if symbols is None else list(symbols)
    ex = execute(pos, ret, costs, volume=volume, capital=capital, half_spread=half_spread)
    bars = pd.DataFrame({k: ex[k] for k in BAR_COLUMNS}, index=timestamps)
    if benchmark is not None:
        benchmark = np.asarray(benchmark, dtype=np.float64)
        bars["benchmark"] = benchmark
    hp = None
    if attribution is not None:
        horizons = list(horizons) if horizons is not None else list(range(attribution.shape[2]))
        hp = pd.DataFrame(
            attribute_pnl(attribution, ret, costs, volume, capital, half_spread), index=timestamps, columns=horizons
        )
    return BacktestResult(
        bars,
        pd.DataFrame(pos, index=timestamps, columns=symbols),
        hp,
        result_stats(ex["pnl"], ex["turnover"], periods_per_year, benchmark),
        float(periods_per_year),
    )


def run_backtest(
    strategy, data, costs: CostModel, periods_per_year: float, *, capital: float = 1.0, market=None
) -> BacktestResult:
    """The engine: ``strategy.book(data, periods_per_year)`` -> :func:`backtest`.

    ``market`` (optional): every bar of the panel (``symbol, timestamp, ret_next_bar``), passed
    to ``strategy.book(..., market=market)`` so a forecast book runs over the full bar calendar
    (:func:`quantml.portfolio.strategy.book_calendar`).

    ``strategy``: anything with ``book(data, periods_per_year) -> Book`` (see
    :mod:`quantml.portfolio.strategy`); ``data``: what that strategy reads (a prediction
    frame of one horizon/path for :class:`~quantml.portfolio.strategy.RankLongShort`, a
    :class:`SignalPanel` or a one-path frame for :class:`AllocatorStrategy`).
    """
    book: Book = (
        strategy.book(data, periods_per_year)
        if market is None
        else strategy.book(data, periods_per_year, market=market)
    )
    return backtest(
        book.positions,
        book.next_return,
        costs,
        periods_per_year,
        volume=book.volume,
        capital=capital,
        attribution=book.attribution,
        timestamps=book.timestamps,
        symbols=book.symbols,
        horizons=book.horizons,
        benchmark=book.benchmark,
        half_spread=getattr(book, "half_spread", None),
    )


def backtest_signals(
    panel: SignalPanel,
    signal: SignalConfig,
    allocator: AllocatorConfig,
    costs: CostModel,
    periods_per_year: float,
    capital: float = 1.0,
) -> BacktestResult:
    """Signals -> allocator -> positions -> after-cost backtest over every bar of ``panel``
    (:func:`run_backtest` with an :class:`AllocatorStrategy`)."""
    return run_backtest(AllocatorStrategy(allocator, signal), panel, costs, periods_per_year, capital=capital)
