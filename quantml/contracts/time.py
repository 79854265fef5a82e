"""Time on the ground floor: the one duration grammar, the bar size and bars per year.

- :func:`parse_duration`: ``"30m"``, ``"15min"``, ``"1h"``, ``"4H"``, ``"1d"``, ``"7d"``,
  ``"2w"``, ``"0s"`` ... (an integer and a unit; ``m`` is minutes) or a Timedelta. Every
  duration a user writes goes through it: horizons, the validation embargo, the synthetic
  data's ``freq``, an ablation's ``event_window``, a stream's ``max_staleness``.
- :func:`bar_size`: the most common gap between consecutive bars of the same symbol.
- :func:`periods_per_year`: bars per year actually observed (sum over symbols of
  ``bars - 1`` over the time they span).
- :func:`infer_calendars` and :func:`duration_to_bars`: a duration on a symbol's own trading
  calendar, in bars (feature windows written ``1d``, ``4h``, ``2w``).
- :func:`bars_missing`: per bar, how many of its symbol's usual bars the gap before it skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts.errors import QuantmlInputError
from quantml.contracts.schema import SYMBOL, TIMESTAMP

YEAR = pd.Timedelta(days=365.25)
_DURATION = re.compile(r"^\s*([+-]?\d+)\s*([a-z]+)\s*$", re.IGNORECASE)
_UNITS = {
    "s": "s",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "m": "min",
    "min": "min",
    "mins": "min",
    "minute": "min",
    "minutes": "min",
    "h": "h",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "d": "D",
    "day": "D",
    "days": "D",
    "w": "W",
    "week": "W",
    "weeks": "W",
}
DURATION_EXAMPLES = "e.g. 30m, 1h, 4h, 1d, 7d, 2w"


def parse_duration(text, what: str = "duration", *, allow_zero: bool = False) -> pd.Timedelta:
    """A duration written ``<integer><unit>`` (units ``s, m|min, h, d, w``, case-insensitive;
    long names like ``days`` too) or a ``Timedelta`` -> ``Timedelta``.

    Positive unless ``allow_zero`` (then ``0``, ``None`` and ``"0s"`` mean no duration).
    Anything else raises :class:`QuantmlInputError` naming ``what`` and the accepted forms.
    """
    if allow_zero and (text is None or (isinstance(text, (int, float)) and not isinstance(text, bool) and text == 0)):
        return pd.Timedelta(0)
    if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
        raise QuantmlInputError(
            f"{what}={text!r} has no unit: give a duration such as {DURATION_EXAMPLES}"
            + (" (or 0)" if allow_zero else "")
        )
    if isinstance(text, (pd.Timedelta, np.timedelta64)) or hasattr(text, "total_seconds"):
        td = pd.Timedelta(text)
    else:
        m = _DURATION.match(str(text))
        unit = _UNITS.get(m.group(2).lower()) if m else None
        if unit is None:
            raise QuantmlInputError(
                f"{what}={text!r} is not a duration; write a{' non-negative' if allow_zero else ' positive'} "
                f"integer and a unit s/m/h/d/w ({DURATION_EXAMPLES}; m = minutes)"
            )
        td = pd.Timedelta(int(m.group(1)), unit=unit)
    if pd.isna(td) or td < pd.Timedelta(0) or (td == pd.Timedelta(0) and not allow_zero):
        if allow_zero:
            raise QuantmlInputError(f"{what}={text!r} must be a non-negative duration such as 1d or 0")
        raise QuantmlInputError(f"{what}={text!r} is not a duration; it must be positive ({DURATION_EXAMPLES})")
    return td


def _int64_ns(timestamps) -> np.ndarray:
    """Nanoseconds since the epoch of datetimes (tz-aware or naive, any resolution) or of int64 ns."""
    dtype = getattr(timestamps, "dtype", None)
    if dtype is not None and (isinstance(dtype, pd.DatetimeTZDtype) or dtype.kind == "M"):
        # straight to int64: np.asarray of tz-aware datetimes builds one Timestamp object per row
        return pd.DatetimeIndex(timestamps).as_unit("ns").asi8
    ts = np.asarray(timestamps)
    if ts.dtype.kind in "iu":
        return ts.astype(np.int64)
    return pd.DatetimeIndex(timestamps).as_unit("ns").asi8


def _codes(symbols) -> np.ndarray:
    """Each row's symbol as an int64 code: integers as they are (already codes: equal symbols, equal codes,
    which is all the callers need), anything else factorised in order of first appearance. A pandas column
    is factorised as it is (an Arrow-backed string column natively: no Python string object per row)."""
    if isinstance(symbols, np.ndarray) and symbols.dtype.kind in "iu":
        return symbols.astype(np.int64, copy=False)
    if not isinstance(symbols, (pd.Series, pd.Index, np.ndarray, pd.api.extensions.ExtensionArray)):
        symbols = np.asarray(symbols)
    return pd.factorize(symbols)[0].astype(np.int64, copy=False)


def _segments(symbols: np.ndarray) -> np.ndarray:
    n = len(symbols)
    if n == 0:
        return np.array([0], dtype=np.int64)
    change = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    return np.r_[0, change, n].astype(np.int64)


def _sorted(timestamps, symbols) -> tuple[np.ndarray, np.ndarray]:
    """int64 ns timestamps and symbol codes sorted by (symbol, timestamp).

    ``timestamps`` may be a frame with ``timestamp`` (and ``symbol``) columns."""
    if isinstance(timestamps, pd.DataFrame):
        frame = timestamps
        timestamps = frame[TIMESTAMP]
        if symbols is None and SYMBOL in frame.columns:
            symbols = frame[SYMBOL]
    ts = _int64_ns(timestamps)
    codes = np.zeros(len(ts), dtype=np.int64) if symbols is None else _codes(symbols)
    if not _is_sorted(ts, codes):
        order = np.lexsort((ts, codes))
        ts, codes = ts[order], codes[order]
    return ts, codes


def _is_sorted(ts: np.ndarray, codes: np.ndarray) -> bool:
    """Whether rows are already in (code, timestamp) order (ties allowed): then a stable sort is the identity."""
    if len(ts) < 2:
        return True
    dc = codes[1:] - codes[:-1]
    return bool((dc >= 0).all() and ((dc > 0) | (ts[1:] >= ts[:-1])).all())


def modal_step(diffs: np.ndarray) -> np.int64:
    """The most common value of ``diffs`` (smallest on ties)."""
    values, counts = np.unique(diffs, return_counts=True)
    return values[np.argmax(counts)]


def bar_size(timestamps, symbols=None, *, default: pd.Timedelta | None = None) -> pd.Timedelta:
    """The bar size: the most common positive gap between consecutive bars of the same symbol.

    ``timestamps`` and ``symbols`` are aligned columns, or ``timestamps`` is a frame with
    ``timestamp`` and ``symbol`` columns (any order; repeated rows, e.g. one per horizon,
    are ignored). Weekends, holidays and outages are larger gaps and do not
    change the answer. With no gap at all: ``default`` or, without one, QuantmlInputError.
    """
    ts, codes = _sorted(timestamps, symbols)
    same = codes[1:] == codes[:-1]
    d = np.diff(ts)[same]
    d = d[d > 0]
    if d.size == 0:
        if default is not None:
            return pd.Timedelta(default)
        raise QuantmlInputError("cannot infer the bar size: no symbol has two bars; load a longer period")
    return pd.Timedelta(int(modal_step(d)), unit="ns")


def periods_per_year(timestamps, symbols=None) -> float:
    """Bars per year actually observed: sum over symbols of ``(bars - 1)`` / time spanned.

    About 252 for daily equities (weekends and holidays have no bars), 8766 for hourly
    24/7 crypto, 365.25 for daily crypto. Repeated (symbol, timestamp) rows count once.
    With one bar per symbol: one year over the bar size.
    """
    ts, codes = _sorted(timestamps, symbols)
    keep = np.r_[True, (ts[1:] != ts[:-1]) | (codes[1:] != codes[:-1])] if len(ts) else np.array([], bool)
    ts, codes = ts[keep], codes[keep]
    bounds = _segments(codes)
    gaps, span = 0, 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a >= 2:
            gaps += int(b - a - 1)
            span += int(ts[b - 1] - ts[a])
    if gaps == 0 or span == 0:
        if len(ts) == 0:
            raise QuantmlInputError("cannot infer periods per year from no timestamps; set periods_per_year")
        return float(YEAR / bar_size(ts, codes))
    return float(gaps * YEAR.value / span)  # exact integer ratio, rounded once


# ---------------------------------------------------------------------------- calendars
DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)
_CANONICAL_UNIT = {"s": "s", "min": "min", "h": "h", "D": "d", "W": "w"}
# 1970-01-05 00:00 UTC is a Monday: weekly slots are offsets from a Monday midnight (UTC)
_MONDAY_NS = 4 * DAY.value


def duration_parts(text, what: str = "duration") -> tuple[int, str]:
    """``(count, unit)`` of a positive duration in the grammar of :func:`parse_duration`, the unit
    one of ``s, min, h, d, w``: ``"4H"`` -> ``(4, "h")``, ``"30m"`` -> ``(30, "min")``, ``"2 weeks"``
    -> ``(2, "w")``. A ``Timedelta`` is written in its largest whole unit among d, h, min, s (never
    w: a Timedelta does not say whether 7 days were meant as a week). Errors as parse_duration."""
    td = parse_duration(text, what)
    m = None if hasattr(text, "total_seconds") or isinstance(text, np.timedelta64) else _DURATION.match(str(text))
    if m is not None:
        return int(m.group(1)), _CANONICAL_UNIT[_UNITS[m.group(2).lower()]]
    for unit, size in (("d", DAY), ("h", pd.Timedelta(hours=1)), ("min", pd.Timedelta(minutes=1))):
        if td % size == pd.Timedelta(0):
            return int(td // size), unit
    return int(td.total_seconds()), "s"


@dataclass(frozen=True)
class Calendar:
    """A symbol's trading calendar as inferred from its own bars.

    step : the modal spacing between consecutive bars.
    bars_per_day : the median number of bars in the trailing 24 hours (``(t - 1d, t]``) over the
        symbol's bars with a full day of history before them: 24 for 24/7 hourly bars, 7 for
        hourly equities (a 6.5-hour session), 1 for daily bars.
    bars_per_week : the same over the trailing 7 days: 168, 35, 5 (daily equities), 7 (daily crypto).
    """

    step: pd.Timedelta
    bars_per_day: float
    bars_per_week: float

    def to_dict(self) -> dict:
        return {"step": str(self.step), "bars_per_day": self.bars_per_day, "bars_per_week": self.bars_per_week}

    @classmethod
    def from_dict(cls, d) -> Calendar:
        return cls(pd.Timedelta(d["step"]), float(d["bars_per_day"]), float(d["bars_per_week"]))


def _typical_count(ts: np.ndarray, span: int, step: int) -> float:
    """Median number of bars in ``(t - span, t]`` over bars with a full ``span`` of history;
    with none, ``span / step`` (a history shorter than the span reads as continuous trading)."""
    counts = np.arange(len(ts)) - np.searchsorted(ts, ts - span, side="right") + 1
    full = ts - span >= ts[0]
    if not full.any():
        return float(max(1, span // step))
    return float(np.median(counts[full]))


def infer_calendars(timestamps, symbols=None) -> dict[str, Calendar]:
    """Each symbol's :class:`Calendar`, inferred from its bars (a frame with ``timestamp`` and
    ``symbol`` columns, or aligned columns). A symbol with a single bar gets the panel's bar size
    and one bar per step of clock time (nothing else can be known)."""
    if isinstance(timestamps, pd.DataFrame) and symbols is None and SYMBOL in timestamps.columns:
        symbols = timestamps[SYMBOL]
    names = np.asarray(symbols) if symbols is not None else np.zeros(len(timestamps), dtype=object)
    uniques = pd.unique(names)
    ts, codes = _sorted(timestamps, names)
    panel_step = bar_size(ts, codes, default=DAY).value
    bounds = _segments(codes)
    out: dict[str, Calendar] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        t = ts[a:b]
        d = np.diff(t)
        d = d[d > 0]
        step = int(modal_step(d)) if d.size else panel_step
        out[str(uniques[codes[a]])] = Calendar(
            pd.Timedelta(step, unit="ns"), _typical_count(t, DAY.value, step), _typical_count(t, WEEK.value, step)
        )
    return out


class DurationTooShort(QuantmlInputError):
    """A duration that resolves to less than one bar of a symbol."""


def duration_to_bars(duration, calendar: Calendar, what: str = "window") -> int:
    """A duration as a whole number of bars on one symbol's calendar: **trading time**.

    ``d`` counts trading days (``calendar.bars_per_day`` bars each), ``w`` trading weeks
    (``calendar.bars_per_week`` each), ``h``, ``min`` and ``s`` trading hours, minutes and seconds
    on the bar grid (``duration / calendar.step``). The product is rounded to the nearest whole
    bar (halves up). Hourly equities (7 bars a day, 35 a week): ``1d`` -> 7, ``5d`` -> 35, ``1w`` -> 35,
    ``4h`` -> 4; hourly 24/7 crypto: ``1d`` -> 24, ``1w`` -> 168, ``4h`` -> 4; daily equities:
    ``1d`` -> 1, ``5d`` -> 5, ``1w`` -> 5, ``21d`` -> 21; daily crypto: ``1w`` -> 7. A duration under
    one bar (``4h`` of daily bars) raises :class:`DurationTooShort` naming ``what``."""
    count, unit = duration_parts(duration, what)
    if unit == "d":
        per = calendar.bars_per_day
    elif unit == "w":
        per = calendar.bars_per_week
    else:
        per = pd.Timedelta(1, unit=unit) / calendar.step
    exact = count * per
    if exact < 1.0:
        raise DurationTooShort(
            f"{what}={duration!r} is shorter than one bar ({calendar.step}) of this panel; "
            "use a longer duration or a number of bars"
        )
    return int(np.floor(exact + 0.5))


def _slots_up_to(x: np.ndarray, usual: np.ndarray) -> np.ndarray:
    """Instances of the weekly ``usual`` slots at or before ``x`` (ns from a Monday midnight)."""
    week = WEEK.value
    return (x // week) * len(usual) + np.searchsorted(usual, x % week, side="right")


def bars_missing(timestamps, symbols=None, min_share: float = 0.75) -> np.ndarray:
    """Per bar (in the order given), how many of its symbol's **usual** bars the gap before it skipped.

    A symbol's usual bars are the weekly slots it fills in at least ``min_share`` of the weeks its
    history covers: the time of the week (UTC) of each bar, or its weekday for daily and longer
    bars. Overnight and weekend gaps of an exchange skip no usual slot (0); a closed weekday of
    daily equities skips 1, a lost session of hourly equities 7, a 3-hour outage of 24/7 hourly
    bars 2. An inferred calendar cannot tell a holiday from an outage: both count. Slots filled
    in fewer than ``min_share`` of the weeks (the hour that moves with daylight saving time) are
    not usual. A symbol's first bar: 0.
    """
    if isinstance(timestamps, pd.DataFrame) and symbols is None and SYMBOL in timestamps.columns:
        symbols = timestamps[SYMBOL]
    raw = _int64_ns(timestamps[TIMESTAMP] if isinstance(timestamps, pd.DataFrame) else timestamps)
    codes = np.zeros(len(raw), dtype=np.int64) if symbols is None else _codes(symbols)
    order = np.arange(len(raw)) if _is_sorted(raw, codes) else np.lexsort((raw, codes))
    ts, cs = raw[order], codes[order]
    out_sorted = np.zeros(len(ts), dtype=np.float64)
    week, day = WEEK.value, DAY.value
    bounds = _segments(cs)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a < 2:
            continue
        t = ts[a:b]
        d = np.diff(t)
        step = int(modal_step(d[d > 0])) if (d > 0).any() else day
        rel = t - _MONDAY_NS
        if step >= day:
            rel = (rel // day) * day  # daily bars: the slot is the weekday, not the clock time
        filled = np.r_[True, rel[1:] != rel[:-1]]  # one entry per (week, slot) filled
        offs, weeks_with = np.unique(rel[filled] % week, return_counts=True)
        # weeks whose instance of the slot lies inside the symbol's history
        lo, hi = rel[0], rel[-1]
        possible = (hi - offs) // week - (-((offs - lo) // week)) + 1
        usual = np.sort(offs[weeks_with >= min_share * np.maximum(possible, 1)])
        if not len(usual):
            continue
        out_sorted[a + 1 : b] = _slots_up_to(rel[1:] - 1, usual) - _slots_up_to(rel[:-1], usual)
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


# ---------------------------------------------------------------------------- annualisation
class PeriodsPerYear(float):
    """Bars per year of a panel whose symbols keep **different calendars** (hourly crypto around the
    clock beside hourly equities): the float itself is the **union calendar's** (the sorted union
    of every symbol's timestamps: the bars a book over all symbols runs on, where a closed market
    is a flat bar), and ``by_symbol`` each symbol's own bars per year (its declared schedule's or
    its observed bars'). Everything that takes a float takes it; :func:`periods_for` picks the
    figure of the symbols a statistic covers (one symbol or one calendar: theirs; else the union's).
    A single-calendar panel's periods per year stays a plain float, :func:`periods_per_year`."""

    by_symbol: dict[str, float]
    calendar_of: dict[str, str]

    def __new__(cls, union: float, by_symbol: dict, calendar_of: dict | None = None):
        obj = super().__new__(cls, float(union))
        obj.by_symbol = {str(k): float(v) for k, v in dict(by_symbol).items()}
        obj.calendar_of = {str(k): str(v) for k, v in dict(calendar_of or {}).items()}
        return obj

    def __reduce__(self):
        return (PeriodsPerYear, (float(self), self.by_symbol, self.calendar_of))

    def __repr__(self) -> str:
        return float.__repr__(self)

    __str__ = __repr__

    def for_symbols(self, symbols) -> float:
        """The symbols' own bars per year when they share one calendar, else the union's."""
        syms = {str(s) for s in symbols}
        if not syms or not syms <= set(self.by_symbol):
            return float(self)
        if len(syms) == 1:
            return self.by_symbol[next(iter(syms))]
        kinds = {self.calendar_of.get(s, s) for s in syms}
        if len(kinds) == 1:
            return float(np.mean([self.by_symbol[s] for s in syms]))
        return float(self)


def periods_for(periods_per_year, symbols) -> float:
    """The bars per year that annualise a statistic over ``symbols``: ``periods_per_year`` itself
    (a plain float: one calendar), or :meth:`PeriodsPerYear.for_symbols` on a mixed panel."""
    if isinstance(periods_per_year, PeriodsPerYear):
        return periods_per_year.for_symbols(symbols)
    return float(periods_per_year)


def union_periods_per_year(timestamps) -> float:
    """Bars per year of the union calendar: ``(unique timestamps - 1)`` over the time they span."""
    ts = np.unique(_int64_ns(timestamps))
    return periods_per_year(ts)


def _calendar_key(cal: Calendar) -> tuple:
    return (cal.step.value, round(cal.bars_per_week / max(cal.bars_per_day, 1e-9), 1), round(cal.bars_per_day))


def panel_periods_per_year(panel: pd.DataFrame, declared: dict[str, str] | None = None):
    """The panel's bars per year for every statistic: a plain float when every symbol keeps the same
    calendar (:func:`periods_per_year` of the panel, the observed bars, unchanged; with every
    symbol declared on one exchange: the schedule's bars per year), else a
    :class:`PeriodsPerYear` (the union calendar's, with each symbol's own). Calendars are the same
    when the declared codes are (a declared and an inferred symbol always differ) or, for inferred
    ones, the bar step, bars per trading day and trading days per week are (an inferred symbol with
    under two weeks of bars is taken to match).

    ``declared``: ``symbol -> calendar code`` (``data.calendars``, see
    :mod:`quantml.contracts.exchange_calendars`); the others are inferred from their bars."""
    from quantml.contracts.exchange_calendars import declared_periods_per_year

    declared = dict(declared or {})
    inferred = infer_calendars(panel[[TIMESTAMP, SYMBOL]])
    ts_all = _int64_ns(panel[TIMESTAMP])
    syms = panel[SYMBOL].astype(str).to_numpy()
    own, kind = {}, {}
    for sym in inferred:
        rows = syms == sym
        if sym in declared:
            own[sym] = declared_periods_per_year(declared[sym], ts_all[rows])
            kind[sym] = declared[sym]
        else:
            t = ts_all[rows]
            own[sym] = periods_per_year(t)
            # a history under two weeks cannot show its calendar: it is taken to match the others
            if len(t) and t.max() - t.min() >= 2 * WEEK.value:
                kind[sym] = "inferred:" + "/".join(map(str, _calendar_key(inferred[sym])))
    keys = kind
    if len(set(keys.values())) <= 1:
        if declared and all(s in declared for s in own):
            return float(np.mean(list(own.values())))
        return periods_per_year(panel)
    return PeriodsPerYear(union_periods_per_year(ts_all), own, {s: keys.get(s, s) for s in own})
