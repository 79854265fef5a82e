"""Combiners: the Z-layer's models over the experts' out-of-fold forecasts (config group ``combiner``).

Every combiner builds both heads: ``expected_return`` (the return head, from the experts'
``expected_return``) and ``prob_up`` (the direction head, from the experts' ``prob_up``). It is fitted
on rows of one horizon of the OOF table and predicts rows of the same horizon::

    comb = RidgeLogistic(alpha=1.0, C=1.0).fit(fit_rows, ["e0", "e1"])
    out = comb.predict(test_rows, ["e0", "e1"])      # DataFrame: expected_return, prob_up

Rows carry the experts' blocks as ``<alias>__<field>`` columns (:func:`expert_column`) and the
realised ``ret`` and ``dir``. Fitting reads only the rows it is given: which rows those are (earlier
folds, purged) is decided by :mod:`quantml.stacking.walkforward`, never here. All combiners are
deterministic (no random state).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression, Ridge

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError

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


def _check_rows(rows: pd.DataFrame, what: str) -> None:
    if len(rows) == 0:
        raise QuantmlInputError(f"{what}: no rows to fit on; give the stack earlier folds (more validation.n_splits)")


class RidgeLogistic:
    """Ridge regression of ``ret`` on the experts' standardised ``expected_return`` (the return head)
    and L2 logistic regression of ``dir`` on the experts' ``logit(prob_up)`` (the direction head).

    ``alpha``: the ridge penalty on standardised inputs; ``C``: the inverse penalty of the logistic
    head (scikit-learn's). A direction head fitted on one class predicts that class's frequency."""

    name = "ridge"

    def __init__(self, alpha: float = 1.0, C: float = 1.0, fit_intercept: bool = True) -> None:
        if not (math.isfinite(float(alpha)) and float(alpha) >= 0):
            raise QuantmlInputError(f"combiner.alpha={alpha!r} must be a number >= 0")
        if not (math.isfinite(float(C)) and float(C) > 0):
            raise QuantmlInputError(f"combiner.C={C!r} must be a number > 0")
        self.alpha, self.C, self.fit_intercept = float(alpha), float(C), bool(fit_intercept)

    def fit(self, rows: pd.DataFrame, experts: list[str]) -> RidgeLogistic:
        _check_rows(rows, "ridge combiner")
        ret, direction = _labelled(rows)
        x = _matrix(rows, experts, "expected_return")
        ok = np.isfinite(x).all(axis=1) & np.isfinite(ret)
        self.mean_ = x[ok].mean(axis=0)
        self.scale_ = np.where(x[ok].std(axis=0) > 0, x[ok].std(axis=0), 1.0)
        self.ridge_ = Ridge(alpha=self.alpha, fit_intercept=self.fit_intercept).fit(
            (x[ok] - self.mean_) / self.scale_, ret[ok]
        )
        z = _logits(_matrix(rows, experts, "prob_up"))
        ok = np.isfinite(z).all(axis=1) & np.isfinite(direction)
        y = direction[ok].astype(int)
        self.constant_prob_ = None
        if np.unique(y).size < 2:
            self.constant_prob_ = float(np.clip(y.mean() if len(y) else 0.5, PROB_CLIP, 1 - PROB_CLIP))
        else:
            self.logistic_ = LogisticRegression(C=self.C, fit_intercept=self.fit_intercept, max_iter=1000)
            self.logistic_.fit(z[ok], y)
        return self

    def predict(self, rows: pd.DataFrame, experts: list[str]) -> pd.DataFrame:
        x = (_matrix(rows, experts, "expected_return") - self.mean_) / self.scale_
        er = np.full(len(rows), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            er[ok] = self.ridge_.predict(x[ok])
        z = _logits(_matrix(rows, experts, "prob_up"))
        prob = np.full(len(rows), np.nan)
        ok = np.isfinite(z).all(axis=1)
        if self.constant_prob_ is not None:
            prob[ok] = self.constant_prob_
        elif ok.any():
            prob[ok] = self.logistic_.predict_proba(z[ok])[:, 1]
        return pd.DataFrame({"expected_return": er, "prob_up": prob}, index=rows.index)

    def describe(self) -> dict:
        out = {"combiner": self.name, "alpha": self.alpha, "C": self.C}
        if hasattr(self, "ridge_"):
            out["return_weights"] = [float(w) for w in self.ridge_.coef_ / self.scale_]
        if getattr(self, "logistic_", None) is not None:
            out["direction_weights"] = [float(w) for w in self.logistic_.coef_[0]]
        return out


class EqualWeight:
    """The experts' mean ``expected_return`` and the mean of their ``prob_up`` (in probability, or in
    logit with ``prob_space: logit``). Nothing is fitted: the baseline every stack must beat."""

    name = "equal_weight"

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
