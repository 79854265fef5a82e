"""Per-symbol causal array operations on a (symbol, timestamp)-sorted panel.

Every operation works on each symbol's contiguous segment separately (a loop over
symbols, never over rows) and is sequential in time: the output at row ``t`` depends
only on rows ``<= t`` of the same symbol, so changing later rows leaves it bit-identical.

A window, lag or half-life is an ``int`` (bars, the same for every symbol) or a tuple of one
value per symbol (in the order the symbols first appear: a duration resolved on each symbol's
calendar). Optional ``breaks`` cut a symbol's segment before the flagged rows (a gap), so no
window spans them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from quantml.features import kernels


class SegmentOps:
    """Causal rolling/shift/decay operations within symbol segments.

    Parameters
    ----------
    symbols : array [n] of symbol names, sorted so each symbol is one contiguous run.
    breaks : optional bool array [n]; a True row starts a new segment (the windows restart
        there: nothing before it is seen from it or after it).
    codes : optional int array [n]: each row's symbol as its index in a wider symbol list (rows of a
        few symbols of a panel, with per-symbol windows given for all of the panel's symbols);
        default: the symbols' order of first appearance here.
    """

    def __init__(self, symbols: np.ndarray, breaks: np.ndarray | None = None, codes: np.ndarray | None = None) -> None:
        n = len(symbols)
        if codes is not None:
            self.codes = np.asarray(codes, dtype=np.int64)
        else:
            self.codes = pd.factorize(symbols)[0] if n else np.zeros(0, dtype=np.int64)  # symbol per row
        cut = self.codes[1:] != self.codes[:-1] if n else np.zeros(0, dtype=bool)
        if breaks is not None and n:
            cut = cut | np.asarray(breaks, dtype=bool)[1:]
        change = np.flatnonzero(cut) + 1
        self.bounds = np.r_[0, change, n].astype(np.int64)
        self.n = n
        starts = self.bounds[:-1]
        lengths = np.diff(self.bounds)
        self.pos = np.arange(n) - np.repeat(starts, lengths)  # position within the segment
        self.seg_symbol = self.codes[starts] if n else np.zeros(0, dtype=np.int64)  # symbol per segment

    def per_segment(self, w) -> list:
        """``w`` (an int, or one value per symbol) as one value per segment."""
        if np.ndim(w) == 0:
            return [w] * len(self.seg_symbol)
        return [v.item() for v in np.asarray(w)[self.seg_symbol]]

    def per_row(self, w):
        """``w`` broadcast to rows: an int stays an int, one value per symbol becomes an array [n]."""
        return w if np.ndim(w) == 0 else np.asarray(w, dtype=np.float64)[self.codes]

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
    def shift(self, x: np.ndarray, k) -> np.ndarray:
        """``x[t-k]`` of the same symbol; NaN for the first ``k`` rows of each symbol."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(self.n, np.nan)
        if np.ndim(k) != 0:  # one lag per symbol
            kr = np.asarray(k, dtype=np.int64)[self.codes]
            ok = self.pos >= kr
            out[ok] = x[np.flatnonzero(ok) - kr[ok]]
            return out
        if k < self.n:
            out[k:] = x[: self.n - k]
        out[self.pos < k] = np.nan
        return out

    def diff(self, x: np.ndarray, k: int = 1) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) - self.shift(x, k)

    # -- rolling windows: pandas' compiled kernels, one call over every segment
    def rolling(self, x: np.ndarray, window, how: str, min_periods=None) -> np.ndarray:
        """``pd.Series.rolling(window, min_periods).<how>()`` per segment (how: mean, std, var, sum, max,
        min), bit for bit, through pandas' compiled kernels in one call over all segments."""
        mp = window if min_periods is None else min_periods
        wseg, mseg = self.per_segment(window), self.per_segment(mp)
        for w, m in zip(wseg, mseg):
            if int(m) > int(w):  # what pandas says
                raise ValueError(f"min_periods {int(m)} must be <= window {int(w)}")
        x = np.asarray(x, dtype=np.float64)
        agg = "var" if how == "std" else how
        if agg not in kernels.KERNELS:  # pragma: no cover - pandas without the compiled kernels
            return self._rolling_pandas(x, window, how, mp)
        # computed per call (a few ms a symbol), not cached per window: 9 windows of the full feature set
        # would hold 18 int64 arrays per symbol; the end bound is the same for every window
        start, end = kernels.window_bounds(self.pos, self.per_row(window))
        if len(set(map(int, mseg))) <= 1:
            out = kernels.rolling(x, agg, start, end, int(mseg[0]) if mseg else 1)
        else:  # one min_periods per symbol: one call per segment
            out = np.empty(self.n, dtype=np.float64)
            for (a, b), m in zip(self.segments(), mseg):
                out[a:b] = kernels.rolling(x[a:b], agg, start[a:b] - a, end[a:b] - a, int(m))
        if how == "std":
            np.sqrt(np.maximum(out, 0.0, where=~np.isnan(out), out=out), out=out)  # pandas' zsqrt
        return out

    def _rolling_pandas(self, x, window, how, mp) -> np.ndarray:
        out = np.empty(self.n, dtype=np.float64)
        for (a, b), w, m in zip(self.segments(), self.per_segment(window), self.per_segment(mp)):
            out[a:b] = getattr(pd.Series(x[a:b]).rolling(int(w), min_periods=int(m)), how)().to_numpy()
        return out

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
            return np.where(sd > 0, (np.asarray(x, dtype=np.float64) - mu) / sd, np.nan)

    def ewm_mean(self, x, halflife, min_periods: int = 1) -> np.ndarray:
        if np.ndim(halflife) == 0:
            return self.apply(x, lambda s: s.ewm(halflife=halflife, min_periods=min_periods, ignore_na=True).mean())
        x = np.asarray(x, dtype=np.float64)
        out = np.empty(self.n, dtype=np.float64)
        for (a, b), hl in zip(self.segments(), self.per_segment(halflife)):
            s = pd.Series(x[a:b]).ewm(halflife=float(hl), min_periods=min_periods, ignore_na=True).mean()
            out[a:b] = s.to_numpy()
        return out

    def decay_sum(self, x: np.ndarray, halflife) -> np.ndarray:
        """``y[t] = d * y[t-1] + x[t]`` with ``d = 0.5 ** (1 / halflife)``; NaN inputs count as 0."""
        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        out = np.empty(self.n)
        for (a, b), hl in zip(self.segments(), self.per_segment(halflife)):
            d = 0.5 ** (1.0 / hl)
            out[a:b] = lfilter([1.0], [1.0, -d], x[a:b])
        return out

    def ffill(self, x: np.ndarray) -> np.ndarray:
        """Forward fill within each segment (leading NaN stay NaN)."""
        return kernels.ffill(x, self.bounds)

    def bars_since(self, event: np.ndarray) -> np.ndarray:
        """Bars since the last row where ``event`` is True (0 on that row; NaN before any)."""
        idx = np.where(np.asarray(event, dtype=bool), self.pos.astype(np.float64), np.nan)
        return self.pos - self.ffill(idx)
