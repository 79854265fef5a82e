"""Strategies: out-of-sample predictions -> target positions, for the one backtest engine.

A strategy turns the long prediction frame (contract of ``predictions/oos_predictions.parquet``,
one CPCV path) into a :class:`Book`: target positions ``[T, N]`` decided at each bar's
close, the simple returns they earn over the next bar, and optionally a per-horizon
attribution and a benchmark. :func:`quantml.backtest.run_backtest` executes a book.
Two strategies, each the ``_target_`` of a ``strategy`` config (``conf/strategy/*.yaml``):

- :class:`RankLongShort` (``strategy=rank_long_short``, the default): one horizon's
  forecasts as a long/short book, cross-sectional rank weights or time-series signs, each
  forecast row held from its bar to its own label end ``t1`` (overlapping portfolios);
- :class:`AllocatorStrategy` (``strategy=allocator``): thresholds -> allocator over every
  horizon bucket (:class:`SignalPanel`, :func:`strategy_positions`).

Each strategy's ``target_weights(frame, market, periods_per_year) -> [len(frame)]`` is the
weight its book opens for each (symbol, horizon) row at the row's bar, computed by the same
code :meth:`book` reads (:meth:`RankLongShort.tranche_weights`,
:meth:`AllocatorStrategy.allocation`): the backtest, the tuning and serving (the prediction
contract's ``target_weight``) cannot disagree. ``min_history()`` says how many bars per symbol
a served panel needs for its last bar's weight to be the backtest's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from quantml.contracts import IC_MODES, SYMBOL, TIMESTAMP, QuantmlInputError, bar_size, parse_duration, require_columns
from quantml.contracts.time import PeriodsPerYear
from quantml.portfolio.allocator import AllocatorConfig, allocate_panel
from quantml.portfolio.covariance import trailing_covariance
from quantml.signals.core import SignalConfig, decide_actions

PANEL_COLUMNS = (SYMBOL, TIMESTAMP, "horizon", "score", "confidence", "vol_forecast", "ret_next_bar")


@dataclass
class SignalPanel:
    """Dense view of one path of a prediction frame.

    ``timestamps [T]`` (sorted, UTC), ``symbols [N]``, ``horizons [H]``;
    ``score, confidence, vol_forecast`` float ``[T, N, H]`` (NaN where a row is missing);
    ``next_return [T, N]``: simple return from close ``t`` to close ``t+1`` (``expm1`` of the
    contract's log ``ret_next_bar``; NaN when unknown);
    ``volume [T, N]`` traded notional per bar or None;
    ``is_open [T, N]`` (bool, built with ``market``): whether the symbol has a bar there (its market
    is open); None (no market frame): every symbol counts as open. The allocator never re-targets a
    closed symbol (:func:`quantml.portfolio.allocator.carry_closed`).
    """

    timestamps: pd.DatetimeIndex
    symbols: list[str]
    horizons: list[str]
    score: np.ndarray
    confidence: np.ndarray
    vol_forecast: np.ndarray
    next_return: np.ndarray
    volume: np.ndarray | None = None
    _cov_cache: dict = field(default_factory=dict, repr=False)
    is_open: np.ndarray | None = None

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        horizons: list[str] | None = None,
        volume_column: str | None = None,
        market: pd.DataFrame | None = None,
    ) -> SignalPanel:
        """Build from a long frame with one row per (symbol, timestamp, horizon).

        ``horizons`` fixes the bucket order (default: order of first appearance).
        ``volume_column`` (optional) names a per-bar traded-notional column.
        ``market`` (optional): every bar of the panel (``symbol, timestamp, ret_next_bar``, see
        :func:`market_returns`); the panel's bars are then the union of the frame's and the
        market's (bars without a forecast are NaN, i.e. flat) and ``next_return`` comes from the
        market (the frame's own ``ret_next_bar``, if any, fills what the market lacks), so the
        trailing covariance sees the history before the first forecast; the frame itself then
        needs no ``ret_next_bar`` (a served prediction frame has none).
        """
        required = PANEL_COLUMNS if market is None else tuple(c for c in PANEL_COLUMNS if c != "ret_next_bar")
        require_columns(
            frame,
            required,
            "prediction frame",
            "it must follow the oos_predictions.parquet contract (symbol, timestamp, horizon, "
            "score, confidence, vol_forecast, ret_next_bar, ...)",
        )
        if volume_column is not None and volume_column not in frame.columns:
            raise QuantmlInputError(f"volume column {volume_column!r} is not in the frame; add it or pass None")
        if "path" in frame.columns and frame["path"].nunique() > 1:
            raise QuantmlInputError(
                f"the frame holds CPCV paths {sorted(frame['path'].unique())}; build one "
                "panel per path (frame[frame.path == p])"
            )
        keys = [SYMBOL, TIMESTAMP, "horizon"]
        dup = frame.duplicated(keys)
        if dup.any():
            row = frame.loc[dup, keys].iloc[0]
            raise QuantmlInputError(
                f"duplicate prediction for symbol {row[SYMBOL]!r}, timestamp "
                f"{row[TIMESTAMP]}, horizon {row['horizon']!r}; keep one row per key"
            )
        ts = pd.DatetimeIndex(frame[TIMESTAMP])
        if ts.tz is None:
            raise QuantmlInputError(
                "the timestamp column is tz-naive; localise it to UTC (frame['timestamp'].dt.tz_localize('UTC'))"
            )
        all_h = list(pd.unique(frame["horizon"]))  # order of first appearance; a categorical by its codes
        horizons = list(horizons) if horizons is not None else all_h
        unknown = sorted(set(all_h) - set(horizons))
        if unknown:
            raise QuantmlInputError(f"horizon(s) {unknown} are in the frame but not in horizons={horizons}")
        timestamps = ts.unique().sort_values()  # on the int64 instants, no Timestamp object per bar
        symbols = sorted(str(s) for s in pd.unique(frame[SYMBOL]))
        if market is not None:
            market = _market_of(market, symbols)
            timestamps = timestamps.union(pd.DatetimeIndex(market[TIMESTAMP].unique()))
        t_idx = timestamps.get_indexer(ts)
        n_idx = _positions(frame[SYMBOL], symbols)
        h_idx = _positions(frame["horizon"], horizons)
        T, N, H = len(timestamps), len(symbols), len(horizons)

        def cube(col: str) -> np.ndarray:
            out = np.full((T, N, H), np.nan)
            out[t_idx, n_idx, h_idx] = frame[col].to_numpy(dtype=np.float64)
            return out

        def plane(col: str) -> np.ndarray:
            out = np.full((T, N), np.nan)
            out[t_idx, n_idx] = frame[col].to_numpy(dtype=np.float64)
            return out

        log_next = plane("ret_next_bar") if "ret_next_bar" in frame.columns else np.full((T, N), np.nan)
        if market is not None:
            m_t = timestamps.get_indexer(market[TIMESTAMP])
            m_n = pd.Index(symbols).get_indexer(market[SYMBOL].astype(str))
            from_market = np.full((T, N), np.nan)
            from_market[m_t, m_n] = market["ret_next_bar"].to_numpy(dtype=np.float64)
            log_next = np.where(np.isfinite(from_market), from_market, log_next)
            is_open = np.zeros((T, N), dtype=bool)
            is_open[m_t, m_n] = True
            is_open[t_idx, n_idx] = True  # a forecast row is a bar of its symbol
            # a symbol is closed only inside its own history: before its first bar and after its
            # last one it is not carried (nothing to carry before; a delisted symbol is traded out)
            seen = np.cumsum(is_open, axis=0) > 0
            after = np.cumsum(is_open[::-1], axis=0)[::-1] > 0
            is_open |= ~(seen & after)
        else:
            is_open = None
        return cls(
            timestamps,
            symbols,
            horizons,
            cube("score"),
            cube("confidence"),
            cube("vol_forecast"),
            np.expm1(log_next),
            None if volume_column is None else plane(volume_column),
            is_open=is_open,
        )

    def __len__(self) -> int:
        return len(self.timestamps)

    def covariance(self, window: int, min_periods: int) -> np.ndarray:
        """Trailing (causal) covariance ``[T, N, N]``, cached per (window, min_periods).

        Call it on the full panel before :meth:`slice` so slices inherit the history."""
        key = (int(window), int(min_periods))
        if key not in self._cov_cache:
            self._cov_cache[key] = trailing_covariance(self.next_return, *key)
        return self._cov_cache[key]

    def slice(self, start: int, stop: int) -> SignalPanel:
        """Bars ``[start, stop)``; the trailing covariance of the full panel is carried over, so a
        later slice keeps the history it was estimated from."""
        sl = slice(start, stop)
        return SignalPanel(
            self.timestamps[sl],
            self.symbols,
            self.horizons,
            self.score[sl],
            self.confidence[sl],
            self.vol_forecast[sl],
            self.next_return[sl],
            None if self.volume is None else self.volume[sl],
            {k: v[sl] for k, v in self._cov_cache.items()},
            None if self.is_open is None else self.is_open[sl],
        )

    def actions(self, config: SignalConfig) -> np.ndarray:
        """Action sign ``[T, N, H]`` (+1 long, 0 flat, -1 short) under ``config``'s thresholds."""
        thr = np.array([config.threshold_for(h) for h in self.horizons])
        conf = np.array([config.min_confidence_for(h) for h in self.horizons])
        return decide_actions(self.score, self.confidence, thr, conf)


def strategy_positions(
    panel: SignalPanel, signal: SignalConfig, allocator: AllocatorConfig, periods_per_year: float
) -> tuple[np.ndarray, np.ndarray]:
    """Target positions ``[T, N]`` and per-horizon attribution ``[T, N, H]`` for every bar.

    Uses only bar ``t``'s signals and returns realised by ``t`` (trailing covariance).
    """
    cov = panel.covariance(allocator.cov_window, allocator.cov_min_periods)
    active = panel.actions(signal)
    return allocate_panel(
        np.nan_to_num(panel.score),
        np.nan_to_num(panel.confidence),
        np.nan_to_num(panel.vol_forecast, nan=1.0),
        active,
        cov,
        panel.horizons,
        allocator,
        periods_per_year,
        is_open=panel.is_open,
    )


# ----------------------------------------------------------------------------- strategies

WEIGHTING_MODES = IC_MODES
RANK_COLUMNS = (SYMBOL, TIMESTAMP, "expected_return", "ret_next_bar")


@dataclass
class Book:
    """What a strategy hands the engine (rows: bars, columns: symbols).

    ``positions [T, N]``: held over the next bar; ``next_return [T, N]``: the simple return
    they earn (NaN: unknown, no PnL); ``volume [T, N]`` traded notional (or None);
    ``attribution [T, N, H]`` per horizon bucket with ``horizons`` (or None);
    ``benchmark [T]``: a per-bar benchmark return for the information ratio (or None);
    ``half_spread [T, N]``: each bar's quoted half-spread (fraction of notional, from an
    order-book stream: the market frame's ``half_spread`` column) that replaces the cost
    model's constant ``slippage_bps`` where known (or None).
    """

    positions: np.ndarray
    next_return: np.ndarray
    timestamps: pd.Index
    symbols: list
    volume: np.ndarray | None = None
    attribution: np.ndarray | None = None
    horizons: list | None = None
    benchmark: np.ndarray | None = None
    half_spread: np.ndarray | None = None


HALF_SPREAD = "half_spread"  # optional column of the market frame: a bar's quoted half-spread


def _pivot(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    dup = frame.duplicated([TIMESTAMP, SYMBOL])
    if dup.any():
        row = frame.loc[dup, [SYMBOL, TIMESTAMP]].iloc[0]
        raise QuantmlInputError(
            f"duplicate prediction for symbol={row[SYMBOL]!r} timestamp={row[TIMESTAMP]} in one "
            "horizon/path; keep one row per (symbol, timestamp, horizon[, path]) before evaluating"
        )
    return frame.pivot(index=TIMESTAMP, columns=SYMBOL, values=column).sort_index()


def forecast_weights(forecasts: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Target weights [T, N] from a timestamp x symbol matrix of expected returns (NaN = no forecast).

    ``cross_sectional``: dollar-neutral, from the forecast ranks across symbols, demeaned,
    scaled to gross exposure 1; ``time_series``: ``sign(expected_return) / n`` over the
    ``n`` symbols forecast at that bar.
    """
    _check_mode(mode)
    present = forecasts.notna()
    if mode == "cross_sectional":
        ranks = forecasts.rank(axis=1, method="average")
        demeaned = ranks.sub(ranks.mean(axis=1), axis=0)
        gross = demeaned.abs().sum(axis=1)
        weights = demeaned.div(gross.where(gross > 0), axis=0)
    else:
        n = present.sum(axis=1)
        weights = np.sign(forecasts).div(n.where(n > 0), axis=0)
    return weights.fillna(0.0)


def _check_mode(mode: str) -> str:
    if mode not in WEIGHTING_MODES:
        raise QuantmlInputError(
            f"ic_mode={mode!r} is unknown; use one of {WEIGHTING_MODES} "
            "(quantml.evaluation.ic_mode_for(n_symbols) picks it from the number of symbols)"
        )
    return mode


def holding_bars(frame: pd.DataFrame) -> int:
    """Bars a forecast of ``frame``'s horizon spans by the 0.1 rule, ``round(horizon / bar size)``
    (1 without a ``horizon`` column): the fallback for frames without a ``t1`` column (runs
    written before metrics version 2)."""
    if "horizon" not in frame.columns or frame.empty:
        return 1
    horizon = parse_duration(str(frame["horizon"].iloc[0]), "horizon")
    return max(1, int(round(horizon / bar_size(frame, default=horizon))))


MARKET_COLUMNS = (SYMBOL, TIMESTAMP, "ret_next_bar")


def _positions(column: pd.Series, labels: list) -> np.ndarray:
    """The position of each row's value in ``labels`` [n] (-1: not there), as
    ``pd.Index(labels).get_indexer(column.astype(str))``; a categorical column by its codes (no string
    per row: a large panel's frames are tens of millions of rows)."""
    index = pd.Index([str(v) for v in labels])
    if isinstance(column.dtype, pd.CategoricalDtype):
        table = np.append(index.get_indexer(column.cat.categories.astype(str)), -1)
        return table[column.cat.codes.to_numpy()]  # code -1 (missing) reads the appended -1
    return index.get_indexer(column.astype(str))


def _utc(values) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(values))
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def market_returns(panel: pd.DataFrame) -> pd.DataFrame:
    """The market frame of a raw panel: ``symbol, timestamp, ret_next_bar`` ``[rows of panel]``.

    ``ret_next_bar`` is the log return from a bar's close to the next close of the same symbol
    (NaN at each symbol's last bar), as :func:`quantml.labels.make_labels` defines it; at bar
    ``t`` only the rows before ``t`` are realised, and that is all the trailing covariance reads.
    """
    require_columns(panel, (SYMBOL, TIMESTAMP, "close"), "panel", "pass a raw panel (timestamp, symbol, OHLCV)")
    frame = pd.DataFrame(
        {SYMBOL: panel[SYMBOL].to_numpy(), TIMESTAMP: _utc(panel[TIMESTAMP]), "close": panel["close"].to_numpy()}
    ).sort_values([SYMBOL, TIMESTAMP], kind="stable")
    log_close = np.log(frame["close"].to_numpy(dtype=np.float64))
    nxt = frame.groupby(SYMBOL, sort=False)["close"].shift(-1).to_numpy(dtype=np.float64)
    frame["ret_next_bar"] = np.log(nxt) - log_close
    return frame.drop(columns="close").reset_index(drop=True)


def _market_of(market: pd.DataFrame, symbols: list[str]) -> pd.DataFrame:
    """``market``'s rows of ``symbols`` with UTC timestamps, one per (timestamp, symbol)."""
    require_columns(
        market, MARKET_COLUMNS, "market frame", "pass every bar of the panel (symbol, timestamp, ret_next_bar)"
    )
    m = market[market[SYMBOL].astype(str).isin(symbols)]
    m = m.assign(**{TIMESTAMP: _utc(m[TIMESTAMP]), SYMBOL: m[SYMBOL].astype(str)})
    return m.drop_duplicates([TIMESTAMP, SYMBOL])


def book_calendar(frame: pd.DataFrame, market: pd.DataFrame | None) -> pd.DatetimeIndex:
    """The bars a forecast book runs over.

    With ``market`` (every bar of the panel: ``symbol, timestamp, ret_next_bar``): each bar of
    ``market`` (of the frame's symbols: their union calendar) from the first forecast bar through
    the last one, and on to the bar before the
    latest label end ``t1`` (so the last tranches are held to their end); bars without a
    forecast are bars of the book (flat or still holding earlier tranches), not missing rows.
    Without ``market``: the frame's own forecast bars (the 0.1 calendar; a frame with gaps
    then annualises only the bars it has, see docs/evaluation.md)."""
    ts = _utc(frame[TIMESTAMP])
    first, last = ts.min(), ts.max()
    # sorted on the int64 instants (np.sort of tz-aware stamps makes a Timestamp object per bar)
    own = ts.unique().sort_values()
    if market is None:
        return own
    require_columns(
        market, MARKET_COLUMNS, "market frame", "pass every bar of the panel (symbol, timestamp, ret_next_bar)"
    )
    # the union calendar of the book's own symbols: a one-symbol book runs on that symbol's bars
    if SYMBOL in frame:
        symbols = {str(s) for s in pd.unique(frame[SYMBOL])}  # a categorical's codes, no string per row
        mine = market[market[SYMBOL].astype(str).isin(symbols)]
    else:
        mine = market
    bars = _utc(mine[TIMESTAMP]).unique().sort_values()
    stop = last
    if "t1" in frame.columns:
        t1 = _utc(frame["t1"])
        if t1.notna().any():
            stop = max(last, t1.max())
    keep = (bars >= first) & ((bars <= last) | (bars < stop))
    return bars[keep].union(own)


def tranche_positions(weights: np.ndarray, start: np.ndarray, span: np.ndarray, n_bars: int) -> np.ndarray:
    """Overlapping portfolios, one tranche per forecast row.

    ``weights [F, N]``: the target weight of each forecast bar's row (0 where none);
    ``start [F]``: the calendar bar of each forecast bar; ``span [F, N]``: bars each row's
    tranche is held (its label's span, >= 1). Row ``(f, n)`` adds ``weights[f, n] / span[f, n]``
    to the position of symbol ``n`` at calendar bars ``start[f] .. start[f] + span[f, n] - 1``
    (the last of them earns the return into the label's end bar); tranches running past the
    calendar are cut. Returns positions ``[n_bars, N]``."""
    F, N = weights.shape
    delta = np.zeros((n_bars + 1, N))
    span = np.maximum(np.asarray(span, dtype=np.int64), 1)
    part = np.where(np.isfinite(weights), weights, 0.0) / span
    cols = np.broadcast_to(np.arange(N), (F, N))
    rows = np.broadcast_to(np.asarray(start, dtype=np.int64)[:, None], (F, N))
    np.add.at(delta, (rows, cols), part)
    np.add.at(delta, (np.minimum(rows + span, n_bars), cols), -part)
    return np.cumsum(delta[:-1], axis=0)


def own_bar_positions(weights: np.ndarray, start: np.ndarray, span: np.ndarray, is_open: np.ndarray) -> np.ndarray:
    """:func:`tranche_positions` on each symbol's own bars of a union calendar (mixed calendars).

    ``is_open [T, N]``: the calendar bars where each symbol has a bar; ``span [F, N]``: bars of the
    symbol's own each row's tranche is held. Between two of a symbol's bars (its market closed) its
    position is carried unchanged, so it trades only at its own bars. Returns ``[T, N]``."""
    T, N = is_open.shape
    out = np.zeros((T, N))
    for n in range(N):
        idx = np.flatnonzero(is_open[:, n])
        if not len(idx):
            continue
        own_start = np.searchsorted(idx, np.asarray(start, dtype=np.int64))
        w = np.where(own_start < len(idx), weights[:, n], 0.0)
        col = tranche_positions(w[:, None], np.minimum(own_start, len(idx) - 1), span[:, n : n + 1], len(idx))[:, 0]
        last = np.searchsorted(idx, np.arange(T), side="right") - 1
        out[:, n] = np.where(last >= 0, col[np.maximum(last, 0)], 0.0)
    return out


@dataclass
class RankLongShort:
    """One horizon's forecasts as an after-cost long/short book (``conf/strategy/rank_long_short.yaml``).

    ``mode``: ``cross_sectional`` (rank weights, dollar-neutral, gross 1), ``time_series``
    (sign / n) or ``auto`` (the run's IC mode, bound by :meth:`bind`). ``hold``: how long each
    forecast row's tranche is held. ``"horizon"``: from its bar ``t`` to its own label end
    ``t1`` (the frame's ``t1`` column: ``k`` = the calendar bars from ``t`` to ``t1``, which
    differ across weekends, holidays and calendars); a frame without ``t1`` falls back to
    ``k = round(horizon / bar)``. An integer: ``k = hold`` bars. Each row's target weights
    contribute ``1/k`` of capital to every bar it is held (overlapping portfolios: the book is
    the sum of the live tranches, fully invested ``k`` bars after the first forecast).
    The benchmark (information ratio) exists only for the ``time_series`` book: the
    equal-weight buy-and-hold of the frame's symbols with a known return at each bar
    (rebalanced every bar, no cost); the dollar-neutral ``cross_sectional`` book has none.
    ``market`` (see :func:`book_calendar`) puts the book on the panel's full bar calendar. With a
    mixed-calendar panel's :class:`~quantml.contracts.time.PeriodsPerYear` (and ``market``), each
    tranche is held over its symbol's own bars and carried flat while its market is closed
    (:func:`own_bar_positions`): a symbol trades only at its own bars.
    """

    mode: str = "auto"
    hold: int | str = "horizon"

    def __post_init__(self) -> None:
        if self.mode != "auto":
            _check_mode(self.mode)
        if self.hold != "horizon" and not (
            isinstance(self.hold, (int, np.integer)) and not isinstance(self.hold, bool) and self.hold >= 1
        ):
            raise QuantmlInputError(f"strategy.hold={self.hold!r} must be 'horizon' or an integer >= 1")

    def bind(self, signal: SignalConfig | None = None, ic_mode: str | None = None) -> RankLongShort:
        """This strategy with ``mode="auto"`` resolved to ``ic_mode`` (the signal is not used)."""
        if self.mode == "auto" and ic_mode is not None:
            return replace(self, mode=ic_mode)
        return self

    def min_history(self) -> tuple[int, str]:
        """Bars per symbol a served panel must hold for its last bar's :meth:`target_weights` to
        be the backtest's (1: the weights read only that bar's forecasts), and why."""
        return 1, ""

    def _check_bound(self) -> None:
        if self.mode == "auto":
            raise QuantmlInputError(
                "strategy.mode=auto is resolved from the run's IC mode: call "
                "strategy.bind(ic_mode=...) or set strategy.mode=cross_sectional|time_series"
            )

    def tranche_weights(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The weight of the tranche each forecast row opens: ``[T, N]`` (index: the frame's bars,
        UTC; columns: its symbols) from ONE horizon's ``expected_return`` (:func:`forecast_weights`
        in this strategy's mode). The book holds ``1/k`` of it on each of the ``k`` bars of the
        row's span; :meth:`book` and :meth:`target_weights` both read it."""
        self._check_bound()
        er = _pivot(frame, "expected_return")
        er.index = _utc(er.index)
        return forecast_weights(er, self.mode)

    def target_weights(
        self, frame: pd.DataFrame, market: pd.DataFrame | None = None, periods_per_year: float | None = None
    ) -> np.ndarray:
        """Target weight of every row of ``frame`` ``[len(frame)]``: the weight of the tranche the
        book opens for that (symbol, horizon) row at its bar (:meth:`tranche_weights`, one
        horizon at a time; 0 where the row has no forecast). ``frame``: ``symbol, timestamp,
        expected_return`` [+ ``horizon``]; ``market`` and ``periods_per_year`` are not used (the
        weights read only each bar's forecasts)."""
        self._check_bound()
        require_columns(
            frame,
            (SYMBOL, TIMESTAMP, "expected_return"),
            "prediction frame",
            "pass a prediction frame (see quantml.contracts.PREDICTION_COLUMNS)",
        )
        out = np.zeros(len(frame))
        groups = frame["horizon"].to_numpy() if "horizon" in frame.columns else np.zeros(len(frame))
        for rows in pd.Series(np.arange(len(frame))).groupby(groups, sort=False).indices.values():
            part = frame.iloc[rows]
            w = self.tranche_weights(part)
            t = w.index.get_indexer(_utc(part[TIMESTAMP]))
            n = w.columns.get_indexer(part[SYMBOL])
            out[rows] = w.to_numpy(dtype=np.float64)[t, n]
        return out

    def book(
        self, frame: pd.DataFrame, periods_per_year: float | None = None, market: pd.DataFrame | None = None
    ) -> Book:
        """``frame``: ONE horizon (and path) of a prediction frame with ``symbol, timestamp,
        expected_return, ret_next_bar`` (log; turned into a simple return with ``expm1``)
        [+ ``t1``, each row's label end]. ``market``: every bar of the panel (``symbol,
        timestamp, ret_next_bar``) for the full calendar (:func:`book_calendar`), or None; with
        it the frame's own ``ret_next_bar`` is optional (a served frame has none)."""
        self._check_bound()
        require_columns(
            frame,
            RANK_COLUMNS if market is None else tuple(c for c in RANK_COLUMNS if c != "ret_next_bar"),
            "prediction frame",
            "pass one horizon of a prediction frame (see quantml.contracts.PREDICTION_COLUMNS)",
        )
        weights = self.tranche_weights(frame)
        symbols = list(weights.columns)
        if weights.empty:
            empty = np.zeros((0, len(symbols)))
            return Book(empty, empty.copy(), weights.index, symbols)
        calendar = book_calendar(frame, market)
        if "ret_next_bar" in frame.columns:
            simple = np.expm1(_pivot(frame, "ret_next_bar"))
            simple.index = _utc(simple.index)
            simple = simple.reindex(index=calendar, columns=symbols)
        else:
            simple = pd.DataFrame(np.nan, index=calendar, columns=symbols)
        half_spread = None
        if market is not None:
            m = market[market[SYMBOL].isin(symbols)]
            m = m.assign(**{TIMESTAMP: _utc(m[TIMESTAMP])})
            m = m[(m[TIMESTAMP] >= calendar[0]) & (m[TIMESTAMP] <= calendar[-1])].drop_duplicates([TIMESTAMP, SYMBOL])
            mret = np.expm1(m.pivot(index=TIMESTAMP, columns=SYMBOL, values="ret_next_bar"))
            simple = simple.combine_first(mret.reindex(index=calendar, columns=symbols))[symbols]
            if HALF_SPREAD in m.columns:  # quoted spreads of an order-book stream price the trades
                half_spread = m.pivot(index=TIMESTAMP, columns=SYMBOL, values=HALF_SPREAD)
                half_spread = half_spread.reindex(index=calendar, columns=symbols).to_numpy(dtype=np.float64)
        start = calendar.get_indexer(weights.index)
        span = np.full(weights.shape, 1 if self.hold == "horizon" else int(self.hold), dtype=np.int64)
        if self.hold == "horizon":
            span[:] = holding_bars(frame)
            if "t1" in frame.columns:
                t1 = _utc(frame["t1"])
                row_start = calendar.get_indexer(_utc(frame[TIMESTAMP]))
                row_end = calendar.searchsorted(t1.fillna(calendar[0]), side="left")
                row_span = np.where(t1.notna(), np.maximum(row_end - row_start, 1), np.nan)
                # the three columns the pivot reads (frame.assign would copy every column of a long frame)
                keys = {TIMESTAMP: frame[TIMESTAMP].array, SYMBOL: frame[SYMBOL].array}
                spans = pd.DataFrame({**keys, "_span": row_span}, copy=False)
                k = spans.pivot(index=TIMESTAMP, columns=SYMBOL, values="_span")
                k.index = _utc(k.index)
                k = k.reindex(index=weights.index, columns=symbols).to_numpy()
                span = np.where(np.isfinite(k), k, span).astype(np.int64)
        if market is not None and isinstance(periods_per_year, PeriodsPerYear):
            # mixed calendars: each tranche is held over its symbol's own bars, carried flat while
            # its market is closed (no trade, no cost there); spans count the symbol's own bars
            is_open = np.zeros((len(calendar), len(symbols)), dtype=bool)
            is_open[calendar.get_indexer(m[TIMESTAMP]), pd.Index(symbols).get_indexer(m[SYMBOL])] = True
            is_open[start[:, None], np.arange(len(symbols))[None, :]] |= np.isfinite(
                _pivot(frame, "expected_return").reindex(columns=symbols).to_numpy(dtype=np.float64)
            )
            if self.hold == "horizon" and "t1" in frame.columns:
                own_before = np.vstack([np.zeros((1, len(symbols)), np.int64), np.cumsum(is_open, axis=0)])
                end = np.minimum(start[:, None] + span, len(calendar))
                cols = np.arange(len(symbols))[None, :]
                span = np.where(
                    np.isfinite(k), np.maximum(own_before[end, cols] - own_before[start[:, None], cols], 1), span
                ).astype(np.int64)
            positions = own_bar_positions(weights.to_numpy(), start, span, is_open)
        else:
            positions = tranche_positions(weights.to_numpy(), start, span, len(calendar))
        benchmark = None
        if self.mode == "time_series":
            benchmark = simple.mean(axis=1).fillna(0.0).to_numpy()
        return Book(positions, simple.to_numpy(), calendar, symbols, benchmark=benchmark, half_spread=half_spread)


@dataclass
class AllocatorStrategy:
    """Thresholds -> allocator -> positions over every horizon bucket (``conf/strategy/allocator.yaml``).

    ``allocator``: an :class:`AllocatorConfig` (or its settings); ``signal``: the thresholds
    (bound by :meth:`bind` from the run's ``signal`` config when None); ``volume_column``: a
    per-bar traded-notional column of the frame for participation-dependent impact.
    """

    allocator: AllocatorConfig | dict | None = None
    signal: SignalConfig | None = None
    volume_column: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.allocator, AllocatorConfig):
            self.allocator = AllocatorConfig.from_dict(self.allocator)

    def bind(self, signal: SignalConfig | None = None, ic_mode: str | None = None) -> AllocatorStrategy:
        """This strategy with the run's thresholds when it has none of its own."""
        if self.signal is None and signal is not None:
            return replace(self, signal=signal)
        return self

    def min_history(self) -> tuple[int, str]:
        """Bars per symbol a served panel must hold for its last bar's :meth:`target_weights` to
        be the backtest's, and why: ``cov_window + 1`` (the ``cov_window`` realised returns
        before the bar that the backtest's trailing covariance reads at every bar past its first
        ``cov_window``; with fewer the covariance is a shorter window's, a different weight, and
        under ``cov_min_periods`` there is none and the weights would be silently 0)."""
        window = self.allocator.cov_window
        return window + 1, (
            f"the allocator's covariance window, strategy.allocator.cov_window={window}: {window} "
            "realised returns before the bar predicted, the window the backtest's covariance uses"
        )

    def allocation(
        self, data: SignalPanel | pd.DataFrame, periods_per_year: float, market: pd.DataFrame | None = None
    ) -> tuple[SignalPanel, np.ndarray, np.ndarray]:
        """``(panel, positions [T, N], attribution [T, N, H])`` for every bar of ``data``'s panel.

        ``data``: a :class:`SignalPanel` or a prediction frame of one path (with ``market``: see
        :meth:`SignalPanel.from_frame`). :meth:`book` and :meth:`target_weights` both read it."""
        if isinstance(data, SignalPanel):
            if market is not None:
                raise QuantmlInputError(
                    "market= goes with a prediction frame, not a SignalPanel; build the panel with "
                    "SignalPanel.from_frame(frame, market=market)"
                )
            panel = data
        else:
            panel = SignalPanel.from_frame(data, volume_column=self.volume_column, market=market)
        signal = self.signal if self.signal is not None else SignalConfig()
        pos, attr = strategy_positions(panel, signal, self.allocator, periods_per_year)
        return panel, pos, attr

    def target_weights(
        self, frame: pd.DataFrame, market: pd.DataFrame | None = None, periods_per_year: float | None = None
    ) -> np.ndarray:
        """Target weight of every row of ``frame`` ``[len(frame)]``: the allocator's weight of
        that (symbol, horizon) bucket at the row's bar (``attribution[t, n, h]`` of
        :meth:`allocation`; the book's position of the symbol is their sum over horizons).

        ``frame``: ``symbol, timestamp, horizon, score, confidence, vol_forecast`` (the actions
        are this strategy's thresholds on score and confidence); ``market``: every bar of the
        panel (:func:`market_returns`) for the trailing covariance, else the frame's own
        ``ret_next_bar``; ``periods_per_year`` annualises the vol target (required)."""
        if periods_per_year is None or not np.isfinite(periods_per_year) or periods_per_year <= 0:
            raise QuantmlInputError(
                f"periods_per_year={periods_per_year!r}: the allocator's vol target needs the bars per "
                "year of the run (quantml.contracts.periods_per_year(panel))"
            )
        panel, _, attr = self.allocation(frame, float(periods_per_year), market)
        t = panel.timestamps.get_indexer(pd.DatetimeIndex(frame[TIMESTAMP]))
        n = pd.Index(panel.symbols).get_indexer(frame[SYMBOL].astype(str))
        h = pd.Index(panel.horizons).get_indexer(frame["horizon"])
        return attr[t, n, h]

    def book(
        self, data: SignalPanel | pd.DataFrame, periods_per_year: float, market: pd.DataFrame | None = None
    ) -> Book:
        """``data``: a :class:`SignalPanel` or a prediction frame of one path. ``market``: every bar
        of the panel (``symbol, timestamp, ret_next_bar``): the covariance then reads the
        history before the first forecast and the book runs over every bar from the first
        forecast bar to the last (bars without a forecast are flat)."""
        panel, pos, attr = self.allocation(data, periods_per_year, market)
        keep = slice(None)
        half_spread = None
        if market is not None:
            ts = panel.timestamps.get_indexer(pd.DatetimeIndex(data[TIMESTAMP]))
            keep = slice(int(ts.min()), int(ts.max()) + 1) if len(ts) else slice(0, 0)
            if HALF_SPREAD in market.columns:  # quoted spreads of an order-book stream price the trades
                m = market.assign(**{TIMESTAMP: _utc(market[TIMESTAMP])}).drop_duplicates([TIMESTAMP, SYMBOL])
                half_spread = m.pivot(index=TIMESTAMP, columns=SYMBOL, values=HALF_SPREAD)
                half_spread = half_spread.reindex(index=panel.timestamps[keep], columns=panel.symbols)
                half_spread = half_spread.to_numpy(dtype=np.float64)
        return Book(
            pos[keep],
            panel.next_return[keep],
            panel.timestamps[keep],
            panel.symbols,
            volume=None if panel.volume is None else panel.volume[keep],
            attribution=attr[keep],
            horizons=panel.horizons,
            half_spread=half_spread,
        )


def build_strategy(cfg, signal: SignalConfig | None = None):
    """The ``strategy`` config group's object (``_target_``, default :class:`RankLongShort`), with
    the run's thresholds bound where the strategy uses them; None -> ``RankLongShort()``."""
    from quantml.contracts.config import build

    strategy = RankLongShort() if cfg is None else build(cfg, "strategy", "quantml.portfolio.strategy.RankLongShort")
    if not hasattr(strategy, "book"):
        raise QuantmlInputError(
            f"strategy._target_ built a {type(strategy).__name__}, which has no "
            "book(data, periods_per_year) method; name a strategy class such as "
            "quantml.portfolio.strategy.RankLongShort"
        )
    bind = getattr(strategy, "bind", None)
    return bind(signal=signal) if bind is not None else strategy
