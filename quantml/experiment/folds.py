"""Train each fold on its purged training part, score it, log it as a nested run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from quantml.contracts import run_layout as L
from quantml.evaluation.diagnostics import diagnostic_metrics
from quantml.evaluation.drift import fold_drift
from quantml.evaluation.evaluate import Scorer
from quantml.evaluation.per_symbol import per_symbol_metrics
from quantml.experiment.artifacts import FIGURES
from quantml.experiment.callbacks import FoldCallback
from quantml.experiment.fitting import (
    FoldCapacity,
    compact_predictions,
    fit_fold_model,
    prediction_frame,
)
from quantml.experiment.prepare import PreparedData, time_range
from quantml.features.memory import mark, trim
from quantml.signals import SignalConfig, compute_signals
from quantml.tracking import RunWriter, TrackedRun

log = logging.getLogger(__name__)


def train_fold(
    cfg: DictConfig, prep: PreparedData, splitter, fold, signal: SignalConfig, run: TrackedRun
) -> tuple[pd.DataFrame, pd.DataFrame | None, FoldCapacity]:
    """Fit one fold on its purged training part (early stopping and calibration on the two
    disjoint parts of its inner validation slice); returns its test frame, its validation
    frame (the calibration part, calibrated out of fold) and the model's capacity with its row count."""
    train = prep.samples[fold.train]
    test = prep.samples[fold.test]
    fit_pos, valid_pos = splitter.inner_split(fold, prep.data.t0[prep.samples], prep.data.t1[prep.samples])
    fit_rows, valid_rows = prep.samples[fit_pos], prep.samples[valid_pos]
    (tr0, tr1), (va0, va1), (te0, te1) = (time_range(prep.data, r) for r in (fit_rows, valid_rows, test))
    fitted = fit_fold_model(cfg, prep, splitter, fit_rows, valid_rows)
    run.log_params(
        {
            L.PARAM_FOLD_ID: fold.fold_id,
            "train_start": tr0,
            "train_end": tr1,
            "valid_start": va0,
            "valid_end": va1,
            L.PARAM_TEST_START: te0,
            L.PARAM_TEST_END: te1,
            "n_train": len(fit_rows),
            "n_valid": len(valid_rows),
            "n_early_stopping": len(fitted.stop_rows),
            "n_calibration": len(fitted.calibration_rows),
            "n_test": len(test),
            "n_train_before_inner_split": len(train),
        }
    )
    mark(f"fold {fold.fold_id}: test frame")
    test_frame = prediction_frame(fitted.model, prep.data.subset(test), prep.realised)
    _log_model_diagnostics(run, fitted.model, prep.data.subset(test))
    # the frame is this fold's own: calibrated and given its signals in place (no copy of a long frame)
    if fitted.calibrator is not None:
        test_frame = fitted.calibrator.transform(test_frame, copy=False)
    test_frame = compute_signals(test_frame, signal, copy=False)
    test_frame["fold"] = fold.fold_id
    test_frame["path"] = np.tile(np.asarray(fold.test_paths), len(prep.data.horizons))
    # what the OOS frame keeps of every fold
    test_frame = compact_predictions(test_frame)
    valid_frame = fitted.valid_frame
    if valid_frame is not None:
        valid_frame = compact_predictions(compute_signals(valid_frame, signal))
    return test_frame, valid_frame, FoldCapacity(fitted.capacity, len(fit_rows))


def _log_model_diagnostics(run: TrackedRun, model, test) -> None:
    """A backbone's own per-fold figures and metrics on the fold's test block: the hybrid's attention
    heatmap (``fold_figures``), the distilled model's teacher-vs-student figures (``fold_metrics``)."""
    import matplotlib.pyplot as plt

    if hasattr(model, "fold_metrics"):
        run.log_metrics(model.fold_metrics(test))
    for name, figure in (model.fold_figures() if hasattr(model, "fold_figures") else {}).items():
        run.log_figure(figure, f"{FIGURES}/{name}")
        plt.close(figure)


def score_fold(
    run: TrackedRun,
    test_frame: pd.DataFrame,
    valid_frame: pd.DataFrame | None,
    score: Scorer,
    extra: dict[str, float],
    keep: Callable[[pd.DataFrame], None] | None = None,
) -> dict[str, float]:
    """Score a fold's predictions, log them, hand the test frame to ``keep`` and end the fold's run
    (runs on the scoring thread)."""
    try:
        mark("fold scoring")
        metrics = score(test_frame, "test")
        metrics.update(diagnostic_metrics(test_frame, "test"))  # a fusion model's gate (docs/fusion.md)
        if valid_frame is not None:
            metrics.update(score(valid_frame, "val"))
        metrics.update(extra)
        run.log_metrics(metrics)
        # per symbol, for a route map's entries (a version serving some symbols is judged on them)
        run.log_text(per_symbol_metrics(test_frame).to_csv(index=False), L.PER_SYMBOL_ARTIFACT)
        if keep is not None:
            keep(test_frame)
    except BaseException as exc:
        run.fail(exc)
        raise
    run.end("FINISHED")
    mark("fold scored")
    return metrics


def _notify(callbacks: list[FoldCallback], fold_id: int, n_folds: int, metrics: dict[str, float]) -> None:
    for callback in callbacks:
        try:
            callback.on_fold_end(fold_id, n_folds, metrics)
        except Exception as exc:  # noqa: BLE001 - a progress line must not fail the run
            log.warning("fold callback %s failed: %s", type(callback).__name__, exc)


# long rows of a fold's frame above which its scoring does not overlap the next fit: a 1M-row panel's
# folds (about 0.8M rows) overlap, the 8.4M-row panel's (about 4.7M rows) wait
OVERLAP_MAX_ROWS = 2_000_000


def run_folds(
    cfg: DictConfig,
    writer: RunWriter,
    parent: TrackedRun,
    prep: PreparedData,
    splitter,
    folds,
    signal: SignalConfig,
    score: Scorer,
    scoring: ThreadPoolExecutor,
    keep: Callable[[pd.DataFrame], None],
    callbacks: list[FoldCallback] = (),
):
    """Train folds one after another on this thread while the previous fold is scored and
    logged on ``scoring``: model fitting (LightGBM, torch) releases the GIL, so on two
    cores the quant evaluation and MLflow writes cost little wall time.

    Each fold's test frame goes to ``keep`` on the scoring thread, in fold order (the run writes
    it to the OOS file): no more than the last two folds' frames are held here. A fold whose frame
    has more than :data:`OVERLAP_MAX_ROWS` rows is scored before the next fold starts fitting
    (a large panel's frame, its scoring and the next fit would stack; the figures are the same).

    Returns the fold metrics table (index ``fold``) and the fold models' :class:`FoldCapacity`
    (fold order; the final model grows their row-scaled median).
    """
    bins = int(cfg.evaluation.get("psi_bins", 10))
    blocking = [c for c in callbacks if getattr(c, "blocking", False)]
    background = [c for c in callbacks if not getattr(c, "blocking", False)]
    previous, pending, capacities, last_rows = None, [], [], 0
    for fold in folds:
        if pending and last_rows > OVERLAP_MAX_ROWS:
            wait([pending[-1]])  # a long frame and its scoring do not stack under the next fit
        # the last fold's fit left its freed temporaries in glibc's heap (bins, forecasts, frames):
        # given back before the next, larger fit instead of stacking under it
        trim(f"fold {fold.fold_id}")
        child = writer.start_fold(parent, fold.fold_id, np.asarray(fold.test_paths).tolist())
        try:
            test_frame, valid_frame, capacity = train_fold(cfg, prep, splitter, fold, signal, child)
        except BaseException as exc:
            child.fail(exc)
            raise
        drift = fold_drift(previous, test_frame, prep.data.horizons, bins) if previous is not None else {}
        previous = test_frame[["horizon", "expected_return"]]  # what the next fold's drift reads
        capacities.append(capacity)
        future = scoring.submit(score_fold, child, test_frame, valid_frame, score, drift, keep)
        last_rows = len(test_frame)
        del test_frame, valid_frame
        if background:
            future.add_done_callback(
                lambda f, i=fold.fold_id: f.exception() is None and _notify(background, i, len(folds), f.result())
            )
        pending.append(future)
        for callback in blocking:  # e.g. pruning needs this fold's score now
            callback.on_fold_end(fold.fold_id, len(folds), future.result())
    rows = [{"fold": fold.fold_id, **future.result()} for fold, future in zip(folds, pending)]
    return pd.DataFrame(rows).set_index("fold"), capacities
