"""Out-of-sample prediction frames are compact (categorical keys, float32 forecasts) and hold the same
values as the contract layout of ``Forecast.to_frame``, up to float32 rounding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts.schema import FORECAST_FIELDS
from quantml.experiment.artifacts import ParquetAppender, read_staged_oos, stage_oos, write_parquet
from quantml.experiment.fitting import FLOAT64_COLUMNS, compact_predictions, prediction_frame
from quantml.models.ridge import RidgeForecaster
from quantml.signals import SignalConfig, compute_signals
from tests.unit.test_models_tabular import HORIZONS, planted_panel


def _realised(n: int) -> pd.DataFrame:
    realised = pd.DataFrame(
        {
            f"{name}@{h}": np.arange(n) * (10 if h == "4h" else 1) + k / 10 + 1e-9
            for h in HORIZONS
            for k, name in enumerate(("ret", "ret_after_cost", "dir", "vol"))
        }
    )
    realised["ret_next_bar"] = -np.arange(n, dtype=float) / 3
    return realised


def _reversed_symbols_panel():
    """A panel whose code table is not sorted (codes 0, 1, 2 name S2, S1, S0)."""
    data = planted_panel(n_per_symbol=50, n_symbols=3)
    data.symbols = ["S2", "S1", "S0"]
    data.keys["symbol"] = np.asarray(data.symbols)[data.symbol_codes]
    return data


def test_prediction_frame_is_compact_and_equals_the_contract_layout():
    data = _reversed_symbols_panel()
    model = RidgeForecaster(HORIZONS).fit(data.subset(np.arange(data.n_rows)))
    rows = np.array([1, 7, 60, 61, 120, 149])
    part = data.subset(rows)
    frame = prediction_frame(model, part, _realised(data.n_rows))
    wide = model.predict(part).to_frame(part.keys)

    assert isinstance(frame["symbol"].dtype, pd.CategoricalDtype)
    assert list(frame["symbol"].cat.categories) == ["S0", "S1", "S2"]  # sorted, whatever the codes
    assert list(frame["horizon"].cat.categories) == sorted(HORIZONS)
    assert list(frame["symbol"].astype(str)) == list(wide["symbol"].astype(str))
    assert list(frame["horizon"].astype(str)) == list(wide["horizon"].astype(str))
    pd.testing.assert_series_equal(frame["timestamp"], wide["timestamp"])
    for name in FORECAST_FIELDS:
        expected = np.float64 if name in FLOAT64_COLUMNS else np.float32
        assert frame[name].dtype == expected, name
        np.testing.assert_allclose(frame[name].to_numpy(np.float64), wide[name], rtol=1e-6, atol=1e-9)
    assert frame["prob_up"].dtype == np.float64 and frame["ret"].dtype == np.float64
    np.testing.assert_array_equal(frame.loc[frame.horizon == "4h", "ret"], rows * 10 + 1e-9)  # lossless
    assert frame["dir"].dtype == np.float32


def test_fold_frames_concatenate_once_without_falling_back_to_strings(tmp_path):
    data = _reversed_symbols_panel()
    realised = _realised(data.n_rows)
    model = RidgeForecaster(HORIZONS).fit(data.subset(np.arange(data.n_rows)))
    signal = SignalConfig.build()
    frames = []
    for fold, rows in enumerate((np.arange(0, 40), np.arange(100, 150))):  # the second has no S0, S1 rows
        frame = compute_signals(prediction_frame(model, data.subset(rows), realised), signal)
        frame["fold"] = fold
        frame["path"] = 0
        frames.append(compact_predictions(frame))
    assert frames[0]["score"].dtype == np.float32 and frames[0]["fold"].dtype == np.int16
    assert isinstance(frames[0]["action"].dtype, pd.CategoricalDtype)
    oos = pd.concat(frames, ignore_index=True)
    for name in ("symbol", "horizon", "action"):
        assert isinstance(oos[name].dtype, pd.CategoricalDtype), name
    assert set(oos["symbol"].astype(str)) == {"S0", "S2"}
    # every float column but the realised returns and the probability is float32
    wide = {c for c in oos.columns if oos[c].dtype == np.float64}
    assert wide == {"ret", "ret_after_cost", "vol", "ret_next_bar", "prob_up"}
    # far below the float64-and-strings frame (about 185 bytes a row)
    assert oos.memory_usage(deep=True).sum() / len(oos) < 110
    # the run drops the frame while its final model fits and reads it back: the same frame, categories
    # (unused ones too), dtypes and all, from a file written in chunks
    path = stage_oos(tmp_path, oos)
    pd.testing.assert_frame_equal(read_staged_oos(path), oos, check_exact=True, check_categorical=True)
    write_parquet(oos, tmp_path / "chunked.parquet", chunk_rows=7)
    pd.testing.assert_frame_equal(read_staged_oos(tmp_path / "chunked.parquet"), oos, check_exact=True)
    # a run appends each fold's frame to the OOS file as the fold is scored: read back it is their concatenation
    appender = ParquetAppender(tmp_path / "folds.parquet", chunk_rows=9)
    for frame in frames:
        appender.append(frame)
    read = read_staged_oos(appender.close())
    pd.testing.assert_frame_equal(read, oos, check_exact=True, check_categorical=True)
    assert read["symbol"].cat.categories.tolist() == ["S0", "S1", "S2"]  # unused categories kept


def test_the_oos_file_refuses_a_fold_frame_whose_columns_differ(tmp_path):
    first = pd.DataFrame({"a": np.arange(3, dtype=np.float32), "b": np.zeros(3)})
    appender = ParquetAppender(tmp_path / "oos.parquet")
    appender.append(first)
    with pytest.raises(ValueError, match="does not match the first frame"):
        appender.append(first.assign(b=np.arange(3)))  # int where the first frame had float
    appender.close()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "oos.parquet"), first)
    empty = ParquetAppender(tmp_path / "none.parquet")
    empty.append(first.iloc[:0])
    assert list(pd.read_parquet(empty.close()).columns) == ["a", "b"]


def test_a_large_frame_is_written_in_chunks_and_reads_back_the_same(tmp_path):
    import pyarrow.parquet as pq

    n = 1000
    frame = pd.DataFrame(
        {
            "symbol": pd.Categorical(np.where(np.arange(n) % 3, "A", "B"), categories=["A", "B", "C"]),
            "timestamp": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "score": np.linspace(-1, 1, n, dtype=np.float32),
            "ret": np.arange(n) * 0.5,
            "fold": (np.arange(n) // 100).astype(np.int16),
        }
    )
    write_parquet(frame, tmp_path / "chunked.parquet", chunk_rows=128)
    frame.to_parquet(tmp_path / "whole.parquet", index=False)
    assert pq.ParquetFile(tmp_path / "chunked.parquet").num_row_groups == 8
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "chunked.parquet"), pd.read_parquet(tmp_path / "whole.parquet")
    )


def test_the_oos_file_keeps_no_fold_frame_alive_once_written(tmp_path):
    """A fold frame handed to the OOS file is freed with its last reference: the appender keeps the
    first frame's columns and dtypes only (``iloc[:0]`` alone is a view holding the whole frame)."""
    import weakref

    appender = ParquetAppender(tmp_path / "oos.parquet")
    values = np.arange(1000, dtype=np.float64)
    appender.append(pd.DataFrame({"a": values, "b": values.astype(np.float32)}, copy=False))
    gone = weakref.ref(values)
    del values
    assert gone() is None
    appender.close()
    assert len(pd.read_parquet(tmp_path / "oos.parquet")) == 1000
