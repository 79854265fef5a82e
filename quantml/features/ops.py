"""Per-symbol causal array operations on a (symbol, timestamp)-sorted panel.

Every operation works on each symbol's contiguous segment separately (a loop over
symbols, never over rows) and is sequential in time: the output at row ``t`` depends
only on rows ``<= t`` of the same symbol, so changing later rows leaves it bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.signal import lfilter


class SegmentOps:
    """Causal rolling/shift/decay operations within symbol segments.

    Parameters
    ----------
    symbols : array [n] of symbol names, sorted so each symbol is one contiguous run.
    """

    def __init__(self, symbols: np.ndarray) -> None:
        n = len(symbols)
        change = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1 if n else np.zeros(0, dtype=np.int64)
        self.bounds = np.r_[0, change, n].astype(np.int64)
        self.n = n
        starts = self.bounds[:-1]
        lengths = np.diff(self.bounds)
        self.pos = np.arange(n) - np.repeat(starts, lengths)  # position within the symbol

    def segments(self):
        return zip(self.bounds[:-1], self.bounds[1:])

    def apply(self, x: np.ndarray, fn: Callable[[pd.Series], pd.Series | np.ndarray]) -> np.ndarray:
        """``fn`` applied to each symbol's slice (as a Series with a RangeIndex)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty(self.n, dtype=np.float64)
        for a, b in self.segments():
            out[a:b] = np.asarray(fn(pd.Series(x[a:b])), dtype=np.float64)
        return out

    # -- shifts and differences (vectorised over the whole array)
    def shift(self, x: np.ndarray, k: int) -> np.ndarray:
        """``x[t-k]`` of the same symbol; NaN for the first ``k`` rows of each symbol."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(self.n, np.nan)
        if k < self.n:
            out[k:] = x[: self.n - k]
        out[self.pos < k] = np.nan
        return out

    def diff(self, x: np.ndarray, k: int = 1) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) - self.shift(x, k)

    # -- rolling windows (pandas, per symbol)
    def rolling(self, x: np.ndarray, window: int, how: str, min_periods: int | None = None) -> np.ndarray:
        mp = window if min_periods is None else min_periods
        return self.apply(x, lambda s: getattr(s.rolling(window, min_periods=mp), how)())

    def mean(self, x, window, min_periods=None):
        return self.rolling(x, window, "mean", min_periods)

    def std(self, x, window, min_periods=None):
        return self.rolling(x, window, "std", min_periods)

    def sum(self, x, window, min_periods=None):
        return self.rolling(x, window, "sum", min_periods)

    def max(self, x, window, min_periods=None):
        return self.rolling(x, window, "max", min_periods)

    def min(self, x, window, min_periods=None):
        return self.rolling(x, window, "min", min_periods)

    def zscore(self, x, window, min_periods=None) -> np.ndarray:
        """(x - rolling mean) / rolling std over the trailing window (std 0 -> NaN)."""
        mu = self.mean(x, window, min_periods)
        sd = self.std(x, window, min_periods)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sd > 0, (np.asarray(x) - mu) / sd, np.nan)

    def ewm_mean(self, x, halflife: float, min_periods: int = 1) -> np.ndarray:
        return self.apply(x, lambda s: s.ewm(halflife=halflife, min_periods=min_periods, ignore_na=True).mean())

    def decay_sum(self, x: np.ndarray, halflife: float) -> np.ndarray:
        """``y[t] = d * y[t-1] + x[t]`` with ``d = 0.5 ** (1 / halflife)``; NaN inputs count as 0."""
        d = 0.5 ** (1.0 / halflife)
        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        out = np.empty(self.n)
        for a, b in self.segments():
            out[a:b] = lfilter([1.0], [1.0, -d], x[a:b])
        return out

    def ffill(self, x: np.ndarray) -> np.ndarray:
        """Forward fill within each symbol (leading NaN stay NaN)."""
        return self.apply(x, lambda s: s.ffill())

    def bars_since(self, event: np.ndarray) -> np.ndarray:
        """Bars since the last row where ``event`` is True (0 on that row; NaN before any)."""
        idx = np.where(np.asarray(event, dtype=bool), self.pos.astype(np.float64), np.nan)
        return self.pos - self.ffill(idx)
