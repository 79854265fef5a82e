"""The lockbox: the end of the timeline, reserved before anything is fitted or chosen.

``validation.holdout`` sizes it on the data's calendar (the sorted unique bar times of the
panel): a fraction ``0 < f < 1`` keeps the last ``ceil(f * T)`` bars, a duration (``365d``,
``26w``) the bars after ``last - duration``; ``0``/``null``/``none`` switches it off. Its first
bar becomes a recorded date (the run's ``quantml.lockbox_start``, reused for every later run on
the same data fingerprint unless ``validation.holdout_start`` pins another), so it does not
drift as the history grows.

Development rows are those whose label interval ``[t0, t1]`` ends more than the embargo before
the lockbox's first bar (``t1 < start - embargo``): labels that end inside the lockbox are
purged, and the embargo leaves a gap at the boundary as it does after every test block.
Lockbox rows are those with ``t0 >= start``; nothing in between is used at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.contracts.time import parse_duration
from quantml.validation.purging import to_ns, unique_sorted

OFF = ("", "0", "none", "null", "false", "off")


@dataclass(frozen=True)
class Lockbox:
    """``start``: the lockbox's first bar (tz-aware UTC) or None (no lockbox); ``source``:
    ``pinned`` | ``recorded:<run id>`` | ``computed`` | ``none``."""

    start: pd.Timestamp | None
    source: str = "computed"

    @property
    def enabled(self) -> bool:
        return self.start is not None

    def tag(self) -> str:
        return self.start.isoformat() if self.start is not None else "none"


def parse_holdout(value) -> float | pd.Timedelta | None:
    """``validation.holdout`` as a calendar fraction, a duration, or None (off)."""
    if value is None or isinstance(value, bool) and not value:
        return None
    if isinstance(value, bool):
        raise QuantmlInputError("validation.holdout=true is not a size: use a fraction such as 0.15 or a duration")
    if isinstance(value, (int, float, np.integer, np.floating)):
        f = float(value)
        if f == 0:
            return None
        if not 0 < f < 1:
            raise QuantmlInputError(
                f"validation.holdout={value!r}: a fraction must lie in (0, 1), e.g. 0.15; "
                "or give a duration such as 365d, or 0 for no lockbox"
            )
        return f
    text = str(value).strip()
    if text.lower() in OFF:
        return None
    try:
        return parse_holdout(float(text))
    except ValueError:
        pass
    return parse_duration(text, "validation.holdout")


def calendar_of(timestamps) -> np.ndarray:
    """The sorted unique bar times (int64 ns, UTC) of a panel's ``timestamp`` column."""
    ts = pd.DatetimeIndex(pd.to_datetime(timestamps))
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return unique_sorted(to_ns(ts.to_numpy(dtype="datetime64[ns]"), "timestamp"))


def computed_start(calendar: np.ndarray, holdout) -> pd.Timestamp | None:
    """The lockbox's first bar for ``holdout`` (see :func:`parse_holdout`) on ``calendar``
    (sorted unique int64 ns). Refuses a lockbox that leaves no development bars."""
    size = parse_holdout(holdout)
    if size is None:
        return None
    T = len(calendar)
    if T < 2:
        raise QuantmlInputError(f"the panel has {T} bar time(s): too few for a lockbox; set validation.holdout=0")
    if isinstance(size, float):
        n = max(1, math.ceil(size * T))
        idx = T - n
    else:
        idx = int(np.searchsorted(calendar, calendar[-1] - int(size.value), side="right"))
    if idx <= 0:
        raise QuantmlInputError(
            f"validation.holdout={holdout} covers the whole calendar ({T} bars): use a smaller fraction "
            "or duration, or more data"
        )
    return pd.Timestamp(int(calendar[min(idx, T - 1)]), tz="UTC")


def pinned_start(value, calendar: np.ndarray) -> pd.Timestamp:
    """``validation.holdout_start`` as the first calendar bar at or after it."""
    try:
        when = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        raise QuantmlInputError(
            f"validation.holdout_start={value!r} is not a date: use an ISO date such as 2012-01-03"
        ) from None
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    idx = int(np.searchsorted(calendar, when.tz_localize(None).value, side="left"))
    if idx <= 0 or idx >= len(calendar):
        first, last = (pd.Timestamp(int(calendar[i]), tz="UTC") for i in (0, -1))
        raise QuantmlInputError(
            f"validation.holdout_start={value} lies outside the data ({first} .. {last}) or leaves no "
            "development bars: pin a date inside the history, or validation.holdout_start=null"
        )
    return pd.Timestamp(int(calendar[idx]), tz="UTC")


def split_development(t0, t1, start: pd.Timestamp | None, embargo: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(development, lockbox)`` over rows with label intervals ``[t0, t1]``
    (datetime64 [n]). Without a lockbox every row is development."""
    t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
    if start is None:
        return np.ones(len(t0n), bool), np.zeros(len(t0n), bool)
    s = pd.Timestamp(start)
    s = (s.tz_convert("UTC").tz_localize(None) if s.tzinfo is not None else s).value
    return t1n < s - int(pd.Timedelta(embargo).value), t0n >= s
