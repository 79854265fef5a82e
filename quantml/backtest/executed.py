"""The backtest through the one execution path: target weights per bucket -> :class:`Executor` bar by bar.

:func:`executed_backtest` runs :class:`quantml.market.fills.Executor` over every bar of a book (the same
executor the paper replay and ``quantml paper`` use) and folds its PnL rows into the one
:class:`BacktestResult`. With the ``close`` policy, no caps and ``half_spread_bps = slippage_bps`` it
equals :func:`quantml.backtest.vectorised.backtest` bar for bar (tested); the vectorised path stays for
tuning, where thousands of books are scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.backtest.vectorised import BacktestResult, result_stats
from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, require_columns
from quantml.contracts.time import periods_for
from quantml.market.execution import CostModel
from quantml.market.fills import OUT_FILL_COLUMNS, OUT_PNL_COLUMNS, BarQuotes, ExecutionConfig, Executor
from quantml.market.performance import compounded_drawdown
from quantml.portfolio.strategy import Book

QUOTE_FIELDS = ("open", "high", "low", "close", "volume")


def quote_planes(quotes: pd.DataFrame, timestamps, symbols) -> dict[str, np.ndarray | None]:
    """``open, high, low, close, volume`` ``[T, N]`` of a long panel frame (one row per symbol x
    timestamp) on the book's bars and symbols; NaN where a bar is missing; a missing ``open``/``high``/
    ``low`` column is all NaN, a missing ``volume`` None (no participation)."""
    require_columns(quotes, (SYMBOL, TIMESTAMP, "close"), "quotes frame", "pass the panel with its OHLCV columns")
    dup = quotes.duplicated([SYMBOL, TIMESTAMP])
    if dup.any():
        row = quotes.loc[dup, [SYMBOL, TIMESTAMP]].iloc[0]
        raise QuantmlInputError(f"quotes hold two rows for {row[SYMBOL]!r} at {row[TIMESTAMP]}; keep one per bar")
    t_idx = pd.DatetimeIndex(timestamps).get_indexer(pd.DatetimeIndex(quotes[TIMESTAMP]))
    n_idx = pd.Index([str(s) for s in symbols]).get_indexer(quotes[SYMBOL].astype(str))
    keep = (t_idx >= 0) & (n_idx >= 0)
    T, N = len(timestamps), len(symbols)
    out: dict[str, np.ndarray | None] = {}
    for f in QUOTE_FIELDS:
        if f not in quotes.columns:
            out[f] = None if f == "volume" else np.full((T, N), np.nan)
            continue
        plane = np.full((T, N), np.nan)
        plane[t_idx[keep], n_idx[keep]] = quotes[f].to_numpy(dtype=np.float64, na_value=np.nan)[keep]
        out[f] = plane
    return out


def run_executor(
    executor: Executor, timestamps, planes: dict, targets: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feed ``targets [T, N, H]`` bar by bar, then :meth:`Executor.finish`; returns (fills, pnl) frames."""
    fills, pnl = [], []
    vol = planes["volume"]
    for t, ts in enumerate(timestamps):
        q = BarQuotes(
            planes["open"][t], planes["high"][t], planes["low"][t], planes["close"][t], None if vol is None else vol[t]
        )
        out = executor.on_bar(ts, q, targets[t])
        fills.append(out.fills)
        pnl.append(out.pnl)
    last = executor.finish()
    fills.append(last.fills)
    pnl.append(last.pnl)
    return _concat(fills, OUT_FILL_COLUMNS), _concat(pnl, OUT_PNL_COLUMNS)


def _concat(frames: list[pd.DataFrame], columns) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)


def result_from_pnl(pnl: pd.DataFrame, timestamps, symbols, horizons, periods_per_year: float) -> BacktestResult:
    """Fold an executor's PnL rows (``PNL_COLUMNS``) into a :class:`BacktestResult`: per decision bar
    the summed gross, cost, pnl, turnover (sum over symbols of ``|change of the held position|``),
    equity and drawdown; ``positions [T, N]`` held after the fills; ``horizon_pnl [T, H]`` each bucket's
    attributed after-cost PnL."""
    idx = pd.Index(pd.DatetimeIndex(timestamps), name="timestamp")
    symbols, horizons = [str(s) for s in symbols], [str(h) for h in horizons]
    bars = pnl.groupby("timestamp")[["gross", "cost", "pnl"]].sum().reindex(idx, fill_value=0.0)
    held = pnl.groupby(["timestamp", "symbol"])["position"].sum().unstack("symbol")
    held = held.reindex(index=idx, columns=symbols).ffill().fillna(0.0)
    pos = held.to_numpy(dtype=np.float64)
    bars["turnover"] = np.abs(np.diff(pos, axis=0, prepend=np.zeros((1, pos.shape[1])))).sum(axis=1)
    bars["equity"] = bars["pnl"].cumsum()
    bars["drawdown"] = compounded_drawdown(bars["pnl"].to_numpy())
    hp = pnl.groupby(["timestamp", "bucket"])["pnl"].sum().unstack("bucket").reindex(index=idx, columns=horizons)
    ppy = float(periods_per_year)
    return BacktestResult(
        bars[["gross", "cost", "pnl", "turnover", "equity", "drawdown"]],
        held,
        hp.fillna(0.0),
        result_stats(bars["pnl"].to_numpy(), bars["turnover"].to_numpy(), ppy),
        ppy,
    )


def executed_backtest(
    targets: np.ndarray | Book,
    quotes: pd.DataFrame,
    config: ExecutionConfig,
    costs: CostModel,
    periods_per_year,
    *,
    timestamps=None,
    symbols=None,
    horizons=None,
) -> tuple[BacktestResult, pd.DataFrame, pd.DataFrame]:
    """Backtest target weights through the :class:`Executor` on every bar.

    ``targets``: ``[T, N, H]`` fractions of ``config.aum`` per bar x symbol x bucket (with
    ``timestamps [T]``, ``symbols [N]``, ``horizons [H]``), or a :class:`Book` (its ``attribution`` and
    ``horizons``; without attribution its positions are one bucket ``"book"``). ``quotes``: a long panel
    frame (``symbol, timestamp, open, high, low, close[, volume]``; volume in units). Returns
    ``(BacktestResult, fills, pnl)``: the result's ``horizon_pnl`` is each bucket's attributed PnL;
    ``fills`` / ``pnl`` the executor's rows (``FILL_COLUMNS`` / ``PNL_COLUMNS`` without model name/version).
    """
    if isinstance(targets, Book):
        book = targets
        timestamps, symbols = book.timestamps, book.symbols
        if book.attribution is not None:
            targets = np.asarray(book.attribution, dtype=np.float64)
            horizons = list(book.horizons) if book.horizons is not None else [str(i) for i in range(targets.shape[2])]
        else:
            targets, horizons = np.asarray(book.positions, dtype=np.float64)[:, :, None], ["book"]
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 3:
        raise QuantmlInputError(f"targets have shape {targets.shape}; pass [T bars, N symbols, H buckets]")
    if timestamps is None or symbols is None or horizons is None:
        raise QuantmlInputError("pass timestamps, symbols and horizons with a targets array (or pass a Book)")
    T, N, H = targets.shape
    if (len(timestamps), len(symbols), len(horizons)) != (T, N, H):
        raise QuantmlInputError(
            f"targets {targets.shape} do not match {len(timestamps)} timestamps x {len(symbols)} symbols x "
            f"{len(horizons)} horizons"
        )
    timestamps = pd.DatetimeIndex(timestamps)
    if timestamps.tz is None:
        raise QuantmlInputError("the book's timestamps are tz-naive; localise them to UTC")
    planes = quote_planes(quotes, timestamps, symbols)
    ex = Executor(list(symbols), list(horizons), config, costs)
    fills, pnl = run_executor(ex, timestamps, planes, targets)
    ppy = periods_for(periods_per_year, list(symbols))
    return result_from_pnl(pnl, timestamps, symbols, horizons, ppy), fills, pnl
