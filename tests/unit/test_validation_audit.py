"""audit_folds: clean on our splitters, and it catches every kind of leak it claims to."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from quantml.contracts import QuantmlInputError
from quantml.validation import Fold, PurgedKFold, WalkForward, audit_folds, make_splitter
from quantml.validation.audit import CHECKS

DAY = np.timedelta64(1, "D")


def panel(n_days: int = 10, symbols=("A",), horizon: int = 1):
    """Keys sorted by (symbol, timestamp) and their label intervals."""
    days = pd.date_range("2024-01-01", periods=n_days, freq="D", tz="UTC")
    keys = pd.DataFrame(
        {
            "symbol": np.repeat(list(symbols), n_days),
            "timestamp": np.tile(days, len(symbols)),
        }
    )
    t0 = keys["timestamp"].dt.tz_localize(None).to_numpy().astype("M8[ns]")
    return keys, t0, t0 + horizon * DAY


def fold(train, test, fold_id=0, paths=None):
    test = np.asarray(test)
    return Fold(fold_id, np.asarray(train), test, np.zeros(len(test), int) if paths is None else np.asarray(paths))


def bad(report):
    return {k: v["count"] for k, v in report["checks"].items() if not v["ok"]}


@pytest.mark.parametrize(
    "cfg",
    [
        {"method": "walk_forward", "n_splits": 4, "mode": "rolling", "train_blocks": 2},
        {"method": "purged_kfold", "n_splits": 4},
        {"method": "cpcv", "n_groups": 5, "n_test_groups": 2},
    ],
)
def test_our_folds_are_clean(cfg):
    keys, t0, t1 = panel(30, symbols=("A", "B", "C"), horizon=2)
    splitter = make_splitter({**cfg, "embargo": "1d", "min_train_samples": 1, "min_test_samples": 1})
    folds = splitter.split(t0, t1)
    report = audit_folds(keys, t0, t1, folds, splitter.embargo, valid_fraction=0.2)
    assert report["clean"] is True
    assert list(report["checks"]) == list(CHECKS)
    assert all(c["count"] == 0 and c["ok"] for c in report["checks"].values())
    assert not report["checks"]["valid_purge"]["detail"].startswith("skipped")


def test_unpurged_fold_is_reported_with_the_exact_count():
    keys, t0, t1 = panel(10)
    # test days 4-5 with 1-day labels and a 1-day embargo: days 3 (label ends on day 4),
    # 6 and 7 (start within [4, 6 + 1d]) leak
    report = audit_folds(keys, t0, t1, [fold([0, 1, 2, 3, 6, 7, 8, 9], [4, 5])], "1d")
    assert report["clean"] is False
    assert bad(report) == {"purge": 3}
    assert "fold 0 train position 3 ('A'" in report["checks"]["purge"]["detail"]
    # the embargo is part of the rule: without it, day 7 no longer leaks
    assert bad(audit_folds(keys, t0, t1, [fold([0, 1, 2, 3, 6, 7, 8, 9], [4, 5])], "0s")) == {"purge": 2}
    # the purged fold is clean
    assert audit_folds(keys, t0, t1, [fold([0, 1, 2, 8, 9], [4, 5])], "1d")["clean"]


def test_a_naive_kfold_on_a_panel_would_be_caught():
    keys, t0, t1 = panel(20, symbols=("A", "B"), horizon=3)
    # scikit-learn's KFold on rows: symbol A's days in one fold, B's same days in another
    folds = [fold(tr, te, i) for i, (tr, te) in enumerate(KFold(4).split(t0))]
    report = audit_folds(keys, t0, t1, folds, "1d")
    assert report["clean"] is False
    counts = bad(report)
    assert counts["timestamp_split"] == 40  # every fold tests 10 days that the other symbol trains on
    assert counts["purge"] > 40
    assert "train_test_overlap" not in counts


def test_train_test_overlap_and_paths():
    keys, t0, t1 = panel(10, horizon=0)
    report = audit_folds(keys, t0, t1, [fold([0, 1, 5], [5, 6])], "0s")
    assert bad(report) == {"train_test_overlap": 1, "timestamp_split": 1, "purge": 1}
    # sample 6 tested twice in path 0
    twice = [fold([0, 1], [5, 6], 0), fold([0, 1], [6, 7], 1)]
    assert bad(audit_folds(keys, t0, t1, twice, "0s")) == {"paths": 1}
    # path 1 misses sample 5
    partial = [fold([0, 1], [5, 6], 0, paths=[0, 0]), fold([0, 1], [6], 1, paths=[1])]
    assert bad(audit_folds(keys, t0, t1, partial, "0s")) == {"paths": 1}


def test_key_problems():
    keys, t0, t1 = panel(6, symbols=("A", "B"))
    folds = PurgedKFold(n_splits=3).split(t0, t1)
    dup = keys.copy()
    dup.loc[1, "timestamp"] = dup.loc[0, "timestamp"]
    assert bad(audit_folds(dup, t0, t1, folds, "0s")) == {"duplicate_keys": 1}
    swapped = keys.copy()
    swapped.loc[[2, 3], "timestamp"] = keys.loc[[3, 2], "timestamp"].to_numpy()
    report = audit_folds(swapped, t0, t1, folds, "0s")
    assert bad(report) == {"time_order": 1}
    assert "'A' at row 3" in report["checks"]["time_order"]["detail"]
    # a time-major panel (timestamp, symbol) is in order; swapping two of B's rows is not
    time_major = keys.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    assert audit_folds(time_major, t0, t1, [], "0s")["checks"]["time_order"]["ok"]
    time_major.loc[[3, 5], "timestamp"] = time_major.loc[[5, 3], "timestamp"].to_numpy()
    report = audit_folds(time_major, t0, t1, [], "0s")
    assert report["checks"]["time_order"]["count"] == 1
    assert "'B' at row 5" in report["checks"]["time_order"]["detail"]


def test_unknown_label_end_counts_and_is_treated_as_open_ended():
    keys, t0, t1 = panel(10, horizon=0)
    t1 = t1.copy()
    t1[1] = np.datetime64("NaT")
    report = audit_folds(keys, t0, t1, [fold([0, 1], [5, 6])], "0s")
    assert bad(report) == {"label_intervals": 1, "purge": 1}


def test_validation_slice_checks():
    keys, t0, t1 = panel(10, horizon=1)
    folds = [fold([0, 1, 2, 3, 4], [6, 7])]
    # a validation slice not taken from the purged training set: day 5's label reaches the
    # test start, and the fit sample of day 4 reaches the validation start
    report = audit_folds(keys, t0, t1, folds, "0s", inner=[([0, 1, 2, 3, 4], [5])])
    assert bad(report) == {"valid_test_overlap": 1, "valid_purge": 1}
    assert audit_folds(keys, t0, t1, folds, "0s", inner=[([0, 1, 2], [4])])["clean"]
    # the embargo applies after the validation slice too: fit day 7 starts within 2 days
    # of the validation label end (day 5)
    folds, inner = [fold([0, 1, 2, 3, 4, 5, 6, 7], [9])], [([0, 1, 2, 7], [4])]
    assert audit_folds(keys, t0, t1, folds, "0s", inner=inner)["clean"]
    assert bad(audit_folds(keys, t0, t1, folds, "2d", inner=inner)) == {"valid_purge": 1}
    # without inner nor valid_fraction the two checks are skipped, and say so
    skipped = audit_folds(keys, t0, t1, folds, "0s")["checks"]["valid_purge"]
    assert skipped == {"ok": True, "count": 0, "detail": "skipped: pass inner=[(fit, valid), ...] or valid_fraction"}


def test_walk_forward_report_is_clean_with_recomputed_validation():
    keys, t0, t1 = panel(20, symbols=("A", "B"))
    splitter = WalkForward(n_splits=3, embargo="1d")
    folds = splitter.split(t0, t1)
    inner = [splitter.inner_split(f, t0, t1) for f in folds]
    assert audit_folds(keys, t0, t1, folds, "1d", inner=inner) == audit_folds(
        keys, t0, t1, folds, "1d", valid_fraction=0.2
    )


def test_bad_inputs():
    keys, t0, t1 = panel(10)
    with pytest.raises(QuantmlInputError, match="keys has 9 rows, t0 10"):
        audit_folds(keys.iloc[:9], t0, t1, [], "0s")
    with pytest.raises(QuantmlInputError, match=r"keys lacks column\(s\) \['symbol'\]"):
        audit_folds(keys.drop(columns="symbol"), t0, t1, [], "0s")
    with pytest.raises(QuantmlInputError, match="inner has 2 .* for 1 folds"):
        audit_folds(keys, t0, t1, [fold([0], [5])], "0s", inner=[([0], [1]), ([0], [1])])
