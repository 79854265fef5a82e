"""A Forecaster wrapper that turns the raw text towers into per-fold latent features.

``TextLatentForecaster(inner, k)``: ``fit(train, valid)`` fits a :class:`~quantml.features.text.TowerReducer`
on the TRAINING rows of the side matrices only (``train.data.side``: ``text_post``, ``text_comment``, sparse
``[n, n_hash]``), maps every row of the panel to ``k`` latents per tower (``text_post_lat_*``,
``text_comment_lat_*``, modality ``text``) appended to ``X``, and fits ``inner`` on that panel. ``predict``
does the same with the saved reducer; a panel without side matrices (serving without the raw stream) gets
latents 0. Folds, the final model, cross-fitting, capacity and the bundle see an ordinary Forecaster.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from quantml.features.text.reducer import TowerReducer
from quantml.features.text.towers import TOWERS
from quantml.models.base import Forecast, Forecaster, PanelData, SampleSet

MODALITY = "text"


def has_text_side(data: PanelData | None) -> bool:
    """True when ``data`` carries the text towers' side matrices."""
    side = getattr(data, "side", None) or {}
    return all(t in side for t in TOWERS)


def with_latents(data: PanelData, reducer: TowerReducer) -> PanelData:
    """``data`` with the reducer's latents of every row appended to ``X`` (float32 [n, F + k * towers]),
    ``feature_names`` and ``feature_modalities`` extended; the side matrices are kept."""
    latents = reducer.transform(getattr(data, "side", None) or None, data.n_rows)
    names = reducer.names
    return replace(
        data,
        X=np.hstack([np.asarray(data.X, dtype=np.float32), latents]),
        feature_names=[*data.feature_names, *names],
        feature_modalities={**data.feature_modalities, **{n: MODALITY for n in names}},
    )


class TextLatentForecaster(Forecaster):
    """``inner`` fitted on the features plus per-fold text latents (module docstring).

    ``inner``: an unfitted Forecaster (the template; each fit fits a copy, ``model_``); ``k``: latents per
    tower (``data.text.latent_dim``). Fitted: ``reducer_`` (its ``components_``), ``model_``.
    """

    def __init__(self, inner: Forecaster, k: int = 16, seed: int = 0) -> None:
        super().__init__(inner.horizons, seed)
        self.inner = inner
        self.k = int(k)
        self.capacity_grows_with_rows = bool(getattr(inner, "capacity_grows_with_rows", False))
        TowerReducer(self.k, self.seed)  # checks k

    # -- the per-fold reducer -------------------------------------------------------------------------
    def _augment(self, data: PanelData) -> PanelData:
        cache = self.__dict__.get("cache_")
        if cache is not None and cache[0] is data:
            return cache[1]
        out = with_latents(data, self.reducer_)
        self.cache_ = (data, out)  # fit and the predicts of one fold read one panel: map it once
        return out

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> TextLatentForecaster:
        self.cache_ = None
        self.reducer_ = TowerReducer(self.k, self.seed).fit(train.data.side, train.rows)
        self.model_ = self.inner.unfitted()
        aug = self._augment(train.data)
        valid_aug = None
        if valid is not None:
            valid_aug = SampleSet(
                aug if valid.data is train.data else with_latents(valid.data, self.reducer_), valid.rows
            )
        self.model_.fit(SampleSet(aug, train.rows), valid_aug)
        self.capacity_ = dict(getattr(self.model_, "capacity_", None) or {})
        if getattr(self.model_, "threads_", None):
            self.threads_ = self.model_.threads_
        return self

    def predict(self, data: SampleSet) -> Forecast:
        return self.model_.predict(SampleSet(self._augment(data.data), data.rows))

    # -- delegation: capacity, quantiles, importance, figures, pickling ------------------------------
    def with_capacity(self, capacity) -> TextLatentForecaster:
        clone = self.unfitted()
        clone.inner = self.inner.with_capacity(capacity)
        clone.fixed_capacity = clone.inner.fixed_capacity
        return clone

    def warm_from(self, source) -> TextLatentForecaster:
        """Warm-start the inner backbone from ``source`` (its ``model_`` when it is a text wrapper too)."""
        self.inner.warm_from(source.model_ if isinstance(source, TextLatentForecaster) else source)
        return self

    @property
    def uses_residual_quantiles(self) -> bool:
        model = self.__dict__.get("model_") or self.inner
        return bool(model.uses_residual_quantiles)

    def feature_importance(self):
        model = self.__dict__.get("model_")
        return None if model is None else model.feature_importance()

    def figures(self) -> dict:
        model = self.__dict__.get("model_")
        return {} if model is None else model.figures()

    def fold_metrics(self, test: SampleSet) -> dict[str, float]:
        """The inner model's per-fold metrics on the test block with its latents (the distilled model's)."""
        model = self.__dict__.get("model_")
        if model is None or not hasattr(model, "fold_metrics"):
            return {}
        return model.fold_metrics(SampleSet(self._augment(test.data), test.rows))

    def __getattr__(self, name: str):
        """Any other attribute (hooks such as ``run_metrics``, ``cross_sectional``, ``checkpoint_in``) is the
        fitted inner model's, else the template's."""
        if name.startswith("__") or name in ("inner", "model_", "reducer_", "cache_"):
            raise AttributeError(name)
        for holder in ("model_", "inner"):
            target = self.__dict__.get(holder)
            if target is not None and hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("cache_", None)  # a whole panel: never pickled into the bundle
        return state
