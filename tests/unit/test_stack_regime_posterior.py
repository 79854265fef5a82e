"""regime_source parsing and a regime model's posterior frame (quantml.stacking.regime_posterior): one row
per (symbol, timestamp), regime_p<k> renamed regime__p<k>, rows of one key that disagree refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.stacking.regime import attach_regime, regime_columns
from quantml.stacking.regime_posterior import RegimeSource, model_columns, parse_regime_source, posterior_frame


def test_parse_regime_source():
    assert parse_regime_source(None) == RegimeSource(block=True, model=None)
    assert parse_regime_source("block") == RegimeSource(block=True, model=None)
    assert parse_regime_source("e1") == RegimeSource(block=False, model="e1")
    assert parse_regime_source(["block", "e1"]) == RegimeSource(block=True, model="e1")
    assert parse_regime_source("block,abc123").describe() == ["block", "abc123"]
    for bad in ([], ["e0", "e1"], ""):
        with pytest.raises(QuantmlInputError, match="one regime model"):
            parse_regime_source(bad)


def _oos() -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC")
    rng = np.random.default_rng(0)
    p = rng.uniform(size=8)
    base = pd.DataFrame({"symbol": np.repeat(["A", "B"], 4), "timestamp": np.tile(ts, 2), "regime_p0": p})
    base["regime_p1"], base["regime_p10"] = 1 - p, 0.0  # regime_p10 sorts after regime_p1 by number
    return pd.concat([base.assign(horizon="1h"), base.assign(horizon="4h")], ignore_index=True)


def test_posterior_frame_is_one_row_per_bar_and_joins_exactly():
    oos = _oos()
    assert model_columns(oos) == ["regime_p0", "regime_p1", "regime_p10"]
    post = posterior_frame(oos, "r")
    assert list(post.columns) == ["symbol", "timestamp", "regime__p0", "regime__p1", "regime__p10"]
    assert len(post) == 8 and not post.duplicated(["symbol", "timestamp"]).any()
    table = oos[["symbol", "timestamp", "horizon"]].iloc[::-1].reset_index(drop=True)
    table["regime__regime_vol_z"] = 1.5  # a regime block column: kept beside the posterior
    out = attach_regime(table, post)
    assert regime_columns(out) == ["regime__p0", "regime__p1", "regime__p10", "regime__regime_vol_z"]
    np.testing.assert_array_equal(out["regime__p0"].to_numpy(), oos["regime_p0"].to_numpy()[::-1])
    assert (out["regime__regime_vol_z"] == 1.5).all()


def test_posterior_frame_refuses_what_is_not_one_posterior_per_bar():
    oos = _oos()
    oos.loc[9, "regime_p0"] += 1e-9  # the 4h row of a key disagrees with its 1h row
    with pytest.raises(QuantmlInputError, match="differ between horizons"):
        posterior_frame(oos, "r")
    with pytest.raises(QuantmlInputError, match="not a regime model"):
        posterior_frame(oos.drop(columns=["regime_p0", "regime_p1", "regime_p10"]), "r")
