"""The keyed, partitioned parquet logs of quantml.serving.logs: a key is never written twice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.contracts.logs import FILL_COLUMNS, PREDICTION_LOG, PREDICTION_LOG_COLUMNS
from quantml.serving.logs import append_log, read_log


def _rows(n: int, symbol: str = "BTC", version: str = "1", start: str = "2026-01-01") -> pd.DataFrame:
    frame = pd.DataFrame({c: np.nan for c in PREDICTION_LOG_COLUMNS}, index=range(n))
    frame["timestamp"] = pd.date_range(start, periods=n, freq="4h", tz="UTC")
    frame["symbol"], frame["horizon"], frame["action"] = symbol, "1h", "long"
    frame["model_name"], frame["model_version"] = "m", version
    frame["schema_version"], frame["data_version"], frame["source"] = "1", "abc", "paper"
    frame["logged_at"] = pd.Timestamp("2026-01-10", tz="UTC")
    frame["expected_return"] = np.arange(n, dtype=float)
    return frame


def test_rows_whose_key_is_logged_are_never_written_again(tmp_path):
    first = _rows(30)
    assert append_log(tmp_path, PREDICTION_LOG, first) == 30
    assert append_log(tmp_path, PREDICTION_LOG, first) == 0
    # a rerun that overlaps: only the new symbol's and the new version's rows are written
    again = pd.concat([first, _rows(30, symbol="ETH"), _rows(5, version="2")])
    assert append_log(tmp_path, PREDICTION_LOG, again) == 35
    log = read_log(tmp_path, PREDICTION_LOG)
    assert len(log) == 65
    assert not log.duplicated(["model_name", "model_version", "symbol", "timestamp", "horizon"]).any()
    assert str(log["timestamp"].dtype).startswith("datetime64") and str(log["timestamp"].dt.tz) == "UTC"
    # one hive partition per UTC date, filters pushed down
    dates = sorted(p.name for p in (tmp_path / PREDICTION_LOG).iterdir())
    assert dates[0] == "date=2026-01-01" and len(dates) == 5
    assert len(read_log(tmp_path, PREDICTION_LOG, filters=[("symbol", "=", "ETH")])) == 30
    assert len(read_log(tmp_path, PREDICTION_LOG, filters=[("date", ">=", "2026-01-05")])) == 12  # 6 bars x BTC, ETH
    np.testing.assert_array_equal(
        log[(log.symbol == "BTC") & (log.model_version == "1")]["expected_return"].to_numpy(), np.arange(30.0)
    )


def test_duplicates_inside_one_append_are_written_once_and_bad_rows_refused(tmp_path):
    rows = _rows(4)
    assert append_log(tmp_path, PREDICTION_LOG, pd.concat([rows, rows])) == 4
    assert len(read_log(tmp_path, PREDICTION_LOG)) == 4
    with pytest.raises(QuantmlInputError, match="lack"):
        append_log(tmp_path, PREDICTION_LOG, rows.drop(columns=["model_version"]))
    with pytest.raises(QuantmlInputError, match="unknown log"):
        read_log(tmp_path, "orders")


def test_an_empty_log_reads_as_an_empty_frame_with_the_log_columns(tmp_path):
    log = read_log(tmp_path, "executions")
    assert log.empty
    assert list(log.columns) == list(FILL_COLUMNS)
