"""The inner validation slice must hold enough independent outcomes of the longest horizon."""

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.validation import make_splitter
from quantml.validation.purging import independent_outcomes


def _hourly(n_bars: int, n_symbols: int, horizon_bars: int):
    ts = pd.date_range("2024-01-01", periods=n_bars, freq="h").to_numpy(dtype="datetime64[ns]")
    t0 = np.tile(ts, n_symbols)
    t1 = t0 + np.timedelta64(horizon_bars, "h")
    order = np.argsort(t0, kind="stable")
    return t0[order], t1[order]


def test_independent_outcomes_by_hand():
    # 10 hourly bars x 3 symbols, 4h labels: labels starting at h0, h4, h8 do not overlap -> 3
    t0, t1 = _hourly(10, 3, 4)
    assert independent_outcomes(np.arange(len(t0)), t0, t1) == 3
    # 1h labels: every bar is its own outcome, whatever the number of symbols
    t0, t1 = _hourly(10, 3, 1)
    assert independent_outcomes(np.arange(len(t0)), t0, t1) == 10
    assert independent_outcomes(np.array([], dtype=np.int64), t0, t1) == 0


def test_a_slice_with_too_few_outcomes_names_the_fold_the_count_and_the_fix():
    # 2000 hourly bars, a 7d (168 h) label: fold 0 keeps 232 of its 400 bars, its 46-bar slice holds 1 outcome
    t0, t1 = _hourly(2000, 2, 168)
    cfg = {"method": "walk_forward", "n_splits": 4, "embargo": "1h", "valid_fraction": 0.2, "min_inner_outcomes": 2}
    splitter = make_splitter(cfg)
    folds = splitter.split(t0, t1)
    with pytest.raises(QuantmlInputError, match=r"fold 0: the inner validation slice holds 1 independent outcome"):
        splitter.inner_split(folds[0], t0, t1)
    # the default (1) accepts it
    make_splitter({**cfg, "min_inner_outcomes": 1}).inner_split(folds[0], t0, t1)


def test_zero_length_labels_count_once_per_start():
    t0 = pd.date_range("2024-01-01", periods=5, freq="h").to_numpy(dtype="datetime64[ns]")
    assert independent_outcomes(np.arange(5), t0, t0) == 5
