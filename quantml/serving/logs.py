"""Append-only, keyed, partitioned parquet logs (``quantml.contracts.logs``): write and read.

:func:`append_log` writes the rows of a frame whose key is not yet in the log as one new part
file per date partition (written to a temporary name, then renamed: a reader never sees half a
file), so rewriting the same rows is a no-op. :func:`read_log` reads a log back as one frame,
optionally filtered (pushed down to the partitions by pyarrow).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

from quantml.contracts import TIMESTAMP, QuantmlInputError
from quantml.contracts.logs import LOG_COLUMNS, LOG_KEYS, PARTITION


def log_path(log_dir: str | Path, log: str) -> Path:
    if log not in LOG_COLUMNS:
        raise QuantmlInputError(f"unknown log {log!r}; one of {sorted(LOG_COLUMNS)}")
    return Path(log_dir) / log


def _key_frame(frame: pd.DataFrame, key) -> pd.MultiIndex:
    parts = {}
    for k in key:
        col = frame[k]
        if pd.api.types.is_datetime64_any_dtype(col) or k in (TIMESTAMP, "decided_at"):
            col = pd.to_datetime(col, utc=True)
        parts[k] = col.astype(str) if k not in (TIMESTAMP, "decided_at") else col
    return pd.MultiIndex.from_frame(pd.DataFrame(parts))


def read_log(log_dir: str | Path, log: str, filters=None, columns=None) -> pd.DataFrame:
    """The whole log (empty frame with the log's columns when none was written yet).

    ``filters``: pyarrow filter expressions or DNF tuples, e.g. ``[("model_version", "=", "3")]``
    or ``[("date", ">=", "2026-11-01")]``. Rows come back sorted by the log's key."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    path = log_path(log_dir, log)
    cols = list(LOG_COLUMNS[log])
    if not path.exists() or not any(path.rglob("*.parquet")):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    table = dataset.to_table(
        columns=None if columns is None else list(columns),
        filter=pq.filters_to_expression(filters) if isinstance(filters, list) else filters,
    )
    frame = table.to_pandas()
    frame = frame.drop(columns=[PARTITION], errors="ignore")
    for c in (TIMESTAMP, "decided_at", "logged_at"):
        if c in frame.columns:
            frame[c] = pd.to_datetime(frame[c], utc=True)
    key = [k for k in LOG_KEYS[log] if k in frame.columns]
    return frame.sort_values(key, kind="mergesort").reset_index(drop=True) if key else frame


def append_log(log_dir: str | Path, log: str, frame: pd.DataFrame) -> int:
    """Append the rows of ``frame`` whose key is not in the log yet; returns how many were written.

    ``frame`` must carry every column of the log (``quantml.contracts.logs.LOG_COLUMNS[log]``);
    rows duplicated inside ``frame`` are written once."""
    cols = list(LOG_COLUMNS[log])
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise QuantmlInputError(f"{log} log rows lack {missing}; build them with the columns of LOG_COLUMNS[{log!r}]")
    if frame.empty:
        return 0
    key = list(LOG_KEYS[log])
    new = frame[cols].copy()
    for c in (TIMESTAMP, "decided_at", "logged_at"):
        if c in new.columns:
            new[c] = pd.to_datetime(new[c], utc=True)
    new = new[~_key_frame(new, key).duplicated()]
    # the timestamp is part of every key and picks the partition: only those partitions can hold a clash
    dates = new[TIMESTAMP].dt.strftime("%Y-%m-%d")
    old = read_log(log_dir, log, filters=[(PARTITION, "in", sorted(set(dates)))], columns=key)
    if len(old):
        keep = ~_key_frame(new, key).isin(_key_frame(old, key))
        new, dates = new[keep], dates[keep]
    if new.empty:
        return 0
    path = log_path(log_dir, log)
    for date, part in new.groupby(dates.to_numpy(), sort=True):
        folder = path / f"{PARTITION}={date}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{name}.tmp"
        part.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, folder / name)
    return len(new)
