"""Residual-gate fusion around a tabular base (ridge, LightGBM): ``y = base(non-text) + g(text
activity) * delta(text)`` for every head.

Fit on a training part (``train`` rows, ``valid`` for the base's early stopping only):

1. the base is fitted on the non-text features (:class:`~quantml.models.fusion.text.TextColumns`);
2. its out-of-fold forecasts over the training part come from the inner cross-fitting utility
   (:func:`quantml.validation.crossfit.crossfit_parts`: ``crossfit_folds`` blocks in time, purged,
   embargoed by ``embargo``, default the longest horizon), each block predicted by a copy of the
   base grown to the base's capacity (scaled to its rows) on the other blocks;
3. the gate and the deltas are fitted jointly on those out-of-fold residuals
   (:func:`~quantml.models.fusion.gate.fit_gated_residual`), with modality dropout: a seeded share
   ``modality_dropout`` of the rows is shown without text (gate held at 0), so the fit never
   counts on text being there; and only kept when, fitted on the earlier residuals, it beats the
   base on a later held-out slice of them, with the content group and gate penalty that slice
   picks (:func:`~quantml.models.fusion.select.select_gated_residual`; ``selection_``).

Heads: expected return ``+ g d_ret``; direction logit ``+ g d_dir``; volatility ``* exp(g d_vol)``;
P10/P50/P90 ``expected + vol * z`` with the base's residual quantiles ``z`` (a base with residual
quantiles), else the base's quantiles shifted by ``g d_ret`` (order kept). A row without text (see
:mod:`~quantml.models.fusion.text`) gets exactly the base's forecast. Without text features at all
(``ablation=no_text``) the gate is held closed and the model *is* the base.

Diagnostics (``Forecast.diagnostics``, [n, H]): ``gate`` (the opening) and ``text_contribution``
(``|g d_ret| / (|base| + |g d_ret|)``, in [0, 1], 0 where both are 0).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, parse_duration
from quantml.models.base import Forecast, Forecaster, PanelData, SampleSet, residual_quantiles, scaled_median_capacity
from quantml.models.fusion.gate import GatedResidual, Standardiser
from quantml.models.fusion.select import content_groups, select_gated_residual
from quantml.models.fusion.text import TextColumns, warn_if_no_text
from quantml.validation.crossfit import crossfit_parts

GATE = "gate"
TEXT_CONTRIBUTION = "text_contribution"
DIAGNOSTICS = (GATE, TEXT_CONTRIBUTION)
_P_FLOOR = 1e-6
_N_BINS = 10


def check_fusion_params(modality_dropout: float, l2: float, gate_penalty: float) -> None:
    if not 0 <= float(modality_dropout) < 1:
        raise QuantmlInputError(f"fusion.modality_dropout must be in [0, 1), got {modality_dropout}; e.g. 0.3")
    if float(l2) < 0 or float(gate_penalty) < 0:
        raise QuantmlInputError(
            f"fusion.l2 and fusion.gate_penalty must be >= 0, got {l2} and {gate_penalty}; e.g. l2=10 gate_penalty=0.05"
        )


def text_contribution(delta: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``|delta| / (|base| + |delta|)`` elementwise, 0 where both are 0 (arrays [n, H])."""
    num = np.abs(delta)
    den = np.abs(base) + num
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def longest_horizon(horizons) -> pd.Timedelta:
    return max(parse_duration(h, "horizon") for h in horizons)


class ResidualGateForecaster(Forecaster):
    """A tabular ``base`` plus a gated text residual (module docstring).

    Parameters
    ----------
    base : an unfitted tabular :class:`Forecaster` (ridge, LightGBM), the configured backbone.
    modality_dropout : share of the residual-fit rows shown without text, in [0, 1).
    l2 : ridge alpha on the delta weights (on the sum of squares); gate_penalty : cost of an open gate (mean opening).
    crossfit_folds : inner cross-fitting blocks (>= 2) for the base's out-of-fold residuals.
    embargo : between the blocks (a duration); None = the longest horizon.
    max_iter : L-BFGS iterations of the gate/delta fit.
    """

    diagnostic_fields = DIAGNOSTICS  # the optional contract columns this model fills

    def __init__(
        self,
        base: Forecaster,
        *,
        modality_dropout: float = 0.3,
        l2: float = 10.0,
        gate_penalty: float = 0.05,
        crossfit_folds: int = 3,
        embargo=None,
        max_iter: int = 200,
    ) -> None:
        super().__init__(base.horizons, base.seed)
        check_fusion_params(modality_dropout, l2, gate_penalty)
        if int(crossfit_folds) < 2:
            raise QuantmlInputError(f"fusion.crossfit_folds must be >= 2, got {crossfit_folds}; e.g. 3")
        self.base = base
        self.modality_dropout, self.l2, self.gate_penalty = float(modality_dropout), float(l2), float(gate_penalty)
        self.crossfit_folds, self.embargo, self.max_iter = int(crossfit_folds), embargo, int(max_iter)

    # ---- delegation -------------------------------------------------------------------------
    @property
    def capacity_grows_with_rows(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.base, "capacity_grows_with_rows", False))

    @property
    def uses_residual_quantiles(self) -> bool:
        return bool(self.base.uses_residual_quantiles)

    @property
    def threads_(self):
        return getattr(getattr(self, "base_", None), "threads_", None)

    def unfitted(self) -> ResidualGateForecaster:
        clone = super().unfitted()
        clone.base = self.base.unfitted()
        return clone

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_view_cache_", None)  # a view of the panel: never part of the model
        return state

    def feature_importance(self) -> pd.Series | None:
        return self.base_.feature_importance() if hasattr(self, "base_") else None

    def run_metrics(self) -> dict[str, float]:
        """The fitted base's metrics for the parent run (the distilled backbone's predict latencies), else none."""
        hook = getattr(getattr(self, "base_", None), "run_metrics", None)
        return dict(hook()) if hook is not None else {}

    def fold_metrics(self, test: SampleSet) -> dict[str, float]:
        """The fitted base's per-fold metrics on the test block it sees (its non-text features), else none."""
        hook = getattr(getattr(self, "base_", None), "fold_metrics", None)
        return dict(hook(self._view(test.data).subset(test.rows))) if hook is not None else {}

    # ---- fit / predict ----------------------------------------------------------------------
    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> ResidualGateForecaster:
        data = train.data
        cols = TextColumns.of(data.feature_names, data.feature_modalities)
        warn_if_no_text(cols)
        self.columns_ = cols
        view = self._view(data)
        fixed = getattr(self, "fixed_capacity", None)
        base = self.base.with_capacity(fixed or None)
        base.fit(view.subset(train.rows), None if valid is None else self._view(valid.data).subset(valid.rows))
        self.base_ = base
        self.capacity_ = dict(getattr(base, "capacity_", None) or {})
        n_a, n_c, H = len(cols.activity), len(cols.content), len(self.horizons)
        self.gate_model_ = GatedResidual.closed(n_a, n_c, H)
        self.activity_scaler_ = Standardiser(np.zeros(n_a), np.zeros(n_a), np.ones(n_a))
        self.content_scaler_ = Standardiser(np.zeros(n_c), np.zeros(n_c), np.ones(n_c))
        self.gate_summary_ = None
        self.selection_ = None  # the held-out check's choice (fusion/select.py), with text
        if cols.has_text:
            self._fit_text(train, view)
        return self

    def _fit_text(self, train: SampleSet, view: PanelData) -> None:
        data, cols = train.data, self.columns_
        rows = np.unique(np.asarray(train.rows, dtype=np.int64))
        embargo = self.embargo if self.embargo is not None else longest_horizon(self.horizons)
        oof = self._oof(view, rows, embargo)
        X = data.X[rows]
        self.activity_scaler_ = Standardiser.fit(X[:, cols.activity])
        self.content_scaler_ = Standardiser.fit(X[:, cols.content])
        A, C = self.activity_scaler_.transform(X[:, cols.activity]), self.content_scaler_.transform(X[:, cols.content])
        avail = cols.available(X)
        keep = np.random.default_rng(self.seed).random(len(rows)) >= self.modality_dropout  # modality dropout
        with np.errstate(divide="ignore", invalid="ignore"):
            rv = np.log(np.where(data.y_vol[rows] > 0, data.y_vol[rows], np.nan)) - np.log(oof.vol_forecast)
        # kept only when it beats the base on a later, purged slice of these residuals (fusion/select.py)
        self.gate_model_, self.selection_ = select_gated_residual(
            A,
            C,
            avail,
            data.y_ret[rows] - oof.expected_return,
            _logit(oof.prob_up),
            data.y_dir[rows],
            rv,
            data.t0[rows],
            data.t1[rows],
            keep,
            l2=self.l2,
            gate_penalty=self.gate_penalty,
            groups=content_groups(cols.names_of("content")),
            max_iter=self.max_iter,
        )
        g = self.gate_model_.gate(A, avail)
        contrib = text_contribution(g[:, None] * self.gate_model_.deltas(C)[0], oof.expected_return)
        self.gate_summary_ = activity_summary(A.mean(axis=1), g, contrib.mean(axis=1), avail)

    def _oof(self, view: PanelData, rows: np.ndarray, embargo) -> Forecast:
        """The base's out-of-fold forecasts over ``rows`` (sorted), from the inner cross-fitting."""
        try:
            parts = crossfit_parts(rows, view.t0, view.t1, self.crossfit_folds, embargo)
        except QuantmlInputError as exc:
            raise QuantmlInputError(f"fusion=residual_gate: the base's out-of-fold residuals: {exc}") from exc
        capacity = self.capacity_
        grows = self.capacity_grows_with_rows
        fields = ("expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast")
        arrays = {f: np.full((len(rows), len(self.horizons)), np.nan) for f in fields}
        for fit_rows, predict_rows in parts:
            cap = scaled_median_capacity([capacity], [len(rows)], len(fit_rows), grows) if capacity else None
            fc = self.base.with_capacity(cap).fit(view.subset(fit_rows), None).predict(view.subset(predict_rows))
            at = np.searchsorted(rows, predict_rows)
            for f in fields:
                arrays[f][at] = getattr(fc, f)
        return Forecast(self.horizons, **arrays)

    def predict(self, data: SampleSet) -> Forecast:
        if not hasattr(self, "base_"):
            raise QuantmlInputError("ResidualGateForecaster is not fitted: call fit(train, valid) first")
        base = self.base_.predict(self._view(data.data).subset(data.rows))
        n, H = len(base), len(self.horizons)
        cols = self.columns_
        if not cols.has_text or n == 0:
            zero = np.zeros((n, H))
            return dataclasses.replace(base, diagnostics={**base.diagnostics, GATE: zero, TEXT_CONTRIBUTION: zero})
        X = data.X
        A = self.activity_scaler_.transform(X[:, cols.activity])
        C = self.content_scaler_.transform(X[:, cols.content])
        g = self.gate_model_.gate(A, cols.available(X))
        gd = g[None, :, None] * self.gate_model_.deltas(C)  # [3, n, H]
        on = np.repeat((g > 0)[:, None], H, axis=1)
        er = np.where(on, base.expected_return + gd[0], base.expected_return)
        prob = np.where(on, _sigmoid(_logit(base.prob_up) + gd[1]), base.prob_up)
        vol = np.where(on, base.vol_forecast * np.exp(gd[2]), base.vol_forecast)
        z = getattr(self.base_, "residual_z_", None)
        if self.uses_residual_quantiles and z is not None:
            q = residual_quantiles(er, vol, z)
        else:
            q = (base.q10 + gd[0], base.q50 + gd[0], base.q90 + gd[0])
        q10, q50, q90 = (np.where(on, qi, bi) for qi, bi in zip(q, (base.q10, base.q50, base.q90)))
        diagnostics = {
            **base.diagnostics,
            GATE: np.repeat(g[:, None], H, axis=1),
            TEXT_CONTRIBUTION: np.where(on, text_contribution(gd[0], base.expected_return), 0.0),
        }
        return Forecast(self.horizons, er, q10, q50, q90, prob, vol, diagnostics=diagnostics)

    def figures(self) -> dict:
        from quantml.models.fusion.figures import gate_figure

        out = dict(self.base_.figures()) if hasattr(self, "base_") else {}
        summary = getattr(self, "gate_summary_", None)
        if summary is not None:
            out["fusion_gate_vs_activity.png"] = gate_figure(summary, type(self.base).__name__)
        return out

    def _view(self, data: PanelData) -> PanelData:
        """``data`` with the non-text features only (cached for the last panel seen)."""
        cached = getattr(self, "_view_cache_", None)
        if cached is not None and cached[0] is data:
            return cached[1]
        cols = getattr(self, "columns_", None)
        if cols is None or list(cols.names) != list(data.feature_names):
            if cols is not None:
                raise QuantmlInputError(
                    f"the panel's features differ from the {len(cols.names)} the fusion model was fitted on; "
                    "use the same feature_set and ablation"
                )
            cols = TextColumns.of(data.feature_names, data.feature_modalities)
        names = [data.feature_names[i] for i in cols.base]
        view = dataclasses.replace(
            data,
            X=data.X[:, cols.base],
            feature_names=names,
            feature_modalities={k: v for k, v in data.feature_modalities.items() if k in set(names)},
            known_future=[f for f in data.known_future if f in set(names)],
        )
        self._view_cache_ = (data, view)
        return view


def activity_summary(activity: np.ndarray, gate: np.ndarray, contribution: np.ndarray, avail: np.ndarray):
    """Per activity decile of the rows with text: mean activity, gate opening and text contribution
    (a DataFrame with columns ``activity, gate, text_contribution, n``), or None without such rows."""
    if not avail.any():
        return None
    a, g, c = activity[avail], gate[avail], contribution[avail]
    edges = np.unique(np.quantile(a, np.linspace(0, 1, _N_BINS + 1)))
    bins = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, max(len(edges) - 2, 0))
    frame = pd.DataFrame({"bin": bins, "activity": a, GATE: g, TEXT_CONTRIBUTION: c})
    out = frame.groupby("bin").agg(
        activity=("activity", "mean"),
        gate=(GATE, "mean"),
        text_contribution=(TEXT_CONTRIBUTION, "mean"),
        n=("activity", "size"),
    )
    return out.reset_index(drop=True)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _P_FLOOR, 1 - _P_FLOOR)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
