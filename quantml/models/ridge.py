"""Ridge / logistic regression on standardised features: the linear baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from quantml.models.tabular import TabularForecaster, importance_series


class RidgeForecaster(TabularForecaster):
    """Ridge for return and log-vol, L2 logistic regression (C = 1/alpha) for direction.

    Features are median-imputed and standardised with statistics of the training rows only.
    """

    def __init__(self, horizons: list[str], seed: int = 0, alpha: float = 10.0) -> None:
        super().__init__(horizons, seed)
        if alpha <= 0:
            raise ValueError(f"backbone.alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def _prepare(self, X: np.ndarray, fit: bool = False) -> np.ndarray:
        if fit:
            self.scaler_ = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler())
            return self.scaler_.fit_transform(X)
        return self.scaler_.transform(X)

    def _fit_regressor(self, X, y, Xv, yv, key: str):
        return Ridge(alpha=self.alpha).fit(X, y)

    def _fit_classifier(self, X, y, Xv, yv, key: str):
        return LogisticRegression(C=1.0 / self.alpha, max_iter=500).fit(X, y)

    def feature_importance(self) -> pd.Series | None:
        coefs = np.mean([np.abs(m.coef_) for m in self.return_models_], axis=0)
        return importance_series(self.feature_names_, coefs)
