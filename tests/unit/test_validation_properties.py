"""Hypothesis properties of every splitter on random multi-symbol timelines.

Checked against brute-force pairwise interval comparisons and an independent reference of
the block/segment rule, so both leaks (too little purging) and over-purging are caught.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quantml.contracts import QuantmlInputError
from quantml.validation import audit_folds, make_splitter

HOUR = np.int64(3_600_000_000_000)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def panels(draw):
    """Irregular hourly timeline, 1-3 symbols with holes, per-sample horizons (in hours)."""
    n_ts = draw(st.integers(20, 50))
    gaps = draw(st.lists(st.integers(1, 3), min_size=n_ts, max_size=n_ts))
    times = np.cumsum(np.asarray(gaps, np.int64)) * HOUR + np.int64(1_700_000_000) * 10**9
    n_sym = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    present = rng.random((n_sym, n_ts)) < 0.85
    present[0] = True  # every timestamp has at least one sample
    max_h = draw(st.integers(0, 4))
    sym = np.repeat(np.arange(n_sym), present.sum(axis=1))
    t0 = np.concatenate([times[p] for p in present])
    t1 = t0 + rng.integers(0, max_h + 1, len(t0)) * HOUR
    keys = pd.DataFrame({"symbol": [f"S{s}" for s in sym], "timestamp": pd.to_datetime(t0, utc=True)})
    return keys, t0.view("M8[ns]"), t1.view("M8[ns]"), n_ts


@st.composite
def configs(draw):
    method = draw(st.sampled_from(["walk_forward", "purged_kfold", "cpcv"]))
    cfg = {
        "method": method,
        "embargo": f"{draw(st.integers(0, 3))}h",
        "valid_fraction": draw(st.sampled_from([0.1, 0.2, 0.5])),
    }
    if method == "walk_forward":
        cfg["n_splits"] = draw(st.integers(1, 4))
        if draw(st.booleans()):
            cfg.update(mode="rolling", train_blocks=draw(st.integers(1, 3)))
    elif method == "purged_kfold":
        cfg["n_splits"] = draw(st.integers(2, 5))
    else:
        n = draw(st.integers(3, 5))
        cfg.update(n_groups=n, n_test_groups=draw(st.integers(1, n - 1)))
    return cfg


def touching(a, b, t0, t1, emb):
    """Pairs (i in a, j in b) with [t0_i, t1_i] touching [t0_j, t1_j + emb] (brute force)."""
    x0, x1 = t0[a][:, None], t1[a][:, None]
    return (x0 <= t1[b][None, :] + emb) & (x1 >= t0[b][None, :])


def reference_folds(t0, t1, cfg, emb):
    """Independent reference: blocks of unique timestamps, purge per run of test blocks."""
    times = np.unique(t0)
    method = cfg["method"]
    n_blocks = {
        "walk_forward": cfg.get("n_splits", 0) + 1,
        "purged_kfold": cfg.get("n_splits"),
        "cpcv": cfg.get("n_groups"),
    }[method]
    edges = [times[b[0]] for b in np.array_split(np.arange(len(times)), n_blocks)]
    block = np.searchsorted(np.asarray(edges), t0, side="right") - 1
    if method == "walk_forward":
        lo = lambda k: 0 if cfg.get("mode", "expanding") == "expanding" else max(0, k + 1 - cfg["train_blocks"])  # noqa: E731
        plans = [(list(range(lo(k), k + 1)), [k + 1]) for k in range(cfg["n_splits"])]
    elif method == "purged_kfold":
        plans = [([b for b in range(n_blocks) if b != k], [k]) for k in range(n_blocks)]
    else:
        import itertools

        plans = [
            ([b for b in range(n_blocks) if b not in c], list(c))
            for c in itertools.combinations(range(n_blocks), cfg["n_test_groups"])
        ]
    out = []
    for train_b, test_b in plans:
        test = np.flatnonzero(np.isin(block, test_b))
        cand = np.flatnonzero(np.isin(block, train_b))
        keep = np.ones(len(cand), bool)
        runs = np.split(np.asarray(test_b), np.flatnonzero(np.diff(test_b) != 1) + 1)
        for run in runs:
            seg = np.isin(block, run)
            start, end = t0[seg].min(), t1[seg].max() + emb
            keep &= ~((t0[cand] <= end) & (t1[cand] >= start))
        out.append((cand[keep], test))
    return out


@SETTINGS
@given(panels(), configs())
def test_splits_never_leak_and_match_the_reference_rule(panel, cfg):
    keys, t0, t1, n_ts = panel
    splitter = make_splitter({**cfg, "min_train_samples": 1, "min_test_samples": 1})
    a0, a1 = t0.view(np.int64), t1.view(np.int64)
    emb = np.int64(splitter.embargo.value)
    ref = reference_folds(a0, a1, cfg, emb)
    empty = [k for k, (train, _) in enumerate(ref) if len(train) == 0]
    if empty:  # the error must name the first fold the reference purges empty
        with pytest.raises(QuantmlInputError, match=f"fold {empty[0]} has 0 training samples"):
            splitter.split(t0, t1)
        return
    folds = splitter.split(t0, t1)
    assert len(folds) == len(ref)
    tested = []
    for fold, (ref_train, ref_test) in zip(folds, ref):
        train, test = fold.train, fold.test
        assert np.array_equal(train, ref_train) and np.array_equal(test, ref_test)
        assert len(test) == len(fold.test_paths)
        assert not np.intersect1d(train, test).size
        assert not np.intersect1d(a0[train], a0[test]).size, "a timestamp split across train/test"
        assert not touching(train, test, a0, a1, emb).any(), "training label touches test + embargo"
        if cfg["method"] == "walk_forward":
            assert a1[train].max() < a0[test].min(), "walk-forward training not strictly before test"
        tested.append(test)
    all_tested = np.sort(np.concatenate(tested))
    if cfg["method"] == "purged_kfold":
        assert np.array_equal(all_tested, np.arange(len(t0)))
    if cfg["method"] == "cpcv":
        assert len(folds) == math.comb(cfg["n_groups"], cfg["n_test_groups"])
        for p in range(splitter.n_paths):
            rows = np.concatenate([f.test[f.test_paths == p] for f in folds])
            assert np.array_equal(np.sort(rows), np.arange(len(t0))), f"path {p} does not cover every sample once"
    else:
        assert len(all_tested) == len(np.unique(all_tested))


@SETTINGS
@given(panels(), configs())
def test_inner_validation_slice_never_leaks(panel, cfg):
    keys, t0, t1, _ = panel
    splitter = make_splitter({**cfg, "min_train_samples": 1})
    try:
        folds = splitter.split(t0, t1)
        inner = [splitter.inner_split(f, t0, t1) for f in folds]
    except QuantmlInputError as exc:
        assert "training samples" in str(exc) or "timestamp" in str(exc) or "left to fit" in str(exc)
        assume(False)
    a0, a1 = t0.view(np.int64), t1.view(np.int64)
    emb = np.int64(splitter.embargo.value)
    for fold, (fit, valid) in zip(folds, inner):
        assert len(fit) and len(valid)
        assert np.array_equal(np.union1d(fit, valid), np.intersect1d(np.union1d(fit, valid), fold.train))
        assert not np.intersect1d(fit, valid).size
        assert a0[fit].max() < a0[valid].min(), "validation slice is not the latest training time"
        n_times = len(np.unique(a0[fold.train]))
        assert len(np.unique(a0[valid])) == max(1, math.floor(splitter.valid_fraction * n_times + 1e-9))
        assert not touching(valid, fold.test, a0, a1, emb).any(), "validation touches test + embargo"
        assert not touching(fit, valid, a0, a1, emb).any(), "fit touches validation + embargo"
    report = audit_folds(keys, t0, t1, folds, splitter.embargo, inner=inner)
    assert report["clean"], report
