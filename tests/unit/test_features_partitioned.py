"""The streaming build from a symbol-partitioned parquet directory equals the whole-panel build, bit for bit."""

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.data import load_panel
from quantml.features import build_features
from quantml.features.memory import lazy, populated, prefault, reused_heap
from quantml.labels import after_cost, features_and_labels, make_labels, partitioned_features_and_labels

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "feature_set"
FULL = OmegaConf.to_container(OmegaConf.load(CONF / "full.yaml"))
DURATIONS = OmegaConf.to_container(OmegaConf.load(CONF / "full_durations.yaml"))
HORIZONS = ["1h", "4h", "1d"]
LABELS = ("ret", "ret_after_cost", "dir", "vol", "t1", "t1_max", "ret_next_bar", "t0")


@pytest.fixture(scope="module")
def panel():
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 4, "n_bars": 900, "seed": 3, "orderbook": True})
    p["macro_custom"] = np.cos(np.arange(len(p)) / 40.0)  # a passthrough column
    return p


@pytest.fixture(scope="module")
def directory(panel, tmp_path_factory):
    """The panel as symbol=<name>/ files whose row groups are written out of time order (as a dataset
    writer's threads leave them), one symbol in two files."""
    root = tmp_path_factory.mktemp("partitioned")
    for i, (sym, part) in enumerate(panel.groupby("symbol", sort=True)):
        rows = part.drop(columns="symbol").reset_index(drop=True)
        chunks = [rows.iloc[a : a + 128] for a in range(0, len(rows), 128)][::-1]  # latest first
        d = root / f"symbol={sym}"
        d.mkdir()
        files = [chunks[:3], chunks[3:]] if i == 0 else [chunks]
        for k, group in enumerate(files):
            with pq.ParquetWriter(d / f"part-{k}.parquet", pa.Schema.from_pandas(rows, preserve_index=False)) as w:
                for chunk in group:
                    w.write_table(pa.Table.from_pandas(chunk, preserve_index=False))
    return root


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("cfg", [FULL, DURATIONS], ids=["bars", "durations"])
def test_partitioned_build_equals_whole_panel_build_bit_for_bit(panel, directory, cfg):
    whole = build_features(panel, cfg)
    labels = make_labels(panel, HORIZONS, 0.002)
    got = partitioned_features_and_labels(directory, cfg, HORIZONS, 0.002, dtype=np.float64)
    assert list(got.features.frame.columns) == list(whole.frame.columns)
    assert _bits(got.features.frame.to_numpy()).tobytes() == _bits(whole.frame.to_numpy()).tobytes()
    assert got.keys["symbol"].astype(str).tolist() == panel["symbol"].tolist()
    assert (got.keys["timestamp"].to_numpy() == panel["timestamp"].to_numpy()).all()
    for name in LABELS:
        assert _bits(getattr(got.labels, name)).tobytes() == _bits(getattr(labels, name)).tobytes(), name
    for field in ("skipped", "unavailable", "input_columns", "resolved", "calendar", "modalities", "known_future"):
        assert getattr(got.features, field) == getattr(whole, field), field
    assert np.array_equal(got.features.bars_missing, whole.bars_missing)
    assert any(c.startswith("xs_rank_") for c in whole.frame.columns)  # the cross-section ran


def test_float32_labels_are_the_float64_labels_rounded_once(panel, directory):
    labels = make_labels(panel, HORIZONS, 0.002)
    got = partitioned_features_and_labels(directory, FULL, HORIZONS, 0.002).labels
    for name in ("ret", "dir", "vol", "ret_next_bar"):
        assert getattr(got, name).dtype == np.float32
        assert _bits(getattr(got, name)).tobytes() == _bits(getattr(labels, name).astype(np.float32)).tobytes(), name
    # not stored: the formula on the rounded return, within one float32 step of the float64 label's
    assert got.ret_after_cost.dtype == np.float32
    assert _bits(got.ret_after_cost).tobytes() == _bits(after_cost(got.ret, 0.002)).tobytes()
    np.testing.assert_allclose(got.ret_after_cost, labels.ret_after_cost, rtol=2e-7, atol=1e-9)
    assert np.array_equal(got.t1.view(np.int64), labels.t1.view(np.int64))


def test_features_and_labels_in_one_pass_equal_the_two_functions(panel):
    fm, labels = features_and_labels(panel, FULL, HORIZONS, 0.002, drop_modalities=["text"])
    whole = build_features(panel, FULL, ["text"])
    ref = make_labels(panel, HORIZONS, 0.002)
    assert list(fm.frame.columns) == list(whole.frame.columns)
    assert _bits(fm.frame.to_numpy()).tobytes() == _bits(whole.frame.to_numpy()).tobytes()
    assert fm.dropped == whole.dropped and fm.skipped == whole.skipped
    for name in LABELS:
        assert _bits(getattr(labels, name)).tobytes() == _bits(getattr(ref, name)).tobytes(), name


def test_partitioned_errors_name_the_fix(panel, tmp_path, directory):
    flat = tmp_path / "flat"
    flat.mkdir()
    pq.write_table(pa.Table.from_pandas(panel, preserve_index=False), flat / "all.parquet")
    with pytest.raises(QuantmlInputError, match="not partitioned by symbol"):
        partitioned_features_and_labels(flat, FULL, HORIZONS, 0.0)
    with pytest.raises(QuantmlInputError, match="not in"):
        partitioned_features_and_labels(directory, FULL, HORIZONS, 0.0, symbols=["NOPE"])
    with pytest.raises(QuantmlInputError, match="shorter than one bar"):
        partitioned_features_and_labels(directory, FULL, ["30m"], 0.0)


def test_symbols_built_on_several_threads_give_the_same_bits(directory):
    one = partitioned_features_and_labels(directory, DURATIONS, HORIZONS, 0.002, threads=1)
    many = partitioned_features_and_labels(directory, DURATIONS, HORIZONS, 0.002, threads=3)
    assert list(many.features.frame.columns) == list(one.features.frame.columns)
    assert _bits(many.features.frame.to_numpy()).tobytes() == _bits(one.features.frame.to_numpy()).tobytes()
    for name in LABELS:
        assert _bits(getattr(many.labels, name)).tobytes() == _bits(getattr(one.labels, name)).tobytes(), name
    for field in ("skipped", "resolved", "calendar", "input_columns"):
        assert getattr(many.features, field) == getattr(one.features, field), field


def test_an_error_on_a_later_symbols_thread_reaches_the_caller(directory, monkeypatch):
    from quantml.features import blocks

    volume = blocks.BLOCKS["volume"]

    @functools.wraps(volume.fn)  # the same signature: the config's parameters check against it
    def volume_but_not_for_the_last_symbol(ctx, *args, **params):
        if len(ctx.panel) and str(ctx.panel["symbol"][0]) == ctx.symbols[-1]:
            raise blocks.Skip("no volume here")
        volume.fn(ctx, *args, **params)

    monkeypatch.setitem(blocks.BLOCKS, "volume", dataclasses.replace(volume, fn=volume_but_not_for_the_last_symbol))
    with pytest.raises(QuantmlInputError, match="on some symbols only"):
        partitioned_features_and_labels(directory, FULL, HORIZONS, 0.002, threads=3)


def test_a_partition_lacking_a_column_is_named(panel, tmp_path):
    root = tmp_path / "lacking"
    for sym, part in panel.groupby("symbol", sort=True):
        rows = part.drop(columns="symbol").reset_index(drop=True)
        if sym == sorted(panel["symbol"].unique())[-1]:
            rows = rows.drop(columns="funding_rate")
        (root / f"symbol={sym}").mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), root / f"symbol={sym}" / "p.parquet")
    with pytest.raises(QuantmlInputError, match=r"lacks column\(s\) \['funding_rate'\].*same columns"):
        partitioned_features_and_labels(root, FULL, HORIZONS, 0.002, threads=2)


def test_memory_helpers_give_ordinary_writable_arrays():
    with reused_heap():
        a = populated((3, 1 << 19), np.float32)
        b = lazy((3, 1 << 19), np.float64)
        prefault(b[:, 10:1000])
        a[:] = 1.5
        b[:] = np.arange(1 << 19)
    assert a.sum() == 1.5 * a.size and b[2, -1] == (1 << 19) - 1
    assert populated((2, 2), np.int64).shape == lazy((2, 2), np.int64).shape == (2, 2)
