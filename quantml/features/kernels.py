"""Vectorised numpy kernels behind :class:`quantml.features.ops.SegmentOps`, with pandas' semantics.

Each kernel reproduces the pandas operation it replaces (NaN handling, ``min_periods``, ties, the
special cases pandas' rolling aggregations make) up to float64 rounding, so the float32 features
they feed are unchanged up to float32 rounding. All work on ONE segment (a symbol's run of rows)
or, for the cross-sectional rank, on rows grouped by timestamp, and all are causal: the output at
row ``t`` of a segment reads rows ``<= t`` of that segment only (numpy's ``cumsum`` is a sequential
scan), so changing later rows leaves it bit-identical.

- :func:`rolling`: trailing-window mean, variance (``ddof=1``), sum, max, min through pandas' compiled
  rolling kernels, called once over all segments with explicit window bounds (:func:`window_bounds`):
  bit-identical to ``pd.Series.rolling(w, min_periods=m).<how>()`` per symbol, without building a
  Series and a Rolling object per symbol and feature. (Measured against a cumulative-sum numpy
  kernel: 5x slower than pandas' loop at 841k rows and, on a random walk, up to 3e-7 relative error
  in a 24-bar std -- pandas' compensated running sums are both faster and exact to float64.)
- :func:`ffill`: forward fill within segments (``Series.ffill`` per symbol).
- :func:`rank_pct`: percentile rank within groups with average ties, NaN kept
  (``Series.groupby(codes).rank(pct=True)``), by sorting each timestamp's row of a
  ``[timestamps, symbols]`` matrix.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from quantml.contracts.cpus import job_threads

try:  # pandas' own compiled rolling kernels: the exact arithmetic of Series.rolling, without its per-call cost
    from pandas._libs.window import aggregations as _agg

    KERNELS = {
        "mean": _agg.roll_mean,
        "var": _agg.roll_var,
        "sum": _agg.roll_sum,
        "max": _agg.roll_max,
        "min": _agg.roll_min,
    }
except (ImportError, AttributeError):  # pragma: no cover - another pandas layout: the public path
    KERNELS = {}


def window_bounds(pos: np.ndarray, window) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` int64 [n]: the trailing window of each row, ``[t - w + 1, t + 1)`` clipped at the
    start of its segment. ``pos`` [n]: the row's position in its segment; ``window``: an int or [n]."""
    t = np.arange(len(pos), dtype=np.int64)
    w = np.asarray(window, dtype=np.int64)
    return t - np.minimum(pos, w - 1), t + 1


def rolling(x: np.ndarray, how: str, start: np.ndarray, end: np.ndarray, min_periods: int) -> np.ndarray:
    """``how`` (mean, var, sum, max, min) over each row's window ``[start, end)`` [n] of ``x`` [n]: pandas'
    rolling aggregation (``var``: ddof=1) on windows that never cross a segment, so one call covers every
    segment (pandas restarts its running sums where a window starts at or after the previous one's end)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    inf = np.isinf(x)
    if inf.any():  # what pandas' Rolling does to its input first
        x = np.where(inf, np.nan, x)
    fn = KERNELS.get(how)
    if fn is None:  # pragma: no cover
        raise KeyError(how)
    return fn(x, start, end, int(min_periods)) if how != "var" else fn(x, start, end, int(min_periods), 1)


def ffill(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Forward fill of ``x`` [n] within each segment ``[bounds[i], bounds[i+1])`` (leading NaN stay NaN)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x.copy()
    idx = np.where(~np.isnan(x), np.arange(n), -1)
    last = np.maximum.accumulate(idx)
    seg_start = np.repeat(bounds[:-1], np.diff(bounds))
    ok = last >= seg_start  # the last valid row is in this row's segment
    return np.where(ok, x[np.where(ok, last, 0)], np.nan)


def time_codes(ts: np.ndarray) -> tuple[np.ndarray, int]:
    """``(codes [n], n_times)``: each row's timestamp (int64 [n]) as its position among the distinct
    timestamps, in time order. A panel sorted by (symbol, timestamp) is one sorted run per symbol, which a
    stable sort (timsort) merges in about a pass: half the time of hashing every row (``pd.factorize``)."""
    s = np.sort(ts, kind="stable")
    distinct = s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s
    return np.searchsorted(distinct, ts), len(distinct)


def rank_pct(values: np.ndarray, time_codes: np.ndarray, n_times: int, sym_codes: np.ndarray, n_syms: int):
    """Percentile rank [n] of ``values`` among the rows sharing a time code: average rank of ties
    divided by the number of non-NaN values at that time; NaN stays NaN (pandas' groupby rank,
    ``pct=True``). Each (time, symbol) pair occurs once; the work is a sort of each timestamp's
    ``n_syms`` values."""
    v = np.asarray(values, dtype=np.float64)
    M = np.full((n_times, n_syms), np.nan)
    M[time_codes, sym_codes] = v
    R = np.empty_like(M)
    step = max(1, RANK_CHUNK // max(n_syms, 1))

    def rank_block(lo: int) -> None:  # a block of timestamps at a time: small temporaries
        R[lo : lo + step] = _rank_rows(M[lo : lo + step])

    starts = range(0, n_times, step)
    workers = min(len(starts), job_threads())
    if workers <= 1:
        for lo in starts:
            rank_block(lo)
    else:  # numpy's sorts release the GIL; each block writes its own rows of R
        with ThreadPoolExecutor(workers, thread_name_prefix="quantml-rank") as pool:
            for _ in pool.map(rank_block, starts):
                pass
    return R[time_codes, sym_codes]


RANK_CHUNK = 1 << 18  # cells of the [timestamps, symbols] matrix ranked at once


def _rank_rows(M: np.ndarray) -> np.ndarray:
    """Percentile rank (average ties, NaN kept) of each row's values of ``M`` [T, S]."""
    n_syms = M.shape[1]
    order = np.argsort(M, axis=1, kind="stable")  # NaN last
    sv = np.take_along_axis(M, order, axis=1)
    j = np.arange(n_syms)
    new_run = np.ones(sv.shape, dtype=bool)
    new_run[:, 1:] = sv[:, 1:] != sv[:, :-1]
    first = np.maximum.accumulate(np.where(new_run, j, 0), axis=1)
    end_run = np.ones(sv.shape, dtype=bool)
    end_run[:, :-1] = new_run[:, 1:]
    last = np.minimum.accumulate(np.where(end_run, j, n_syms)[:, ::-1], axis=1)[:, ::-1]
    count = (~np.isnan(sv)).sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = ((first + last + 2) / 2.0) / count
    pct[np.isnan(sv)] = np.nan
    R = np.empty_like(pct)
    np.put_along_axis(R, order, pct, axis=1)
    return R
