"""LightGBM heads with early stopping on the purged validation slice, or a fixed number of trees."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from quantml.models.base import Forecast, SampleSet
from quantml.models.tabular import QUANTILE_LEVELS, TabularForecaster, importance_series


class LightGBMForecaster(TabularForecaster):
    """Gradient-boosted trees per head and horizon (NaN features handled natively).

    ``quantiles="residual"`` derives P10/P50/P90 from vol-standardised residuals (one
    model less per quantile); ``"native"`` fits LightGBM's quantile objective per level
    and sorts the three outputs so they never cross.

    ``n_jobs=-1`` (the default) trains on every core of the machine. ``deterministic`` with
    ``force_row_wise`` makes the trees the same for a seed whatever the thread count, so
    ``n_jobs`` changes the speed, never the numbers.
    """

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int = 30,
        quantiles: str = "residual",
        n_jobs: int = -1,
        return_stop_metric: str = "l2",
        direction_stop_metric: str = "logloss",
        min_rounds: float = 0.0,
    ) -> None:
        super().__init__(horizons, seed)
        if quantiles not in ("residual", "native"):
            raise ValueError(f"backbone.quantiles must be 'residual' or 'native', got {quantiles!r}")
        self.params = dict(
            n_estimators=int(n_estimators),
            learning_rate=float(learning_rate),
            num_leaves=int(num_leaves),
            min_child_samples=int(min_child_samples),
            subsample=float(subsample),
            subsample_freq=1,
            colsample_bytree=float(colsample_bytree),
            reg_lambda=float(reg_lambda),
            n_jobs=int(n_jobs),
            random_state=self.seed,
            verbose=-1,
            # same trees for a seed whatever n_jobs: LightGBM needs both for that
            deterministic=True,
            force_row_wise=True,
        )
        self.early_stopping_rounds = int(early_stopping_rounds)
        self.quantiles = quantiles
        if return_stop_metric not in RETURN_STOP_METRICS:
            raise ValueError(
                f"backbone.return_stop_metric must be one of {RETURN_STOP_METRICS}, got {return_stop_metric!r}"
            )
        if direction_stop_metric not in DIRECTION_STOP_METRICS:
            raise ValueError(
                f"backbone.direction_stop_metric must be one of {DIRECTION_STOP_METRICS}, got {direction_stop_metric!r}"
            )
        self.return_stop_metric = return_stop_metric
        if float(min_rounds) < 0:
            raise ValueError(f"backbone.min_rounds={min_rounds} must be >= 0 (in units of 1 / learning_rate trees)")
        self.min_rounds = float(min_rounds)
        self.direction_stop_metric = direction_stop_metric

    capacity_grows_with_rows = True  # trees at a fixed learning rate: see Forecaster

    def _prepare(self, X: np.ndarray, fit: bool = False) -> np.ndarray:
        return X

    def _stops(self, Xv, yv) -> bool:
        return not (Xv is None or yv is None or not self.early_stopping_rounds or self._fixed() is not None)

    def _fit_kwargs(self, Xv, yv, eval_metric=None, floor: bool = False) -> dict:
        if not self._stops(Xv, yv):
            return {}
        kwargs = {
            "eval_X": (Xv,),
            "eval_y": (yv,),
            "callbacks": [self._stopper(floor)],
        }
        if eval_metric is not None:
            kwargs["eval_metric"] = eval_metric
        return kwargs

    def _stopper(self, floored: bool):
        floor = int(np.ceil(self.min_rounds / self.params["learning_rate"] - 1e-9)) if floored else 0
        if floor <= 1:  # LightGBM's own callback: the numbers of every earlier version
            return lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False)
        return _floored_early_stopping(self.early_stopping_rounds, min(floor, self.params["n_estimators"]))

    def _fixed(self) -> dict[str, int] | None:
        return getattr(self, "fixed_capacity", None)

    def _trees(self, key: str) -> dict:
        """``n_estimators`` of head ``key``: the fixed capacity's when set (else the configured one)."""
        fixed = self._fixed()
        return {} if fixed is None or key not in fixed else {"n_estimators": int(fixed[key])}

    def _fit_regressor(self, X, y, Xv, yv, key: str, **extra):
        metric = None
        if key.startswith("return/") and self.return_stop_metric == "rank_ic" and self._stops(Xv, yv):
            extra = {**extra, "metric": "None"}  # early-stop on the rank metric alone
            metric = rank_ic_metric(getattr(self, "stop_times_", None), len(yv))
        model = lgb.LGBMRegressor(**{**self.params, **self._trees(key)}, **extra)
        return model.fit(X, y, **self._fit_kwargs(Xv, yv, metric, floor=key.startswith("return/")))

    def _fit_classifier(self, X, y, Xv, yv, key: str):
        extra = {"metric": "auc"} if self.direction_stop_metric == "auc" else {}
        model = lgb.LGBMClassifier(**{**self.params, **self._trees(key)}, **extra)
        if yv is not None and len(np.unique(yv)) < 2:
            yv = None
        return model.fit(X, y, **self._fit_kwargs(Xv, yv))

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> LightGBMForecaster:
        """Fit every head; with ``valid`` each early-stops on it, unless a fixed capacity is set
        (:meth:`with_capacity`): then head ``key`` grows ``capacity[key]`` trees (a head missing
        from the capacity grows ``n_estimators``) and ``valid`` only measures the residual quantiles."""
        self.__dict__.pop("quantile_models_", None)  # a refit must not read the last fit's heads
        # the early-stopping rows' timestamps, for the cross-sectional rank metric (fit-time only)
        self.stop_times_ = None if valid is None else valid.data.t0[valid.rows]
        try:
            super().fit(train, valid)
        finally:
            self.__dict__.pop("stop_times_", None)
        if self.quantiles == "native":
            has_valid = valid is not None and len(valid)
            self.quantile_models_ = [
                [
                    self._fit_regressor(
                        train.X,
                        np.nan_to_num(train.y_ret[:, j]),
                        valid.X if has_valid else None,
                        np.nan_to_num(valid.y_ret[:, j]) if has_valid else None,
                        key=f"q{round(100 * a)}/{h}",
                        objective="quantile",
                        alpha=a,
                    )
                    for a in QUANTILE_LEVELS
                ]
                for j, h in enumerate(self.horizons)
            ]
            self.capacity_ = self._capacity()
        return self

    @property
    def uses_residual_quantiles(self) -> bool:
        return self.quantiles == "residual"

    def _capacity(self) -> dict[str, int]:
        """Trees per head and horizon: the best iteration where a head early-stopped, else the
        trees it grew (a constant one-class direction head has no entry)."""
        quantile_models = getattr(self, "quantile_models_", None)
        named = []
        for j, h in enumerate(self.horizons):
            named += [
                (f"return/{h}", self.return_models_[j]),
                (f"direction/{h}", self.direction_models_[j]),
                (f"vol/{h}", self.vol_models_[j]),
            ]
            if quantile_models is not None:
                named += [(f"q{round(100 * a)}/{h}", m) for a, m in zip(QUANTILE_LEVELS, quantile_models[j])]
        return {key: _trees_used(m) for key, m in named if hasattr(m, "booster_")}

    def _forecast(self, X: np.ndarray) -> Forecast:
        fc = super()._forecast(X)
        if self.quantiles == "native" and hasattr(self, "quantile_models_"):
            for j, models in enumerate(self.quantile_models_):
                q = np.sort(np.column_stack([m.predict(X) for m in models]), axis=1)
                fc.q10[:, j], fc.q50[:, j], fc.q90[:, j] = q[:, 0], q[:, 1], q[:, 2]
        return fc

    def feature_importance(self) -> pd.Series | None:
        gains = np.mean(
            [m.booster_.feature_importance("gain") for m in self.return_models_ if hasattr(m, "booster_")], axis=0
        )
        return importance_series(self.feature_names_, gains)


RETURN_STOP_METRICS = ("l2", "rank_ic")
DIRECTION_STOP_METRICS = ("logloss", "auc")


def rank_ic_metric(times: np.ndarray | None, n: int):
    """A LightGBM ``eval_metric`` (higher is better): the mean over timestamps of the Spearman
    correlation across symbols between forecast and target on the early-stopping rows — what a
    cross-sectional book trades. ``times``: the timestamp of each of the ``n`` rows (None: one
    group). A timestamp whose forecasts all tie counts as 0 (no ranking); with fewer than two
    rows per timestamp on average (time-series mode, one symbol) it is the Pearson correlation
    over time instead."""
    codes = np.zeros(n, dtype=np.int64) if times is None else pd.factorize(np.asarray(times))[0]
    sizes = np.bincount(codes)
    cross = len(sizes) and (sizes >= 2).sum() and n / len(sizes) >= 2

    def group_rank(v: np.ndarray) -> np.ndarray:
        return pd.Series(v).groupby(codes).rank(method="average").to_numpy()

    def demeaned(v: np.ndarray) -> np.ndarray:
        return v - (np.bincount(codes, v) / sizes)[codes]

    ry = None

    def metric(y_true: np.ndarray, y_pred: np.ndarray):
        nonlocal ry
        if not cross:
            a, b = y_pred - y_pred.mean(), y_true - y_true.mean()
            den = float(np.sqrt((a * a).sum() * (b * b).sum()))
            return "rank_ic", float((a * b).sum() / den) if den > 0 else 0.0, True
        if ry is None:
            ry = demeaned(group_rank(np.asarray(y_true, dtype=np.float64)))
        rp = demeaned(group_rank(np.asarray(y_pred, dtype=np.float64)))
        num = np.bincount(codes, rp * ry)
        den = np.sqrt(np.bincount(codes, rp * rp) * np.bincount(codes, ry * ry))
        ok = sizes >= 2
        ic = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        return "rank_ic", float(ic[ok].mean()), True

    return metric


def _floored_early_stopping(patience: int, floor: int):
    """Early stopping on the first metric whose best iteration is searched from tree ``floor`` on
    (the trees before it always grow) and which stops ``patience`` trees after the best."""
    state: dict = {}

    def callback(env) -> None:
        _, _, score, higher = env.evaluation_result_list[0][:4]
        i = env.iteration - env.begin_iteration + 1  # trees grown so far
        if i >= floor:
            better = "best" not in state or (score > state["best"] if higher else score < state["best"])
            if better:
                state.update(best=score, it=env.iteration, result=list(env.evaluation_result_list))
            if env.iteration - state["it"] >= patience or env.iteration == env.end_iteration - 1:
                raise lgb.callback.EarlyStopException(state["it"], state["result"])

    callback.order = 30
    return callback


def _trees_used(model) -> int:
    """The best iteration of an early-stopped LightGBM model, else the number of trees it grew."""
    best = getattr(model, "best_iteration_", None)
    if best:
        return int(best)
    return max(1, int(model.booster_.current_iteration()))
