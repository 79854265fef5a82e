"""The raw social text stream: the synthetic plant, loading beside the panel, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from quantml.contracts import QuantmlInputError
from quantml.data.loaders import load_panel
from quantml.data.plants.text import COLUMNS, STREAM
from quantml.data.synthetic import generate_synthetic
from quantml.data.text_stream import TEXT_COLUMNS, load_text_stream, validate_text_stream

SMALL = {"freq": "1h", "n_symbols": 3, "n_bars": 400, "seed": 3}


def test_default_panel_bit_identical_and_untouched_streams():
    base = generate_synthetic(**SMALL)
    off = generate_synthetic(**SMALL, plants={"text_stream": False})
    on = generate_synthetic(**SMALL, plants={"text_stream": True})
    pd.testing.assert_frame_equal(base.bars, off.bars)
    assert base.bars["close"].to_numpy().tobytes() == off.bars["close"].to_numpy().tobytes()
    assert STREAM not in base.streams and STREAM in on.streams
    for name, table in base.streams.items():
        if name != "taker":  # the taker ratio is tied to returns, which the plant moves
            pd.testing.assert_frame_equal(table, on.streams[name])
    # only the planted drift moves the returns: volatility and the draws of the bars are the same
    np.testing.assert_array_equal(base.truth["sigma"], on.truth["sigma"])


def test_stream_columns_order_and_grammar():
    table = generate_synthetic(**SMALL, plants={"text_stream": True}).streams[STREAM]
    assert list(table.columns) == list(COLUMNS) == list(TEXT_COLUMNS)
    assert len(table) > 1000
    key = table[["symbol", "event_time"]]
    assert key.equals(key.sort_values(["symbol", "event_time"], kind="mergesort"))
    assert (table["available_at"] >= table["event_time"]).all()
    comments = table["parent_id"].notna()
    assert 0.1 < comments.mean() < 0.9
    assert table.loc[comments, "parent_id"].isin(set(table.loc[~comments, "post_id"])).all()
    assert table["post_id"].is_unique
    bots = table[table["author"].str.startswith("bot")]
    assert len(bots) and bots.groupby("author")["text"].nunique().max() == 1  # one text, many times


def test_planted_effect_only_in_active_bars():
    syn = generate_synthetic(freq="1h", n_symbols=4, n_bars=3000, seed=0, plants={"text_stream": True})
    T, N = syn.truth["text_net"].shape
    ret = np.diff(np.log(syn.bars["close"].to_numpy().reshape(N, T).T), axis=0)  # ret[t] = return of bar t+1
    net, active = syn.truth["text_net"][:-1], syn.truth["text_active"][:-1] > 0
    ic_active = spearmanr(net[active], ret[active]).correlation
    ic_quiet = spearmanr(net[~active], ret[~active]).correlation
    assert ic_active > 0.15, ic_active
    assert abs(ic_quiet) < 0.04, ic_quiet
    assert np.all(syn.truth["text_effect"][~(syn.truth["text_active"] > 0)] == 0)
    noise = generate_synthetic(freq="1h", n_symbols=2, n_bars=300, seed=0, plants={"text_stream": {"noise_only": True}})
    assert not np.any(noise.truth["text_effect"])
    pd.testing.assert_frame_equal(noise.bars, generate_synthetic(freq="1h", n_symbols=2, n_bars=300, seed=0).bars)


def test_load_panel_keeps_text_beside_the_panel():
    cfg = {"source": "synthetic", **SMALL, "text_stream": True}
    panel = load_panel(cfg)
    assert not {"text", "post_id", "author", "engagement"} & set(panel.columns)
    plain = load_panel({"source": "synthetic", **SMALL})
    assert list(panel.columns) == list(plain.columns)
    stream = load_text_stream(cfg)
    assert list(stream.columns) == list(TEXT_COLUMNS) and len(stream) > 1000
    assert load_text_stream({"source": "synthetic", **SMALL}) is None


def test_default_length_stream_is_the_panels_own():
    # data.n_bars null at bars under 1h is 125 days of bars (12000 at 15m), not 3000: the stream must be drawn
    # with the panel's length, else its posts belong to another panel and carry none of the planted effect
    cfg = {"source": "synthetic", "freq": "15m", "n_symbols": 2, "n_bars": None, "seed": 5, "text_stream": True}
    panel = load_panel(cfg)
    stream = load_text_stream(cfg)
    syn = generate_synthetic(freq="15m", n_symbols=2, n_bars=len(panel) // 2, seed=5, plants={"text_stream": True})
    assert len(panel) == 2 * 12000
    cols = ["post_id", "symbol", "text", "engagement"]
    ours, own = (t[cols].sort_values("post_id").reset_index(drop=True) for t in (stream, syn.streams[STREAM]))
    pd.testing.assert_frame_equal(ours, own)
    assert stream["available_at"].max() > panel["timestamp"].iloc[12000 - 2000]  # posts to the panel's end


def _posts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity": ["bitcoin", "$ETH", "dogecoin"],
            "event_time": ["2024-01-01T00:10", "2024-01-01T00:20", "2024-01-01T00:30"],
            "available_at": ["2024-01-01T00:11", "2024-01-01T00:21", "2024-01-01T00:31"],
            "post_id": [1, 2, 3],
            "parent_id": ["", 1, None],
            "author": ["a", "b", "c"],
            "text": ["to the moon", "rug", "wow"],
        }
    )


def test_validation_entity_map_and_defaults(tmp_path):
    out = validate_text_stream(_posts(), {"Bitcoin": "BTC", "$eth": "ETH"})
    assert list(out["symbol"]) == ["BTC", "ETH"]  # dogecoin is not in the map: not about the panel
    assert out["parent_id"].isna().tolist() == [True, False] and out["engagement"].eq(0).all()
    assert str(out["available_at"].dtype) == "datetime64[ns, UTC]"
    path = tmp_path / "posts.csv"
    _posts().to_csv(path, index=False)
    cfg = {"source": "file", "text": {"path": str(path), "entity_map": {"bitcoin": "BTC"}}}
    assert list(load_text_stream(cfg)["symbol"]) == ["BTC"]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda df: df.drop(columns=["entity"]), "neither 'symbol' nor 'entity'"),
        (lambda df: df.drop(columns=["text"]), r"lacks column\(s\) \['text'\]"),
        (lambda df: df.assign(available_at="2024-01-01T00:00"), "available_at < event_time"),
        (lambda df: df.assign(post_id=1), "appears more than once"),
        (lambda df: df.assign(engagement=-1), "engagement must be >= 0"),
    ],
)
def test_validation_errors_name_the_fix(change, match):
    with pytest.raises(QuantmlInputError, match=match):
        validate_text_stream(change(_posts()), {"bitcoin": "BTC", "$eth": "ETH", "dogecoin": "DOGE"})


def test_entities_without_a_map_are_refused():
    with pytest.raises(QuantmlInputError, match="data.text.entity_map"):
        validate_text_stream(_posts(), None)
