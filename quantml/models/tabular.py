"""Tabular backbones: the last-step feature vector -> one model per head and horizon.

Heads per horizon: expected return (regression on the forward return), direction
(classifier on 1[ret > 0]), volatility (regression on log realised vol), and
P10/P50/P90 from the empirical quantiles of the vol-standardised residuals, measured
on the validation slice when there is one (out-of-sample residuals), else on train. In the
pipeline the calibrator refits those quantiles on a disjoint calibration part
(:class:`quantml.evaluation.calibration.Calibrator`); ``residual_z_`` is the fallback.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Iterator

import numpy as np
import pandas as pd

from quantml.models.base import Forecast, Forecaster, SampleSet, residual_quantiles

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
_VOL_FLOOR = 1e-8
# rows forecast at a time: predicting a large part (the final model's development samples) never
# copies more of the feature matrix, nor holds more float64 outputs, than this many rows' worth
PREDICT_CHUNK_ROWS = 1 << 18


class TabularForecaster(Forecaster):
    """Shared fit/predict for backbones that see one feature row per sample."""

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> TabularForecaster:
        X, Xv = self._prepare(self._fit_matrix(train), fit=True), None
        if valid is not None and len(valid):
            Xv = self._prepare(self._fit_matrix(valid))
        self.return_models_, self.direction_models_, self.vol_models_ = [], [], []
        for j, h in enumerate(self.horizons):
            y_ret, y_dir, y_logvol = _targets(train, j)
            v = _targets(valid, j) if Xv is not None else None
            self.return_models_.append(self._fit_regressor(X, y_ret, Xv, v and v[0], key=f"return/{h}"))
            self.direction_models_.append(self._fit_direction(X, y_dir, Xv, v and v[1], key=f"direction/{h}"))
            self.vol_models_.append(self._fit_regressor(X, y_logvol, Xv, v and v[2], key=f"vol/{h}"))
        self.residual_z_ = self._residual_z(valid if Xv is not None else train)
        self.feature_names_ = list(train.data.feature_names)
        self.capacity_ = self._capacity()
        return self

    @property
    def uses_residual_quantiles(self) -> bool:
        """P10/P50/P90 come from the vol-standardised residual quantiles ``residual_z_``."""
        return True

    def _capacity(self) -> dict[str, int]:
        """``capacity_`` after fit: ``{}`` (a backbone with iterations overrides it)."""
        return {}

    def _fit_matrix(self, part: SampleSet):
        """What a fit reads ``part``'s features from: ``part.X`` (a copy of its rows), unless a
        backbone reads them without one (LightGBM: :func:`row_blocks`)."""
        return part.X

    def predict(self, data: SampleSet) -> Forecast:
        """Forecasts of ``data``'s rows, :data:`PREDICT_CHUNK_ROWS` rows at a time (row by row the
        same numbers: every head forecasts each row on its own)."""
        chunks = (
            self._forecast(self._prepare(data.data.X[data.rows[i : i + PREDICT_CHUNK_ROWS]]))
            for i in range(0, max(len(data), 1), PREDICT_CHUNK_ROWS)
        )
        return joined_forecasts(chunks, len(data))

    def _forecast(self, X: np.ndarray) -> Forecast:
        n, H = len(X), len(self.horizons)
        er, pu, vol = np.zeros((n, H)), np.zeros((n, H)), np.zeros((n, H))
        for j in range(H):
            er[:, j] = self.return_models_[j].predict(X)
            pu[:, j] = _predict_proba(self.direction_models_[j], X)
            vol[:, j] = np.exp(self.vol_models_[j].predict(X))
        z = getattr(self, "residual_z_", np.tile(np.array([[-1.2816], [0.0], [1.2816]]), (1, H)))
        q10, q50, q90 = residual_quantiles(er, vol, z)
        return Forecast(self.horizons, er, q10, q50, q90, pu, vol)

    def _residual_z(self, data: SampleSet) -> np.ndarray:
        """The vol-standardised return residuals' P10/P50/P90 per horizon [3, H] on ``data``, forecast
        :data:`PREDICT_CHUNK_ROWS` rows at a time keeping only the residuals [n, H]: the final model
        (``data``: every development sample) never holds its whole forecast."""
        resid = np.empty((len(data), len(self.horizons)))
        for i in range(0, len(data), PREDICT_CHUNK_ROWS):
            rows = data.rows[i : i + PREDICT_CHUNK_ROWS]
            fc = self._forecast(self._prepare(data.data.X[rows]))
            resid[i : i + len(rows)] = (data.data.y_ret[rows] - fc.expected_return) / np.maximum(
                fc.vol_forecast, _VOL_FLOOR
            )
        z = np.zeros((3, len(self.horizons)))
        for j in range(len(self.horizons)):
            r = resid[:, j][np.isfinite(resid[:, j])]
            z[:, j] = np.quantile(r, QUANTILE_LEVELS) if len(r) else (-1.2816, 0.0, 1.2816)
        return z

    def _fit_direction(self, X, y, Xv, yv, key: str):
        classes = np.unique(y)
        if len(classes) < 2:  # one-sided training fold: a constant probability is all we can say
            return _ConstantProbability(float(classes[0]) if len(classes) else 0.5)
        return self._fit_classifier(X, y, Xv, yv, key=key)

    @abstractmethod
    def _prepare(self, X: np.ndarray, fit: bool = False) -> np.ndarray:
        """Turn raw features [n, F] into model inputs; ``fit`` learns any statistics."""

    @abstractmethod
    def _fit_regressor(self, X, y, Xv, yv, key: str):
        """A fitted regressor with ``predict``; ``key`` names the head in ``capacity_`` (``"return/1d"``)."""

    @abstractmethod
    def _fit_classifier(self, X, y, Xv, yv, key: str):
        """A fitted binary classifier with ``predict_proba``; ``key`` as for :meth:`_fit_regressor`."""


class _ConstantProbability:
    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([np.full(len(X), 1 - self.p), np.full(len(X), self.p)])


def joined_forecasts(parts: Iterator[Forecast], n: int) -> Forecast:
    """Row chunks' forecasts (the same horizons, in row order, ``n`` rows in all) as one
    :class:`Forecast`, each chunk written into the whole arrays as it comes: never the chunks and
    their concatenation at once."""
    first = next(parts)
    if len(first.expected_return) == n:
        return first
    fields = ("expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast")
    joined = {name: np.empty((n, *getattr(first, name).shape[1:])) for name in fields}
    diagnostics = {name: np.empty((n, *v.shape[1:])) for name, v in first.diagnostics.items()}
    start = 0
    for part in itertools.chain([first], parts):
        stop = start + len(part.expected_return)
        for name in fields:
            joined[name][start:stop] = getattr(part, name)
        for name in diagnostics:
            diagnostics[name][start:stop] = part.diagnostics[name]
        start = stop
    return Forecast(first.horizons, **joined, diagnostics=diagnostics)


def row_blocks(X: np.ndarray, rows: np.ndarray, min_run: int = 1024, gather: int = 1 << 16) -> list[np.ndarray]:
    """``X[rows]`` (``X`` [n, F] C-contiguous, ``rows`` sorted int positions) as a list of row blocks
    in order, without copying runs: each run of at least ``min_run`` consecutive positions is a view
    of ``X``; the rows between such runs are gathered into copies of up to ``gather`` rows.
    ``np.concatenate(row_blocks(X, rows))`` equals ``X[rows]``."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return [X[rows]]
    starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)
    ends = np.append(starts[1:], len(rows))
    blocks, pending = [], []

    def flush() -> None:
        while pending:
            taken = np.concatenate(pending)
            pending.clear()
            for i in range(0, len(taken), gather):
                blocks.append(X[taken[i : i + gather]])

    for a, b in zip(starts.tolist(), ends.tolist()):
        if b - a >= min_run:
            flush()
            blocks.append(X[rows[a] : rows[a] + (b - a)])
        else:
            pending.append(rows[a:b])
    flush()
    return blocks


def _predict_proba(model, X: np.ndarray) -> np.ndarray:
    return model.predict_proba(X)[:, 1]


def _targets(data: SampleSet, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizon ``j``'s targets of ``data``'s rows [n] (only that column gathered, not [n, H])."""
    rows = data.rows
    y_ret = np.nan_to_num(data.data.y_ret[rows, j])
    y_dir = np.nan_to_num(data.data.y_dir[rows, j]).astype(int)
    y_logvol = np.log(np.maximum(np.nan_to_num(data.data.y_vol[rows, j]), _VOL_FLOOR))
    return y_ret, y_dir, y_logvol


def importance_series(names: list[str], values: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=float), index=names).sort_values(ascending=False)
