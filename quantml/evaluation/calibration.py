"""Post-hoc calibration fitted on a fold's calibration part and applied to its test part.

- ``prob_up``: temperature scaling (one temperature ``T`` per horizon minimising the
  log-loss of ``sigmoid(logit(p) / T)``, scipy) or isotonic regression (scikit-learn), or none.
- ``q10`` / ``q90``: split-conformal adjustment in the style of conformalised quantile
  regression (CQR, Romano et al. 2019): conformity scores of the validation residuals
  give the shift that makes the P10-P90 interval cover ``1 - alpha`` of future returns
  (finite-sample corrected quantile). ``asymmetric`` calibrates each tail to ``alpha / 2``
  (so ``coverage_q10`` and ``coverage_q90`` are calibrated too); ``symmetric`` is the
  original CQR with one score ``max(q10 - y, y - q90)``.

- ``q10`` / ``q50`` / ``q90`` of backbones whose quantiles are residual quantiles
  (``expected_return + vol_forecast * z``, ridge and LightGBM by default): ``z`` is refitted
  here, the empirical 10/50/90% quantiles of ``(ret - expected_return) / vol_forecast`` on the
  calibration rows, before the conformal shift is measured. The model's own ``residual_z_``
  stays the fallback (no calibrator, or a horizon with too few rows).

The :class:`Calibrator` is a plain picklable object (it travels inside the pyfunc); one
pickled before residual quantiles existed loads with none.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from quantml.contracts import QuantmlInputError
from quantml.evaluation.evaluate import check_prediction_frame

METHODS = ("temperature", "isotonic", "none")
CONFORMAL_MODES = ("asymmetric", "symmetric")
PROB_CLIP = 1e-6
RESIDUAL_LEVELS = (0.1, 0.5, 0.9)
_VOL_FLOOR = 1e-8
_LOG_T_BOUNDS = (-5.0, 5.0)  # T in [0.0067, 148]


def _opt(cfg, key: str, default):
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


@dataclass
class CalibrationSettings:
    """What :func:`fit_calibrator` reads from ``cfg.evaluation`` (see ``conf/evaluation/default.yaml``)."""

    method: str = "temperature"
    min_samples: int = 50
    conformal: bool = True
    alpha: float = 0.2
    conformal_mode: str = "asymmetric"

    @classmethod
    def build(cls, method: str | None = None, min_samples: int | None = None, conformal=None) -> CalibrationSettings:
        """From the ``evaluation.calibration`` block's keys (its ``_target_``) and the
        ``evaluation.conformal`` block (a mapping ``enabled, alpha, mode`` or a bool)."""
        if isinstance(conformal, bool):  # shorthand: conformal: false
            conformal = {"enabled": conformal}
        out = cls(
            method=str(method if method is not None else cls.method),
            min_samples=int(min_samples if min_samples is not None else cls.min_samples),
            conformal=bool(_opt(conformal, "enabled", cls.conformal)),
            alpha=float(_opt(conformal, "alpha", cls.alpha)),
            conformal_mode=str(_opt(conformal, "mode", cls.conformal_mode)),
        )
        out.validate()
        return out

    @classmethod
    def from_config(cls, cfg_evaluation) -> CalibrationSettings:
        """From ``cfg.evaluation``: its ``calibration`` block is instantiated through its
        ``_target_`` (default :meth:`build`), given the ``conformal`` block."""
        from quantml.contracts.config import build, to_mapping

        cal = _opt(cfg_evaluation, "calibration", None)
        conf = _opt(cfg_evaluation, "conformal", None)
        if isinstance(cal, str):  # shorthand: calibration: isotonic
            cal = {"method": cal}
        if conf is not None and not isinstance(conf, bool):
            conf = to_mapping(conf, "evaluation.conformal")
        return build(
            cal, "evaluation.calibration", "quantml.evaluation.calibration.CalibrationSettings.build", conformal=conf
        )

    def validate(self) -> None:
        if self.method not in METHODS:
            raise QuantmlInputError(f"evaluation.calibration.method={self.method!r} is unknown; use one of {METHODS}")
        if self.conformal_mode not in CONFORMAL_MODES:
            raise QuantmlInputError(
                f"evaluation.conformal.mode={self.conformal_mode!r} is unknown; use one of {CONFORMAL_MODES}"
            )
        if not 0.0 < self.alpha < 1.0:
            raise QuantmlInputError(
                f"evaluation.conformal.alpha={self.alpha} must be in (0, 1); 0.2 targets the 80% P10-P90 interval"
            )
        if self.min_samples < 1:
            raise QuantmlInputError(f"evaluation.calibration.min_samples={self.min_samples} must be >= 1")


def fit_temperature(prob: np.ndarray, outcome: np.ndarray) -> float:
    """The temperature ``T > 0`` minimising the mean log-loss of ``sigmoid(logit(prob) / T)``."""
    z = logit(np.clip(np.asarray(prob, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP))
    y = np.asarray(outcome, dtype=np.float64)

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(loss, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    z = logit(np.clip(np.asarray(prob, dtype=np.float64), PROB_CLIP, 1 - PROB_CLIP))
    return expit(z / temperature)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level) / n`` empirical quantile of ``scores`` (split-conformal, finite-sample)."""
    s = np.array(scores, dtype=np.float64)  # a copy, partitioned in place: the same order statistic as a sort
    n = len(s)
    k = min(math.ceil((n + 1) * level), n) - 1
    s.partition(k)
    return float(s[k])


def horizon_rows(column: pd.Series) -> dict[str, np.ndarray]:
    """``{horizon: boolean mask [n]}`` of a prediction frame's ``horizon`` column, in order of first
    appearance; a categorical column by its codes (no string per row: a large panel's frames are
    tens of millions of rows long)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        order = pd.unique(codes[codes >= 0])
        return {str(column.cat.categories[c]): codes == c for c in order}
    values = column.astype(str).to_numpy()
    return {str(h): values == h for h in pd.unique(values)}


@dataclass
class Calibrator:
    """Per-horizon calibration maps fitted on a validation slice. ``transform`` applies them.

    Attributes
    ----------
    settings : the :class:`CalibrationSettings` used.
    temperature : {horizon: T} (temperature method; 1.0 = identity).
    isotonic : {horizon: fitted IsotonicRegression} (isotonic method).
    shift : {horizon: (lower, upper)} conformal shifts: ``q10 - lower``, ``q90 + upper``.
    n_fit : {horizon: number of validation rows used}.
    fitted : {horizon: False when too few rows (identity maps kept, with a warning)}.
    residual_z : {horizon: (z10, z50, z90)} sorted standardised-residual quantiles; a horizon
        listed here gets ``q = expected_return + vol_forecast * z`` before the conformal shift.
    """

    settings: CalibrationSettings
    temperature: dict[str, float] = field(default_factory=dict)
    isotonic: dict[str, IsotonicRegression] = field(default_factory=dict)
    shift: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_fit: dict[str, int] = field(default_factory=dict)
    fitted: dict[str, bool] = field(default_factory=dict)
    residual_z: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:
        """Unpickle; a calibrator pickled before a field existed gets that field's default."""
        self.__dict__.update(state)
        self.__dict__.setdefault("residual_z", {})

    @property
    def horizons(self) -> list[str]:
        return list(self.n_fit)

    def residual_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Copy of ``frame`` whose ``q10/q50/q90`` are ``expected_return + vol_forecast * z`` for
        the horizons in ``residual_z`` (needs ``expected_return`` and ``vol_forecast`` then)."""
        if not self.residual_z:
            return frame
        return self._rebuild_quantiles(frame.copy(), horizon_rows(frame["horizon"]))

    def _rebuild_quantiles(self, out: pd.DataFrame, rows_of: dict[str, np.ndarray]) -> pd.DataFrame:
        """:meth:`residual_frame` on ``out`` in place (``rows_of``: :func:`horizon_rows` of it)."""
        if not self.residual_z:
            return out
        check_prediction_frame(out, ("horizon", "expected_return", "vol_forecast"), "frame to calibrate")
        er = out["expected_return"].to_numpy(np.float64)
        vol = out["vol_forecast"].to_numpy(np.float64)
        qs = {name: out[name].to_numpy(np.float64).copy() for name in ("q10", "q50", "q90")}
        for h, z in self.residual_z.items():
            rows = rows_of.get(h)
            if rows is None:
                continue
            for name, zq in zip(("q10", "q50", "q90"), np.sort(np.asarray(z, dtype=np.float64))):
                qs[name][rows] = er[rows] + vol[rows] * zq
        for name, values in qs.items():
            out[name] = values
        return out

    def calibrate_prob(self, prob: np.ndarray, horizon: str) -> np.ndarray:
        prob = np.asarray(prob, dtype=np.float64)
        out = prob.copy()
        ok = np.isfinite(prob)
        if self.settings.method == "temperature":
            out[ok] = apply_temperature(prob[ok], self.temperature.get(horizon, 1.0))
        elif self.settings.method == "isotonic" and horizon in self.isotonic:
            out[ok] = self.isotonic[horizon].predict(prob[ok])
        return np.where(ok, np.clip(out, PROB_CLIP, 1 - PROB_CLIP), np.nan)

    def transform(self, frame: pd.DataFrame, copy: bool = True) -> pd.DataFrame:
        """Calibrated copy of a prediction frame (columns ``horizon, prob_up, q10, q50, q90``);
        ``copy=False``: ``frame`` itself calibrated (a caller that owns a long frame saves a copy).

        Keeps the uncalibrated probability in ``prob_up_raw`` (and recalibrates from it when
        present, so a second call does not calibrate twice), replaces ``prob_up``, shifts
        ``q10``/``q90`` by the conformal shifts and keeps ``q10 <= q50 <= q90``; horizons with
        residual quantiles first get their quantiles rebuilt from ``expected_return`` and
        ``vol_forecast``. Apply it once to a frame: the quantile shift is not idempotent.
        """
        check_prediction_frame(frame, ("horizon", "prob_up", "q10", "q50", "q90"), "frame to calibrate")
        unknown = sorted(set(map(str, pd.unique(frame["horizon"]))) - set(self.n_fit))
        if unknown:
            raise QuantmlInputError(
                f"the calibrator was fitted on horizons {self.horizons} but the frame has {unknown}; "
                "fit it on a validation frame with the same horizons"
            )
        rows_of = horizon_rows(frame["horizon"])  # one copy of the frame, whatever the steps
        out = self._rebuild_quantiles(frame.copy() if copy else frame, rows_of)
        raw = (out["prob_up_raw"] if "prob_up_raw" in out.columns else out["prob_up"]).to_numpy(np.float64)
        prob = raw.copy()
        q10 = out["q10"].to_numpy(np.float64).copy()
        q50 = out["q50"].to_numpy(np.float64)
        q90 = out["q90"].to_numpy(np.float64).copy()
        for h in self.n_fit:
            rows = rows_of.get(h)
            if rows is None or not rows.any():
                continue
            prob[rows] = self.calibrate_prob(raw[rows], h)
            lower, upper = self.shift.get(h, (0.0, 0.0))
            q10[rows] = q10[rows] - lower
            q90[rows] = q90[rows] + upper
        out["prob_up_raw"] = raw
        out["prob_up"] = prob
        out["q10"] = np.fmin(q10, q50)
        out["q90"] = np.fmax(q90, q50)
        return out

    def to_dict(self) -> dict:
        """JSON-friendly summary (for MLflow params/artifacts)."""
        return {
            "method": self.settings.method,
            "conformal": self.settings.conformal,
            "alpha": self.settings.alpha,
            "conformal_mode": self.settings.conformal_mode,
            "temperature": dict(self.temperature),
            "shift": {h: list(v) for h, v in self.shift.items()},
            "n_fit": dict(self.n_fit),
            "fitted": dict(self.fitted),
            "residual_z": {h: list(v) for h, v in self.residual_z.items()},
        }


def _numeric_values(column: pd.Series) -> np.ndarray:
    """``column``'s numpy values without a copy where they are plain numbers (else float64, NA as NaN)."""
    if column.dtype.kind in "fiub":
        return column.to_numpy()
    return column.to_numpy(np.float64, na_value=np.nan)


def _finite_rows(columns: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
    """Each of ``columns`` at ``rows`` (int [m]) where every column is finite, as float64 [k]: one column at
    a time, so a horizon's rows of a long frame (7.5M of the 8.4M-row panel's out-of-fold frame) are gathered
    once, without an [m, columns] stack and its filtered copy."""
    ok = np.ones(len(rows), dtype=bool)
    for values in columns:
        ok &= np.isfinite(values[rows])
    keep = rows[ok]
    return [values[keep].astype(np.float64, copy=False) for values in columns]


def fit_calibrator(valid_frame: pd.DataFrame, cfg_evaluation=None, *, residual_quantiles: bool = False) -> Calibrator:
    """Fit a :class:`Calibrator` on calibration-part predictions, per horizon.

    ``valid_frame``: long frame with ``horizon, prob_up, q10, q50, q90, ret, dir`` (rows
    with NaN labels are ignored), plus ``expected_return, vol_forecast`` when
    ``residual_quantiles`` (the backbone's quantiles are residual quantiles: ``z`` is refitted
    here, then the conformal shift is measured on the rebuilt quantiles). A horizon with fewer
    than ``calibration.min_samples`` labelled rows keeps identity maps (and the model's own
    quantiles) and raises a ``UserWarning``.
    """
    settings = CalibrationSettings.from_config(cfg_evaluation)
    check_prediction_frame(valid_frame, ("horizon", "prob_up", "q10", "q50", "q90", "ret", "dir"), "validation frame")
    if residual_quantiles:
        check_prediction_frame(valid_frame, ("expected_return", "vol_forecast"), "validation frame")
    cal = Calibrator(settings)
    prob_col = "prob_up_raw" if "prob_up_raw" in valid_frame.columns else "prob_up"
    extra = ["expected_return", "vol_forecast"] if residual_quantiles else []
    # the columns as they are, each horizon's rows taken from them: no copy of a frame as long as
    # the development samples x horizons (the final model's out-of-fold frame)
    columns = [_numeric_values(valid_frame[c]) for c in (prob_col, "q10", "q90", "ret", "dir", *extra)]
    for h, rows in horizon_rows(valid_frame["horizon"]).items():
        if not rows.any():
            continue
        cols = _finite_rows(columns, np.flatnonzero(rows))
        p, q10, q90, y, d = cols[:5]
        n = len(p)
        cal.n_fit[h] = n
        cal.temperature[h] = 1.0
        cal.shift[h] = (0.0, 0.0)
        if n < settings.min_samples:
            cal.fitted[h] = False
            warnings.warn(
                f"horizon {h}: only {n} labelled validation rows (< evaluation.calibration."
                f"min_samples={settings.min_samples}); calibration left as identity. Use a "
                "larger validation.valid_fraction or lower min_samples",
                UserWarning,
                stacklevel=2,
            )
            continue
        cal.fitted[h] = True
        if residual_quantiles:
            er, vol = cols[5], np.maximum(cols[6], _VOL_FLOOR)
            z = np.sort(np.quantile((y - er) / vol, RESIDUAL_LEVELS))
            cal.residual_z[h] = tuple(float(v) for v in z)
            q10, q90 = er + vol * z[0], er + vol * z[2]
        two_classes = np.unique(d).size == 2
        if settings.method == "temperature" and two_classes:
            cal.temperature[h] = fit_temperature(p, d)
        elif settings.method == "isotonic" and two_classes:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            cal.isotonic[h] = iso.fit(p, d)
        if settings.conformal:
            a = settings.alpha
            if settings.conformal_mode == "asymmetric":
                cal.shift[h] = (conformal_quantile(q10 - y, 1 - a / 2), conformal_quantile(y - q90, 1 - a / 2))
            else:
                q = conformal_quantile(np.maximum(q10 - y, y - q90), 1 - a)
                cal.shift[h] = (q, q)
    if not cal.n_fit:
        raise QuantmlInputError(
            "the validation frame has no rows; the fold's inner validation slice is empty "
            "(raise validation.valid_fraction)"
        )
    return cal
