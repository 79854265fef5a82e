"""One call from a prediction frame to every named metric: ``evaluate_predictions``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.backtest import BacktestResult, run_backtest
from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, metric_name, require_columns
from quantml.evaluation.crps import quantile_crps
from quantml.evaluation.metrics import (
    average_precision,
    check_ic_mode,
    hit_rate,
    information_coefficients,
    probability_metrics,
    quantile_metrics,
    regression_metrics,
)
from quantml.market import METRIC_KEYS, CostModel
from quantml.portfolio.strategy import RankLongShort

REQUIRED_COLUMNS = (
    SYMBOL,
    TIMESTAMP,
    "horizon",
    "expected_return",
    "q10",
    "q50",
    "q90",
    "prob_up",
    "ret",
    "dir",
    "ret_next_bar",
)
BACKTEST_KEYS = ("ann_return", "sharpe_after_cost", "max_drawdown", "turnover", "information_ratio")


def check_prediction_frame(frame: pd.DataFrame, required=REQUIRED_COLUMNS, what: str = "prediction frame") -> None:
    """Raise :class:`QuantmlInputError` naming the missing columns / bad timestamp dtype."""
    if not isinstance(frame, pd.DataFrame):
        raise QuantmlInputError(f"the {what} must be a pandas DataFrame, got {type(frame).__name__}")
    require_columns(
        frame,
        required,
        f"the {what}",
        f"it needs {list(required)} (forecast columns from Forecast.to_frame plus the realised "
        "columns of the contract)",
    )
    if TIMESTAMP in frame.columns and not isinstance(frame[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        raise QuantmlInputError(
            f"column {TIMESTAMP!r} of the {what} has dtype {frame[TIMESTAMP].dtype}; convert it to "
            "tz-aware UTC with pd.to_datetime(..., utc=True)"
        )


def backtest_metrics(result: BacktestResult) -> dict[str, float]:
    """The backtest block of the metric contract (``BACKTEST_KEYS``) from a backtest's stats,
    named by :data:`quantml.market.METRIC_KEYS` (``sharpe`` -> ``sharpe_after_cost``)."""
    named = {METRIC_KEYS.get(k, k): v for k, v in result.stats.items()}
    return {k: float(named.get(k, np.nan)) for k in BACKTEST_KEYS}


def horizon_metrics(
    frame: pd.DataFrame,
    periods_per_year: float,
    costs: CostModel,
    ic_mode: str,
    ece_bins: int = 10,
    ic_bucket: str | None = None,
    strategy=None,
    market: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Every metric key (un-prefixed) for the rows of ONE horizon and ONE path.

    ``strategy``: the book the after-cost backtest trades (default :class:`RankLongShort`,
    its ``mode="auto"`` bound to ``ic_mode``); ``market``: every bar of the panel for the
    book's full calendar (see :func:`quantml.portfolio.strategy.book_calendar`)."""
    er = frame["expected_return"].to_numpy(np.float64)
    ret = frame["ret"].to_numpy(np.float64)
    out: dict[str, float] = {}
    out.update(regression_metrics(er, ret))
    out["hit_rate"] = hit_rate(er, ret)
    out["ap"] = average_precision(frame["prob_up"].to_numpy(np.float64), frame["dir"].to_numpy(np.float64))
    out.update(information_coefficients(frame, ic_mode, bucket=ic_bucket))
    strategy = (strategy if strategy is not None else RankLongShort()).bind(ic_mode=ic_mode)
    out.update(backtest_metrics(run_backtest(strategy, frame, costs, periods_per_year, market=market)))
    direction = frame["dir"].to_numpy(np.float64)
    out.update(probability_metrics(frame["prob_up"].to_numpy(np.float64), direction, ece_bins))
    raw_col = "prob_up_raw" if "prob_up_raw" in frame.columns else "prob_up"
    raw = probability_metrics(frame[raw_col].to_numpy(np.float64), direction, ece_bins)
    out.update({f"{k}_raw": v for k, v in raw.items()})
    out.update(quantile_metrics(frame["q10"], frame["q50"], frame["q90"], ret))
    # CRPS of the distribution the three quantiles imply (quantml.evaluation.crps), beside the pinball loss
    crps = quantile_crps(*(frame[q].to_numpy(np.float64) for q in ("q10", "q50", "q90")), ret)
    out["crps"] = float(np.mean(crps[np.isfinite(crps)])) if np.isfinite(crps).any() else np.nan
    return out


def evaluate_predictions(
    frame: pd.DataFrame,
    split: str,
    periods_per_year: float,
    costs: CostModel,
    ic_mode: str,
    *,
    ece_bins: int = 10,
    ic_bucket: str | None = None,
    strategy=None,
    market: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Every metric of a prediction frame, named ``<split>_<metric>/<horizon>``.

    Parameters
    ----------
    frame : long prediction frame, one row per (symbol, timestamp, horizon[, path]) with the
        forecast columns (``expected_return, q10, q50, q90, prob_up`` [+ ``prob_up_raw``]) and
        the realised ones (``ret, dir, ret_next_bar``). Several ``path`` values (CPCV): the
        metrics are computed per path and averaged (NaN-aware).
    split : ``"val"``, ``"test"`` or ``"oos"``.
    periods_per_year : bars per year, to annualise the backtest.
    costs : the cost model of the after-cost backtest.
    ic_mode : ``"cross_sectional"`` or ``"time_series"`` (see :func:`ic_mode_for`).
    ece_bins, ic_bucket : ECE bins; time-series IC bucket (pandas period alias, None = by bar
        spacing). :func:`evaluation_options` reads both from ``cfg.evaluation``.
    strategy : the book of the after-cost backtest (``strategy`` config group; default
        :class:`~quantml.portfolio.strategy.RankLongShort`, ``mode="auto"`` bound to ``ic_mode``).
    market : every bar of the panel (``symbol, timestamp, ret_next_bar``): the backtest's PnL
        then runs over the panel's full bar calendar from the first forecast bar (bars without
        a forecast are flat or still holding earlier tranches) instead of the forecast bars only.

    Returns
    -------
    dict ``{metric_name(split, key, h): float}`` for every horizon of ``frame`` and every key
    of the contract (plus ``ece_mass`` and the ``*_raw`` calibration keys).
    """
    check_prediction_frame(frame)
    check_ic_mode(ic_mode)
    if not (np.isfinite(periods_per_year) and periods_per_year > 0):
        raise QuantmlInputError(
            f"periods_per_year={periods_per_year!r} must be a positive number "
            "(e.g. 252 for daily equity bars, 8760 for hourly crypto bars)"
        )
    if not isinstance(costs, CostModel):
        raise QuantmlInputError("costs must be a quantml.market.CostModel (CostModel.from_config(cfg.cost))")
    out: dict[str, float] = {}
    paths = frame["path"].to_numpy() if "path" in frame.columns else None
    # on a categorical column's codes (first-seen order, as pd.unique): no string per row
    codes, horizons = pd.factorize(frame["horizon"])
    for k, h in enumerate(horizons):
        rows = codes == k
        part = frame[rows]
        if paths is None or len(pd.unique(paths[rows])) < 2:  # one path: the part itself, no second copy
            parts = [part]
        else:
            parts = (p for _, p in part.groupby(paths[rows], sort=True))
        per_path = [
            horizon_metrics(p, periods_per_year, costs, ic_mode, ece_bins, ic_bucket, strategy, market) for p in parts
        ]
        del part
        for key in per_path[0]:
            values = np.array([m[key] for m in per_path], dtype=np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN
                out[metric_name(split, key, str(h))] = float(np.nanmean(values))
    return out


def evaluation_options(cfg_evaluation) -> dict:
    """Keyword arguments of :func:`evaluate_predictions` from ``cfg.evaluation`` (``ece_bins``, ``ic_bucket``)."""
    cfg = cfg_evaluation if cfg_evaluation is not None else {}
    bucket = cfg.get("ic_bucket", None)
    return {"ece_bins": int(cfg.get("ece_bins", 10)), "ic_bucket": None if bucket in (None, "auto") else str(bucket)}


@dataclass
class Scorer:
    """How every prediction frame of a run is scored (the same settings for val, test, oos).

    ``strategy``: the configured book of the after-cost backtest (``cfg.strategy``, built with
    :func:`quantml.contracts.build`); None -> :class:`RankLongShort`. ``market``: every bar of
    the panel (``symbol, timestamp, ret_next_bar``) for the backtest's full calendar, or None."""

    periods_per_year: float
    costs: CostModel
    ic_mode: str
    options: dict
    strategy: object = field(default_factory=RankLongShort)
    market: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.strategy is None:
            self.strategy = RankLongShort()

    def __call__(self, frame: pd.DataFrame, split: str) -> dict[str, float]:
        return evaluate_predictions(
            frame,
            split,
            self.periods_per_year,
            self.costs,
            self.ic_mode,
            strategy=self.strategy,
            market=self.market,
            **self.options,
        )


def aggregate_fold_metrics(fold_metrics: pd.DataFrame) -> dict[str, float]:
    """``test_ic/1d`` over folds -> ``test_ic_mean/1d`` and ``test_ic_std/1d``."""
    out = {}
    for name in fold_metrics.columns:
        base, _, horizon = name.partition("/")
        values = fold_metrics[name].astype(float)
        out[f"{base}_mean/{horizon}" if horizon else f"{base}_mean"] = float(values.mean())
        out[f"{base}_std/{horizon}" if horizon else f"{base}_std"] = float(values.std(ddof=0))
    return out
