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

    capacity_grows_with_rows = True  # trees at a fixed learning rate: see Forecaster

    def _prepare(self, X: np.ndarray, fit: bool = False) -> np.ndarray:
        return X

    def _fit_kwargs(self, Xv, yv) -> dict:
        if Xv is None or yv is None or not self.early_stopping_rounds or self._fixed() is not None:
            return {}
        return {
            "eval_X": (Xv,),
            "eval_y": (yv,),
            "callbacks": [lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        }

    def _fixed(self) -> dict[str, int] | None:
        return getattr(self, "fixed_capacity", None)

    def _trees(self, key: str) -> dict:
        """``n_estimators`` of head ``key``: the fixed capacity's when set (else the configured one)."""
        fixed = self._fixed()
        return {} if fixed is None or key not in fixed else {"n_estimators": int(fixed[key])}

    def _fit_regressor(self, X, y, Xv, yv, key: str, **extra):
        model = lgb.LGBMRegressor(**{**self.params, **self._trees(key)}, **extra)
        return model.fit(X, y, **self._fit_kwargs(Xv, yv))

    def _fit_classifier(self, X, y, Xv, yv, key: str):
        model = lgb.LGBMClassifier(**{**self.params, **self._trees(key)})
        if yv is not None and len(np.unique(yv)) < 2:
            yv = None
        return model.fit(X, y, **self._fit_kwargs(Xv, yv))

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> LightGBMForecaster:
        """Fit every head; with ``valid`` each early-stops on it, unless a fixed capacity is set
        (:meth:`with_capacity`): then head ``key`` grows ``capacity[key]`` trees (a head missing
        from the capacity grows ``n_estimators``) and ``valid`` only measures the residual quantiles."""
        self.__dict__.pop("quantile_models_", None)  # a refit must not read the last fit's heads
        super().fit(train, valid)
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


def _trees_used(model) -> int:
    """The best iteration of an early-stopped LightGBM model, else the number of trees it grew."""
    best = getattr(model, "best_iteration_", None)
    if best:
        return int(best)
    return max(1, int(model.booster_.current_iteration()))
