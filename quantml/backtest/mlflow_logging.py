"""Log a backtest to an MLflow run: summary metrics, per-bar table and figures.

The run is given as ``run=``: a run id, or a run object with ``run_id`` (and optionally
``client``, e.g. :class:`quantml.tracking.writer.TrackedRun`); without it, the active fluent run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
from mlflow.entities import Metric

from quantml.backtest.figures import equity_figure, positions_figure
from quantml.backtest.vectorised import BacktestResult
from quantml.contracts import metric_name

# performance_stats key -> MLflow metric key (after-cost figures get the contract's names)
STAT_NAMES = {
    "sharpe": "sharpe_after_cost",
    "ann_return": "ann_return",
    "ann_vol": "ann_vol",
    "max_drawdown": "max_drawdown",
    "calmar": "calmar",
    "turnover": "turnover",
}


def backtest_metrics(result: BacktestResult, prefix: str) -> dict[str, float]:
    """``{prefix}_sharpe_after_cost`` ... plus per horizon bucket ``{prefix}_sharpe_after_cost/<h>``."""
    out = {f"{prefix}_{STAT_NAMES[k]}": float(v) for k, v in result.stats.items() if k in STAT_NAMES}
    for h, stats in result.horizon_stats().items():
        for k in ("sharpe", "ann_return", "max_drawdown"):
            out[metric_name(prefix, STAT_NAMES[k], str(h))] = float(stats[k])
    # MLflow stores NaN but not inf
    return {k: (v if v == v and abs(v) != float("inf") else float("nan")) for k, v in out.items()}


def _target(run) -> tuple[mlflow.MlflowClient, str]:
    if run is None:
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("log_backtest: no run= given and no active MLflow run")
        return mlflow.MlflowClient(), active.info.run_id
    if isinstance(run, str):
        return mlflow.MlflowClient(), run
    return getattr(run, "client", None) or mlflow.MlflowClient(), run.run_id


def log_backtest(
    result: BacktestResult,
    prefix: str,
    per_bar_steps: bool = True,
    split_at=None,
    log_stats: bool = True,
    figures: bool = True,
    run=None,
) -> dict[str, float]:
    """Log ``result`` under ``prefix`` to ``run`` (default: the active run); return the metrics logged.

    Artifacts: ``backtest/<prefix>_bars.csv`` (per-bar gross, cost, pnl, turnover, equity,
    drawdown and positions), ``figures/<prefix>_equity.png``, ``figures/<prefix>_positions.png``.
    ``log_stats=False`` skips the summary metrics (the caller logs its own), ``figures=False``
    the figures.
    With ``per_bar_steps`` the equity and drawdown curves are also stepped metrics
    (``<prefix>_equity``, step = bar number) for the MLflow UI's charts.
    """
    client, run_id = _target(run)
    metrics = backtest_metrics(result, prefix)
    if log_stats:
        stamp = int(time.time() * 1000)
        rows = [Metric(k, v, stamp, 0) for k, v in metrics.items() if v == v]
        for i in range(0, len(rows), 1000):
            client.log_batch(run_id, metrics=rows[i : i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        table = result.bars.join(result.positions.add_prefix("pos_"))
        if result.horizon_pnl is not None:
            table = table.join(result.horizon_pnl.add_prefix("pnl_"))
        path = Path(tmp) / f"{prefix}_bars.csv"
        table.to_csv(path)
        client.log_artifact(run_id, str(path), "backtest")
        if figures:
            for name, fig in (
                (f"{prefix}_equity.png", equity_figure(result, prefix, split_at)),
                (f"{prefix}_positions.png", positions_figure(result, f"{prefix} positions")),
            ):
                client.log_figure(run_id, fig, f"figures/{name}")
                plt.close(fig)
    if per_bar_steps:
        rows = []
        for step, (eq, dd) in enumerate(zip(result.bars["equity"], result.bars["drawdown"])):
            rows += [Metric(f"{prefix}_equity", float(eq), 0, step), Metric(f"{prefix}_drawdown", float(dd), 0, step)]
        for i in range(0, len(rows), 1000):
            client.log_batch(run_id, metrics=rows[i : i + 1000])
    return metrics
