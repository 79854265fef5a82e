"""Leakage audit of a set of folds: the registry's leakage gate.

Unlike the splitters, the audit never raises on a leak: it counts every violation so the
report (``audit/leakage_audit.json``) says what is wrong and where. It checks each TEST
SAMPLE's own interval (not segments), so it is independent of how the splitter purged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, require_columns
from quantml.validation.purging import (
    _NAT,
    _embargo_ns,
    check_valid_fraction,
    inner_validation_split,
    intersect_sorted,
    overlaps_any,
    to_ns,
    unique_sorted,
)
from quantml.validation.splitters import Fold

CHECKS = (
    "duplicate_keys",
    "time_order",
    "label_intervals",
    "train_test_overlap",
    "timestamp_split",
    "purge",
    "paths",
    "valid_test_overlap",
    "valid_purge",
)


def _check(count: int, detail_bad: str, detail_ok: str) -> dict:
    return {"ok": count == 0, "count": int(count), "detail": detail_bad if count else detail_ok}


def _fmt(ts: int) -> str:
    return str(pd.Timestamp(int(ts)))


def _leaks(rows: np.ndarray, against: np.ndarray, t0: np.ndarray, t1: np.ndarray, emb: int) -> np.ndarray:
    """bool per ``rows``: its label interval touches some ``[t0[j], t1[j] + emb]``, j in ``against``."""
    return overlaps_any(t0[rows], t1[rows], t0[against], t1[against] + emb)


def audit_folds(
    keys: pd.DataFrame,
    t0,
    t1,
    folds: Sequence[Fold],
    embargo,
    *,
    inner: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    valid_fraction: float | None = None,
) -> dict:
    """Audit folds for leakage; never raises on a leak, reports it.

    Parameters
    ----------
    keys : DataFrame [n] with ``symbol`` and ``timestamp``, one row per sample, aligned with
        ``t0``/``t1`` (position ``i`` of a fold refers to ``keys.iloc[i]``).
    t0, t1 : datetime64 arrays [n], the label interval of each sample.
    folds : the folds to audit.
    embargo : duration (``"1d"`` or Timedelta) each test label is extended by.
    inner : optional ``(fit, valid)`` per fold, as used for training. When omitted and
        ``valid_fraction`` is given, they are recomputed with :func:`inner_validation_split`;
        when both are omitted the two validation checks report ``count=0`` with a "skipped"
        detail.

    Returns
    -------
    ``{"clean": bool, "checks": {name: {"ok": bool, "count": int, "detail": str}}}`` with the
    checks ``duplicate_keys`` (repeated (symbol, timestamp)), ``time_order`` (time going
    backwards within a symbol, i.e. keys not sorted), ``label_intervals`` (NaT or t1 < t0),
    ``train_test_overlap`` (a position in both), ``timestamp_split`` (a timestamp in both
    train and test of a fold), ``purge`` (a training label interval touching a test sample's
    ``[t0, t1 + embargo]``), ``paths`` (a sample tested twice in one path, or paths not
    covering the same samples), ``valid_test_overlap`` (a validation label touching a test
    sample's ``[t0, t1 + embargo]``) and ``valid_purge`` (a fit label touching a validation
    sample's ``[t0, t1 + embargo]``).
    """
    require_columns(keys, (SYMBOL, TIMESTAMP), "keys", "pass PanelData.keys rows aligned with t0/t1")
    t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
    if not (len(keys) == len(t0n) == len(t1n)):
        raise QuantmlInputError(f"keys has {len(keys)} rows, t0 {len(t0n)}, t1 {len(t1n)}: pass one row per sample")
    emb = _embargo_ns(embargo)
    checks: dict[str, dict] = {}

    dup = keys.duplicated([SYMBOL, TIMESTAMP], keep=False)
    n_dup = int(keys.duplicated([SYMBOL, TIMESTAMP]).sum())
    first = keys.loc[dup].iloc[0] if n_dup else None
    checks["duplicate_keys"] = _check(
        n_dup,
        f"{n_dup} repeated (symbol, timestamp) rows, first {first[SYMBOL]!r} at {first[TIMESTAMP]}: "
        "deduplicate the panel"
        if n_dup
        else "",
        "every (symbol, timestamp) is unique",
    )

    ts = to_ns(keys[TIMESTAMP], "keys.timestamp")
    # each symbol's rows in their given order (the panel may be symbol- or time-major)
    codes, names = pd.factorize(keys[SYMBOL])
    order = np.argsort(codes, kind="stable")
    same = codes[order][1:] == codes[order][:-1]
    back = order[np.flatnonzero(same & (ts[order][1:] < ts[order][:-1])) + 1]
    prev = order[np.flatnonzero(same & (ts[order][1:] < ts[order][:-1]))]
    checks["time_order"] = _check(
        len(back),
        f"time goes backwards {len(back)} time(s) within a symbol, first {names[codes[back[0]]]!r} at "
        f"row {int(back[0])} ({_fmt(ts[back[0]])} after {_fmt(ts[prev[0]])} at row {int(prev[0])}): "
        "sort keys by (symbol, timestamp) or (timestamp, symbol)"
        if len(back)
        else "",
        "timestamps increase within each symbol",
    )

    bad_iv = (t0n == _NAT) | (t1n == _NAT) | (t1n < t0n)
    checks["label_intervals"] = _check(
        int(bad_iv.sum()),
        f"{int(bad_iv.sum())} sample(s) with NaT or t1 < t0, first at position "
        f"{int(np.flatnonzero(bad_iv)[0]) if bad_iv.any() else -1}: drop unlabelled rows",
        "every label interval is known and t1 >= t0",
    )
    # Unknown label ends are treated as open-ended (the most conservative reading).
    t1a = np.where((t1n == _NAT) | (t1n < t0n), np.iinfo(np.int64).max - emb, t1n)

    n_overlap = n_tsplit = n_purge = 0
    where_overlap = where_tsplit = where_purge = ""
    for f in folds:
        train, test = _sorted_rows(f.train), _sorted_rows(f.test)
        both = intersect_sorted(train, test)
        if len(both) and not where_overlap:
            where_overlap = f"fold {f.fold_id} position {int(both[0])}"
        n_overlap += len(both)
        shared = intersect_sorted(unique_sorted(t0n[train]), unique_sorted(t0n[test]))
        if len(shared) and not where_tsplit:
            where_tsplit = f"fold {f.fold_id} at {_fmt(shared[0])}"
        n_tsplit += len(shared)
        leak = train[_leaks(train, test, t0n, t1a, emb)]
        if len(leak) and not where_purge:
            i = int(leak[0])
            where_purge = (
                f"fold {f.fold_id} train position {i} ({keys[SYMBOL].iloc[i]!r}, [{_fmt(t0n[i])}, {_fmt(t1a[i])}])"
            )
        n_purge += len(leak)
    checks["train_test_overlap"] = _check(
        n_overlap,
        f"{n_overlap} sample(s) both in train and test, first {where_overlap}",
        "no sample is both trained and tested in a fold",
    )
    checks["timestamp_split"] = _check(
        n_tsplit,
        f"{n_tsplit} timestamp(s) with samples in both train and test, first {where_tsplit}: "
        "split on unique timestamps",
        "no timestamp is split between train and test",
    )
    checks["purge"] = _check(
        n_purge,
        f"{n_purge} training label interval(s) touch a test interval or its embargo "
        f"({pd.Timedelta(emb)}), first {where_purge}: purge the training set",
        f"no training label touches a test interval or its {pd.Timedelta(emb)} embargo",
    )
    checks["paths"] = _check_paths(folds)

    if inner is None and valid_fraction is not None:
        check_valid_fraction(valid_fraction)
        inner = [
            inner_validation_split(
                f.train, t0n.view("M8[ns]"), t1n.view("M8[ns]"), valid_fraction, pd.Timedelta(emb), fold_id=f.fold_id
            )
            for f in folds
        ]
    if inner is None:
        skipped = "skipped: pass inner=[(fit, valid), ...] or valid_fraction"
        checks["valid_test_overlap"] = {"ok": True, "count": 0, "detail": skipped}
        checks["valid_purge"] = {"ok": True, "count": 0, "detail": skipped}
    else:
        if len(inner) != len(folds):
            raise QuantmlInputError(
                f"inner has {len(inner)} (fit, valid) pairs for {len(folds)} folds: pass one per fold"
            )
        n_vt = n_vp = 0
        where_vt = where_vp = ""
        for f, (fit, valid) in zip(folds, inner):
            fit, valid, test = _sorted_rows(fit), _sorted_rows(valid), _sorted_rows(f.test)
            vt = np.union1d(intersect_sorted(valid, test), valid[_leaks(valid, test, t0n, t1a, emb)])
            if len(vt) and not where_vt:
                where_vt = f"fold {f.fold_id} valid position {int(vt[0])}"
            n_vt += len(vt)
            vp = np.union1d(intersect_sorted(fit, valid), fit[_leaks(fit, valid, t0n, t1a, emb)])
            if len(vp) and not where_vp:
                where_vp = f"fold {f.fold_id} fit position {int(vp[0])}"
            n_vp += len(vp)
        checks["valid_test_overlap"] = _check(
            n_vt,
            f"{n_vt} validation sample(s) touch a test interval or its embargo, first {where_vt}",
            "no validation label touches a test interval or its embargo",
        )
        checks["valid_purge"] = _check(
            n_vp,
            f"{n_vp} fit sample(s) touch a validation interval or its embargo, first {where_vp}",
            "no fit label touches a validation interval or its embargo",
        )
    return {"clean": all(c["ok"] for c in checks.values()), "checks": checks}


def _sorted_rows(x) -> np.ndarray:
    return unique_sorted(np.asarray(x, dtype=np.int64).ravel())


def _check_paths(folds: Sequence[Fold]) -> dict:
    """Within a path no sample is tested twice; every path covers the same samples."""
    if not folds:
        return _check(0, "", "no folds")
    test = np.concatenate([np.asarray(f.test, np.int64) for f in folds])
    path = np.concatenate([np.asarray(f.test_paths, np.int64) for f in folds])
    if len(test) != len(path):
        return _check(1, "a fold's test_paths has not one entry per test sample", "")
    span = int(test.max()) + 1 if len(test) else 1
    code = np.sort((path - path.min()) * span + test)
    path, test = code // span + path.min(), code % span
    repeat = (test[1:] == test[:-1]) & (path[1:] == path[:-1])
    twice = int(repeat.sum())
    keep = np.r_[True, ~repeat]
    test, path = test[keep], path[keep]
    all_rows = unique_sorted(test)
    bounds = np.r_[0, np.flatnonzero(path[1:] != path[:-1]) + 1, len(path)]
    n_paths = len(bounds) - 1
    incomplete = sum(1 for a, b in zip(bounds[:-1], bounds[1:]) if not np.array_equal(test[a:b], all_rows))
    n = twice + incomplete
    return _check(
        n,
        f"{twice} (sample, path) tested twice and {incomplete} of {n_paths} path(s) not covering every tested sample",
        f"{n_paths} path(s), each testing every tested sample exactly once",
    )
