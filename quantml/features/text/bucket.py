"""Posts -> bar rows: each post goes to the panel row of its symbol whose bar close is the first at or
after its ``available_at`` (``close[t-1] < available_at <= close[t]``), never as-of onto one row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, bar_size

NO_ROW = -1


def _ns(values) -> np.ndarray:
    """int64 nanoseconds since the epoch (UTC) of a datetime column, whatever its unit."""
    return pd.DatetimeIndex(values).as_unit("ns").asi8


def bucket_rows(panel: pd.DataFrame, stream: pd.DataFrame) -> np.ndarray:
    """int64 [m]: for each of the ``m`` rows of ``stream`` (``symbol``, ``available_at``) the position
    (0..n-1) of its bar in ``panel`` (sorted by symbol, timestamp), or :data:`NO_ROW` when its symbol is
    not in the panel, it becomes available after the symbol's last bar, or more than one bar before the
    symbol's first bar (history the panel does not cover)."""
    out = np.full(len(stream), NO_ROW, dtype=np.int64)
    if not len(stream) or not len(panel):
        return out
    ts = _ns(panel[TIMESTAMP])
    codes, symbols = pd.factorize(panel[SYMBOL].astype(str))
    bar = bar_size(panel[TIMESTAMP], codes, default=pd.Timedelta("1D")).value
    avail = _ns(stream["available_at"])
    post_code = pd.Index(symbols).get_indexer(stream[SYMBOL].astype(str))
    bounds = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1, len(codes)]
    for j in range(len(bounds) - 1):
        a, b = int(bounds[j]), int(bounds[j + 1])
        mine = np.flatnonzero(post_code == codes[a])
        if not len(mine):
            continue
        closes = ts[a:b]
        pos = np.searchsorted(closes, avail[mine], side="left")  # first close >= available_at
        ok = (pos < len(closes)) & (avail[mine] > closes[0] - bar)
        out[mine[ok]] = a + pos[ok]
    return out
