"""Synthetic generator: determinism, contract, streams, regimes, and a small planted signal."""

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import EXOGENOUS_MODALITY, QuantmlInputError
from quantml.data import data_fingerprint, infer_bar_frequency, join_streams, load_panel, validate_panel
from quantml.data.synthetic import generate_synthetic
from quantml.features import build_features
from quantml.labels import make_labels


@pytest.fixture(scope="module")
def syn():
    return generate_synthetic("1h", n_symbols=3, n_bars=2000, seed=7)


def test_same_seed_identical_other_seed_different(syn):
    again = generate_synthetic("1h", n_symbols=3, n_bars=2000, seed=7)
    pd.testing.assert_frame_equal(syn.bars, again.bars)
    assert syn.streams.keys() == again.streams.keys()
    for k in syn.streams:
        pd.testing.assert_frame_equal(syn.streams[k], again.streams[k])
    other = generate_synthetic("1h", n_symbols=3, n_bars=2000, seed=8)
    assert not np.allclose(other.bars["close"], syn.bars["close"])


@pytest.mark.parametrize("freq", ["5m", "1h", "1d"])
def test_frequencies_and_contract(freq):
    s = generate_synthetic(freq, n_symbols=2, n_bars=300, seed=1, start="2024-03-01")
    p = validate_panel(join_streams(s.bars, s.streams))  # OHLC consistent, no duplicates
    assert len(p) == 600
    assert infer_bar_frequency(p) == pd.Timedelta(freq.replace("m", "min"))
    assert p["timestamp"].min() == pd.Timestamp("2024-03-01", tz="UTC") + infer_bar_frequency(p)


@pytest.fixture(scope="module")
def syn_ob():
    return generate_synthetic("1h", n_symbols=3, n_bars=2000, seed=7, orderbook=True)


def test_every_exogenous_column_and_flag(syn, syn_ob):
    p = join_streams(syn.bars, syn.streams)
    for col, modality in EXOGENOUS_MODALITY.items():  # the order book is opt-in
        assert (col in p.columns) == (modality != "microstructure"), col
    assert set(EXOGENOUS_MODALITY) <= set(join_streams(syn_ob.bars, syn_ob.streams).columns)
    for col in ("funding_rate", "open_interest", "social_sentiment", "macro_surprise"):
        assert f"{col}_missing" in p.columns
    # the social stream of the last symbol starts late; every stream has gaps/outages
    last = p[p["symbol"] == p["symbol"].unique()[-1]]
    assert last["social_posts_missing"].iloc[:100].eq(1.0).all()
    assert p["open_interest_missing"].sum() > 0


def test_streams_have_publication_lags(syn):
    for name, s in syn.streams.items():
        assert (s["available_at"] >= s["event_time"]).all(), name
    lags = {k: (s["available_at"] - s["event_time"]).median() for k, s in syn.streams.items()}
    assert lags["funding"] == pd.Timedelta("1min") and lags["onchain"] == pd.Timedelta("30min")
    assert lags["macro"] == pd.Timedelta("5D")  # reference period ends 5 days before release
    ev = syn.streams["events"]
    ev_lag = ev["available_at"] - ev["event_time"]
    assert ev_lag.min() >= pd.Timedelta("2min") and ev_lag.max() > pd.Timedelta("1h")
    assert "symbol" not in syn.streams["macro"].columns  # market-wide
    grid = pd.Timedelta("8h") / pd.Timedelta("1h")
    assert len(syn.streams["funding"]) < 3 * 2000 / grid  # random gaps + an outage


def test_regimes_and_volume(syn):
    sig = syn.truth["sigma"]
    reg = syn.truth["regime"]
    assert set(np.unique(reg)) == {0.0, 1.0, 2.0}
    r = np.log(syn.bars["close"].to_numpy()).reshape(3, -1).T
    r = np.diff(r, axis=0)
    calm = r[reg[1:] == 0].std()
    wild = r[reg[1:] == 2].std()
    assert wild > 1.8 * calm
    vol = syn.bars["volume"].to_numpy().reshape(3, -1).T[1:]
    for j in range(3):
        assert np.corrcoef(np.log(vol[:, j]), np.abs(r[:, j]) / sig[1:, j].mean())[0, 1] > 0.2


def test_fat_tails(syn):
    z = np.diff(np.log(syn.bars["close"].to_numpy()).reshape(3, -1).T, axis=0) / syn.truth["sigma"][1:]
    kurt = ((z - z.mean()) ** 4).mean() / z.var() ** 2
    assert kurt > 4.0


def test_planted_signal_is_causal_and_findable():
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 6, "n_bars": 5000, "seed": 11})
    fm = build_features(p, {"name": "t", "blocks": {"derivatives": {}, "text": {}, "event": {}}})
    lab = make_labels(p, ["4h"], 0.0)
    df = fm.frame[["funding_bps", "sentiment_ewm", "event_sent_6"]].assign(y=lab.ret[:, 0], s=p["symbol"].to_numpy())
    feats = ["funding_bps", "sentiment_ewm", "event_sent_6"]
    ic = pd.DataFrame({s: g[feats].corrwith(g["y"], method="spearman") for s, g in df.groupby("s")}).mean(axis=1)
    assert ic["funding_bps"] < -0.02  # contrarian funding
    assert ic["sentiment_ewm"] > 0.02  # sentiment momentum
    assert ic["event_sent_6"] > 0.01  # post-event drift
    assert ic.abs().max() < 0.15  # weak, as in real markets


def _checksum(panel: pd.DataFrame) -> str:
    """A checksum of a panel's values that library upgrades do not move: numbers rounded to 9
    significant digits (a new numpy or pandas may change the last bits of a transcendental or the
    way pandas hashes a string column, neither of which is a change of the generator)."""
    import hashlib

    h = hashlib.sha256()
    for c in panel.columns:
        col = panel[c]
        if pd.api.types.is_datetime64_any_dtype(col):
            values = col.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy(str)
            h.update(f"{c}|{'|'.join(values)}".encode())
        elif pd.api.types.is_numeric_dtype(col):
            h.update(c.encode() + np.char.mod("%.9g", col.to_numpy(np.float64)).tobytes())
        else:
            h.update(f"{c}|{'|'.join(col.astype(str))}".encode())
    return h.hexdigest()[:16]


def test_default_panel_is_bit_identical_and_the_book_is_opt_in(syn, syn_ob):
    """Checksums of the seeded default panels (pinned; the flags must not move them), and every
    opt-in flag off gives the very same panel, fingerprint included."""
    default = load_panel({"source": "synthetic"})
    off = load_panel({"source": "synthetic", "orderbook": False, "price_signal": False})
    assert data_fingerprint(default) == data_fingerprint(off)
    assert _checksum(default) == "f9ad6177ba856f22"
    p = load_panel({"source": "synthetic", "freq": "1h", "n_symbols": 3, "n_bars": 700, "seed": 5, "orderbook": False})
    assert _checksum(p) == "ebef5c263a878612"
    assert "orderbook" not in syn.streams and "orderbook" in syn_ob.streams
    # the book draws from its own generator: every stream not tied to returns is unchanged
    for k, v in syn.streams.items():
        if k != "taker":
            pd.testing.assert_frame_equal(v, syn_ob.streams[k])
    np.testing.assert_array_equal(syn.truth["sigma"], syn_ob.truth["sigma"])
    assert not np.array_equal(syn.bars["close"], syn_ob.bars["close"])  # the planted drift moves the bars
    with pytest.raises(QuantmlInputError, match=r"data.orderbook='yes' must be true or false"):
        load_panel({"source": "synthetic", "n_bars": 50, "orderbook": "yes"})


def test_orderbook_stream(syn_ob):
    ob = syn_ob.streams["orderbook"]
    assert list(ob.columns) == [
        "symbol", "event_time", "available_at", "bid", "ask", "bid_size", "ask_size", "depth_bid", "depth_ask"
    ]  # fmt: skip
    assert (ob["available_at"] == ob["event_time"]).all()  # a snapshot at the close, known at the close
    assert 0.95 * 3 * 2000 < len(ob) < 0.995 * 3 * 2000  # gaps and an outage
    assert (ob["ask"] > ob["bid"]).all() and (ob["depth_bid"] >= ob["bid_size"]).all()
    at = ob.merge(syn_ob.bars, left_on=["symbol", "event_time"], right_on=["symbol", "timestamp"])
    assert len(at) == len(ob)  # quotes around the snapshot bar's close
    np.testing.assert_allclose(np.sqrt(at["bid"] * at["ask"]), at["close"], rtol=1e-6)
    assert join_streams(syn_ob.bars, syn_ob.streams)["bid_missing"].sum() > 0
    # spreads widen in the turbulent regime (relative to each symbol's median)
    sp, reg = syn_ob.truth["spread"], syn_ob.truth["regime"]
    rel = sp / np.median(sp, axis=0)[None, :]
    assert np.median(rel[reg == 2]) > 1.6 * np.median(rel[reg == 0])


def test_bad_arguments():
    with pytest.raises(QuantmlInputError, match="must divide one day"):
        generate_synthetic("7m", 1, 100)
    with pytest.raises(QuantmlInputError, match="not a duration"):
        generate_synthetic("fast", 1, 100)
    with pytest.raises(QuantmlInputError, match="n_bars >= 10"):
        generate_synthetic("1h", 1, 5)


@pytest.fixture(scope="module")
def syn_price():
    return generate_synthetic("1h", n_symbols=8, n_bars=2000, seed=7, price_signal=True)


def test_price_signal_off_is_bit_identical_and_on_moves_only_the_bars(syn, syn_price):
    off = generate_synthetic("1h", n_symbols=3, n_bars=2000, seed=7, price_signal=False)
    pd.testing.assert_frame_equal(off.bars, syn.bars, check_exact=True)
    assert off.streams.keys() == syn.streams.keys() and "price_signal" not in off.truth
    for k, v in syn.streams.items():
        pd.testing.assert_frame_equal(off.streams[k], v, check_exact=True)
    plain = generate_synthetic("1h", n_symbols=8, n_bars=2000, seed=7)
    # nothing new is drawn: every stream not tied to returns, the volatility and the regimes keep their values
    for k, v in plain.streams.items():
        if k != "taker":
            pd.testing.assert_frame_equal(v, syn_price.streams[k], check_exact=True)
    np.testing.assert_array_equal(plain.truth["sigma"], syn_price.truth["sigma"])
    np.testing.assert_array_equal(plain.truth["regime"], syn_price.truth["regime"])
    assert not np.array_equal(plain.bars["close"], syn_price.bars["close"])
    assert syn_price.truth["price_signal"].shape == (2000, 8)
    with pytest.raises(QuantmlInputError, match=r"data.price_signal='on' must be true or false"):
        load_panel({"source": "synthetic", "n_bars": 50, "price_signal": "on"})


def _xs_rank_ic(frame: pd.DataFrame, feature: str) -> float:
    ranked = frame.groupby("t")[[feature, "y"]].rank()
    return float(ranked.assign(t=frame["t"]).groupby("t").corr().xs(feature, level=1)["y"].mean())


def test_price_signal_is_a_findable_cross_sectional_reversal_complementary_to_the_exogenous_drift():
    cfg = {"source": "synthetic", "freq": "1h", "n_symbols": 8, "n_bars": 3000, "seed": 4}
    blocks = {"name": "t", "blocks": {"cross_section": {"lags": [8], "vol_window": 48}, "text": {}}}
    ic = {}
    for flag in (False, True):
        p = load_panel({**cfg, "price_signal": flag})
        fm = build_features(p, blocks)
        y = make_labels(p, ["4h"], 0.0).ret[:, 0]
        df = fm.frame[["xs_rank_ret_8", "sentiment_ewm"]].assign(y=y, t=p["timestamp"].to_numpy()).dropna()
        ic[flag] = {f: _xs_rank_ic(df, f) for f in ("xs_rank_ret_8", "sentiment_ewm")}
    # past winners underperform with the flag (a reversal), not without it; sentiment momentum stays
    assert ic[True]["xs_rank_ret_8"] < -0.02 and ic[True]["xs_rank_ret_8"] < ic[False]["xs_rank_ret_8"] - 0.02
    assert ic[True]["sentiment_ewm"] > 0.01 and ic[False]["sentiment_ewm"] > 0.01
    # the planted terms: the reversal is strong where the exogenous drift is weak (market regime split)
    syn = generate_synthetic("1h", n_symbols=4, n_bars=3000, seed=3, price_signal=True)
    price, exo = np.abs(syn.truth["price_signal"]), np.abs(syn.truth["signal"])
    strong = price.mean(axis=1) > np.median(price.mean(axis=1))
    assert price[strong].mean() > 1.5 * price[~strong].mean() and exo[strong].mean() < exo[~strong].mean()


def test_the_default_length_keeps_the_hourly_span_for_shorter_bars():
    from quantml.data.synthetic import default_bars

    assert [default_bars(f) for f in ("5m", "15m", "1h", "4h", "1d")] == [36000, 12000, 3000, 3000, 3000]
    # data.n_bars: null is the hourly default's 3000 bars (the pinned default panel) ...
    assert len(load_panel({"source": "synthetic", "n_bars": None, "n_symbols": 1})) == 3000
    # ... and 125 days of 5m bars
    five = load_panel({"source": "synthetic", "freq": "5m", "n_bars": None, "n_symbols": 1})
    span = five["timestamp"].iloc[-1] - five["timestamp"].iloc[0]
    assert len(five) == 36000 and span == pd.Timedelta("125D") - pd.Timedelta("5min")
