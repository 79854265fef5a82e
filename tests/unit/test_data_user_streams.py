"""User files: a bar panel plus separately published streams, joined as-of through `data=parquet`."""

from __future__ import annotations

import pandas as pd
from omegaconf import OmegaConf

from quantml.data import load_panel
from quantml.data.synthetic import generate_synthetic


def test_parquet_source_joins_user_streams_as_of(tmp_path):
    synth = generate_synthetic(freq="1h", n_symbols=2, n_bars=200, seed=3)
    synth.bars.to_parquet(tmp_path / "bars.parquet")
    funding = synth.streams["funding"]
    funding.to_csv(tmp_path / "funding.csv", index=False)
    cfg = OmegaConf.create(
        {
            "source": "file",
            "path": str(tmp_path / "bars.parquet"),
            "streams": {"funding": str(tmp_path / "funding.csv")},
        }
    )
    panel = load_panel(cfg)
    assert {"funding_rate", "funding_rate_missing"} <= set(panel.columns)
    # a value is only visible once published: compare one bar against the stream by hand
    row = panel.iloc[150]
    known = funding[
        (funding["symbol"] == row["symbol"]) & (pd.to_datetime(funding["available_at"], utc=True) <= row["timestamp"])
    ]
    latest = known.sort_values("event_time").iloc[-1]["funding_rate"]
    assert row["funding_rate_missing"] == 0.0
    assert row["funding_rate"] == latest
