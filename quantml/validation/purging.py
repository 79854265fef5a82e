"""Purging and embargo on label intervals, and the inner (purged) validation slice.

Every sample ``i`` carries a label interval ``[t0[i], t1[i]]`` (sample time, end of its
longest label). Positions below are integer positions into ``t0``/``t1``.

The purge rule (closed intervals, one rule everywhere)
------------------------------------------------------
The test positions are cut into *segments*: maximal runs of consecutive timestamps of the
candidate set ``train ∪ test`` that hold test samples. For a segment ``s`` with first sample
time ``start_s`` and largest label end ``end_s = max(t1[test in s])``, a training sample ``i``
is dropped when::

    t0[i] <= end_s + embargo   and   t1[i] >= start_s

i.e. when its label interval touches ``[start_s, end_s + embargo]``. Training samples before
the test lose the ones whose label reaches into the test (purge); training samples after it
lose the ones starting within ``embargo`` of the last test label end (embargo). Each
segment is handled separately, so a training block between two test segments (CPCV) keeps
what lies clear of both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, parse_duration

_NAT = np.iinfo(np.int64).min


def to_ns(values, name: str = "t0") -> np.ndarray:
    """Any datetime-like 1-D input -> int64 nanoseconds since epoch (tz-aware -> UTC).

    NaT becomes ``np.iinfo(np.int64).min``; callers check for it.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        arr = values.astype("datetime64[ns]")
    else:
        try:
            idx = pd.DatetimeIndex(np.asarray(values) if not hasattr(values, "dtype") else values)
        except (TypeError, ValueError) as exc:
            raise QuantmlInputError(f"{name} is not a datetime array ({exc}): pass datetime64[ns] values") from exc
        if idx.tz is not None:
            idx = idx.tz_convert("UTC").tz_localize(None)
        arr = idx.to_numpy(dtype="datetime64[ns]")
    if arr.ndim != 1:
        raise QuantmlInputError(f"{name} has shape {arr.shape}: pass a 1-D array of times")
    return arr.view(np.int64)


def check_intervals(t0: np.ndarray, t1: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Raise unless every referenced label interval is known and ``t1 >= t0``.

    ``t0``, ``t1``: int64 ns [n]; ``rows``: positions to check (all when None).
    """
    if len(t0) != len(t1):
        raise QuantmlInputError(f"t0 has {len(t0)} rows and t1 has {len(t1)}: pass one label interval per sample")
    a, b = (t0, t1) if rows is None else (t0[rows], t1[rows])
    pos = np.arange(len(t0)) if rows is None else rows
    for name, arr in (("t0", a), ("t1", b)):
        bad = np.flatnonzero(arr == _NAT)
        if len(bad):
            raise QuantmlInputError(
                f"{name} is NaT at {len(bad)} sample(s) (first position {int(pos[bad[0]])}): "
                "drop unlabelled rows (e.g. PanelData.labelled_rows()) before splitting"
            )
    back = np.flatnonzero(b < a)
    if len(back):
        i = int(pos[back[0]])
        raise QuantmlInputError(
            f"t1 < t0 at {len(back)} sample(s) (first position {i}: t0={pd.Timestamp(t0[i])}, "
            f"t1={pd.Timestamp(t1[i])}): the label interval must end at or after the sample time"
        )


def parse_embargo(value, setting: str = "validation.embargo") -> pd.Timedelta:
    """``"1d"``, ``"4h"``, ``"30min"``, a Timedelta, ``0`` or None -> a non-negative Timedelta
    (the grammar of :func:`quantml.contracts.parse_duration`)."""
    return parse_duration(value, setting, allow_zero=True)


def _embargo_ns(embargo) -> int:
    return int(parse_embargo(embargo, "embargo").value)


def unique_sorted(x: np.ndarray) -> np.ndarray:
    """Sorted unique values (sort-based: several times faster than ``np.unique`` on int64)."""
    s = np.sort(x)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def intersect_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Values of sorted-unique ``a`` that are in sorted-unique ``b``."""
    if len(a) == 0 or len(b) == 0:
        return a[:0]
    idx = np.minimum(np.searchsorted(b, a), len(b) - 1)
    return a[b[idx] == a]


def _rows(x, n: int, name: str) -> np.ndarray:
    rows = np.asarray(x, dtype=np.int64).ravel()
    if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():
        rows = unique_sorted(rows)
    if len(rows) and (rows[0] < 0 or rows[-1] >= n):
        raise QuantmlInputError(f"{name} holds positions outside [0, {n}): pass positions into t0/t1")
    return rows


def segments_of(train: np.ndarray, test: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous test segments -> (start [S], end [S]) int64 ns, sorted by start.

    A segment is a maximal run of consecutive timestamps of ``train ∪ test`` holding test
    samples; ``start`` is its first sample time, ``end`` the largest label end ``t1`` in it.
    """
    if len(test) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    universe = unique_sorted(t0[np.concatenate([train, test])])
    test_ts = np.searchsorted(universe, t0[test])
    ts_used = unique_sorted(test_ts)
    breaks = np.flatnonzero(np.diff(ts_used) != 1) + 1
    run_first = np.r_[0, breaks]
    run_of_ts = np.zeros(len(universe), np.int64)
    run_of_ts[ts_used] = np.repeat(np.arange(len(run_first)), np.diff(np.r_[run_first, len(ts_used)]))
    run = run_of_ts[test_ts]
    starts = universe[ts_used[run_first]]
    ends = np.full(len(run_first), _NAT, np.int64)
    np.maximum.at(ends, run, t1[test])
    return starts, ends


def overlaps_any(q0: np.ndarray, q1: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """bool [m]: does closed interval ``[q0, q1]`` touch any closed ``[starts, ends]``?

    O((m + S) log S): among intervals starting at or before ``q1``, the largest end must
    reach ``q0``.
    """
    if len(starts) == 0:
        return np.zeros(len(q0), bool)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    k = np.searchsorted(s, q1, side="right") - 1
    hit = k >= 0
    hit[hit] = e[k[hit]] >= q0[hit]
    return hit


def _purge_ns(train, test, t0, t1, emb_ns: int) -> np.ndarray:
    starts, ends = segments_of(train, test, t0, t1)
    drop = overlaps_any(t0[train], t1[train], starts, ends + emb_ns)
    return train[~drop]


def purge(train, test, t0, t1, embargo) -> np.ndarray:
    """Training positions that survive purging against ``test`` (see the module docstring).

    Parameters
    ----------
    train, test : int arrays of positions into ``t0``/``t1``.
    t0, t1 : datetime64[ns] arrays [n] (tz-aware accepted), the label interval of each sample.
    embargo : duration (``pd.Timedelta`` or a string such as ``"1d"``).

    Returns
    -------
    int64 array, sorted: the surviving training positions. Positions that are also in
    ``test`` are always dropped.
    """
    t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
    n = len(t0n)
    train, test = _rows(train, n, "train"), _rows(test, n, "test")
    check_intervals(t0n, t1n, train)
    check_intervals(t0n, t1n, test)
    return _purge_ns(train, test, t0n, t1n, _embargo_ns(embargo))


def check_valid_fraction(valid_fraction, setting: str = "validation.valid_fraction") -> float:
    try:
        f = float(valid_fraction)
    except (TypeError, ValueError):
        f = float("nan")
    if not (0.0 < f <= 0.5):
        raise QuantmlInputError(
            f"{setting}={valid_fraction!r} is outside (0, 0.5]: use e.g. 0.2 (the last 20% of "
            "each fold's training timestamps)"
        )
    return f


def inner_validation_split(
    train, t0, t1, valid_fraction: float, embargo, *, fold_id: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the inner validation slice from a fold's (already purged) training positions.

    The slice holds every training sample whose time is among the last
    ``max(1, floor(valid_fraction * T))`` of the ``T`` unique training timestamps; the rest
    is purged against it with the module's rule (so no fit label touches
    ``[valid_start, max valid t1 + embargo]``). As the slice comes from a training set already
    purged against the test, it never overlaps the test or its embargo.

    Returns
    -------
    (fit, valid) : sorted int64 position arrays, disjoint, both non-empty.
    """
    where = "" if fold_id is None else f"fold {fold_id}: "
    f = check_valid_fraction(valid_fraction)
    t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
    train = _rows(train, len(t0n), "train")
    check_intervals(t0n, t1n, train)
    times = unique_sorted(t0n[train])
    if len(times) < 2:
        raise QuantmlInputError(
            f"{where}the training set has {len(times)} timestamp(s): a validation slice needs at "
            "least 2 (use fewer splits or more data)"
        )
    n_valid = max(1, int(np.floor(f * len(times) + 1e-9)))
    cut = times[len(times) - n_valid]
    is_valid = t0n[train] >= cut
    valid, candidates = train[is_valid], train[~is_valid]
    fit = _purge_ns(candidates, valid, t0n, t1n, _embargo_ns(embargo))
    if len(fit) == 0:
        raise QuantmlInputError(
            f"{where}no training sample is left to fit after purging the last {n_valid} of "
            f"{len(times)} training timestamps used for validation: lower valid_fraction or the "
            "embargo, or use longer training windows"
        )
    return fit, valid


def independent_outcomes(rows, t0, t1) -> int:
    """How many non-overlapping label intervals ``rows`` hold: walking forward in time, take
    the first label, then the first whose ``t0`` is at or after the taken one's ``t1``, ...

    With ``t1`` the end of the longest horizon, this counts the independent outcomes of that
    horizon that a slice can score or calibrate on (one week of 7d labels is one outcome,
    whatever the bar size or the number of symbols).
    """
    t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return 0
    starts = t0n[rows]
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], t1n[rows][order]
    count, i = 0, 0
    while i < len(starts):
        count += 1
        # every label starting at this time ends by the latest of their ends
        same = np.searchsorted(starts, starts[i], side="right")
        # a label that ends where it starts (or earlier) still moves the walk past its start
        i = max(int(np.searchsorted(starts, ends[i:same].max(), side="left")), int(same))
    return count
