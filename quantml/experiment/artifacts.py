"""What the parent run keeps: predictions, report tables, the HTML report, figures.

Paths come from the run layout (:mod:`quantml.contracts.run_layout`), so readers find them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from quantml.contracts import run_layout as L
from quantml.evaluation.figures import importance_figure
from quantml.models.base import Forecaster

FIGURES = "figures"


def stage_artifacts(root: Path, oos: pd.DataFrame, fold_metrics: pd.DataFrame, report, model: Forecaster) -> None:
    """Write the parent run's artifacts into ``root`` (one upload instead of one per file)."""

    def path(artifact: str) -> Path:
        target = root / artifact
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    oos.to_parquet(path(L.OOS_ARTIFACT), index=False)
    fold_metrics.reset_index().to_csv(path(L.FOLD_METRICS_ARTIFACT), index=False)
    report.by_symbol_horizon.to_csv(path(L.REPORT_BY_SYMBOL_HORIZON_ARTIFACT), index=False)
    path(L.REPORT_HTML_ARTIFACT).write_text(report.html, encoding="utf-8")
    for name in report.figures:
        path(f"{FIGURES}/{name}").write_bytes(report.png(name))
    importance = model.feature_importance()
    if importance is not None:
        importance.rename("importance").rename_axis("feature").reset_index().to_csv(
            path(L.FEATURE_IMPORTANCE_ARTIFACT), index=False
        )
        importance_figure(importance).savefig(path(f"{FIGURES}/feature_importance.png"))
    for name, figure in model.figures().items():
        figure.savefig(path(f"{FIGURES}/{name}"))
