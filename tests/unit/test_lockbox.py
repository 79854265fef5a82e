"""The lockbox's size grammar, its start on a calendar, pinning, and the calendar-anchored fold plan."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.validation import WalkForward
from quantml.validation.lockbox import calendar_of, computed_start, parse_holdout, pinned_start

CAL = calendar_of(pd.date_range("2024-01-01", periods=20, freq="1D", tz="UTC"))


def test_holdout_grammar():
    assert parse_holdout(0.15) == 0.15 and parse_holdout("0.2") == 0.2
    assert parse_holdout("30d") == pd.Timedelta("30D")
    for off in (None, 0, "0", "none", False):
        assert parse_holdout(off) is None
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(QuantmlInputError, match="fraction must lie in"):
            parse_holdout(bad)


def test_start_from_a_fraction_or_a_duration():
    # 20 daily bars: 0.2 keeps the last ceil(4) = 4 bars -> starts at bar 16 (2024-01-17)
    assert computed_start(CAL, 0.2) == pd.Timestamp("2024-01-17", tz="UTC")
    assert computed_start(CAL, 0.01) == pd.Timestamp("2024-01-20", tz="UTC")  # at least one bar
    # 5 days: bars after 2024-01-20 - 5d = 2024-01-15 -> from 2024-01-16
    assert computed_start(CAL, "5d") == pd.Timestamp("2024-01-16", tz="UTC")
    assert computed_start(CAL, 0) is None
    with pytest.raises(QuantmlInputError, match="covers the whole calendar"):
        computed_start(CAL, "400d")


def test_pinned_start_snaps_to_the_next_bar_and_must_leave_development_data():
    assert pinned_start("2024-01-10 12:00", CAL) == pd.Timestamp("2024-01-11", tz="UTC")
    for bad in ("2023-12-01", "2024-02-01"):
        with pytest.raises(QuantmlInputError, match="holdout_start"):
            pinned_start(bad, CAL)
    with pytest.raises(QuantmlInputError, match="not a date"):
        pinned_start("soon", CAL)


def test_fold_plan_is_cut_from_the_calendar_not_the_samples():
    cal = calendar_of(pd.date_range("2024-01-01", periods=40, freq="1D", tz="UTC"))
    splitter = WalkForward(n_splits=3)
    t0 = cal.astype("datetime64[ns]")
    # a 3d label drops the last 3 samples, a 1d label the last one: the blocks are the same
    short, long_ = t0[:-1], t0[:-3]
    f_short = splitter.split(short, short + np.timedelta64(1, "D"), calendar=cal)
    f_long = splitter.split(long_, long_ + np.timedelta64(3, "D"), calendar=cal)
    starts = [pd.Timestamp(b["start"]) for b in splitter.fold_plan(cal)["blocks"]]
    # 40 bars in 4 blocks of 10
    assert starts == [pd.Timestamp(f"2024-{m:02d}-{d:02d}", tz="UTC") for m, d in ((1, 1), (1, 11), (1, 21), (1, 31))]
    assert f_short[0].test.tolist() == f_long[0].test.tolist() == list(range(10, 20))
    assert f_short[2].test.tolist() == list(range(30, 39)) and f_long[2].test.tolist() == list(range(30, 37))
    # without the calendar, the 3d run's blocks would move
    assert splitter.split(long_, long_ + np.timedelta64(3, "D"))[0].test.tolist() != list(range(10, 20))
    assert splitter.fold_plan(cal)["hash"] == WalkForward(n_splits=3, valid_fraction=0.3).fold_plan(cal)["hash"]
    assert splitter.fold_plan(cal)["hash"] != WalkForward(n_splits=4).fold_plan(cal)["hash"]


def test_commands_show_the_lockbox_as_headline_figures_per_horizon():
    from quantml.contracts.metrics import format_lockbox

    lockbox = {
        "holdout_sharpe_after_cost/1d": -1.4567,
        "holdout_rank_ic/1d": -0.00745,
        "holdout_brier/1d": 0.25,
        "holdout_rank_ic/7d": -0.3116,
    }
    assert format_lockbox(lockbox) == "1d: rank_ic -0.00745 sharpe_after_cost -1.457; 7d: rank_ic -0.3116"
    assert format_lockbox({}) == "no lockbox"
