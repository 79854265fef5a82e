"""Evaluation like a quant: IC family, after-cost backtest, calibration, drift, reports.

``quantml.evaluation.report`` (matplotlib) is imported on demand, not here, so serving
code that only needs the calibrator stays light.
"""

from quantml.evaluation.calibration import CalibrationSettings, Calibrator, fit_calibrator
from quantml.evaluation.drift import population_stability_index, prediction_drift
from quantml.evaluation.evaluate import evaluate_predictions, evaluation_options, horizon_metrics
from quantml.evaluation.metrics import ic_mode_for, ic_series
from quantml.evaluation.overfitting import (
    DeflatedSharpe,
    PBOResult,
    deflated_sharpe,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    pbo_cscv,
    probabilistic_sharpe_ratio,
)
from quantml.evaluation.selection import (
    best_monitor,
    check_selection_keys,
    higher_is_better,
    monitor_for,
    monitor_mode,
    selection_metric_for,
)

__all__ = [
    "Calibrator",
    "CalibrationSettings",
    "DeflatedSharpe",
    "PBOResult",
    "best_monitor",
    "check_selection_keys",
    "deflated_sharpe",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "evaluate_predictions",
    "evaluation_options",
    "fit_calibrator",
    "higher_is_better",
    "horizon_metrics",
    "ic_mode_for",
    "ic_series",
    "monitor_for",
    "monitor_mode",
    "pbo_cscv",
    "population_stability_index",
    "prediction_drift",
    "probabilistic_sharpe_ratio",
    "selection_metric_for",
]
