"""Splitters, purge and the inner validation slice on small hand-made timelines (exact indices)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.validation import (
    CombinatorialPurgedCV,
    PurgedKFold,
    WalkForward,
    describe_fold,
    inner_validation_split,
    make_splitter,
    parse_embargo,
    purge,
)

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "validation"
DAY = np.timedelta64(1, "D")


def timeline(n: int = 10, horizon: int = 1):
    """n daily samples t0 = day 0..n-1, label end t1 = t0 + horizon days."""
    t0 = pd.date_range("2024-01-01", periods=n, freq="D").to_numpy()
    return t0, t0 + horizon * DAY


def as_lists(folds):
    return [(f.train.tolist(), f.test.tolist()) for f in folds]


# ---------------------------------------------------------------- walk-forward


def test_walk_forward_expanding_exact():
    t0, t1 = timeline(10, horizon=1)
    folds = WalkForward(n_splits=4, embargo="1d").split(t0, t1)
    # 10 timestamps -> 5 blocks of 2; training drops the sample whose label reaches the test start
    assert as_lists(folds) == [
        ([0], [2, 3]),
        ([0, 1, 2], [4, 5]),
        ([0, 1, 2, 3, 4], [6, 7]),
        ([0, 1, 2, 3, 4, 5, 6], [8, 9]),
    ]
    assert [f.test_groups for f in folds] == [(1,), (2,), (3,), (4,)]
    assert all((f.test_paths == 0).all() for f in folds)


def test_walk_forward_rolling_exact():
    t0, t1 = timeline(10, horizon=1)
    folds = WalkForward(n_splits=4, mode="rolling", train_blocks=2).split(t0, t1)
    assert as_lists(folds) == [
        ([0], [2, 3]),
        ([0, 1, 2], [4, 5]),
        ([2, 3, 4], [6, 7]),
        ([4, 5, 6], [8, 9]),
    ]


def test_walk_forward_longer_horizon_purges_more():
    t0, t1 = timeline(12, horizon=2)
    folds = WalkForward(n_splits=3).split(t0, t1)  # blocks of 3: two samples before each test are purged
    assert as_lists(folds) == [([0], [3, 4, 5]), ([0, 1, 2, 3], [6, 7, 8]), ([0, 1, 2, 3, 4, 5, 6], [9, 10, 11])]


def test_walk_forward_uneven_blocks_first_blocks_get_the_extra_timestamp():
    t0, t1 = timeline(11, horizon=0)
    folds = WalkForward(n_splits=3).split(t0, t1)  # 11 timestamps into 4 blocks: 3, 3, 3, 2
    assert as_lists(folds) == [
        ([0, 1, 2], [3, 4, 5]),
        ([0, 1, 2, 3, 4, 5], [6, 7, 8]),
        ([0, 1, 2, 3, 4, 5, 6, 7, 8], [9, 10]),
    ]


# ---------------------------------------------------------------- purged K-fold


def test_purged_kfold_exact_with_embargo():
    t0, t1 = timeline(10, horizon=1)
    folds = PurgedKFold(n_splits=5, embargo="1d").split(t0, t1)
    # test block [a, a+1]: drop training t0 in [a-1, a+3] (label reaches a; start <= a+2+1d)
    assert as_lists(folds) == [
        ([4, 5, 6, 7, 8, 9], [0, 1]),
        ([0, 6, 7, 8, 9], [2, 3]),
        ([0, 1, 2, 8, 9], [4, 5]),
        ([0, 1, 2, 3, 4], [6, 7]),
        ([0, 1, 2, 3, 4, 5, 6], [8, 9]),
    ]


def test_purged_kfold_without_embargo_keeps_the_sample_after_the_label_end():
    t0, t1 = timeline(10, horizon=1)
    fold = PurgedKFold(n_splits=5, embargo="0s").split(t0, t1)[2]
    assert fold.train.tolist() == [0, 1, 2, 7, 8, 9]


def test_multi_symbol_samples_sharing_timestamps_stay_together():
    # panel sorted by (symbol, timestamp): A days 0..5 -> rows 0-5, B days 0..5 -> 6-11,
    # C days 1..5 -> 12-16
    days = pd.date_range("2024-01-01", periods=6, freq="D").to_numpy()
    t0 = np.concatenate([days, days, days[1:]])
    t1 = t0 + DAY
    folds = PurgedKFold(n_splits=3).split(t0, t1)
    assert as_lists(folds) == [
        # test days 0-1; drop days 2 (label starts at its end: t0 <= 2) -> train days 3-5
        ([3, 4, 5, 9, 10, 11, 14, 15, 16], [0, 1, 6, 7, 12]),
        # test days 2-3: drop day 1 (label ends on day 2) and day 4 (starts on the last label end)
        ([0, 5, 6, 11, 16], [2, 3, 8, 9, 13, 14]),
        ([0, 1, 2, 6, 7, 8, 12, 13], [4, 5, 10, 11, 15, 16]),
    ]
    for f in folds:
        assert not set(t0[f.train]) & set(t0[f.test])


def test_split_is_invariant_to_sample_order():
    days = pd.date_range("2024-01-01", periods=24, freq="D").to_numpy()
    t0 = np.concatenate([days, days])
    t1 = t0 + np.where(np.arange(48) < 24, 1, 2) * DAY
    perm = np.random.default_rng(0).permutation(48)
    splitter = CombinatorialPurgedCV(n_groups=4, n_test_groups=2, embargo="1d")
    base = splitter.split(t0, t1)
    shuffled = splitter.split(t0[perm], t1[perm])
    for a, b in zip(base, shuffled):
        assert np.array_equal(np.sort(perm[b.train]), a.train)
        assert np.array_equal(np.sort(perm[b.test]), a.test)


def test_tz_aware_and_series_inputs_match_naive_arrays():
    t0, t1 = timeline(10, horizon=1)
    s0 = pd.Series(pd.DatetimeIndex(t0).tz_localize("UTC"))
    s1 = pd.Series(pd.DatetimeIndex(t1).tz_localize("UTC"))
    splitter = PurgedKFold(n_splits=5, embargo="1d")
    assert as_lists(splitter.split(s0, s1)) == as_lists(splitter.split(t0, t1))


# ---------------------------------------------------------------- CPCV


def test_cpcv_exact_folds_and_paths():
    t0, t1 = timeline(10, horizon=1)
    folds = CombinatorialPurgedCV(n_groups=5, n_test_groups=2, embargo="1d").split(t0, t1)
    got = [(f.test_groups, f.train.tolist(), f.test.tolist(), f.test_paths.tolist()) for f in folds]
    assert got == [
        ((0, 1), [6, 7, 8, 9], [0, 1, 2, 3], [0, 0, 0, 0]),
        ((0, 2), [8, 9], [0, 1, 4, 5], [1, 1, 0, 0]),
        ((0, 3), [4], [0, 1, 6, 7], [2, 2, 0, 0]),
        ((0, 4), [4, 5, 6], [0, 1, 8, 9], [3, 3, 0, 0]),
        ((1, 2), [0, 8, 9], [2, 3, 4, 5], [1, 1, 1, 1]),
        # group 2 (days 4-5) sits between test segments 1 and 3: purged and embargoed by both
        ((1, 3), [0], [2, 3, 6, 7], [2, 2, 1, 1]),
        ((1, 4), [0, 6], [2, 3, 8, 9], [3, 3, 1, 1]),
        ((2, 3), [0, 1, 2], [4, 5, 6, 7], [2, 2, 2, 2]),
        ((2, 4), [0, 1, 2], [4, 5, 8, 9], [3, 3, 2, 2]),
        ((3, 4), [0, 1, 2, 3, 4], [6, 7, 8, 9], [3, 3, 3, 3]),
    ]


@pytest.mark.parametrize("n_groups,k", [(6, 2), (5, 3), (4, 1), (7, 3)])
def test_cpcv_counts_and_each_path_covers_every_group_once(n_groups, k):
    t0, t1 = timeline(3 * n_groups, horizon=0)
    splitter = CombinatorialPurgedCV(n_groups=n_groups, n_test_groups=k)
    folds = splitter.split(t0, t1)
    assert len(folds) == math.comb(n_groups, k) == splitter.get_n_splits()
    assert splitter.n_paths == math.comb(n_groups - 1, k - 1)
    groups_of_path = {p: [] for p in range(splitter.n_paths)}
    rows_of_path = {p: [] for p in range(splitter.n_paths)}
    for f in folds:
        group_of_row = np.searchsorted(np.arange(0, 3 * n_groups, 3), f.test, side="right") - 1
        for g in f.test_groups:
            paths = set(f.test_paths[group_of_row == g].tolist())
            assert len(paths) == 1
            groups_of_path[paths.pop()].append(g)
        for p in range(splitter.n_paths):
            rows_of_path[p].extend(f.test[f.test_paths == p].tolist())
    for p in range(splitter.n_paths):
        assert sorted(groups_of_path[p]) == list(range(n_groups))
        assert sorted(rows_of_path[p]) == list(range(3 * n_groups))


# ---------------------------------------------------------------- purge


def test_purge_treats_each_contiguous_test_segment_separately():
    t0, t1 = timeline(10, horizon=1)
    test = np.array([2, 3, 7, 8])
    train = np.setdiff1d(np.arange(10), test)
    # segment [2, 4]: drops 1 (label ends on 2) and 4; segment [7, 9]: drops 6 and 9.
    # Sample 5 sits in the gap and survives (one merged segment would drop it).
    assert purge(train, test, t0, t1, pd.Timedelta(0)).tolist() == [0, 5]
    # a 1-day embargo also drops 5 (it starts on day 4 + 1)
    assert purge(train, test, t0, t1, "1d").tolist() == [0]


def test_purge_drops_positions_that_are_also_test():
    t0, t1 = timeline(10, horizon=0)
    assert purge(np.arange(10), [4, 5], t0, t1, "0s").tolist() == [0, 1, 2, 3, 6, 7, 8, 9]


def test_purge_uses_each_samples_own_label_end():
    t0, _ = timeline(10, horizon=0)
    t1 = t0 + np.array([0, 0, 5, 0, 0, 0, 0, 0, 0, 0]) * DAY  # sample 2 has a 5-day label
    assert purge([0, 1, 2, 3], [6, 7], t0, t1, "0s").tolist() == [0, 1, 3]


# ---------------------------------------------------------------- inner validation slice


def test_inner_validation_split_exact():
    t0, t1 = timeline(10, horizon=1)
    fit, valid = inner_validation_split(np.arange(10), t0, t1, 0.2, pd.Timedelta("1d"))
    assert (fit.tolist(), valid.tolist()) == ([0, 1, 2, 3, 4, 5, 6], [8, 9])
    t0, t1 = timeline(10, horizon=2)
    fit, valid = inner_validation_split(np.arange(10), t0, t1, 0.3, "0s")
    assert (fit.tolist(), valid.tolist()) == ([0, 1, 2, 3, 4], [7, 8, 9])


def test_inner_validation_split_of_a_purged_kfold_fold():
    t0, t1 = timeline(10, horizon=1)
    fold = PurgedKFold(n_splits=5, embargo="1d", valid_fraction=0.4).split(t0, t1)[1]
    assert fold.train.tolist() == [0, 6, 7, 8, 9]
    fit, valid = PurgedKFold(n_splits=5, embargo="1d", valid_fraction=0.4).inner_split(fold, t0, t1)
    assert (fit.tolist(), valid.tolist()) == ([0, 6], [8, 9])


def test_inner_validation_split_multi_symbol_takes_whole_timestamps():
    days = pd.date_range("2024-01-01", periods=6, freq="D").to_numpy()
    t0 = np.concatenate([days, days])
    fit, valid = inner_validation_split(np.arange(12), t0, t0 + DAY, 0.2, "0s")
    assert valid.tolist() == [5, 11]
    assert fit.tolist() == [0, 1, 2, 3, 6, 7, 8, 9]


# ---------------------------------------------------------------- config and errors


@pytest.mark.parametrize(
    "name,cls,n_paths",
    [
        ("walk_forward", WalkForward, 1),
        ("purged_kfold", PurgedKFold, 1),
        ("cpcv", CombinatorialPurgedCV, 5),
    ],
)
def test_make_splitter_from_the_shipped_configs(name, cls, n_paths):
    splitter = make_splitter(OmegaConf.load(CONF / f"{name}.yaml"))
    assert type(splitter) is cls
    assert splitter.n_paths == n_paths
    assert splitter.embargo == pd.Timedelta("1d")
    assert splitter.valid_fraction == 0.2


def expect_error(match, fn, *a, **k):
    with pytest.raises(QuantmlInputError, match=match):
        fn(*a, **k)


def test_fold_too_small_names_the_fold_and_the_fix():
    t0, t1 = timeline(10, horizon=1)
    expect_error(
        r"fold 0 has 1 training samples .*min_train_samples=3.*fewer splits",
        WalkForward(n_splits=4, min_train_samples=3).split,
        t0,
        t1,
    )
    expect_error(
        r"fold 0 has 2 test samples .*min_test_samples=3", WalkForward(n_splits=4, min_test_samples=3).split, t0, t1
    )


def test_config_errors():
    t0, t1 = timeline(10)
    expect_error(r"needs 11 blocks but .* only 10 unique timestamps", WalkForward(n_splits=10).split, t0, t1)
    expect_error(
        r"n_test_groups=3 must be < n_groups=3", make_splitter, {"method": "cpcv", "n_groups": 3, "n_test_groups": 3}
    )
    expect_error(r"method='bagging' is unknown", make_splitter, {"method": "bagging"})
    expect_error(r"method=None is unknown", make_splitter, {"n_splits": 3})
    expect_error(
        r"validation.n_split is not a setting of method=purged_kfold",
        make_splitter,
        {"method": "purged_kfold", "n_split": 3},
    )
    expect_error(
        r"mode=rolling needs validation.train_blocks", make_splitter, {"method": "walk_forward", "mode": "rolling"}
    )
    expect_error(r"train_blocks=2 is only used with mode=rolling", WalkForward, train_blocks=2)
    expect_error(r"mode='sliding' is unknown", WalkForward, mode="sliding")
    expect_error(r"n_splits=1 must be an integer >= 2", PurgedKFold, n_splits=1)
    expect_error(r"n_splits=2.5 must be an integer", WalkForward, n_splits=2.5)


@pytest.mark.parametrize("fraction", [0, 0.6, -0.1, None, "x"])
def test_valid_fraction_outside_range(fraction):
    t0, t1 = timeline(10)
    expect_error(
        r"valid_fraction=.* outside \(0, 0.5\]", make_splitter, {"method": "purged_kfold", "valid_fraction": fraction}
    )
    expect_error(r"valid_fraction=.* outside \(0, 0.5\]", inner_validation_split, np.arange(10), t0, t1, fraction, "0s")


def test_inner_validation_split_too_little_training():
    t0, t1 = timeline(10, horizon=5)
    expect_error(r"fold 7: the training set has 1 timestamp", inner_validation_split, [3], t0, t1, 0.2, "0s", fold_id=7)
    expect_error(r"no training sample is left to fit", inner_validation_split, [0, 1, 2], t0, t1, 0.5, "0s")


@pytest.mark.parametrize(
    "value,expected",
    [
        ("1d", pd.Timedelta(days=1)),
        ("4h", pd.Timedelta(hours=4)),
        ("30min", pd.Timedelta(minutes=30)),
        (0, pd.Timedelta(0)),
        (None, pd.Timedelta(0)),
        (pd.Timedelta("2h"), pd.Timedelta("2h")),
    ],
)
def test_parse_embargo(value, expected):
    assert parse_embargo(value) == expected


@pytest.mark.parametrize(
    "value,match",
    [
        ("1x", "is not a duration"),
        ("soon", "is not a duration"),
        (5, "has no unit"),
        ("-1d", "non-negative"),
    ],
)
def test_bad_embargo(value, match):
    expect_error(f"validation.embargo=.*{match}", make_splitter, {"method": "purged_kfold", "embargo": value})


def test_bad_label_intervals():
    t0, t1 = timeline(10)
    bad = t1.copy()
    bad[3] = np.datetime64("NaT")
    expect_error(r"t1 is NaT at 1 sample\(s\) \(first position 3\).*labelled_rows", PurgedKFold().split, t0, bad)
    bad0 = t0.copy()
    bad0[0] = np.datetime64("NaT")
    expect_error(r"t0 is NaT", purge, [0, 1], [5], bad0, t1, "0s")
    back = t1.copy()
    back[4] = t0[4] - DAY
    expect_error(r"t1 < t0 at 1 sample\(s\) \(first position 4", PurgedKFold().split, t0, back)
    expect_error(r"t0 has 10 rows and t1 has 9", PurgedKFold().split, t0, t1[:9])


def test_describe_fold():
    t0, t1 = timeline(10, horizon=1)
    splitter = WalkForward(n_splits=4, embargo="1d")
    fold = splitter.split(t0, t1)[2]
    fit, valid = splitter.inner_split(fold, t0, t1)
    assert describe_fold(fold, t0, fit, valid) == {
        "fold_id": 2,
        "train_start": "2024-01-01T00:00:00",
        "train_end": "2024-01-03T00:00:00",
        "valid_start": "2024-01-05T00:00:00",
        "valid_end": "2024-01-05T00:00:00",
        "test_start": "2024-01-07T00:00:00",
        "test_end": "2024-01-08T00:00:00",
        "n_train": 3,
        "n_valid": 1,
        "n_test": 2,
    }
