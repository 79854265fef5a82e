"""What the parent run keeps: predictions, report tables, the HTML report, figures."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from quantml.evaluation.figures import importance_figure
from quantml.models.base import Forecaster


def stage_artifacts(root: Path, oos: pd.DataFrame, fold_metrics: pd.DataFrame, report, model: Forecaster) -> None:
    """Write the parent run's artifacts into ``root`` (one upload instead of one per file)."""
    for folder in ("predictions", "report", "figures"):
        (root / folder).mkdir()
    oos.to_parquet(root / "predictions" / "oos_predictions.parquet", index=False)
    fold_metrics.reset_index().to_csv(root / "report" / "fold_metrics.csv", index=False)
    report.by_symbol_horizon.to_csv(root / "report" / "report_by_symbol_horizon.csv", index=False)
    (root / "report" / "report.html").write_text(report.html, encoding="utf-8")
    for name in report.figures:
        (root / "figures" / name).write_bytes(report.png(name))
    importance = model.feature_importance()
    if importance is not None:
        importance.rename("importance").rename_axis("feature").reset_index().to_csv(
            root / "report" / "feature_importance.csv", index=False)
        importance_figure(importance).savefig(root / "figures" / "feature_importance.png")
    for name, figure in model.figures().items():
        figure.savefig(root / "figures" / name)
