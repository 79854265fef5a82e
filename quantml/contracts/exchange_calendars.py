"""Declared trading calendars: a symbol's sessions from an exchange's schedule.

``data.calendars`` maps symbols to calendar codes of the ``exchange-calendars`` package
(``XNYS``, ``XLON``, ``24/7`` for crypto, ``24/5`` for FX ...; ``default:`` for every symbol not
named; ``null`` or a missing symbol: the calendar is inferred from the bars, see
:mod:`quantml.contracts.time`). The package ships its schedules (holidays, half days): no
download, offline.

For a declared symbol (:class:`Schedule`):

- the **expected bars** are the bar closes the sessions hold on the symbol's bar grid: intraday
  bars of ``step`` inside each session ``(open, close]`` (split at a lunch break), either anchored
  at the session open (``open + step``, ``open + 2 step``, ...) or at the clock (multiples of
  ``step`` since midnight UTC), whichever holds more of the symbol's bars, plus the close itself
  (the short last bar of a 6.5-hour session); daily bars: one per session, stamped in
  ``(open, close + 12h]``;
- :func:`declared_bars_missing`: per bar, the expected bars between it and the symbol's previous
  bar (a holiday or a weekend expects none: 0; a lost session hour: 1; a lost session of hourly
  NYSE bars: 7);
- :func:`declared_calendar`: the :class:`~quantml.contracts.time.Calendar` (step from the bars,
  bars per trading day: the median expected bars of a session, bars per week: the median
  expected bars in a trailing 7 days) that durations resolve on;
- :func:`declared_periods_per_year`: expected bars in the 365.25 days up to the symbol's last
  bar (8766 for 24/7 hourly, about 1750 for hourly NYSE, 252 for daily NYSE bars in 2024);
- :func:`check_declared`: a bar outside the sessions is an error (a wrong timezone or a wrong
  calendar), and so is a gap longer than ``data.max_gap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from quantml.contracts.errors import QuantmlInputError
from quantml.contracts.schema import SYMBOL, TIMESTAMP
from quantml.contracts.time import DAY, WEEK, YEAR, Calendar, _int64_ns, _typical_count, modal_step

DEFAULT_KEY = "default"
INFERRED = ("inferred", "infer", "none", "null", "")
DAILY_STAMP_TOLERANCE = pd.Timedelta(hours=12)  # a daily bar may be stamped this long after the close
HISTORY = pd.Timedelta(days=42)  # schedule read before a symbol's first bar (for bars per week)


def calendar_names() -> list[str]:
    """Every calendar code the installed ``exchange-calendars`` knows (``XNYS``, ``24/7``, ...)."""
    import exchange_calendars as xc

    return sorted(xc.get_calendar_names(include_aliases=True))


def resolve_calendars(spec, symbols) -> dict[str, str]:
    """``data.calendars`` -> ``{symbol: code}`` for the declared symbols of ``symbols`` (the others
    are inferred). ``spec``: None (all inferred), a code for every symbol (``"24/7"``), or a
    mapping ``symbol -> code`` with an optional ``default`` key; a code ``null``/``inferred``
    leaves the symbol inferred. An unknown code or a named symbol absent from the panel is an error."""
    symbols = [str(s) for s in symbols]
    if spec is None:
        return {}
    if isinstance(spec, str):
        spec = {DEFAULT_KEY: spec}
    if not isinstance(spec, Mapping):
        raise QuantmlInputError(
            f"data.calendars={spec!r} must be null (inferred), a calendar code for every symbol or a mapping "
            "symbol -> code, e.g. data.calendars='{BTC: 24/7, AAPL: XNYS}' (default: for the rest)"
        )
    spec = {str(k): (None if v is None else str(v).strip()) for k, v in dict(spec).items()}
    unknown_symbols = sorted(set(spec) - set(symbols) - {DEFAULT_KEY})
    if unknown_symbols:
        raise QuantmlInputError(
            f"data.calendars names symbol(s) {unknown_symbols} that are not in the panel (it has "
            f"{symbols[:10]}); fix the names or drop them (use default: for every other symbol)"
        )
    default = spec.get(DEFAULT_KEY)
    out: dict[str, str] = {}
    known = None
    for sym in symbols:
        code = spec.get(sym, default)
        if code is None or code.lower() in INFERRED:
            continue
        if known is None:
            known = set(calendar_names())
        if code not in known:
            close = sorted(c for c in known if c.upper().startswith(code[:2].upper()))[:8]
            hint = f" (close: {close})" if close else ""
            raise QuantmlInputError(
                f"data.calendars: {code!r} (symbol {sym!r}) is not an exchange calendar; use a code of the "
                f"exchange-calendars package such as XNYS, XNAS, XLON, 24/7, 24/5{hint}"
            )
        out[sym] = code
    return out


@lru_cache(maxsize=64)
def _schedule(code: str, start: str, end: str, split_breaks: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(opens, closes)`` int64 ns of the trading periods (sessions split at breaks), sorted."""
    import exchange_calendars as xc

    try:
        cal = xc.get_calendar(code, start=start, end=end)
    except Exception as exc:  # noqa: BLE001 - the package's own error types vary by version
        raise QuantmlInputError(
            f"calendar {code!r} has no schedule for {start} .. {end} ({type(exc).__name__}: {exc}); "
            "restrict data.start/data.end to the years the calendar covers, or leave the symbol inferred"
        ) from None
    s = cal.schedule
    opens = pd.DatetimeIndex(s["open"]).as_unit("ns").asi8
    closes = pd.DatetimeIndex(s["close"]).as_unit("ns").asi8
    if split_breaks and "break_start" in s.columns and s["break_start"].notna().any():
        bs = pd.DatetimeIndex(s["break_start"])
        be = pd.DatetimeIndex(s["break_end"])
        has = ~(bs.isna() | be.isna())
        o = np.r_[opens[~has], opens[has], be[has].as_unit("ns").asi8]
        c = np.r_[closes[~has], bs[has].as_unit("ns").asi8, closes[has]]
        order = np.argsort(o, kind="stable")
        opens, closes = o[order], c[order]
    return opens, closes


def _grid(opens: np.ndarray, closes: np.ndarray, step: int, clock: bool) -> np.ndarray:
    """Intraday bar closes of ``step`` in each period ``(open, close]``, the close included."""
    first = (opens // step) * step + step if clock else opens + step
    n = np.maximum((closes - first + step - 1) // step, 0)  # grid stamps strictly before the close
    idx = np.repeat(np.arange(len(opens)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    stamps = first[idx] + k * step
    return np.unique(np.r_[stamps, closes])


@dataclass(frozen=True)
class Schedule:
    """One declared symbol's expected bars (int64 ns, sorted) from ``start`` on, and how its bars sit."""

    code: str
    step: pd.Timedelta
    expected: np.ndarray
    opens: np.ndarray
    closes: np.ndarray
    daily: bool

    def period_of(self, ts: np.ndarray) -> np.ndarray:
        """Index of the trading period holding each bar (``open < t <= close``, daily bars up to 12 h
        after the close), -1 outside every period."""
        j = np.searchsorted(self.opens, ts, side="left") - 1
        ok = j >= 0
        jj = np.where(ok, j, 0)
        slack = DAILY_STAMP_TOLERANCE.value if self.daily else 0
        nxt = np.r_[self.opens[1:], np.iinfo(np.int64).max][jj]
        limit = np.minimum(self.closes[jj] + slack, np.where(self.daily, nxt, np.iinfo(np.int64).max))
        return np.where(ok & (ts <= limit), j, -1)

    def slots(self, ts: np.ndarray) -> np.ndarray:
        """Position of each bar among the expected bars (-1: not an expected bar)."""
        if self.daily:
            return self.period_of(ts)
        k = np.searchsorted(self.expected, ts)
        hit = (k < len(self.expected)) & (self.expected[np.minimum(k, len(self.expected) - 1)] == ts)
        return np.where(hit, k, -1)

    def per_session(self) -> float:
        """Median expected bars of a session (periods split at a break count as one session)."""
        if self.daily:
            return 1.0
        j = np.searchsorted(self.opens, self.expected, side="left") - 1
        # a break splits a session into periods less than a day apart: join them by the day of the open
        day = self.opens[np.maximum(j, 0)] // DAY.value
        _, counts = np.unique(day, return_counts=True)
        return float(np.median(counts)) if len(counts) else 0.0


def schedule_for(code: str, timestamps, step: pd.Timedelta | None = None) -> Schedule:
    """The :class:`Schedule` of one symbol's bars (int64 ns or datetimes) on calendar ``code``."""
    ts = np.sort(_int64_ns(timestamps))
    if step is None:
        d = np.diff(ts)
        d = d[d > 0]
        step = pd.Timedelta(int(modal_step(d)), unit="ns") if d.size else DAY
    step = pd.Timedelta(step)
    if step > DAY:
        raise QuantmlInputError(
            f"calendar {code!r}: declared calendars take intraday or daily bars, not {step} bars; "
            "leave data.calendars null for weekly or coarser bars (the calendar is then inferred)"
        )
    lo = pd.Timestamp(int(ts[0]), unit="ns") - max(HISTORY, YEAR) - DAY
    hi = pd.Timestamp(int(ts[-1]), unit="ns") + 2 * DAY
    daily = step >= DAY
    opens, closes = _schedule(code, lo.strftime("%Y-%m-%d"), hi.strftime("%Y-%m-%d"), not daily)
    if daily:
        expected = closes.copy()
    else:
        s = step.value
        open_grid, clock_grid = _grid(opens, closes, s, clock=False), _grid(opens, closes, s, clock=True)
        hits_open = np.isin(ts, open_grid).sum()
        hits_clock = np.isin(ts, clock_grid).sum()
        expected = clock_grid if hits_clock > hits_open else open_grid
    return Schedule(code, step, expected, opens, closes, daily)


def _stamp(ns: int) -> str:
    return str(pd.Timestamp(int(ns), unit="ns", tz="UTC"))


def _symbol_rows(timestamps, symbols) -> dict[str, np.ndarray]:
    names = np.asarray(symbols).astype(str)
    out: dict[str, np.ndarray] = {}
    for sym, rows in pd.Series(np.arange(len(names))).groupby(names, sort=False).indices.items():
        out[str(sym)] = np.asarray(rows)
    return out


def declared_bars_missing(timestamps, symbols, calendars: Mapping[str, str], step=None) -> dict[str, np.ndarray]:
    """For each declared symbol: ``{symbol: (rows, missing)}``-style arrays aligned to the symbol's
    rows in the order given: how many expected bars of its schedule lie strictly between each bar
    and the symbol's previous bar (0 at its first bar). Bars that are not expected bars raise
    (see :func:`check_declared`)."""
    ts_all = _int64_ns(timestamps)
    out = {}
    for sym, rows in _symbol_rows(ts_all, symbols).items():
        if sym not in calendars:
            continue
        order = rows[np.argsort(ts_all[rows], kind="stable")]
        t = ts_all[order]
        sched = schedule_for(calendars[sym], t, step)
        pos = sched.slots(t)
        _check_in_schedule(sym, sched, t, pos)
        missing = np.zeros(len(t))
        missing[1:] = np.diff(pos) - 1
        out[sym] = (order, missing)
    return out


def _check_in_schedule(sym: str, sched: Schedule, t: np.ndarray, pos: np.ndarray) -> None:
    bad = np.flatnonzero(pos < 0)
    if not bad.size:
        return
    i = bad[0]
    inside = sched.period_of(t[i : i + 1])[0] >= 0
    if not inside:
        raise QuantmlInputError(
            f"symbol {sym!r} has a bar at {_stamp(t[i])} outside the sessions of its declared calendar "
            f"{sched.code!r} ({bad.size} such bar(s)); the usual causes are timestamps in local time "
            "instead of UTC or the wrong calendar: fix the timestamps, declare the right calendar in "
            "data.calendars, or leave the symbol inferred (null)"
        )
    raise QuantmlInputError(
        f"symbol {sym!r} has a bar at {_stamp(t[i])} inside a session of {sched.code!r} but off its "
        f"{sched.step} bar grid (bars close at the session open + k x {sched.step}, or on the clock, and at "
        "the close); resample the bars to that grid or leave the symbol inferred (null)"
    )


def declared_calendar(code: str, timestamps, step=None) -> Calendar:
    """The :class:`Calendar` of a declared symbol: its bar step, the median expected bars of a
    session (7 for hourly NYSE bars, 24 for 24/7 hourly, 1 for daily bars) and the median
    expected bars in a trailing 7 days (35, 168, 5; 7 for 24/7 daily) from the schedule."""
    sched = schedule_for(code, timestamps, step)
    e = sched.expected
    last = int(np.max(_int64_ns(timestamps)))
    window = e[(e > last - YEAR.value) & (e <= last)]
    week = _typical_count(window, WEEK.value, sched.step.value) if len(window) else 0.0
    return Calendar(sched.step, sched.per_session(), week)


def declared_periods_per_year(code: str, timestamps, step=None) -> float:
    """Expected bars of the schedule in the 365.25 days up to the symbol's last bar."""
    sched = schedule_for(code, timestamps, step)
    last = int(np.max(_int64_ns(timestamps)))
    e = sched.expected
    return float(((e > last - YEAR.value) & (e <= last)).sum())


def panel_bars_missing(timestamps, symbols, calendars: Mapping[str, str] | None = None) -> np.ndarray:
    """``bars_missing`` per bar (in the order given): from the schedule for the declared symbols of
    ``calendars`` (:func:`declared_bars_missing`), from the usual bars for the others
    (:func:`quantml.contracts.time.bars_missing`, the inferred calendar)."""
    from quantml.contracts.time import bars_missing

    out = bars_missing(timestamps, symbols)
    for rows, missing in declared_bars_missing(timestamps, symbols, calendars or {}).values():
        out[rows] = missing
    return out


def check_declared(panel: pd.DataFrame, calendars: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Check each declared symbol's bars against its schedule (an out-of-session or off-grid bar is
    a :class:`QuantmlInputError` naming the symbol and the first such bar) and return
    ``bars_missing`` per row of ``panel`` for them: ``{symbol: (rows, missing)}``."""
    if not calendars:
        return {}
    return declared_bars_missing(panel[TIMESTAMP], panel[SYMBOL], calendars)


def check_max_gap(panel: pd.DataFrame, missing: np.ndarray, calendars: Mapping[str, Calendar], max_gap) -> None:
    """Raise when a gap skipped more bars than ``max_gap`` of trading time holds on the symbol's
    calendar (``duration_to_bars``: ``1d`` = a trading day of bars, ``4h`` = 4 hourly bars).
    ``missing``: ``bars_missing`` per row of ``panel`` (declared or inferred)."""
    from quantml.contracts.time import duration_to_bars, parse_duration

    if max_gap is None:
        return
    parse_duration(max_gap, "data.max_gap")
    missing = np.asarray(missing, dtype=np.float64)
    if not (missing > 0).any():
        return
    syms = panel[SYMBOL].astype(str).to_numpy()
    ts = panel[TIMESTAMP]
    for sym in pd.unique(syms[missing > 0]):
        cal = calendars[sym]
        limit = duration_to_bars(max_gap, cal, "data.max_gap")
        rows = np.flatnonzero((syms == sym) & (missing > limit))
        if not rows.size:
            continue
        i = rows[0]
        prev = np.flatnonzero(syms[:i] == sym)
        start = ts.iloc[prev[-1]] if prev.size else ts.iloc[i]
        n = int(missing[i])
        raise QuantmlInputError(
            f"symbol {sym!r} has a gap from {start} to {ts.iloc[i]}: {n} missing bar(s) of {cal.step} "
            f"({n / max(cal.bars_per_day, 1.0):.1f} trading days), longer than data.max_gap={max_gap} "
            f"({limit} bars); repair or drop the bars around it, or raise data.max_gap (null: no limit)"
        )
