"""The training reference a version carries for ``quantml monitor``: what "no drift" looks like.

:func:`build_reference` summarises, from development data only (never the lockbox):

- per horizon, the out-of-sample ``expected_return`` and ``prob_up`` as their percentile grid
  (``LEVELS`` = 101 quantiles, 0%..100%), the row count and the effective sample size;
- for the top-k features (by the final model's feature importance, else the first k of the
  contract), the same grid over the training part's rows.

The result is a small JSON-friendly dict (a few KB) stored in the bundle's metadata under
:data:`REFERENCE_KEY`. :func:`reference_sample` turns a grid back into a pseudo-sample (the
inverse CDF at ``REFERENCE_POINTS`` mid-points), which :func:`quantml.evaluation.drift.
population_stability_index` bins at its deciles like any other sample.

:func:`effective_size` is the sample size a check's tolerance is measured on: rows of one
symbol are serially correlated (their integrated autocorrelation time ``tau``, which counts slow
components too) and rows of one bar are correlated across symbols (the design effect
``1 + (m - 1) icc`` of the intra-bar correlation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError

REFERENCE_KEY = "reference"  # bundle metadata key
REFERENCE_VERSION = 1
LEVELS = 101  # quantiles 0, 1, ..., 100 %
REFERENCE_POINTS = 1000  # pseudo-sample size rebuilt from a grid
PREDICTION_COLUMNS = ("expected_return", "prob_up", "vol_forecast")
DEFAULT_TOP_K = 5


def integrated_time(series: list[np.ndarray]) -> float:
    """Integrated autocorrelation time ``tau = 1 + 2 sum_k rho_k`` of one or more series (pooled
    autocovariance of the demeaned series), summed up to Sokal's window (the first lag ``k >= 5 tau(k)``)
    so slow components count, not only the lag-1 correlation. At least 1."""
    series = [np.asarray(x, dtype=np.float64) for x in series if len(x) >= 3]
    if not series:
        return 1.0
    longest = max(len(x) for x in series)
    acov = np.zeros(longest)
    counts = np.zeros(longest)
    mean = np.concatenate(series).mean()
    for x in series:
        d = x - mean
        n = len(d)
        size = 1 << int(np.ceil(np.log2(2 * n)))
        f = np.fft.rfft(d, size)
        ac = np.fft.irfft(f * np.conj(f), size)[:n]
        acov[:n] += ac
        counts[:n] += np.arange(n, 0, -1)
    ok = counts > 0
    acov[ok] /= counts[ok]
    if acov[0] <= 0:
        return 1.0
    rho = acov / acov[0]
    tau = 1.0
    for k in range(1, longest // 2):
        tau += 2.0 * rho[k]
        if k >= 5.0 * tau:
            break
    return float(min(max(tau, 1.0), longest))


def dependence(values, symbols, timestamps) -> tuple[int, float, float, float]:
    """``(n, tau, icc, m)`` of ``values``: rows, integrated autocorrelation time within symbols,
    intra-bar correlation across symbols and mean rows per bar (see :func:`effective_size`)."""
    return _dependence(np.asarray(values, dtype=np.float64), _Layout.of(symbols, timestamps))


class _Layout:
    """Rows' symbols and timestamps as sortable integer codes and their stable ``(symbol, time)``
    order, computed once for every column summarised over the same rows (no string per row)."""

    def __init__(self, symbols: np.ndarray, times: np.ndarray):
        self.symbols, self.times = symbols, times
        self.order = np.lexsort((times, symbols))  # stable: the rows' order within ties is kept

    @classmethod
    def of(cls, symbols, timestamps) -> _Layout:
        return cls(_sortable_codes(symbols), _sortable_codes(timestamps))


def _sortable_codes(values) -> np.ndarray:
    """int64 [n] codes ordered and tied as ``values`` are (categoricals by their categories' strings)."""
    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        values = pd.Categorical(values)
        rank = np.empty(len(values.categories), dtype=np.int64)
        rank[np.argsort(np.asarray(values.categories.astype(str)), kind="stable")] = np.arange(len(rank))
        return rank[values.codes]
    array = np.asarray(values)
    if array.dtype.kind in "Mm":
        return array.view(np.int64)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    return pd.factorize(array, sort=True)[0].astype(np.int64)


def _codes_in_order(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """``(codes [n], names)``: each row's value as a code over the values in order of appearance,
    as strings (a categorical column by its codes: no string per row)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes, seen = pd.factorize(column.cat.codes.to_numpy(), sort=False)
        return codes, [str(column.cat.categories[c]) for c in seen]
    codes, seen = pd.factorize(column.astype(str).to_numpy(), sort=False)
    return codes, [str(x) for x in seen]


def _dependence(values: np.ndarray, layout: _Layout) -> tuple[int, float, float, float]:
    order = layout.order[np.isfinite(values[layout.order])]
    n = len(order)
    if n < 3:
        return n, 1.0, 0.0, 1.0
    v = values[order]
    total = float(np.var(v))
    means = pd.Series(v).groupby(layout.times[order], sort=False).agg(["mean", "size"])
    m = n / len(means)
    if total <= 0:
        return n, 1.0, 0.0, m
    symbols = layout.symbols[order]
    starts = np.flatnonzero(np.diff(symbols)) + 1  # rows are sorted by symbol: one run each
    tau = integrated_time(np.split(v, starts))
    icc = 0.0
    if m > 1.0 + 1e-9:
        between = float(np.average((means["mean"] - v.mean()) ** 2, weights=means["size"]))
        icc = min(max((between - total / m) / (total * (1.0 - 1.0 / m)), 0.0), 1.0)
    return n, tau, icc, m


def window_size(n: int, bars: int, tau: float, icc: float) -> float:
    """Effective size of ``n`` rows over ``bars`` distinct bars (``m = n / bars`` symbols a bar)
    for a quantity whose training dependence was ``tau`` (bars) and ``icc``: ``m / (1 + (m - 1) icc)``
    independent symbols times ``max(1, bars / tau)`` independent stretches of each, at most ``n``."""
    if n <= 0:
        return 0.0
    m = n / max(bars, 1)
    symbols = m / (1.0 + max(m - 1.0, 0.0) * icc)
    return float(min(max(symbols * max(1.0, bars / max(tau, 1.0)), 1.0), n))


def effective_size(values, symbols, timestamps) -> float:
    """Effective number of independent rows of ``values`` (1-D, with each row's symbol and time).

    ``n / ((1 + (m - 1) icc) * tau)``: ``tau`` the integrated autocorrelation time within symbols
    (:func:`integrated_time`), ``m`` the mean rows per timestamp and ``icc`` the share of the
    variance common to a timestamp. NaN rows are dropped; at least 1.0 (0.0 without rows)."""
    return _size(dependence(values, symbols, timestamps))


def _size(dep: tuple[int, float, float, float]) -> float:
    n, tau, icc, m = dep
    if n == 0:
        return 0.0
    if n < 3:
        return float(n)
    deff = (1.0 + (m - 1.0) * icc) * tau
    return float(max(n / deff, 1.0))


def distribution_size(values, symbols, timestamps) -> float:
    """Effective size for a comparison of distributions (PSI): the smaller of the effective sizes of
    the values and of their absolute deviation from the median, so that volatility clustering (a
    week in one volatility regime) counts as dependence too."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if not len(finite):
        return 0.0
    spread = np.abs(v - np.median(finite))
    return min(effective_size(v, symbols, timestamps), effective_size(spread, symbols, timestamps))


def quantile_grid(values) -> list[float] | None:
    """The ``LEVELS`` quantiles of the finite ``values`` (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    return [float(x) for x in np.quantile(v, np.linspace(0.0, 1.0, LEVELS))]


def reference_sample(grid, points: int = REFERENCE_POINTS) -> np.ndarray:
    """A pseudo-sample [points] with the grid's distribution (inverse CDF at mid-points)."""
    q = np.asarray(grid, dtype=np.float64)
    if q.ndim != 1 or len(q) < 2:
        raise QuantmlInputError("a reference grid needs at least 2 quantiles; rebuild the reference")
    levels = np.linspace(0.0, 1.0, len(q))
    return np.interp((np.arange(points) + 0.5) / points, levels, q)


def distribution_dependence(values, symbols, timestamps) -> tuple[float, float]:
    """``(tau, icc)`` for a comparison of distributions: the larger of the values' and of their
    absolute deviations' from the median (volatility clustering counts as dependence)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if not len(finite):
        return 1.0, 0.0
    _, tau_v, icc_v, _ = dependence(v, symbols, timestamps)
    _, tau_s, icc_s, _ = dependence(np.abs(v - np.median(finite)), symbols, timestamps)
    return max(tau_v, tau_s), max(icc_v, icc_s)


def _entry(values, layout: _Layout) -> dict | None:
    """A column's reference entry; the dependence of the values and of their spread computed once
    each (:func:`distribution_size` and :func:`distribution_dependence` read the same two)."""
    v = np.asarray(values, dtype=np.float64)
    grid = quantile_grid(v)
    if grid is None:
        return None
    finite = np.isfinite(v)
    spread = np.abs(v - np.median(v[finite]))
    dep_v, dep_s = _dependence(v, layout), _dependence(spread, layout)
    return {
        "q": grid,
        "n": int(finite.sum()),
        "n_eff": min(_size(dep_v), _size(dep_s)),
        "tau": max(dep_v[1], dep_s[1]),
        "icc": max(dep_v[2], dep_s[2]),
    }


def top_features(feature_names, importance: pd.Series | None, k: int = DEFAULT_TOP_K) -> tuple[list[str], str]:
    """``(names, how)``: the ``k`` most important features (``how="feature_importance"``), else the
    first ``k`` of the contract (``how="first_k"``)."""
    names = list(feature_names)
    if importance is not None and len(importance):
        ranked = [str(f) for f in importance.sort_values(ascending=False, kind="mergesort").index if f in set(names)]
        if ranked:
            return ranked[:k], "feature_importance"
    return names[:k], "first_k"


def build_reference(
    oos: pd.DataFrame,
    features: np.ndarray | None = None,
    feature_names=(),
    keys: pd.DataFrame | None = None,
    importance: pd.Series | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> dict:
    """The reference dict (see the module docstring).

    ``oos``: the run's out-of-sample predictions (``symbol, timestamp, horizon, expected_return,
    prob_up``; development data only). ``features``: float [n, F] training-part feature rows with
    ``keys`` [n] (``symbol, timestamp``) and the ``F`` ``feature_names``; None: no feature entry."""
    if "horizon" not in oos.columns:
        raise QuantmlInputError("build_reference: the OOS frame has no 'horizon' column")
    df = oos
    if "path" in df.columns:  # CPCV: each (symbol, timestamp, horizon) once
        df = df.drop_duplicates([SYMBOL, TIMESTAMP, "horizon"])
    preds: dict[str, dict] = {}
    horizon_codes, horizon_names = _codes_in_order(df["horizon"])
    for code, h in enumerate(horizon_names):
        rows = np.flatnonzero(horizon_codes == code)
        layout = _Layout.of(df[SYMBOL].iloc[rows], df[TIMESTAMP].to_numpy()[rows])
        columns = {col: df[col].to_numpy(np.float64)[rows] for col in PREDICTION_COLUMNS if col in df.columns}
        preds[str(h)] = _prediction_entries(columns, layout)
    feature_layout = None
    if features is not None and keys is not None and len(feature_names):
        feature_layout = _Layout.of(keys[SYMBOL], keys[TIMESTAMP].to_numpy())
    return _assemble(preds, features, feature_names, feature_layout, importance, top_k)


def reference_from_columns(
    predictions: dict[str, dict[str, np.ndarray]],
    symbols,
    timestamps,
    features: np.ndarray | None = None,
    feature_names=(),
    importance: pd.Series | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> dict:
    """:func:`build_reference`'s dict from forecasts over one set of rows, without a long frame.

    ``predictions``: per horizon (in order), its :data:`PREDICTION_COLUMNS` values [n] (absent columns
    skipped); ``symbols``, ``timestamps`` [n]: the rows' keys; ``features``: float [n, F] of the same
    rows (None: no feature entry). The rows' layout is computed once for every horizon and feature."""
    layout = _Layout.of(symbols, timestamps)
    preds = {str(h): _prediction_entries(columns, layout) for h, columns in predictions.items()}
    return _assemble(preds, features, feature_names, layout, importance, top_k)


def _prediction_entries(columns: dict[str, np.ndarray], layout: _Layout) -> dict:
    entry = {}
    for col in PREDICTION_COLUMNS:
        if col in columns:
            e = _entry(columns[col], layout)
            if e is not None:
                entry[col] = e
    return entry


def _assemble(preds: dict, features, feature_names, layout: _Layout | None, importance, top_k: int) -> dict:
    out = {"version": REFERENCE_VERSION, "levels": LEVELS, "predictions": preds, "features": {}, "top_features": []}
    if features is not None and layout is not None and len(feature_names):
        names, how = top_features(feature_names, importance, top_k)
        index = {f: j for j, f in enumerate(feature_names)}
        X = np.asarray(features)
        for name in names:
            e = _entry(X[:, index[name]], layout)
            if e is not None:
                out["features"][name] = e
        out["top_features"] = [n for n in names if n in out["features"]]
        out["feature_ranking"] = how
    return out
