"""``prepare_data`` on a symbol-partitioned parquet directory: the streaming build (one symbol at a time,
a slim ``PreparedData.panel``) equals the whole-panel path value for value, and ``quantml train`` runs on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from quantml.data import data_fingerprint, join_streams, load_panel, validate_panel
from quantml.data.synthetic import generate_synthetic
from quantml.experiment import prepare
from tests.helpers import TINY

DATA = [o for o in TINY if not o.startswith(("data", "feature_set"))]


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    """A 3-symbol hourly panel with the order book and every stream joined, as ``symbol=<name>/`` files
    (written the way tests/benchmarks/test_bench_scale_features.py caches its panel)."""
    syn = generate_synthetic("1h", 3, 700, seed=0, orderbook=True)
    syn.streams.pop("social_text", None)  # the raw text stream is never as-of joined (load_panel)
    panel = validate_panel(join_streams(syn.bars, syn.streams))
    path = tmp_path_factory.mktemp("partitioned") / "panel"
    table = pa.Table.from_pandas(panel, preserve_index=False)
    ds.write_dataset(table, path, format="parquet", partitioning=["symbol"], partitioning_flavor="hive")
    return path


def _both(compose_cfg, monkeypatch, overrides):
    cfg = compose_cfg([*overrides, "feature_set=full"])
    new = prepare.prepare_data(cfg)
    with monkeypatch.context() as mp:
        mp.setattr(prepare, "_build_partitioned", lambda *a: None)  # the whole-panel path
        old = prepare.prepare_data(cfg)
    return cfg, new, old


def test_streaming_prepare_equals_the_whole_panel(partitioned, compose_cfg, monkeypatch):
    cfg, new, old = _both(compose_cfg, monkeypatch, ["data=parquet", f"data.path={partitioned}", *DATA])
    assert len(new.panel.columns) < len(old.panel.columns)  # the streaming path ran: a slim panel
    pd.testing.assert_frame_equal(new.panel, old.panel[list(new.panel.columns)])
    assert {"bid", "ask"} <= set(new.panel.columns)
    for name in ("X", "y_ret", "y_dir", "y_vol", "t0", "t1", "symbol_codes"):
        a, b = getattr(new.data, name), getattr(old.data, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert new.data.feature_names == old.data.feature_names and new.data.symbols == old.data.symbols
    pd.testing.assert_frame_equal(new.data.keys, old.data.keys)
    np.testing.assert_array_equal(new.samples, old.samples)
    pd.testing.assert_frame_equal(new.realised.frame(), old.realised.frame())
    pd.testing.assert_frame_equal(new.market(), old.market())
    assert "half_spread" in new.market().columns
    np.testing.assert_array_equal(new.calendar, old.calendar)
    assert new.fingerprint == old.fingerprint == data_fingerprint(load_panel(cfg.data))
    assert (new.bar, new.periods_per_year, new.skipped_blocks) == (old.bar, old.periods_per_year, old.skipped_blocks)
    assert new.contract == old.contract
    served = prepare.prepare_data(cfg, served=True)  # stacking serves the experts on prep.panel
    assert set(new.contract.input_columns) <= set(served.panel.columns)
    pd.testing.assert_frame_equal(served.panel, old.panel[list(served.panel.columns)])


def test_an_option_that_needs_the_whole_panel_falls_back(partitioned, compose_cfg, monkeypatch):
    _, new, old = _both(
        compose_cfg, monkeypatch, ["data=parquet", f"data.path={partitioned}", "data.start=2024-01-03", *DATA]
    )
    pd.testing.assert_frame_equal(new.panel, old.panel)
    assert new.fingerprint == old.fingerprint


def test_train_runs_on_a_partitioned_directory(partitioned, tmp_path, monkeypatch):
    from tests.helpers.tiny_runs import temp_store, train_run

    monkeypatch.chdir(tmp_path)
    built, real = [], prepare._build_partitioned
    monkeypatch.setattr(prepare, "_build_partitioned", lambda *a: built.append(real(*a)) or built[-1])
    uri, _ = temp_store(tmp_path)
    overrides = ["data=parquet", f"data.path={partitioned}", *DATA, "backbone=ridge"]
    result = train_run(uri, [*overrides, "feature_set=price_volume_regime", "tracking.experiment=partitioned"])
    assert result is not None and built and built[0] is not None  # trained on the streaming build
