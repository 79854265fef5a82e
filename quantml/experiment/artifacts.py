"""What the parent run keeps: predictions, report tables, the HTML report, figures.

Paths come from the run layout (:mod:`quantml.contracts.run_layout`), so readers find them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantml.contracts import run_layout as L
from quantml.evaluation.figures import importance_figure
from quantml.models.base import Forecaster

FIGURES = "figures"
# rows converted to Arrow at a time when a prediction frame is written: a frame of tens of millions
# of rows is never copied whole into an Arrow table
PARQUET_CHUNK_ROWS = 1 << 21


def write_parquet(frame: pd.DataFrame, path: Path, chunk_rows: int = PARQUET_CHUNK_ROWS) -> None:
    """``frame.to_parquet(path, index=False)``, converted and written ``chunk_rows`` rows at a time
    (one row group each); read back it is the same frame."""
    if len(frame) <= chunk_rows:
        frame.to_parquet(path, index=False)
        return
    writer = None
    try:
        for start in range(0, len(frame), chunk_rows):
            table = pa.Table.from_pandas(frame.iloc[start : start + chunk_rows], preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _staged(root: Path, artifact: str) -> Path:
    target = root / artifact
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def stage_oos(root: Path, oos: pd.DataFrame) -> Path:
    """Write the out-of-sample frame into ``root`` at its artifact path, returned. A run writes it as
    soon as it is reported on and drops it while its final model fits: on a large panel it is
    gigabytes (:func:`read_staged_oos` reads it back)."""
    target = _staged(root, L.OOS_ARTIFACT)
    write_parquet(oos, target)
    return target


def read_staged_oos(path: Path) -> pd.DataFrame:
    """The frame :func:`stage_oos` wrote, equal to it (categories, dtypes and order kept)."""
    return pd.read_parquet(path)


def stage_artifacts(root: Path, fold_metrics: pd.DataFrame, report, model: Forecaster) -> None:
    """Write the parent run's other artifacts into ``root`` (one upload instead of one per file)."""

    def path(artifact: str) -> Path:
        return _staged(root, artifact)

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
