"""Sources: bundled adjusted daily stocks, user parquet/CSV files and directories, dispatch errors."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.data import load_panel
from quantml.data.loaders import load_stocks_daily, repair_ohlc, stocks_csv_path

DATA_CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "data"


@pytest.fixture(scope="module")
def stocks():
    return load_panel({"source": "stocks_daily"})


def test_stocks_daily_contract(stocks):
    assert sorted(stocks["symbol"].unique()) == ["AAPL", "FB", "GOOG", "IBM", "MSFT"]
    assert str(stocks["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (stocks["timestamp"].dt.hour == 21).all() and (stocks["timestamp"].dt.minute == 0).all()
    assert stocks["timestamp"].min() == pd.Timestamp("2000-03-01 21:00", tz="UTC")
    assert len(stocks) == 3270 * 3 + 2148 + 196


def test_stocks_daily_is_split_adjusted(stocks):
    aapl = stocks[stocks["symbol"] == "AAPL"].set_index("timestamp")
    r = np.log(aapl["close"]).diff()
    # AAPL split 2:1 on 2000-06-21 and 2005-02-28: raw closes halve, adjusted returns do not
    for day in ("2000-06-21", "2005-02-28"):
        assert abs(r.loc[pd.Timestamp(f"{day} 21:00", tz="UTC")]) < 0.1
    assert aapl["close"].iloc[0] == pytest.approx(4.186663)  # Adj Close of 2000-03-01
    # O/H/L scaled by the same factor: the bar stays consistent, volume scaled inversely
    raw = pd.read_csv(stocks_csv_path(), nrows=1)
    f = raw["Adj Close"][0] / raw["Close"][0]
    assert aapl["high"].iloc[0] == pytest.approx(raw["High"][0] * f)
    assert aapl["volume"].iloc[0] == pytest.approx(raw["Volume"][0] / f)


def test_stocks_filters():
    p = load_panel({"source": "stocks_daily", "symbols": ["IBM", "MSFT"], "start": "2010-01-01", "end": "2010-12-31"})
    assert sorted(p["symbol"].unique()) == ["IBM", "MSFT"]
    assert p["timestamp"].min() >= pd.Timestamp("2010-01-01", tz="UTC")
    assert p["timestamp"].max() == pd.Timestamp("2010-12-31 21:00", tz="UTC")  # a bare end date is inclusive
    assert len(p) == 2 * 252


def test_unknown_symbol_filter():
    with pytest.raises(QuantmlInputError, match=r"data.symbols \['TSLA'\] not in the data.*AAPL"):
        load_panel({"source": "stocks_daily", "symbols": ["TSLA"]})


def test_filters_leave_nothing():
    with pytest.raises(QuantmlInputError, match="no rows left"):
        load_panel({"source": "stocks_daily", "start": "2030-01-01"})


def test_repair_logs_and_fixes_bad_demo_rows(caplog):
    df = load_stocks_daily().head(5).copy()
    df.iloc[1, df.columns.get_loc("high")] = df.iloc[1]["low"] * 0.5  # high < low
    df.iloc[2, df.columns.get_loc("close")] = -1.0  # unusable bar
    with caplog.at_level(logging.WARNING):
        out = repair_ohlc(df, "demo")
    assert len(out) == 4
    assert (out["high"] >= out[["open", "close", "low"]].max(axis=1)).all()
    assert "dropped 1 bars" in caplog.text and "repaired high/low of 1 bars" in caplog.text


def test_unknown_source():
    with pytest.raises(QuantmlInputError, match=r"unknown data.source 'yahoo'.*stocks_daily"):
        load_panel({"source": "yahoo"})


# ------------------------------------------------------------------ user files
def _frame(symbol="X", n=30):
    ts = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    c = np.linspace(10, 12, n)
    return pd.DataFrame(
        {
            "timestamp": ts,
            "symbol": symbol,
            "open": c,
            "high": c * 1.01,
            "low": c * 0.99,
            "close": c,
            "volume": 5.0,
            "funding_rate": 1e-4,
        }
    )


def test_parquet_file(tmp_path):
    f = tmp_path / "panel.parquet"
    _frame().to_parquet(f)
    p = load_panel({"source": "file", "path": str(f)})
    assert len(p) == 30 and p["funding_rate"].iloc[0] == 1e-4


@pytest.mark.parametrize("name", ["panel.csv", "panel.csv.gz"])
def test_csv_file(tmp_path, name):
    f = tmp_path / name
    _frame().to_csv(f, index=False)  # writes "2024-01-01 00:00:00+00:00"
    p = load_panel({"source": "file", "path": str(f)})
    assert len(p) == 30 and str(p["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_directory_of_files_concatenated(tmp_path):
    _frame("A").to_parquet(tmp_path / "a.parquet")
    (tmp_path / "sub").mkdir()
    _frame("B").to_csv(tmp_path / "sub" / "b.csv", index=False)
    (tmp_path / "notes.txt").write_text("ignored")
    p = load_panel({"source": "file", "path": str(tmp_path), "symbols": "A,B"})
    assert sorted(p["symbol"].unique()) == ["A", "B"] and len(p) == 60


def _partitioned(root, frames):
    import pyarrow as pa
    import pyarrow.parquet as pq

    panel = pd.concat(frames, ignore_index=True)
    panel["year"] = panel["timestamp"].dt.year
    pq.write_to_dataset(pa.Table.from_pandas(panel, preserve_index=False), root, partition_cols=["symbol", "year"])
    return panel.drop(columns="year")


def test_partitioned_dataset_reads_what_the_filters_keep(tmp_path):
    root = tmp_path / "bars"
    frames = [_frame(s, n=60) for s in ("A", "B", "C")]
    frames[2]["timestamp"] += pd.Timedelta("1D")  # C's bars: Jan 2 - 4
    whole = _partitioned(root, frames)
    whole.to_parquet(tmp_path / "flat.parquet")
    flat = load_panel({"source": "file", "path": str(tmp_path / "flat.parquet")})
    got = load_panel({"source": "file", "path": str(root)})  # symbol and year live in the paths
    pd.testing.assert_frame_equal(got[flat.columns.tolist()], flat)
    assert "year" not in got.columns
    # a corrupt file in a partition the filters leave out is never opened: partitions are pruned
    bad = root / "symbol=C" / "year=2024" / "broken.parquet"
    bad.write_bytes(b"PAR1 not a parquet file")
    kept = load_panel({"source": "file", "path": str(root), "symbols": "A,B", "end": "2024-01-02"})
    assert sorted(kept["symbol"].unique()) == ["A", "B"] and kept["timestamp"].max() < pd.Timestamp(
        "2024-01-03", tz="UTC"
    )
    with pytest.raises(QuantmlInputError, match=r"bars holds a parquet file that cannot be read"):
        load_panel({"source": "file", "path": str(root), "symbols": "C"})


def test_missing_path(tmp_path):
    with pytest.raises(QuantmlInputError, match=r"does not exist.*data.path="):
        load_panel({"source": "file", "path": str(tmp_path / "nope.parquet")})


def test_no_path_given():
    with pytest.raises(QuantmlInputError, match="needs data.path"):
        load_panel({"source": "file", "path": None})


def test_empty_file(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("")
    with pytest.raises(QuantmlInputError, match="is empty"):
        load_panel({"source": "file", "path": str(f)})


def test_header_only_file(tmp_path):
    f = tmp_path / "header.csv"
    _frame().iloc[:0].to_csv(f, index=False)
    with pytest.raises(QuantmlInputError, match="columns but no rows"):
        load_panel({"source": "file", "path": str(f)})


def test_directory_without_files(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(QuantmlInputError, match="holds no .parquet"):
        load_panel({"source": "file", "path": str(tmp_path)})


def test_unknown_extension(tmp_path):
    f = tmp_path / "panel.xlsx"
    f.write_text("x")
    with pytest.raises(QuantmlInputError, match="unknown extension"):
        load_panel({"source": "file", "path": str(f)})


def test_user_file_naive_timestamps_strict(tmp_path):
    df = _frame()
    df["timestamp"] = df["timestamp"].dt.tz_localize(None)
    f = tmp_path / "naive.csv"
    df.to_csv(f, index=False)
    with pytest.raises(QuantmlInputError, match="timezone-naive"):
        load_panel({"source": "file", "path": str(f)})


def test_user_file_bad_rows_strict(tmp_path):
    df = _frame()
    df.loc[4, "high"] = 1.0  # high < low: user files are never repaired silently
    f = tmp_path / "bad.parquet"
    df.to_parquet(f)
    with pytest.raises(QuantmlInputError, match="high < low"):
        load_panel({"source": "file", "path": str(f)})


def test_hydra_config_group_loads():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(DATA_CONF / "synthetic.yaml")
    cfg.seed = 3
    cfg.n_bars = 200
    p = load_panel(cfg)
    assert p["symbol"].nunique() == 4 and len(p) == 800
    missing = OmegaConf.load(DATA_CONF / "parquet.yaml")  # path: ???
    with pytest.raises(QuantmlInputError, match="needs data.path"):
        load_panel(missing)
