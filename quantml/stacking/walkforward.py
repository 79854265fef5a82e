"""Walk-forward training of a combiner over the OOF timeline.

For each development fold ``k >= 1`` of the experts' fold plan, the combiner is fitted on the OOF
rows of earlier folds (``fold < k``) whose labels ended more than the embargo before fold ``k``'s first
test bar (``t1 + embargo < start_k``: purged and embargoed, the lockbox's development rule), and
predicts fold ``k``'s rows. Its ``prob_up`` is calibrated, and its ``q10``/``q90`` made conformal, by
the existing calibrator (:func:`quantml.evaluation.calibration.fit_calibrator`, residual quantiles)
fitted on the combiner's own out-of-fold predictions inside those fit rows
(:func:`quantml.validation.crossfit.crossfit`: each block predicted by a combiner fitted on the other
blocks, purged). ``vol_forecast`` is the experts' mean; ``score``, ``confidence`` and ``action`` come
from :func:`quantml.signals.compute_signals`. Nothing of fold ``k`` or later is read to predict fold ``k``
except fold ``k``'s own expert forecasts (the inputs at prediction time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.evaluation.calibration import fit_calibrator
from quantml.signals import SignalConfig, compute_signals
from quantml.stacking.combiners import expert_column
from quantml.stacking.oof import REALISED
from quantml.stacking.regime import regime_columns
from quantml.validation.crossfit import crossfit

GATE_WEIGHTS = "gate_weights"  # key of a fold record holding a gating combiner's weights (a frame)

Z80 = 1.2815515655446004  # the standard normal 90% quantile: the residual quantiles' starting point


@dataclass(frozen=True)
class StackFold:
    """Stack fold ``k``: the experts' fold ``k`` of the plan, its first and last test bar."""

    fold_id: int
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def stack_folds(plan: dict) -> list[StackFold]:
    """Folds ``k >= 1`` of a walk-forward fold plan (``folds/fold_plan.json``), with their test windows."""
    blocks = {int(b["block"]): b for b in plan.get("blocks", [])}
    out = []
    for fold in plan.get("folds", []):
        k = int(fold["fold_id"])
        if k < 1:
            continue
        tb = [blocks[int(b)] for b in fold["test_blocks"]]
        out.append(StackFold(k, min(pd.Timestamp(b["start"]) for b in tb), max(pd.Timestamp(b["end"]) for b in tb)))
    if not out:
        raise QuantmlInputError(
            "the experts' fold plan has fewer than 2 folds: a stack fits on earlier folds and predicts later ones; "
            "train the experts with validation.n_splits >= 2 (3 or more recommended)"
        )
    return sorted(out, key=lambda f: f.fold_id)


def fit_mask(table: pd.DataFrame, fold: StackFold, embargo: pd.Timedelta) -> np.ndarray:
    """The OOF rows a combiner predicting ``fold`` may be fitted on: earlier folds, labels ended
    more than ``embargo`` before the fold's first test bar."""
    t1 = pd.to_datetime(table["t1"], utc=True)
    return ((table["fold"].to_numpy() < fold.fold_id) & (t1 + embargo < fold.test_start).to_numpy()) & (
        pd.to_datetime(table[TIMESTAMP], utc=True) < fold.test_start
    ).to_numpy()


def _base_frame(rows: pd.DataFrame, experts: list[str], raw: pd.DataFrame) -> pd.DataFrame:
    """The prediction contract's columns for ``rows`` from a combiner's raw heads."""
    out = rows[[SYMBOL, TIMESTAMP, "horizon"]].copy()
    er = raw["expected_return"].to_numpy(np.float64)
    vol = rows[[expert_column(a, "vol_forecast") for a in experts]].to_numpy(np.float64).mean(axis=1)
    out["expected_return"] = er
    out["q10"] = er - Z80 * vol  # rebuilt by the calibrator's residual quantiles
    out["q50"] = er
    out["q90"] = er + Z80 * vol
    out["prob_up"] = raw["prob_up"].to_numpy(np.float64)
    out["vol_forecast"] = vol
    for col in (*REALISED, "t1", "fold"):
        if col in rows.columns:  # the OOF table carries them; a served table (raw panel) does not
            out[col] = rows[col].to_numpy()
    return out


def fit_combiner(
    make: Callable[[], object],
    fit: pd.DataFrame,
    experts: list[str],
    *,
    embargo: pd.Timedelta,
    crossfit_folds: int,
    cfg_evaluation,
):
    """A combiner fitted on ``fit`` (rows of one horizon) and the calibrator of its ``prob_up`` and
    quantiles, fitted on the combiner's own cross-fitted out-of-fold predictions inside ``fit``
    (each of ``crossfit_folds`` blocks predicted by a combiner fitted on the other blocks, purged
    with ``embargo``). ``(combiner, calibrator)``; reads nothing but ``fit``."""
    fit = fit.reset_index(drop=True)
    combiner = make().fit(fit, experts)
    t0 = pd.to_datetime(fit[TIMESTAMP], utc=True).dt.tz_convert(None).to_numpy()
    t1 = pd.to_datetime(fit["t1"], utc=True).dt.tz_convert(None).to_numpy()

    def inner(fit_pos, predict_pos):
        part = fit.iloc[predict_pos]
        return _base_frame(part, experts, make().fit(fit.iloc[fit_pos], experts).predict(part, experts))

    oof = crossfit(np.arange(len(fit)), t0, t1, inner, crossfit_folds, embargo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # too few rows: identity maps, recorded in n_fit
        calibrator = fit_calibrator(oof, cfg_evaluation, residual_quantiles=True)
    return combiner, calibrator


def apply_combiner(combiner, calibrator, rows: pd.DataFrame, experts: list[str], signal: SignalConfig) -> pd.DataFrame:
    """``rows``' stacked forecasts in the prediction contract's layout: the combiner's heads, the
    experts' mean ``vol_forecast``, calibrated, then ``score``, ``confidence``, ``action``."""
    frame = calibrator.transform(_base_frame(rows, experts, combiner.predict(rows, experts)))
    return compute_signals(frame, signal)


def predict_fold(
    make: Callable[[], object],
    table: pd.DataFrame,
    experts: list[str],
    fold: StackFold,
    *,
    embargo: pd.Timedelta,
    crossfit_folds: int,
    cfg_evaluation,
    signal: SignalConfig,
    min_fit_rows: int,
) -> tuple[pd.DataFrame, dict]:
    """Fold ``fold``'s stacked predictions (every horizon) and what was fitted for it."""
    fit_all = fit_mask(table, fold, embargo)
    test_all = table["fold"].to_numpy() == fold.fold_id
    frames, info = [], {"n_fit": 0, "n_test": 0, "fit_start": None, "fit_end": None, "combiner": {}, "calibrator": {}}
    for h in pd.unique(table["horizon"]):
        at_h = table["horizon"].to_numpy() == h
        fit = table[fit_all & at_h].reset_index(drop=True)
        test = table[test_all & at_h]
        if test.empty:
            continue
        if len(fit) < min_fit_rows:
            raise QuantmlInputError(
                f"stack fold {fold.fold_id} ({h}): {len(fit)} OOF row(s) of earlier folds end before its first test "
                f"bar {fold.test_start} (< min_fit_rows={min_fit_rows}); lower min_fit_rows or the embargo, or "
                "train the experts with more data or fewer validation.n_splits"
            )
        combiner, calibrator = fit_combiner(
            make, fit, experts, embargo=embargo, crossfit_folds=crossfit_folds, cfg_evaluation=cfg_evaluation
        )
        frames.append(apply_combiner(combiner, calibrator, test, experts, signal))
        if hasattr(combiner, "weights"):  # a gating combiner: each expert's weight on each row, for the record
            weights = combiner.weights(test, experts).reset_index(drop=True)
            keys = test[[SYMBOL, TIMESTAMP, "horizon", "fold"]].reset_index(drop=True)
            regime = test[regime_columns(test)].reset_index(drop=True)
            info.setdefault(GATE_WEIGHTS, []).append(pd.concat([keys, weights, regime], axis=1))
        t0 = pd.to_datetime(fit[TIMESTAMP], utc=True).dt.tz_convert(None).to_numpy()
        info["n_fit"] += len(fit)
        info["n_test"] += len(test)
        start, end = pd.Timestamp(t0.min(), tz="UTC"), pd.Timestamp(t0.max(), tz="UTC")
        info["fit_start"] = str(min(start, pd.Timestamp(info["fit_start"])) if info["fit_start"] else start)
        info["fit_end"] = str(max(end, pd.Timestamp(info["fit_end"])) if info["fit_end"] else end)
        info["combiner"][str(h)] = combiner.describe() if hasattr(combiner, "describe") else {}
        info["calibrator"][str(h)] = calibrator.to_dict()
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not out.empty:
        out["path"] = 0
    if GATE_WEIGHTS in info:
        info[GATE_WEIGHTS] = pd.concat(info[GATE_WEIGHTS], ignore_index=True)
    return out, info


def gate_weights(infos: dict[int, dict]) -> pd.DataFrame | None:
    """Take the gate weights out of :func:`walk_forward`'s per-fold records (they are frames, the
    rest is JSON): one row per stacked row, ``symbol, timestamp, horizon, fold``, one column per
    expert, then the regime inputs. None when the combiner has no weights."""
    frames = [info.pop(GATE_WEIGHTS) for info in infos.values() if GATE_WEIGHTS in info]
    return pd.concat(frames, ignore_index=True) if frames else None


def walk_forward(
    make: Callable[[], object],
    table: pd.DataFrame,
    experts: list[str],
    folds: list[StackFold],
    **kwargs,
) -> tuple[pd.DataFrame, dict[int, dict]]:
    """Every stack fold's predictions, concatenated in fold order, and per-fold fit records."""
    frames, infos = [], {}
    for fold in folds:
        frame, info = predict_fold(make, table, experts, fold, **kwargs)
        if not frame.empty:
            frames.append(frame)
        infos[fold.fold_id] = info
    if not frames:
        raise QuantmlInputError("no stack fold has OOF rows to predict; check the experts' out-of-fold predictions")
    return pd.concat(frames, ignore_index=True), infos
