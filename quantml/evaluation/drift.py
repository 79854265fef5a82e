"""Prediction drift: population stability index (PSI) of forecasts between folds.

``PSI = sum_b (c_b - r_b) * ln(c_b / r_b)`` over ``bins`` bins cut at the reference's
quantiles (outer edges open), ``r_b``/``c_b`` the reference/current share of each bin,
floored at ``1e-4`` so an empty bin stays finite. Rule of thumb: < 0.1 stable,
0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, metric_name, require_columns

PSI_FLOOR = 1e-4


def population_stability_index(reference, current, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` (1-D arrays; NaN dropped). NaN when either is empty."""
    if int(bins) < 2:
        raise QuantmlInputError(f"PSI bins={bins} must be >= 2 (10 is the usual choice)")
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cur = np.asarray(current, dtype=np.float64).ravel()
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if not len(ref) or not len(cur):
        return float("nan")
    # inner edges at the reference's quantiles; ties collapse bins instead of making empty ones
    inner = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, int(bins) + 1)[1:-1]))
    r = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1) / len(ref)
    c = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1) / len(cur)
    r, c = np.maximum(r, PSI_FLOOR), np.maximum(c, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def prediction_drift(
    frame: pd.DataFrame, column: str = "expected_return", bins: int = 10, split: str = "test"
) -> pd.DataFrame:
    """PSI of each fold's predictions against the previous fold's, per horizon.

    ``frame``: long prediction frame with ``fold, horizon`` and ``column`` (e.g. the OOS
    frame, or the concatenated test frames). Returns one row per fold (index ``fold``,
    sorted), columns ``<split>_psi/<h>``; the first fold has NaN (no previous fold).
    With CPCV ``path`` duplicates, each (fold, symbol, timestamp) is counted once.
    """
    require_columns(frame, ("fold", "horizon", column), "prediction_drift: the frame", "pass the frame with fold ids")
    df = frame
    if "path" in df.columns and {"symbol", "timestamp"} <= set(df.columns):
        df = df.drop_duplicates(["fold", "horizon", "symbol", "timestamp"])
    folds = sorted(pd.unique(df["fold"]))
    out = pd.DataFrame(index=pd.Index(folds, name="fold"))
    for h in pd.unique(df["horizon"]):
        part = df[df["horizon"] == h]
        values = {f: part.loc[part["fold"] == f, column].to_numpy(np.float64) for f in folds}
        psi = [np.nan] + [
            population_stability_index(values[prev], values[cur], bins) for prev, cur in zip(folds[:-1], folds[1:])
        ]
        out[metric_name(split, "psi", str(h))] = psi
    return out


def fold_drift(
    previous: pd.DataFrame,
    current: pd.DataFrame,
    horizons,
    bins: int = 10,
    column: str = "expected_return",
    split: str = "test",
) -> dict[str, float]:
    """PSI of one fold's ``column`` against the previous fold's, per horizon: ``<split>_psi/<h>``."""
    out = {}
    for h in horizons:
        prev = previous.loc[previous["horizon"] == h, column].to_numpy(np.float64)
        cur = current.loc[current["horizon"] == h, column].to_numpy(np.float64)
        out[metric_name(split, "psi", str(h))] = population_stability_index(prev, cur, bins=bins)
    return out
