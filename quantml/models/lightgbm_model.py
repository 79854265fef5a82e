"""LightGBM heads with early stopping on the purged validation slice, or a fixed number of trees.

Every head and horizon of one fit trains on ONE binned dataset: the feature matrix is binned
once (:class:`_BinnedRows`) and each head only swaps the label, where LightGBM's scikit-learn
wrappers would re-bin the same matrix for each of the 3 x horizons heads (binning costs about as
much as growing 60 trees). The trees are the scikit-learn wrappers' to the bit (same parameters,
same bins; ``tests/unit/test_models_tabular.py`` checks it).
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from quantml.models.base import Forecast, SampleSet
from quantml.models.tabular import QUANTILE_LEVELS, TabularForecaster, importance_series, row_blocks
from quantml.models.threads import AUTO, resolve_threads


class LightGBMForecaster(TabularForecaster):
    """Gradient-boosted trees per head and horizon (NaN features handled natively).

    ``quantiles="residual"`` derives P10/P50/P90 from vol-standardised residuals (one
    model less per quantile); ``"native"`` fits LightGBM's quantile objective per level
    and sorts the three outputs so they never cross.

    ``n_jobs="auto"`` (the default) trains on this job's share of the CPUs the process may use
    (:func:`quantml.models.threads.resolve_threads`: divided by the jobs a launcher runs side by
    side), ``-1`` on every one, an int on that many; the count used is ``threads_`` after fit.
    ``deterministic`` with ``force_row_wise`` makes the trees the same for a seed whatever the
    thread count, so ``n_jobs`` changes the speed, never the numbers.
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
        n_jobs: int | str = AUTO,
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
            random_state=self.seed,
            verbose=-1,
            # same trees for a seed whatever n_jobs: LightGBM needs both for that
            deterministic=True,
            force_row_wise=True,
        )
        resolve_threads(n_jobs)  # refuse a bad value when the config is built, not at fit
        self.n_jobs = n_jobs
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

    def _fit_matrix(self, part: SampleSet) -> RowBlocks:
        """``part``'s rows as views of the panel's matrix where they run consecutively: LightGBM bins
        a list of blocks as it bins one matrix (the same sampled rows, the same bins), so a fit never
        copies its training rows (the final model's: the whole development matrix). A warm start
        reads a copy: LightGBM predicts the source's init scores on one matrix."""
        if getattr(self, "init_models", None):
            return part.X
        return RowBlocks(row_blocks(part.data.X, part.rows))

    def _stops(self, Xv, yv) -> bool:
        return not (Xv is None or yv is None or not self.early_stopping_rounds or self._fixed() is not None)

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
        extra.setdefault("objective", "regression")
        extra.setdefault("metric", extra["objective"])  # the wrappers' default: the objective's own loss
        return self._train(X, y, Xv, yv, key, extra, metric, floor=key.startswith("return/"))

    def _fit_classifier(self, X, y, Xv, yv, key: str):
        extra = {"objective": "binary", "metric": "auc" if self.direction_stop_metric == "auc" else "binary_logloss"}
        if yv is not None and len(np.unique(yv)) < 2:
            yv = None
        return self._train(X, y, Xv, yv, key, extra, None, floor=False, classifier=True)

    def _train(self, X, y, Xv, yv, key: str, extra: dict, metric, floor: bool, classifier: bool = False):
        """One head grown on the fit's shared bins: ``extra`` holds objective and metric (and a
        quantile's alpha), ``metric`` a custom early-stopping metric ``(y_true, y_pred)``."""
        params = {**self.params, **self._trees(key), **extra}
        rounds = params.pop("n_estimators")
        params["num_threads"] = self.threads_
        bins = self._bins(X, Xv)
        kwargs = {}
        if self._stops(Xv, yv):
            kwargs = {
                "valid_sets": [bins.valid_with(yv)],
                "valid_names": ["valid_0"],
                "callbacks": [self._stopper(floor)],
            }
            if metric is not None:
                kwargs["feval"] = lambda preds, data: metric(data.get_label(), preds)
        init = (getattr(self, "init_models", None) or {}).get(key)
        booster = lgb.train(params, bins.train_with(y), num_boost_round=rounds, init_model=init, **kwargs)
        if init is not None:  # the source's trees come first: capacity_ counts only the new ones
            self.__dict__.setdefault("init_trees_", {})[key] = int(init.current_iteration())
        return _Head(booster, classifier)

    def warm_from(self, source: LightGBMForecaster) -> LightGBMForecaster:
        """Start each head of the next fits from ``source``'s booster of the same key (``return/1d``,
        ``direction/1d``, ...: ``lgb.train(..., init_model=booster)``); a head the source lacks
        (a constant one-class direction head, a native quantile head of a residual source) grows
        from scratch. Kept by :meth:`with_capacity`; ``capacity_`` counts only the new trees."""
        if not isinstance(source, LightGBMForecaster):
            raise TypeError(f"a LightGBM backbone warm-starts from a LightGBM model, not {type(source).__name__}")
        self.init_models = source.head_boosters()
        return self

    def head_boosters(self) -> dict[str, lgb.Booster]:
        """``{head key: booster}`` of a fitted model (the keys of ``capacity_``)."""
        return {key: m.booster_ for key, m in self._named_heads()}

    def _named_heads(self) -> list[tuple[str, object]]:
        """``(head key, trained head)`` for every head grown by LightGBM (a constant one-class
        direction head is none)."""
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
        return [(key, m) for key, m in named if hasattr(m, "booster_")]

    def _bins(self, X, Xv) -> _BinnedRows:
        """The fit's binned rows (built on the first head, reused by the others)."""
        cached = self.__dict__.get("_binned")
        if getattr(self, "init_models", None):
            # a warm start sets each head's init score from its source booster on the dataset itself,
            # which a head without a source must not inherit: bins per head
            cached = None
        if cached is None or cached.X is not X or (Xv is not None and cached.Xv is not Xv):
            cached = _BinnedRows(X, Xv, {k: v for k, v in self.params.items() if k != "n_estimators"}, self.threads_)
            self.__dict__["_binned"] = cached
        return cached

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> LightGBMForecaster:
        """Fit every head; with ``valid`` each early-stops on it, unless a fixed capacity is set
        (:meth:`with_capacity`): then head ``key`` grows ``capacity[key]`` trees (a head missing
        from the capacity grows ``n_estimators``) and ``valid`` only measures the residual quantiles."""
        self.__dict__.pop("quantile_models_", None)  # a refit must not read the last fit's heads
        self.__dict__.pop("init_trees_", None)
        self.threads_ = resolve_threads(getattr(self, "n_jobs", -1))
        train, valid = in_matrix_order(train), None if valid is None else in_matrix_order(valid)
        # the early-stopping rows' timestamps, for the cross-sectional rank metric (fit-time only)
        self.stop_times_ = None if valid is None else valid.data.t0[valid.rows]
        try:
            super().fit(train, valid)
            self._fit_native_quantiles(train, valid)
        finally:
            self.__dict__.pop("stop_times_", None)
            self.__dict__.pop("_binned", None)  # the bins are fit-time only: never pickled
        return self

    def _fit_native_quantiles(self, train: SampleSet, valid: SampleSet | None) -> None:
        if self.quantiles == "native":
            has_valid = valid is not None and len(valid)
            binned = self.__dict__.get("_binned")  # the heads' bins: the quantile heads reuse them
            X = binned.X if binned is not None else self._fit_matrix(train)
            Xv = (binned.Xv if binned is not None else self._fit_matrix(valid)) if has_valid else None
            self.quantile_models_ = [
                [
                    self._fit_regressor(
                        X,
                        np.nan_to_num(train.data.y_ret[train.rows, j]),
                        Xv,
                        np.nan_to_num(valid.data.y_ret[valid.rows, j]) if has_valid else None,
                        key=f"q{round(100 * a)}/{h}",
                        objective="quantile",
                        alpha=a,
                    )
                    for a in QUANTILE_LEVELS
                ]
                for j, h in enumerate(self.horizons)
            ]
            self.capacity_ = self._capacity()

    @property
    def uses_residual_quantiles(self) -> bool:
        return self.quantiles == "residual"

    def _capacity(self) -> dict[str, int]:
        """Trees per head and horizon: the best iteration where a head early-stopped, else the
        trees it grew (a constant one-class direction head has no entry)."""
        init = getattr(self, "init_trees_", None) or {}
        return {key: max(1, _trees_used(m) - init.get(key, 0)) for key, m in self._named_heads()}

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


def in_matrix_order(part: SampleSet) -> SampleSet:
    """``part`` with its rows in the matrix's order (sorted positions). Samples come in time order, the
    matrix is symbol-major: in time order no two rows are adjacent, so :func:`row_blocks` would copy
    every one (the final model's fit: the whole development matrix). The order of a fit's rows carries
    nothing for the trees (bins are built from, and bags drawn by, the seed's row sample; the
    early-stopping metrics group by timestamp), so the trees are those of an equally valid draw."""
    rows = np.asarray(part.rows)
    if len(rows) < 2 or bool(np.all(rows[1:] > rows[:-1])):
        return part
    return part.data.subset(np.sort(rows))


class RowBlocks:
    """A fit's feature rows as a list of ``[rows_b, F]`` blocks (:func:`~quantml.models.tabular.row_blocks`)."""

    def __init__(self, blocks: list[np.ndarray]) -> None:
        self.blocks = blocks
        self.n_rows = sum(len(b) for b in blocks)

    def __len__(self) -> int:
        return self.n_rows


def _lgb_data(X):
    return X.blocks if isinstance(X, RowBlocks) else X


class _BinnedRows:
    """One fit's feature matrix binned once (and its early-stopping rows on the same bins): each
    head sets its label on the constructed datasets instead of binning the matrix again."""

    def __init__(self, X: np.ndarray, Xv: np.ndarray | None, params: dict, threads: int) -> None:
        self.X, self.Xv = X, Xv
        params = {**params, "num_threads": threads}
        self.train = lgb.Dataset(_lgb_data(X), label=np.zeros(len(X)), params=params, free_raw_data=False).construct()
        self.valid = None
        if Xv is not None:
            self.valid = lgb.Dataset(
                _lgb_data(Xv), label=np.zeros(len(Xv)), reference=self.train, params=params, free_raw_data=False
            ).construct()

    def train_with(self, y: np.ndarray) -> lgb.Dataset:
        self.train.set_label(y)
        return self.train

    def valid_with(self, yv: np.ndarray) -> lgb.Dataset:
        self.valid.set_label(yv)
        return self.valid


class _Head:
    """A trained head: the booster with the scikit-learn wrappers' reading of it (``predict``, a
    classifier's ``predict_proba``, ``booster_``, ``best_iteration_``, ``best_score_``), so models
    pickled with the wrappers and these read alike."""

    def __init__(self, booster: lgb.Booster, classifier: bool) -> None:
        self.booster_ = booster
        self.best_iteration_ = int(booster.best_iteration or 0)
        self.best_score_ = {name: dict(scores) for name, scores in (booster.best_score or {}).items()}
        self.classifier = classifier

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster_.predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.booster_.predict(X)
        return np.column_stack([1.0 - p, p])


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
