"""Quant metrics of one horizon's predictions: errors, direction, IC family, calibration, quantiles.

Every function takes plain arrays or a long prediction frame restricted to ONE horizon
(and one CPCV path); :func:`quantml.evaluation.evaluate_predictions` loops over
horizons and paths and names the results. Exact definitions: ``docs/evaluation.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, mean_pinball_loss

from quantml.contracts import IC_MODES, SYMBOL, TIMESTAMP, QuantmlInputError, bar_size

QUANTILES = {"q10": 0.1, "q50": 0.5, "q90": 0.9}
PROB_CLIP = 1e-6
# A correlation needs at least this many finite pairs in its group (timestamp or bucket).
MIN_CS_PAIRS = 3
MIN_TS_PAIRS = 10
# Time-series IC bucket by bar spacing: (largest spacing, pandas period alias).
_TS_BUCKETS = (
    (pd.Timedelta("1h") - pd.Timedelta("1ns"), "D"),  # sub-hourly bars: one day (288 x 5m)
    (pd.Timedelta("1D") - pd.Timedelta("1ns"), "W"),  # 1h..<1d bars: one week (168 x 1h)
    (pd.Timedelta("7D") - pd.Timedelta("1ns"), "M"),  # daily bars: one month (~21 trading days)
)
_TS_BUCKET_COARSE = "Y"  # weekly bars or coarser: one year


def ic_mode_for(n_symbols: int) -> str:
    """``"cross_sectional"`` with 3+ symbols, else ``"time_series"`` (IC within calendar buckets)."""
    return "cross_sectional" if int(n_symbols) >= 3 else "time_series"


def check_ic_mode(ic_mode: str) -> str:
    if ic_mode not in IC_MODES:
        raise QuantmlInputError(
            f"ic_mode={ic_mode!r} is unknown; use one of {IC_MODES} "
            "(quantml.evaluation.ic_mode_for(n_symbols) picks it from the number of symbols)"
        )
    return ic_mode


# ----------------------------------------------------------------------------- regression


def regression_metrics(forecast: np.ndarray, realised: np.ndarray) -> dict[str, float]:
    """``rmse``, ``mae`` of ``forecast`` vs ``realised`` (arrays [n]) over finite pairs."""
    f, r = _finite_pairs(forecast, realised)
    if not len(f):
        return {"rmse": np.nan, "mae": np.nan}
    err = f - r
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def hit_rate(forecast: np.ndarray, realised: np.ndarray) -> float:
    """Share of rows where the forecast's direction ``1[f > 0]`` equals the realised ``1[r > 0]``."""
    f, r = _finite_pairs(forecast, realised)
    return float(np.mean((f > 0) == (r > 0))) if len(f) else np.nan


def average_precision(prob_up: np.ndarray, direction: np.ndarray) -> float:
    """Average precision of ``prob_up`` ranking the up moves (``direction`` 1/0); NaN if one class."""
    p, y = _finite_pairs(prob_up, direction)
    if not len(p) or np.unique(y).size < 2:
        return np.nan
    return float(average_precision_score(y.astype(int), p))


# ----------------------------------------------------------------------------- IC family


def ts_bucket_for(spacing: pd.Timedelta) -> str:
    """Calendar bucket of the time-series IC for a bar spacing: D (<1h), W (<1d), M (<7d), else Y."""
    for upper, alias in _TS_BUCKETS:
        if spacing <= upper:
            return alias
    return _TS_BUCKET_COARSE


def _grouped_corr(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int, min_pairs: int) -> pd.Series:
    """Pearson correlation of finite x, y within each integer ``group`` in ``[0, n_groups)`` (numpy).

    Returns a Series indexed by group id; groups with fewer than ``min_pairs`` pairs or
    (numerically) zero variance are left out.
    """
    n = np.bincount(group, minlength=n_groups).astype(np.float64)
    safe = np.maximum(n, 1.0)
    dx = x - (np.bincount(group, x, n_groups) / safe)[group]
    dy = y - (np.bincount(group, y, n_groups) / safe)[group]
    sxy = np.bincount(group, dx * dy, n_groups)
    sxx = np.bincount(group, dx * dx, n_groups)
    syy = np.bincount(group, dy * dy, n_groups)
    # a constant column leaves float residue after demeaning: compare with the raw scale
    raw_x, raw_y = np.bincount(group, x * x, n_groups), np.bincount(group, y * y, n_groups)
    valid = (n >= min_pairs) & (sxx > 1e-20 * raw_x) & (syy > 1e-20 * raw_y) & (sxx > 0) & (syy > 0)
    ids = np.flatnonzero(valid)
    corr = np.clip(sxy[ids] / np.sqrt(sxx[ids] * syy[ids]), -1.0, 1.0)
    return pd.Series(corr, index=ids)


def ic_series(
    frame: pd.DataFrame,
    ic_mode: str,
    method: str = "pearson",
    forecast: str = "expected_return",
    realised: str = "ret",
    bucket: str | None = None,
) -> pd.Series:
    """The IC time series of one horizon's predictions.

    ``cross_sectional``: one correlation per timestamp across symbols (index: timestamp).
    ``time_series``: one correlation per (symbol, calendar bucket) over the bars of that
    bucket, averaged over symbols per bucket (index: bucket start, UTC). ``method="spearman"``
    ranks forecast and realised within each group first (Rank IC, ties averaged).
    """
    check_ic_mode(ic_mode)
    if method not in ("pearson", "spearman"):
        raise QuantmlInputError(f"IC method={method!r} is unknown; use 'pearson' or 'spearman'")
    df = frame[[SYMBOL, TIMESTAMP, forecast, realised]]
    df = df[np.isfinite(df[forecast].to_numpy(np.float64)) & np.isfinite(df[realised].to_numpy(np.float64))]
    if df.empty:
        return pd.Series(dtype=np.float64)
    if ic_mode == "cross_sectional":
        keys = [df[TIMESTAMP]]
        min_pairs = MIN_CS_PAIRS
    else:
        alias = bucket or ts_bucket_for(bar_size(frame, default=pd.Timedelta("1D")))
        ts = df[TIMESTAMP]
        naive = ts.dt.tz_convert("UTC").dt.tz_localize(None) if ts.dt.tz is not None else ts
        period = naive.dt.to_period(alias).dt.start_time.dt.tz_localize("UTC")
        keys = [period, df[SYMBOL]]
        min_pairs = MIN_TS_PAIRS
    # one integer id per group; the first key (timestamp or bucket) labels the result
    first_codes, first_values = pd.factorize(keys[0], sort=True)
    if len(keys) > 1:
        # the pair as one int64 (a MultiIndex would build a tuple per row): ids in order of first appearance
        second = pd.factorize(keys[1])[0].astype(np.int64)
        group, _ = pd.factorize(first_codes.astype(np.int64) * (int(second.max()) + 1) + second)
    else:
        group = first_codes
    group = np.asarray(group, dtype=np.int64)
    n_groups = int(group.max()) + 1
    group_first = np.zeros(n_groups, dtype=np.int64)
    group_first[group] = first_codes
    x = df[forecast].to_numpy(np.float64)
    y = df[realised].to_numpy(np.float64)
    if method == "spearman":
        tmp = pd.DataFrame({"x": x, "y": y, "g": group})
        grp = tmp.groupby("g", sort=False)
        x = grp["x"].rank(method="average").to_numpy(np.float64)
        y = grp["y"].rank(method="average").to_numpy(np.float64)
    corr = _grouped_corr(x, y, group, n_groups, min_pairs)
    corr.index = pd.Index(first_values.take(group_first[corr.index.to_numpy()]))
    if ic_mode == "time_series":  # average the symbols of each bucket
        corr = corr.groupby(level=0).mean()
    corr.index.name = TIMESTAMP
    return corr.astype(np.float64).sort_index()


def ic_summary(series: pd.Series) -> tuple[float, float]:
    """``(mean, mean / std)`` of an IC series (std with ddof=1; ICIR NaN with < 2 values or std 0)."""
    s = series.dropna().to_numpy(np.float64)
    if not len(s):
        return np.nan, np.nan
    mean = float(np.mean(s))
    if len(s) < 2:
        return mean, np.nan
    std = float(np.std(s, ddof=1))
    return mean, (mean / std if std > 0 else np.nan)


def information_coefficients(frame: pd.DataFrame, ic_mode: str, bucket: str | None = None) -> dict[str, float]:
    """``ic``, ``icir``, ``rank_ic``, ``rank_icir`` of expected_return vs ret for one horizon."""
    ic, icir = ic_summary(ic_series(frame, ic_mode, "pearson", bucket=bucket))
    ric, ricir = ic_summary(ic_series(frame, ic_mode, "spearman", bucket=bucket))
    return {"ic": ic, "icir": icir, "rank_ic": ric, "rank_icir": ricir}


# ----------------------------------------------------------------------------- calibration


def expected_calibration_error(
    prob: np.ndarray, outcome: np.ndarray, bins: int = 10, strategy: str = "uniform"
) -> float:
    """ECE = sum_b (n_b / n) |mean(prob_b) - mean(outcome_b)|.

    ``strategy="uniform"``: ``bins`` equal-width bins on [0, 1] (the last one closed);
    ``"quantile"``: equal-mass bins (the sorted probabilities cut into ``bins`` chunks).
    """
    p, y = _finite_pairs(prob, outcome)
    if not len(p):
        return np.nan
    if strategy == "uniform":
        idx = np.clip((p * bins).astype(int), 0, bins - 1)
    elif strategy == "quantile":
        order = np.argsort(p, kind="stable")
        idx = np.empty(len(p), dtype=int)
        for b, chunk in enumerate(np.array_split(order, bins)):
            idx[chunk] = b
    else:
        raise QuantmlInputError(f"ECE strategy={strategy!r} is unknown; use 'uniform' or 'quantile'")
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    return float(np.sum(np.abs(sum_p - sum_y)) / len(p))


def reliability_table(prob: np.ndarray, outcome: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per equal-width bin: ``count``, mean predicted ``prob`` and observed ``freq`` (empty bins dropped)."""
    p, y = _finite_pairs(prob, outcome)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    df = pd.DataFrame({"bin": idx, "prob": p, "freq": y})
    out = df.groupby("bin").agg(count=("prob", "size"), prob=("prob", "mean"), freq=("freq", "mean"))
    return out.reset_index()


def probability_metrics(prob: np.ndarray, outcome: np.ndarray, bins: int = 10) -> dict[str, float]:
    """``ece`` (equal width), ``ece_mass`` (equal mass), ``brier``, ``log_loss`` of P(up) vs 1[up]."""
    p, y = _finite_pairs(prob, outcome)
    if not len(p):
        return {"ece": np.nan, "ece_mass": np.nan, "brier": np.nan, "log_loss": np.nan}
    p = np.clip(p, PROB_CLIP, 1 - PROB_CLIP)
    y = y.astype(int)
    return {
        "ece": expected_calibration_error(p, y, bins, "uniform"),
        "ece_mass": expected_calibration_error(p, y, bins, "quantile"),
        # the textbook formulas (tests check them against sklearn); sklearn's input checks
        # cost more than the arithmetic when called for every symbol x horizon x fold
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))),
    }


# ----------------------------------------------------------------------------- quantiles


def quantile_metrics(q10: np.ndarray, q50: np.ndarray, q90: np.ndarray, realised: np.ndarray) -> dict[str, float]:
    """Coverage (share of ``realised <= q``; of ``q10 <= realised <= q90`` for ``coverage_80``)
    and pinball loss per quantile (sklearn ``mean_pinball_loss``) plus their mean ``pinball``."""
    arr = np.column_stack([np.asarray(a, dtype=np.float64) for a in (q10, q50, q90, realised)])
    arr = arr[np.isfinite(arr).all(axis=1)]
    keys = [
        "coverage_80",
        "coverage_q10",
        "coverage_q50",
        "coverage_q90",
        "pinball_q10",
        "pinball_q50",
        "pinball_q90",
        "pinball",
    ]
    if not len(arr):
        return dict.fromkeys(keys, np.nan)
    y = arr[:, 3]
    out = {"coverage_80": float(np.mean((arr[:, 0] <= y) & (y <= arr[:, 2])))}
    pinballs = []
    for j, (name, level) in enumerate(QUANTILES.items()):
        out[f"coverage_{name}"] = float(np.mean(y <= arr[:, j]))
        loss = float(mean_pinball_loss(y, arr[:, j], alpha=level))
        out[f"pinball_{name}"] = loss
        pinballs.append(loss)
    out["pinball"] = float(np.mean(pinballs))
    return out


def _finite_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]
