"""Combiners: the Z-layer's models over the experts' out-of-fold forecasts (config group ``combiner``).

Every combiner builds both heads: ``expected_return`` (the return head, from the experts'
``expected_return``) and ``prob_up`` (the direction head, from the experts' ``prob_up``). It is fitted
on rows of one horizon of the OOF table and predicts rows of the same horizon::

    comb = RidgeLogistic(alpha=1.0, C=1.0).fit(fit_rows, ["e0", "e1"])
    out = comb.predict(test_rows, ["e0", "e1"])      # DataFrame: expected_return, prob_up

Rows carry the experts' blocks as ``<alias>__<field>`` columns (:func:`expert_column`) and the
realised ``ret`` and ``dir``. Fitting reads only the rows it is given: which rows those are (earlier
folds, purged) is decided by :mod:`quantml.stacking.walkforward`, never here. All combiners are
deterministic: the ones with random initial states (the MLP, LightGBM) take a ``seed``.

Combiners with ``uses_regime`` true also read the rows' regime columns (``regime__*``, joined by
:func:`quantml.stacking.regime.attach_regime`): ``RidgeLogistic(regime=True)``, ``MLPCombiner``,
``LightGBMCombiner`` (inputs) and ``RegimeGate`` (soft weights over the experts gated by them). Rows
with a NaN input predict NaN; fitting uses the rows whose inputs and labels are all finite.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.stacking.regime import REGIME_PREFIX, regime_columns

PROB_CLIP = 1e-6
SELECT_METRICS = ("rank_ic", "rmse", "log_loss")


def expert_column(alias: str, name: str) -> str:
    """``("e0", "prob_up") -> "e0__prob_up"``: an expert's block column in the OOF table."""
    return f"{alias}__{name}"


def _matrix(rows: pd.DataFrame, experts: list[str], name: str) -> np.ndarray:
    cols = [expert_column(a, name) for a in experts]
    missing = [c for c in cols if c not in rows.columns]
    if missing:
        raise QuantmlInputError(f"the OOF rows lack expert column(s) {missing}; build them with build_oof_table")
    return rows[cols].to_numpy(np.float64)


def _logits(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, PROB_CLIP, 1 - PROB_CLIP))


def _labelled(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    ret = rows["ret"].to_numpy(np.float64)
    direction = rows["dir"].to_numpy(np.float64)
    return ret, direction


def _flag(value, key: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise QuantmlInputError(f"{key}={value!r} must be true or false")
    return bool(value)


def _positive(value, key: str, minimum: float = 0.0, strict: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(float(value)) and (float(value) > minimum if strict else float(value) >= minimum)
    if not ok:
        raise QuantmlInputError(f"{key}={value!r} must be a number {'>' if strict else '>='} {minimum:g}")
    return float(value)


def _whole(value, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise QuantmlInputError(f"{key}={value!r} must be a whole number >= {minimum}")
    return int(value)


def _check_rows(rows: pd.DataFrame, what: str) -> None:
    if len(rows) == 0:
        raise QuantmlInputError(f"{what}: no rows to fit on; give the stack earlier folds (more validation.n_splits)")


def _check_fit_rows(ok: np.ndarray, what: str, head: str) -> None:
    if not ok.any():
        raise QuantmlInputError(
            f"{what}: no fit row has finite inputs and a finite label for the {head} head; check the OOF table "
            "for NaN expert forecasts or regime features (a regime window longer than the history)"
        )


def _need_regime(rows: pd.DataFrame, what: str, fix: str) -> list[str]:
    """The regime columns of the fit rows (a QuantmlInputError naming the fix when there are none)."""
    cols = regime_columns(rows)
    if not cols:
        raise QuantmlInputError(
            f"{what} needs regime columns ({REGIME_PREFIX}*) in its rows and they have none; attach regime features "
            f"with quantml.stacking.regime.attach_regime(table, regime_features(panel)), or {fix}"
        )
    return cols


class _RegimeScaler:
    """The regime columns a combiner was fitted with, standardised on the fit rows (mean 0, std 1).

    Columns with no finite value on the fit rows are left out (``dropped``)."""

    def __init__(self, rows: pd.DataFrame, cols: list[str], what: str) -> None:
        x = rows[cols].to_numpy(np.float64)
        usable = np.isfinite(x).any(axis=0)
        self.dropped = [c for c, u in zip(cols, usable) if not u]
        self.columns = [c for c, u in zip(cols, usable) if u]
        if not self.columns:
            raise QuantmlInputError(
                f"{what}: every regime column is NaN on the fit rows ({cols}); the regime windows need more "
                "history than the fit rows have (shorter regime windows, or more folds before the first stack fold)"
            )
        x = x[:, usable]
        ok = np.isfinite(x).all(axis=1)
        _check_fit_rows(ok, what, "regime")
        self.mean = x[ok].mean(axis=0)
        std = x[ok].std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)
        self.what = what

    def transform(self, rows: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in rows.columns]
        if missing:
            raise QuantmlInputError(
                f"{self.what} was fitted with regime column(s) {missing} the rows to predict lack; attach the same "
                "regime features to them (quantml.stacking.regime.attach_regime)"
            )
        return (rows[self.columns].to_numpy(np.float64) - self.mean) / self.scale

    def describe(self) -> dict:
        out = {"regime_columns": list(self.columns)}
        if self.dropped:
            out["regime_dropped"] = list(self.dropped)
        return out


def _no_regime(n: int) -> np.ndarray:
    return np.zeros((n, 0))


class _Standardiser:
    """Columns standardised on the rows it was fitted on (constant columns keep scale 1)."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def _constant_prob(y: np.ndarray) -> float:
    return float(np.clip(y.mean() if len(y) else 0.5, PROB_CLIP, 1 - PROB_CLIP))


CROSS_SECTION_MODES = ("auto", "on", "off")
CROSS_SECTION_MIN_SYMBOLS = 3  # auto: on when a timestamp holds this many symbols (median), as rank IC does


def _cross_section_mode(value) -> str:
    mode = {True: "on", False: "off"}.get(value, value)
    mode = str(mode).strip().lower() if mode is not None else "auto"
    if mode not in CROSS_SECTION_MODES:
        raise QuantmlInputError(f"combiner.cross_section={value!r}; use auto, on or off")
    return mode


def _cross_section_on(mode: str, rows: pd.DataFrame) -> bool:
    """Whether a combiner in ``mode`` fits on cross-sectional rows (``auto``: when the median
    timestamp of ``rows`` holds at least 3 symbols, the book ranks across symbols)."""
    if mode != "auto":
        return mode == "on"
    return bool(len(rows)) and float(rows.groupby(TIMESTAMP)[SYMBOL].size().median()) >= CROSS_SECTION_MIN_SYMBOLS


def _by_time(rows: pd.DataFrame, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values - their mean per timestamp, that mean on every row)`` column by column; the means
    skip NaN. Only rows of the same timestamp meet: a forecast's cross-sectional mean at t reads
    the other symbols' forecasts at t, nothing later."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    v = values[:, None] if flat else values
    codes = pd.factorize(rows[TIMESTAMP])[0]
    n_t = int(codes.max()) + 1 if len(codes) else 0
    means = np.empty_like(v)
    for j in range(v.shape[1]):
        ok = np.isfinite(v[:, j])
        count = np.bincount(codes[ok], minlength=n_t)
        total = np.bincount(codes[ok], v[ok, j], minlength=n_t)
        per_t = np.divide(total, count, out=np.full(n_t, np.nan), where=count > 0)
        means[:, j] = per_t[codes]
    out, level = v - means, means
    return (out[:, 0], level[:, 0]) if flat else (out, level)


class RidgeLogistic:
    """Ridge regression of ``ret`` on the experts' standardised ``expected_return`` (the return head)
    and L2 logistic regression of ``dir`` on the experts' ``logit(prob_up)`` (the direction head).

    ``alpha``: the ridge penalty on standardised inputs; ``C``: the inverse penalty of the logistic
    head (scikit-learn's). A direction head fitted on one class predicts that class's frequency.
    ``regime``: both heads' inputs are joined by the rows' regime columns (``regime__*``, standardised
    on the fit rows; without any, fitting is an error).

    ``cross_section`` (``on``, ``off``, or ``auto``: on when a timestamp holds 3 or more symbols):
    the return head is fitted on the experts' forecasts and ``ret`` demeaned per timestamp, so the
    weights say how the experts rank symbols against each other (what the book trades and rank IC
    scores), not how they track the market's move; its prediction is that cross-sectional part
    plus the experts' mean forecast level at the timestamp."""

    name = "ridge"

    def __init__(
        self,
        alpha: float = 1.0,
        C: float = 1.0,
        fit_intercept: bool = True,
        regime: bool = False,
        cross_section: str = "off",
    ) -> None:
        if not (math.isfinite(float(alpha)) and float(alpha) >= 0):
            raise QuantmlInputError(f"combiner.alpha={alpha!r} must be a number >= 0")
        if not (math.isfinite(float(C)) and float(C) > 0):
            raise QuantmlInputError(f"combiner.C={C!r} must be a number > 0")
        self.alpha, self.C, self.fit_intercept = float(alpha), float(C), bool(fit_intercept)
        self.regime = _flag(regime, "combiner.regime")
        self.uses_regime = self.regime
        self.cross_section = _cross_section_mode(cross_section)

    def _regime(self, rows: pd.DataFrame) -> np.ndarray:
        return self.regime_.transform(rows) if self.regime_ is not None else _no_regime(len(rows))

    def _return_inputs(self, rows: pd.DataFrame, experts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The return head's expert inputs and the level its prediction is added to."""
        x = _matrix(rows, experts, "expected_return")
        if not getattr(self, "cross_section_", False):
            return x, np.zeros(len(rows))
        demeaned, level = _by_time(rows, x)
        return demeaned, level.mean(axis=1)

    def fit(self, rows: pd.DataFrame, experts: list[str]) -> RidgeLogistic:
        _check_rows(rows, "ridge combiner")
        self.regime_ = None
        if self.regime:
            cols = _need_regime(rows, "combiner ridge with regime=true", "set combiner.regime=false")
            self.regime_ = _RegimeScaler(rows, cols, "combiner ridge")
        reg = self._regime(rows)
        ret, direction = _labelled(rows)
        self.cross_section_ = _cross_section_on(self.cross_section, rows)
        x, _ = self._return_inputs(rows, experts)
        if self.cross_section_:
            ret = _by_time(rows, ret)[0]
        ok = np.isfinite(x).all(axis=1) & np.isfinite(reg).all(axis=1) & np.isfinite(ret)
        _check_fit_rows(ok, "ridge combiner", "return")
        self.mean_ = x[ok].mean(axis=0)
        self.scale_ = np.where(x[ok].std(axis=0) > 0, x[ok].std(axis=0), 1.0)
        self.ridge_ = Ridge(alpha=self.alpha, fit_intercept=self.fit_intercept).fit(
            np.hstack([(x[ok] - self.mean_) / self.scale_, reg[ok]]), ret[ok]
        )
        z = _logits(_matrix(rows, experts, "prob_up"))
        ok = np.isfinite(z).all(axis=1) & np.isfinite(reg).all(axis=1) & np.isfinite(direction)
        y = direction[ok].astype(int)
        self.constant_prob_ = None
        if np.unique(y).size < 2:
            self.constant_prob_ = _constant_prob(y)
        else:
            self.logistic_ = LogisticRegression(C=self.C, fit_intercept=self.fit_intercept, max_iter=1000)
            self.logistic_.fit(np.hstack([z[ok], reg[ok]]), y)
        return self

    def predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        reg = self._regime(rows)
        inputs, level = self._return_inputs(rows, experts)
        x = np.hstack([(inputs - self.mean_) / self.scale_, reg])
        er = np.full(len(rows), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            er[ok] = self.ridge_.predict(x[ok]) + level[ok]
        z = np.hstack([_logits(_matrix(rows, experts, "prob_up")), reg])
        prob = np.full(len(rows), np.nan)
        ok = np.isfinite(z).all(axis=1)
        if self.constant_prob_ is not None:
            prob[ok] = self.constant_prob_
        elif ok.any():
            prob[ok] = self.logistic_.predict_proba(z[ok])[:, 1]
        return pd.DataFrame({"expected_return": er, "prob_up": prob}, index=rows.index)

    def describe(self) -> dict:
        out = {"combiner": self.name, "alpha": self.alpha, "C": self.C, "regime": self.regime}
        out["cross_section"] = self.cross_section
        if hasattr(self, "ridge_"):
            out["cross_sectional_fit"] = bool(self.cross_section_)
            n = len(self.scale_)
            out["return_weights"] = [float(w) for w in self.ridge_.coef_[:n] / self.scale_]
            if self.regime_ is not None:
                out.update(self.regime_.describe())
                out["return_regime_weights"] = [float(w) for w in self.ridge_.coef_[n:]]
        if getattr(self, "logistic_", None) is not None and self.constant_prob_ is None:
            n = len(self.scale_)
            out["direction_weights"] = [float(w) for w in self.logistic_.coef_[0][:n]]
            if self.regime_ is not None:
                out["direction_regime_weights"] = [float(w) for w in self.logistic_.coef_[0][n:]]
        return out


class EqualWeight:
    """The experts' mean ``expected_return`` and the mean of their ``prob_up`` (in probability, or in
    logit with ``prob_space: logit``). Nothing is fitted: the baseline every stack must beat."""

    name = "equal_weight"
    uses_regime = False

    def __init__(self, prob_space: str = "probability") -> None:
        if prob_space not in ("probability", "logit"):
            raise QuantmlInputError(f"combiner.prob_space={prob_space!r}; use probability or logit")
        self.prob_space = prob_space

    def fit(self, rows: pd.DataFrame, experts: list[str]) -> EqualWeight:
        return self

    def predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        er = _matrix(rows, experts, "expected_return").mean(axis=1)
        p = _matrix(rows, experts, "prob_up")
        prob = expit(_logits(p).mean(axis=1)) if self.prob_space == "logit" else p.mean(axis=1)
        return pd.DataFrame({"expected_return": er, "prob_up": prob}, index=rows.index)

    def describe(self) -> dict:
        return {"combiner": self.name, "prob_space": self.prob_space}


class BestSingle:
    """The one expert with the best ``metric`` on the rows it is fitted on (earlier folds only: the
    walk-forward decides which rows those are), used as is for both heads.

    ``metric``: ``rank_ic`` (mean over timestamps of the cross-sectional Spearman correlation of
    ``expected_return`` with ``ret``, pooled when a timestamp has fewer than 3 symbols; higher is
    better), ``rmse`` (of ``expected_return``; lower) or ``log_loss`` (of ``prob_up``; lower). Ties go
    to the earlier expert."""

    name = "best_single"
    uses_regime = False

    def __init__(self, metric: str = "rank_ic") -> None:
        if metric not in SELECT_METRICS:
            raise QuantmlInputError(f"combiner.metric={metric!r} is unknown; use one of {SELECT_METRICS}")
        self.metric = metric

    def scores(self, rows: pd.DataFrame, experts: list[str]) -> list[float]:
        """Each expert's figure on ``rows``, oriented so that higher is better."""
        ret, direction = _labelled(rows)
        out = []
        for alias in experts:
            er = rows[expert_column(alias, "expected_return")].to_numpy(np.float64)
            if self.metric == "rank_ic":
                out.append(_rank_ic(rows, er, ret))
            elif self.metric == "rmse":
                ok = np.isfinite(er) & np.isfinite(ret)
                out.append(-float(np.sqrt(np.mean((er[ok] - ret[ok]) ** 2))) if ok.any() else -np.inf)
            else:
                p = np.clip(rows[expert_column(alias, "prob_up")].to_numpy(np.float64), PROB_CLIP, 1 - PROB_CLIP)
                ok = np.isfinite(p) & np.isfinite(direction)
                y = direction[ok]
                ll = -np.mean(y * np.log(p[ok]) + (1 - y) * np.log1p(-p[ok])) if ok.any() else np.inf
                out.append(-float(ll))
        return [v if math.isfinite(v) else -np.inf for v in out]

    def fit(self, rows: pd.DataFrame, experts: list[str]) -> BestSingle:
        _check_rows(rows, "best_single combiner")
        self.scores_ = self.scores(rows, experts)
        self.chosen_ = experts[int(np.argmax(self.scores_))]
        return self

    def predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "expected_return": rows[expert_column(self.chosen_, "expected_return")].to_numpy(np.float64),
                "prob_up": rows[expert_column(self.chosen_, "prob_up")].to_numpy(np.float64),
            },
            index=rows.index,
        )

    def describe(self) -> dict:
        out = {"combiner": self.name, "metric": self.metric}
        if hasattr(self, "chosen_"):
            out["chosen"] = self.chosen_
        return out


class _LearnedHeads:
    """Both heads learned by a scikit-learn-style regressor (``ret``) and classifier (``dir``).

    Inputs: the experts' ``expected_return`` (return head) or ``logit(prob_up)`` (direction head),
    joined, with ``regime``, by the rows' regime columns (standardised on the fit rows). A direction
    head fitted on one class predicts that class's frequency."""

    name = "learned"

    def _setup_regime(self, regime) -> None:
        self.regime = _flag(regime, "combiner.regime")
        self.uses_regime = self.regime

    def _regressor(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _classifier(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _inputs(self, rows: pd.DataFrame, experts: list[str], field: str) -> np.ndarray:
        x = _matrix(rows, experts, field)
        if field == "prob_up":
            x = _logits(x)
        reg = self.regime_.transform(rows) if self.regime_ is not None else _no_regime(len(rows))
        return np.hstack([x, reg])

    def _input_names(self, experts: list[str]) -> list[str]:
        return list(experts) + (list(self.regime_.columns) if self.regime_ is not None else [])

    def _scale_inputs(self) -> bool:
        return False

    def _scale_target(self) -> bool:
        return False

    def _threads(self):
        return nullcontext()

    def fit(self, rows: pd.DataFrame, experts: list[str]):
        with self._threads():
            return self._fit(rows, experts)

    def predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        with self._threads():
            return self._predict(rows, experts)

    def _fit(self, rows: pd.DataFrame, experts: list[str]):
        what = f"{self.name} combiner"
        _check_rows(rows, what)
        self.regime_ = None
        if self.regime:
            cols = _need_regime(rows, f"combiner {self.name} with regime=true", "set combiner.regime=false")
            self.regime_ = _RegimeScaler(rows, cols, f"combiner {self.name}")
        self.inputs_ = self._input_names(experts)
        ret, direction = _labelled(rows)
        x = self._inputs(rows, experts, "expected_return")
        ok = np.isfinite(x).all(axis=1) & np.isfinite(ret)
        _check_fit_rows(ok, what, "return")
        self.x_return_ = _Standardiser(x[ok]) if self._scale_inputs() else None
        y = ret[ok]
        self.y_mean_, self.y_scale_ = 0.0, 1.0
        if self._scale_target():
            self.y_mean_ = float(y.mean())
            self.y_scale_ = float(y.std()) if y.std() > 0 else 1.0
        self.n_fit_ = int(ok.sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            xr = self.x_return_(x[ok]) if self.x_return_ is not None else x[ok]
            self.return_model_ = self._regressor().fit(xr, (y - self.y_mean_) / self.y_scale_)
            z = self._inputs(rows, experts, "prob_up")
            ok = np.isfinite(z).all(axis=1) & np.isfinite(direction)
            y = direction[ok].astype(int)
            self.constant_prob_, self.direction_model_ = None, None
            self.x_direction_ = _Standardiser(z[ok]) if self._scale_inputs() and ok.any() else None
            if np.unique(y).size < 2:
                self.constant_prob_ = _constant_prob(y)
            else:
                zd = self.x_direction_(z[ok]) if self.x_direction_ is not None else z[ok]
                self.direction_model_ = self._classifier().fit(zd, y)
        return self

    def _predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        x = self._inputs(rows, experts, "expected_return")
        er = np.full(len(rows), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            xr = self.x_return_(x[ok]) if self.x_return_ is not None else x[ok]
            er[ok] = self.return_model_.predict(xr) * self.y_scale_ + self.y_mean_
        z = self._inputs(rows, experts, "prob_up")
        prob = np.full(len(rows), np.nan)
        ok = np.isfinite(z).all(axis=1)
        if self.constant_prob_ is not None:
            prob[ok] = self.constant_prob_
        elif ok.any():
            zd = self.x_direction_(z[ok]) if self.x_direction_ is not None else z[ok]
            prob[ok] = self.direction_model_.predict_proba(zd)[:, 1]
        return pd.DataFrame({"expected_return": er, "prob_up": prob}, index=rows.index)

    def _settings(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        out = {"combiner": self.name, **self._settings(), "regime": self.regime}
        if hasattr(self, "return_model_"):
            out["inputs"] = list(self.inputs_)
            out["n_fit"] = self.n_fit_
            if self.regime_ is not None:
                out.update(self.regime_.describe())
            if self.constant_prob_ is not None:
                out["direction_constant_prob"] = self.constant_prob_
        return out


class MLPCombiner(_LearnedHeads):
    """A small multi-layer perceptron per head: scikit-learn's ``MLPRegressor`` of ``ret`` (target
    standardised on the fit rows) and ``MLPClassifier`` of ``dir``, on inputs standardised on the fit
    rows. Early stopping is off (it would hold out, and look into, later fit rows); ``max_iter``
    bounds the solver's iterations (``solver``: ``lbfgs``, full batch, or ``adam``). ``alpha``: the L2
    penalty; ``seed``: the initial weights (same seed, bit-identical fit)."""

    name = "mlp"

    def __init__(
        self,
        hidden=(16,),
        alpha: float = 1e-3,
        max_iter: int = 500,
        seed: int = 0,
        regime: bool = True,
        solver: str = "lbfgs",
    ) -> None:
        layers = (hidden,) if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool) else hidden
        if not isinstance(layers, (list, tuple)) or not layers:
            raise QuantmlInputError(f"combiner.hidden={hidden!r} must be a list of layer widths, e.g. [16]")
        self.hidden = tuple(_whole(h, "combiner.hidden") for h in layers)
        self.alpha = _positive(alpha, "combiner.alpha", strict=False)
        self.max_iter = _whole(max_iter, "combiner.max_iter")
        self.seed = _whole(seed, "combiner.seed", minimum=0)
        if solver not in ("lbfgs", "adam"):
            raise QuantmlInputError(f"combiner.solver={solver!r}; use lbfgs or adam")
        self.solver = solver
        self._setup_regime(regime)

    def _scale_inputs(self) -> bool:
        return True

    def _scale_target(self) -> bool:
        return True

    def _threads(self):
        # small dense layers: one BLAS thread is faster, and the bits do not depend on the thread count
        return threadpool_limits(limits=1)

    def _common(self) -> dict:
        return {
            "hidden_layer_sizes": self.hidden,
            "alpha": self.alpha,
            "max_iter": self.max_iter,
            "solver": self.solver,
            "early_stopping": False,
            "random_state": self.seed,
        }

    def _regressor(self):
        from sklearn.neural_network import MLPRegressor

        return MLPRegressor(**self._common())

    def _classifier(self):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(**self._common())

    def _settings(self) -> dict:
        return {
            "hidden": list(self.hidden),
            "alpha": self.alpha,
            "max_iter": self.max_iter,
            "seed": self.seed,
            "solver": self.solver,
        }

    def describe(self) -> dict:
        out = super().describe()
        if hasattr(self, "return_model_"):
            out["return_n_iter"] = int(self.return_model_.n_iter_)
            if self.direction_model_ is not None:
                out["direction_n_iter"] = int(self.direction_model_.n_iter_)
        return out


class LightGBMCombiner(_LearnedHeads):
    """Gradient-boosted trees per head: LightGBM's ``LGBMRegressor`` of ``ret`` and ``LGBMClassifier`` of
    ``dir``, a fixed number of trees (no early stopping: nothing held out of the fit rows), small
    leaves (``num_leaves``, ``min_child_samples``) for a few noisy inputs, ``deterministic=True`` with
    ``n_jobs`` threads fixed and ``seed``: the same settings give bit-identical trees."""

    name = "lightgbm"

    def __init__(
        self,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 7,
        min_child_samples: int = 50,
        seed: int = 0,
        n_jobs: int = 1,
        regime: bool = True,
    ) -> None:
        self.n_estimators = _whole(n_estimators, "combiner.n_estimators")
        self.learning_rate = _positive(learning_rate, "combiner.learning_rate")
        self.num_leaves = _whole(num_leaves, "combiner.num_leaves", minimum=2)
        self.min_child_samples = _whole(min_child_samples, "combiner.min_child_samples")
        self.seed = _whole(seed, "combiner.seed", minimum=0)
        self.n_jobs = _whole(n_jobs, "combiner.n_jobs")
        self._setup_regime(regime)

    def _common(self) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "random_state": self.seed,
            "n_jobs": self.n_jobs,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }

    def _regressor(self):
        import lightgbm as lgb

        return lgb.LGBMRegressor(**self._common())

    def _classifier(self):
        import lightgbm as lgb

        return lgb.LGBMClassifier(**self._common())

    def _settings(self) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "seed": self.seed,
            "n_jobs": self.n_jobs,
        }

    def describe(self) -> dict:
        out = super().describe()
        if hasattr(self, "return_model_"):
            gain = self.return_model_.booster_.feature_importance("gain")
            out["return_importance_gain"] = {n: float(g) for n, g in zip(self.inputs_, gain)}
            if self.direction_model_ is not None:
                gain = self.direction_model_.booster_.feature_importance("gain")
                out["direction_importance_gain"] = {n: float(g) for n, g in zip(self.inputs_, gain)}
        return out


class RegimeGate:
    """Soft weights over the experts gated by the regime: ``w(x) = softmax((A x + b) / temperature)``
    over the rows' regime columns ``x`` (standardised on the fit rows), one weight per expert, each
    row's weights summing to 1.

    Return head: ``sum_e w_e(x) * expected_return_e``; ``A`` and ``b`` minimise the squared error
    against ``ret`` summed over the fit rows in units of ``ret``'s variance there, plus ``alpha *
    ||A||^2`` (the ridge convention: ``alpha`` is worth that many rows), by scipy's L-BFGS from the
    equal weights (``A = 0, b = 0``: a deterministic start, nothing random; ``seed`` is kept for
    the combiners' common interface). Direction head: the same weights on the experts'
    ``logit(prob_up)``, then a 1-D logistic recalibration of that logit fitted on the fit rows (a
    one-class fit predicts that class's frequency). Without regime columns fitting is an error.

    ``cross_section`` (``on``, ``off``, or ``auto``: on when a timestamp holds 3 or more symbols):
    the gate blends the experts' forecasts demeaned per timestamp and scaled to unit spread on the
    fit rows (``z_e``), so that each weight is the expert's share of the ranking whatever its
    forecast scale, and fits ``beta * sum_e w_e(x) z_e`` to ``ret`` demeaned per timestamp
    (``beta`` is fitted with the gate); the prediction adds the experts' mean forecast level at
    the timestamp."""

    name = "regime_gate"
    uses_regime = True
    RECALIBRATION_C = 1e4  # the 1-D recalibration is all but unpenalised

    def __init__(
        self, temperature: float = 1.0, alpha: float = 1.0, seed: int = 0, max_iter: int = 500, cross_section="off"
    ) -> None:
        self.temperature = _positive(temperature, "combiner.temperature")
        self.alpha = _positive(alpha, "combiner.alpha", strict=False)
        self.seed = _whole(seed, "combiner.seed", minimum=0)
        self.max_iter = _whole(max_iter, "combiner.max_iter")
        self.cross_section = _cross_section_mode(cross_section)

    def _signals(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The experts' forecasts the gate blends (cross-sectional and scaled, or raw), and the level
        the blend is added to."""
        r = _matrix(rows, self.experts_, "expected_return")
        if not getattr(self, "cross_section_", False):
            return r, np.zeros(len(rows))
        demeaned, level = _by_time(rows, r)
        return demeaned / self.signal_scale_, level.mean(axis=1)

    def _gate(self, x: np.ndarray) -> np.ndarray:
        """Weights [n, experts] for standardised regime rows ``x``; NaN rows where ``x`` has a NaN."""
        w = np.full((len(x), len(self.experts_)), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            w[ok] = softmax((x[ok] @ self.A_.T + self.b_) / self.temperature, axis=1)
        return w

    def _check_experts(self, experts: list[str]) -> None:
        if list(experts) != self.experts_:
            raise QuantmlInputError(
                f"combiner regime_gate was fitted on experts {self.experts_} and is asked about {list(experts)}; "
                "predict with the experts it was fitted on, in the same order"
            )

    def fit(self, rows: pd.DataFrame, experts: list[str]) -> RegimeGate:
        what = "regime_gate combiner"
        _check_rows(rows, what)
        cols = _need_regime(
            rows, "combiner regime_gate", "choose another combiner (combiner=ridge, equal_weight or best_single)"
        )
        self.regime_ = _RegimeScaler(rows, cols, "combiner regime_gate")
        self.experts_ = list(experts)
        x_all = self.regime_.transform(rows)
        ret, direction = _labelled(rows)
        self.cross_section_ = _cross_section_on(self.cross_section, rows)
        if self.cross_section_:
            demeaned = _by_time(rows, _matrix(rows, experts, "expected_return"))[0]
            spread = np.nanstd(demeaned, axis=0)
            self.signal_scale_ = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
            ret = _by_time(rows, ret)[0]
        r_all, _ = self._signals(rows)
        ok = np.isfinite(x_all).all(axis=1) & np.isfinite(r_all).all(axis=1) & np.isfinite(ret)
        _check_fit_rows(ok, what, "return")
        x, r, y = x_all[ok], r_all[ok], ret[ok]
        var = float(y.var()) if y.var() > 0 else 1.0
        n_e, n_r, temp, alpha = len(experts), x.shape[1], self.temperature, self.alpha
        free_beta = bool(self.cross_section_)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a, b = theta[: n_e * n_r].reshape(n_e, n_r), theta[n_e * n_r : n_e * n_r + n_e]
            beta = theta[-1] if free_beta else 1.0
            w = softmax((x @ a.T + b) / temp, axis=1)
            blend = (w * r).sum(axis=1)
            resid = beta * blend - y
            g = (2.0 * beta * resid / var)[:, None] * w * (r - blend[:, None])
            grad_a = g.T @ x / temp + 2.0 * alpha * a
            loss = float(resid @ resid / var + alpha * (a * a).sum())
            grad = [grad_a.ravel(), g.sum(axis=0) / temp]
            if free_beta:
                grad.append(np.array([2.0 * (resid @ blend) / var]))
            return loss, np.concatenate(grad)

        start = np.zeros(n_e * n_r + n_e)
        if free_beta:  # from equal weights and their least-squares scale
            blend = r.mean(axis=1)
            start = np.append(start, float(blend @ y / (blend @ blend)) if blend @ blend > 0 else 0.0)
        with threadpool_limits(limits=1):  # a few columns: one BLAS thread is faster
            res = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        self.A_ = res.x[: n_e * n_r].reshape(n_e, n_r)
        self.b_ = res.x[n_e * n_r : n_e * n_r + n_e]
        self.beta_ = float(res.x[-1]) if free_beta else 1.0
        self.converged_, self.n_iter_ = bool(res.success), int(res.nit)
        self.loss_, self.loss_equal_ = float(res.fun), float(objective(start)[0])
        self.n_fit_ = int(ok.sum())
        self.mean_weights_ = self._gate(x).mean(axis=0)
        # direction head: the gate's weights on the experts' logits, recalibrated in one dimension
        s = self._blend_logit(rows, x_all)
        ok = np.isfinite(s) & np.isfinite(direction)
        labels = direction[ok].astype(int)
        self.constant_prob_, self.recalibration_ = None, None
        if np.unique(labels).size < 2:
            self.constant_prob_ = _constant_prob(labels)
        else:
            self.recalibration_ = LogisticRegression(C=self.RECALIBRATION_C, max_iter=1000)
            self.recalibration_.fit(s[ok, None], labels)
        return self

    def _blend_logit(self, rows: pd.DataFrame, x: np.ndarray) -> np.ndarray:
        return (self._gate(x) * _logits(_matrix(rows, self.experts_, "prob_up"))).sum(axis=1)

    def weights(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        """The gate's weights per row: [rows.index, experts], each row summing to 1 (NaN where a regime
        input is NaN)."""
        self._check_experts(experts)
        return pd.DataFrame(self._gate(self.regime_.transform(rows)), index=rows.index, columns=self.experts_)

    def predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        self._check_experts(experts)
        x = self.regime_.transform(rows)
        w = self._gate(x)
        signals, level = self._signals(rows)
        er = getattr(self, "beta_", 1.0) * np.sum(w * signals, axis=1) + level
        s = self._blend_logit(rows, x)
        prob = np.full(len(rows), np.nan)
        ok = np.isfinite(s)
        if self.constant_prob_ is not None:
            prob[ok] = self.constant_prob_
        elif ok.any():
            prob[ok] = self.recalibration_.predict_proba(s[ok, None])[:, 1]
        return pd.DataFrame({"expected_return": er, "prob_up": prob}, index=rows.index)

    def describe(self) -> dict:
        out = {
            "combiner": self.name,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "seed": self.seed,
            "max_iter": self.max_iter,
            "cross_section": self.cross_section,
        }
        if not hasattr(self, "A_"):
            return out
        out["cross_sectional_fit"] = bool(self.cross_section_)
        if self.cross_section_:
            out["beta"] = self.beta_
            out["signal_scale"] = {e: float(v) for e, v in zip(self.experts_, self.signal_scale_)}
        out.update(self.regime_.describe())
        out["experts"] = list(self.experts_)
        out["gate_coef"] = {
            e: {c: float(v) for c, v in zip(self.regime_.columns, row)} for e, row in zip(self.experts_, self.A_)
        }
        out["gate_bias"] = {e: float(v) for e, v in zip(self.experts_, self.b_)}
        out["mean_weights"] = {e: float(v) for e, v in zip(self.experts_, self.mean_weights_)}
        out.update(converged=self.converged_, n_iter=self.n_iter_, n_fit=self.n_fit_)
        out.update(loss=self.loss_, loss_equal_weight=self.loss_equal_)
        if self.constant_prob_ is not None:
            out["direction_constant_prob"] = self.constant_prob_
        else:
            out["recalibration"] = {
                "slope": float(self.recalibration_.coef_[0][0]),
                "intercept": float(self.recalibration_.intercept_[0]),
            }
        return out


def _rank_ic(rows: pd.DataFrame, forecast: np.ndarray, realised: np.ndarray) -> float:
    frame = pd.DataFrame({"t": rows[TIMESTAMP].to_numpy(), "s": rows[SYMBOL].to_numpy(), "f": forecast, "r": realised})
    frame = frame[np.isfinite(frame["f"]) & np.isfinite(frame["r"])]
    if frame.empty:
        return -np.inf
    if frame.groupby("t")["s"].size().median() >= 3:
        ranked = frame.assign(f=frame.groupby("t")["f"].rank(), r=frame.groupby("t")["r"].rank())
        corr = ranked.groupby("t")[["f", "r"]].apply(lambda g: g["f"].corr(g["r"])).dropna()
        return float(corr.mean()) if len(corr) else -np.inf
    value = frame["f"].rank().corr(frame["r"].rank())
    return float(value) if math.isfinite(value) else -np.inf
