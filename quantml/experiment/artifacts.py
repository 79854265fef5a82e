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
from quantml.features.memory import trim
from quantml.models.base import Forecaster

FIGURES = "figures"
# rows converted to Arrow at a time when a prediction frame is written: a frame of tens of millions
# of rows is never copied whole into an Arrow table
PARQUET_CHUNK_ROWS = 1 << 21


class ParquetAppender:
    """One parquet file written frame after frame (each converted to Arrow ``chunk_rows`` rows at a
    time, one row group each): read back it is the frames concatenated in order (``ignore_index``),
    with the first frame's columns and dtypes, which every later frame must have."""

    def __init__(self, path: Path, chunk_rows: int = PARQUET_CHUNK_ROWS) -> None:
        self.path, self.chunk_rows = Path(path), max(int(chunk_rows), 1)
        self._writer: pq.ParquetWriter | None = None
        self._empty: pd.DataFrame | None = None

    def append(self, frame: pd.DataFrame) -> None:
        if self._empty is None:
            self._empty = frame.iloc[:0].copy()  # iloc[:0] alone is a view: it would keep the whole first frame
        for start in range(0, len(frame), self.chunk_rows):
            table = pa.Table.from_pandas(frame.iloc[start : start + self.chunk_rows], preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.path, table.schema)
            elif not table.schema.equals(self._writer.schema, check_metadata=False):
                raise ValueError(
                    f"{self.path.name}: a frame with columns {table.schema} does not match the first "
                    f"frame's {self._writer.schema}"
                )
            self._writer.write_table(table)

    def close(self) -> Path:
        """Finish the file (an empty frame's columns when no row was appended); returns its path."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif not self.path.exists():
            (self._empty if self._empty is not None else pd.DataFrame()).to_parquet(self.path, index=False)
        return self.path


def write_parquet(frame: pd.DataFrame, path: Path, chunk_rows: int = PARQUET_CHUNK_ROWS) -> None:
    """``frame.to_parquet(path, index=False)``, converted and written ``chunk_rows`` rows at a time
    (one row group each); read back it is the same frame."""
    if len(frame) <= chunk_rows:
        frame.to_parquet(path, index=False)
        return
    appender = ParquetAppender(path, chunk_rows)
    try:
        appender.append(frame)
    finally:
        appender.close()


def _staged(root: Path, artifact: str) -> Path:
    target = root / artifact
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def oos_appender(root: Path) -> ParquetAppender:
    """The out-of-sample frame's file in ``root`` at its artifact path, written fold by fold as each
    fold is scored: a run never holds every fold's predictions while it still holds the panel (on a
    large panel both are gigabytes). :func:`read_staged_oos` reads it back once the panel is gone."""
    return ParquetAppender(_staged(root, L.OOS_ARTIFACT))


def stage_oos(root: Path, oos: pd.DataFrame) -> Path:
    """Write a whole out-of-sample frame into ``root`` at its artifact path, returned."""
    appender = oos_appender(root)
    try:
        appender.append(oos)
    finally:
        appender.close()
    return appender.path


def read_staged_oos(path: Path) -> pd.DataFrame:
    """The frame :func:`stage_oos` (or :func:`oos_appender`) wrote, equal to it (categories, dtypes and
    order kept). Read one column at a time, each converted and its Arrow buffers given back before the
    next: the peak is the frame plus about one column (a whole-file read, even converted with
    ``self_destruct``, peaked at 2.7x the out-of-fold frame of an 8.4M-row panel: the run's peak)."""
    trim()  # what writing the file left in pyarrow's pool
    columns = {}
    for name in pq.read_schema(path).names:
        table = pq.read_table(path, columns=[name])
        columns[name] = table.to_pandas(split_blocks=True, self_destruct=True)[name]
        del table
        trim()
    frame = pd.DataFrame(columns, copy=False)
    trim("oos frame read back")
    return frame


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
