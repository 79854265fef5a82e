"""Inner cross-fitting (quantml.validation.crossfit): exact (fit, predict) positions, skfolio style."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.validation import CROSSFIT_BLOCK, crossfit, crossfit_parts


def panel_times(n_days: int, n_symbols: int = 2, label_days: int = 1):
    """Positions time-major: day k holds positions k*n_symbols ... ; labels end ``label_days`` later."""
    days = pd.date_range("2024-01-01", periods=n_days, freq="D").to_numpy(dtype="datetime64[ns]")
    t0 = np.repeat(days, n_symbols)
    return t0, t0 + np.timedelta64(label_days, "D")


def as_lists(parts):
    return [(fit.tolist(), pred.tolist()) for fit, pred in parts]


def test_blocks_are_purged_of_labels_reaching_into_them():
    # 6 days x 2 symbols, 3 blocks of 2 days; a label of day k ends on day k + 1
    t0, t1 = panel_times(6)
    parts = crossfit_parts(np.arange(12), t0, t1, n_blocks=3, embargo=0)
    assert as_lists(parts) == [
        ([6, 7, 8, 9, 10, 11], [0, 1, 2, 3]),  # day 2 starts on block 0's last label end: purged
        ([0, 1, 10, 11], [4, 5, 6, 7]),  # day 1 ends in the block, day 4 starts on its last label end
        ([0, 1, 2, 3, 4, 5], [8, 9, 10, 11]),  # day 3's label ends on day 4, the block's first day
    ]


def test_embargo_drops_labels_starting_within_it_after_the_block():
    t0, t1 = panel_times(6)
    parts = crossfit_parts(np.arange(12), t0, t1, n_blocks=3, embargo="1d")
    assert as_lists(parts) == [
        ([8, 9, 10, 11], [0, 1, 2, 3]),  # days 2 and 3 start within [.., day 2 + 1d]
        ([0, 1], [4, 5, 6, 7]),  # days 4 and 5 embargoed after the block, day 1 purged before it
        ([0, 1, 2, 3, 4, 5], [8, 9, 10, 11]),  # nothing after the last block: the embargo drops nothing
    ]


def test_uneven_blocks_follow_array_split_and_a_subset_of_positions():
    # 7 days, 1 symbol, point labels (t1 = t0): blocks of 3, 2, 2 days; nothing to purge
    t0, t1 = panel_times(7, n_symbols=1, label_days=0)
    parts = crossfit_parts(np.arange(7), t0, t1, n_blocks=3, embargo=0)
    assert as_lists(parts) == [
        ([3, 4, 5, 6], [0, 1, 2]),
        ([0, 1, 2, 5, 6], [3, 4]),
        ([0, 1, 2, 3, 4], [5, 6]),
    ]
    # positions are a part of a larger sample set, unsorted and with a duplicate
    t0, t1 = panel_times(10, n_symbols=1, label_days=0)
    parts = crossfit_parts([9, 2, 4, 6, 8, 4], t0, t1, n_blocks=2, embargo=0)
    assert as_lists(parts) == [([8, 9], [2, 4, 6]), ([2, 4, 6], [8, 9])]


def test_crossfit_concatenates_out_of_fold_outputs_in_block_order():
    t0, t1 = panel_times(6)
    seen = []

    def fit_predict(fit, predict):
        seen.append((fit.tolist(), predict.tolist()))
        assert not np.isin(predict, fit).any()
        return pd.DataFrame({"position": predict, "n_fit": len(fit)})

    out = crossfit(np.arange(12), t0, t1, fit_predict, n_blocks=3, embargo=0)
    assert seen == as_lists(crossfit_parts(np.arange(12), t0, t1, 3, 0))
    assert out["position"].tolist() == list(range(12))
    assert out["n_fit"].tolist() == [6] * 4 + [4] * 4 + [6] * 4
    assert out[CROSSFIT_BLOCK].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert out.index.tolist() == list(range(12))


def test_crossfit_accepts_any_row_layout_per_block():
    # e.g. one row per (position, horizon): the utility does not count rows
    t0, t1 = panel_times(4, n_symbols=1, label_days=0)
    out = crossfit(np.arange(4), t0, t1, lambda fit, pred: {"p": np.tile(pred, 2)}, n_blocks=2, embargo=0)
    assert out["p"].tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    assert out[CROSSFIT_BLOCK].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_tz_aware_times_give_the_same_parts():
    t0, t1 = panel_times(6)
    aware = pd.DatetimeIndex(t0).tz_localize("UTC"), pd.DatetimeIndex(t1).tz_localize("UTC")
    assert as_lists(crossfit_parts(np.arange(12), *aware, 3, "1d")) == as_lists(
        crossfit_parts(np.arange(12), t0, t1, 3, "1d")
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_blocks=1), "n_blocks >= 2"),
        (dict(n_blocks=2.0), "n_blocks >= 2"),
        (dict(n_blocks=7), "cannot make 7 blocks"),
        (dict(n_blocks=2, embargo="10d"), "no sample to fit on"),
    ],
)
def test_bad_input_names_the_fix(kwargs, message):
    t0, t1 = panel_times(6)
    args = {"embargo": 0, **kwargs}
    with pytest.raises(QuantmlInputError, match=message):
        crossfit_parts(np.arange(12), t0, t1, **args)


def test_unknown_label_ends_and_out_of_range_positions_are_refused():
    t0, t1 = panel_times(6)
    t1 = t1.copy()
    t1[3] = np.datetime64("NaT")
    with pytest.raises(QuantmlInputError, match="NaT"):
        crossfit_parts(np.arange(12), t0, t1, 3, 0)
    with pytest.raises(QuantmlInputError, match="outside"):
        crossfit_parts([0, 12], *panel_times(6), 2, 0)
