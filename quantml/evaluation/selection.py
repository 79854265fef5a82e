"""The model-selection metric (``evaluation.selection_metric``) and its direction (lower or higher is better).

These keys used to be ``evaluation.monitor`` / ``evaluation.monitor_direction``; "monitor"
now means ``quantml monitor`` (docs/monitoring.md). A config that still sets an old key is refused
by :func:`check_selection_keys` with the new key's name. The run layout keeps its names (the
parent's ``best_monitor`` metric, the ``quantml.monitor`` / ``quantml.best_monitor`` tags), so
runs logged before the rename read the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, metric_name, require_columns

# Metric keys where a smaller value is better; every other key is higher-is-better.
LOWER_IS_BETTER = frozenset(
    {
        "rmse",
        "mae",
        "ece",
        "ece_mass",
        "brier",
        "log_loss",
        "pinball",
        "pinball_q10",
        "pinball_q50",
        "pinball_q90",
        "turnover",
        "psi",
        "ece_raw",
        "brier_raw",
        "log_loss_raw",
    }
)
SPLITS = ("val", "test", "oos")
SELECTION_METRIC = "selection_metric"
SELECTION_METRIC_DIRECTION = "selection_metric_direction"
# old key -> new key (evaluation.*)
RENAMED_KEYS = {"monitor": SELECTION_METRIC, "monitor_direction": SELECTION_METRIC_DIRECTION}


def check_selection_keys(cfg_evaluation) -> None:
    """Refuse an ``evaluation`` block that still sets a renamed key (``monitor``, ``monitor_direction``)."""
    if cfg_evaluation is None or not hasattr(cfg_evaluation, "get"):
        return
    for old, new in RENAMED_KEYS.items():
        if old in cfg_evaluation:
            raise QuantmlInputError(
                f"evaluation.{old} was renamed evaluation.{new} (the model-selection metric; `quantml monitor` "
                f"is the post-promotion monitor now): write evaluation.{new}={cfg_evaluation.get(old)} instead"
            )


def monitor_key(monitor: str) -> str:
    """``"val_rmse" -> "rmse"`` (the metric key of a monitor name ``<split>_<metric>``)."""
    split, _, key = str(monitor).partition("_")
    if split not in SPLITS or not key:
        raise QuantmlInputError(
            f"monitor={monitor!r} must look like '<split>_<metric>' with split in {SPLITS}, "
            "e.g. val_rmse (regression head) or val_ap (direction head)"
        )
    return key


def higher_is_better(monitor: str) -> bool:
    """True for IC, AP, Sharpe... (``mode=max``); False for RMSE, ECE, Brier... (``mode=min``)."""
    return monitor_key(monitor) not in LOWER_IS_BETTER


def monitor_mode(monitor: str) -> str:
    """``"max"`` or ``"min"`` (the Lightning / Optuna direction keyword)."""
    return "max" if higher_is_better(monitor) else "min"


def monitor_for(cfg_evaluation, task: str = "return") -> str:
    """The configured selection metric of a head: ``task="return"`` -> ``selection_metric`` (default
    ``val_rmse``), ``"direction"`` -> ``selection_metric_direction`` (default ``val_ap``)."""
    if task not in ("return", "direction"):
        raise QuantmlInputError(f"task={task!r} is unknown; use 'return' or 'direction'")
    check_selection_keys(cfg_evaluation)
    key, default = (SELECTION_METRIC, "val_rmse") if task == "return" else (SELECTION_METRIC_DIRECTION, "val_ap")
    value = cfg_evaluation.get(key, default) if cfg_evaluation is not None else default
    monitor_key(value)
    return str(value)


def best_monitor(fold_metrics: pd.DataFrame, monitor: str, horizons) -> tuple[str, float]:
    """The run's model-selection score: ``(name, value)``.

    ``value`` averages ``<monitor>/<h>`` over folds (NaN-aware), then over ``horizons``;
    ``name`` is ``"<monitor>_mean"`` (log it on the parent run; compare runs with
    :func:`higher_is_better`). Missing horizons raise :class:`QuantmlInputError`.
    """
    monitor_key(monitor)
    columns = [metric_name(*monitor.split("_", 1), str(h)) for h in horizons]
    require_columns(
        fold_metrics,
        columns,
        f"fold_metrics (monitor={monitor!r})",
        "log the validation metrics of every horizon per fold",
    )
    per_horizon = fold_metrics[columns].astype(np.float64).mean(axis=0, skipna=True)
    value = float(per_horizon.mean()) if per_horizon.notna().any() else float("nan")
    return f"{monitor}_mean", value


selection_metric_for = monitor_for  # the name that says what it is
