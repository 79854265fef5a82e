"""Time-respecting split of out-of-sample predictions: tune on earlier folds, select on later ones.

When the folds' test periods are disjoint in time (walk-forward, purged K-fold) the
cut is at the start of a fold: the first ``ceil(tune_fraction * n_folds)`` folds (by start
time, at least one and at most ``n_folds - 1``) are for tuning. Otherwise (CPCV, whose
folds interleave) the cut is at the ``tune_fraction`` quantile of the OOS timestamps.
Either way every tuning bar is earlier than every selection bar. (``holdout`` names the
lockbox, which this split never touches.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts import TIMESTAMP, QuantmlInputError


@dataclass(frozen=True)
class TimeSplit:
    """``cutoff``: first selection timestamp; ``method``: "folds" or "time"."""

    cutoff: pd.Timestamp
    method: str
    tune_folds: tuple[int, ...]
    selection_folds: tuple[int, ...]


def time_split(frame: pd.DataFrame, tune_fraction: float = 0.6) -> TimeSplit:
    """Choose the tuning / selection boundary of an OOS prediction frame (see module doc)."""
    if not 0 < tune_fraction < 1:
        raise QuantmlInputError(f"split.tune_fraction={tune_fraction} must be in (0, 1), e.g. 0.6")
    ts = pd.DatetimeIndex(frame[TIMESTAMP])
    folds = (
        frame.groupby("fold")[TIMESTAMP].agg(["min", "max"]).sort_values("min")
        if "fold" in frame.columns
        else pd.DataFrame()
    )
    disjoint = len(folds) >= 2 and bool((folds["min"].to_numpy()[1:] > folds["max"].to_numpy()[:-1]).all())
    if disjoint:
        k = min(max(math.ceil(tune_fraction * len(folds)), 1), len(folds) - 1)
        cutoff = pd.Timestamp(folds["min"].iloc[k])
        order = [int(f) for f in folds.index]
        return TimeSplit(cutoff, "folds", tuple(order[:k]), tuple(order[k:]))
    uniq = np.sort(ts.unique())
    if len(uniq) < 4:
        raise QuantmlInputError(
            f"only {len(uniq)} distinct OOS timestamps: too few to tune and select; "
            "run quantml train on a longer history"
        )
    cut_idx = min(max(int(round(tune_fraction * len(uniq))), 1), len(uniq) - 1)
    cutoff = pd.Timestamp(uniq[cut_idx])
    fold_ids = sorted(frame["fold"].unique()) if "fold" in frame.columns else []
    tune = tuple(int(f) for f in fold_ids if (frame.loc[frame["fold"] == f, TIMESTAMP] < cutoff).all())
    hold = tuple(int(f) for f in fold_ids if (frame.loc[frame["fold"] == f, TIMESTAMP] >= cutoff).all())
    return TimeSplit(cutoff, "time", tune, hold)
