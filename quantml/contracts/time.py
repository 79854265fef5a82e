"""Time on the ground floor: the one duration grammar, the bar size and bars per year.

- :func:`parse_duration`: ``"30m"``, ``"15min"``, ``"1h"``, ``"4H"``, ``"1d"``, ``"7d"``,
  ``"2w"``, ``"0s"`` ... (an integer and a unit; ``m`` is minutes) or a Timedelta. Every
  duration a user writes goes through it: horizons, the validation embargo, the synthetic
  data's ``freq``, an ablation's ``event_window``, a stream's ``max_staleness``.
- :func:`bar_size`: the most common gap between consecutive bars of the same symbol.
- :func:`periods_per_year`: bars per year actually observed (sum over symbols of
  ``bars - 1`` over the time they span).
"""

from __future__ import annotations

import re

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
    ts = np.asarray(timestamps)
    if ts.dtype.kind in "iu":
        return ts.astype(np.int64)
    return pd.DatetimeIndex(timestamps).as_unit("ns").asi8


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
    codes = np.zeros(len(ts), dtype=np.int64) if symbols is None else pd.factorize(np.asarray(symbols))[0]
    order = np.lexsort((ts, codes))
    if len(order) and (order != np.arange(len(order))).any():
        ts, codes = ts[order], codes[order]
    return ts, codes


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
