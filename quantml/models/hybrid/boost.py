"""Stage 2 of the hybrid (``residual_boost: true``): LightGBM on stage 1's out-of-fold residuals.

Inside the training part, :func:`quantml.validation.crossfit.crossfit` cuts the rows into purged,
embargoed blocks in time; each block's stage-1 outputs come from a stage-1 model fitted on the other
blocks (the same number of epochs as the fold's stage 1), so the residuals ``y_ret - baseline`` the
trees learn are out of sample. The trees read the row's own features and its stage-1 outputs; at
prediction the boosted baseline is ``baseline + trees(features, stage-1 outputs)`` of the fold's stage 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.validation.crossfit import crossfit

BOOST_DEFAULTS = dict(
    n_estimators=150,
    learning_rate=0.05,
    num_leaves=15,
    min_child_samples=50,
    subsample=0.8,
    subsample_freq=1,
    colsample_bytree=0.8,
    reg_lambda=1.0,
)
_ROW = "_row"


class ResidualBoost:
    """One LightGBM regressor per horizon. ``boosters_``: H fitted regressors; ``capacity_``:
    ``{"boost/<h>": trees}``."""

    def __init__(self, horizons: list[str], seed: int = 0, n_blocks: int = 3, embargo=0, **params) -> None:
        unknown = sorted(set(params) - set(BOOST_DEFAULTS))
        if unknown:
            raise QuantmlInputError(
                f"backbone.boost_kwargs.{unknown[0]} is not a setting of the residual boost; its settings are "
                f"{sorted(BOOST_DEFAULTS)}"
            )
        self.horizons, self.seed, self.n_blocks, self.embargo = list(horizons), int(seed), int(n_blocks), embargo
        self.params = {**BOOST_DEFAULTS, **params}

    def fit(
        self,
        rows: np.ndarray,
        t0: np.ndarray,
        t1: np.ndarray,
        outputs_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
        inputs_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
        y_ret: np.ndarray,
        trees: dict | None = None,
    ) -> ResidualBoost:
        """Fit on the out-of-fold residuals of ``rows``.

        ``outputs_of(fit_rows, predict_rows)`` -> stage-1 outputs [len(predict_rows), k] of a stage 1
        fitted on ``fit_rows``, whose last ``H`` columns are the baseline (return units);
        ``inputs_of(rows, outputs)`` -> the trees' inputs [len(rows), m]; ``y_ret`` [n, H] (panel rows);
        ``trees``: a fixed number of trees per horizon (``{"boost/<h>": n}``) instead of the default.
        """
        import lightgbm as lgb

        H = len(self.horizons)

        def fit_predict(fit_rows: np.ndarray, predict_rows: np.ndarray) -> pd.DataFrame:
            out = outputs_of(fit_rows, predict_rows)
            frame = pd.DataFrame(out, columns=[f"s{i}" for i in range(out.shape[1])])
            frame[_ROW] = predict_rows
            return frame

        oof = crossfit(rows, t0, t1, fit_predict, self.n_blocks, self.embargo).sort_values(_ROW, kind="stable")
        oof_rows = oof[_ROW].to_numpy(np.int64)
        outputs = oof[[c for c in oof.columns if c.startswith("s")]].to_numpy(np.float64)
        inputs = inputs_of(oof_rows, outputs)
        residual = y_ret[oof_rows] - outputs[:, -H:]
        self.boosters_ = []
        self.capacity_ = {}
        for j, h in enumerate(self.horizons):
            ok = np.isfinite(residual[:, j])
            n_trees = int((trees or {}).get(f"boost/{h}", self.params["n_estimators"]))
            model = lgb.LGBMRegressor(
                **{**self.params, "n_estimators": n_trees},
                random_state=self.seed,
                n_jobs=1,
                deterministic=True,
                force_row_wise=True,
                verbose=-1,
            )
            model.fit(inputs[ok], residual[ok, j])
            self.boosters_.append(model)
            self.capacity_[f"boost/{h}"] = n_trees
        self.n_oof_ = len(oof_rows)
        return self

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The residual forecasts [n, H] of the trees' ``inputs`` [n, m]."""
        if not len(inputs):
            return np.zeros((0, len(self.horizons)))
        return np.stack([b.predict(inputs) for b in self.boosters_], axis=1)
