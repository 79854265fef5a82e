"""Order-book stream: grammar and errors, user files, the microstructure block (exact values,
skipping, causality, ablation) and spread-aware execution costs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import MODALITIES, QuantmlInputError, modality_of
from quantml.data import join_streams, load_panel, validate_panel
from quantml.features import build_features, causality_violations
from quantml.labels import make_labels
from quantml.market.execution import CostModel, execute, execute_bar, half_spread_of, panel_half_spread

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf"
FULL = OmegaConf.to_container(OmegaConf.load(CONF / "feature_set" / "full.yaml"))
T = lambda s: pd.Timestamp(f"2024-01-01 {s}", tz="UTC")  # noqa: E731
MICRO = {"name": "m", "blocks": {"microstructure": FULL["blocks"]["microstructure"]}}


def _bars(n=6, symbols=("X",)):
    ts = pd.date_range(T("01:00"), periods=n, freq="1h")
    c = 100.0 + np.arange(n, dtype=float)
    return pd.concat(
        [pd.DataFrame({"timestamp": ts, "symbol": s, "close": c, "volume": 1.0}) for s in symbols], ignore_index=True
    )


def _book(rows):
    """rows: (symbol, event_time, available_at, bid, ask, bid_size, ask_size)."""
    return pd.DataFrame(rows, columns=["symbol", "event_time", "available_at", "bid", "ask", "bid_size", "ask_size"])


@pytest.fixture(scope="module")
def ob_panel():
    return load_panel(
        {"source": "synthetic", "freq": "1h", "n_symbols": 3, "n_bars": 700, "seed": 5, "orderbook": True}
    )


# ------------------------------------------------------------------ the stream and its grammar
def test_modality_and_join_with_flags_and_staleness():
    assert "microstructure" in MODALITIES
    assert {modality_of(c) for c in ("bid", "ask", "bid_size", "ask_size", "depth_bid", "depth_ask")} == {
        "microstructure"
    }
    book = _book(
        [
            ("X", T("01:00"), T("01:00"), 99.9, 100.1, 5.0, 3.0),  # at the 01:00 close: used there
            ("X", T("02:00"), T("02:00:01"), 100.8, 101.2, 1.0, 1.0),  # a second late: from 03:00
            ("X", T("01:30"), T("03:30"), 50.0, 51.0, 9.0, 9.0),  # late copy of an older snapshot: ignored
        ]
    )
    out = join_streams(_bars(), {"orderbook": book})  # default limit 1h, raised to 2 bars (2h)
    np.testing.assert_array_equal(out["bid"], [99.9, 99.9, 100.8, 100.8, np.nan, np.nan])  # 05:00: 3h old
    np.testing.assert_array_equal(out["bid_size_missing"], [0, 0, 0, 0, 1.0, 1.0])
    out = join_streams(_bars(), {"orderbook": book}, max_staleness={"orderbook": "3h"})
    assert out["ask_missing"].tolist() == [0, 0, 0, 0, 0, 1.0]
    # the order-book default applies whatever the stream is called
    quotes = join_streams(_bars(), {"quotes": book})
    np.testing.assert_array_equal(quotes["bid_missing"], [0, 0, 0, 0, 1.0, 1.0])


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda b: b.drop(columns="bid"), r"order-book stream 'orderbook' lacks column\(s\) \['bid'\].*needs bid, ask"),
        (lambda b: b.assign(ask=[99.0, 101.0]), r"crossed book \(ask < bid\) at 1 row.*swap bid and ask"),
        (lambda b: b.assign(bid=[0.0, 100.0]), r"non-positive 'bid' prices.*must be > 0"),
        (lambda b: b.assign(ask_size=[1.0, -2.0]), r"negative sizes in 'ask_size'.*NaN when unknown"),
        (lambda b: b.assign(bid=[np.inf, 100.0]), r"inf in 'bid'.*use NaN"),
    ],
)
def test_grammar_errors_name_the_fix(edit, match):
    book = _book(
        [("X", T("01:00"), T("01:00"), 99.9, 100.1, 5.0, 3.0), ("X", T("02:00"), T("02:00"), 100, 100.2, 1, 1)]
    )
    with pytest.raises(QuantmlInputError, match=match):
        join_streams(_bars(), {"orderbook": edit(book)})
    # NaN is a side not quoted, joined as missing
    nan = join_streams(_bars(), {"orderbook": book.assign(bid_size=[np.nan, 1.0])})
    assert nan["bid_size_missing"].iloc[0] == 1.0 and nan["bid_missing"].iloc[0] == 0.0


def test_user_files_load_like_other_streams(tmp_path):
    syn_bars = _bars(8, ("X", "Y"))
    syn_bars.to_parquet(tmp_path / "bars.parquet")
    book = _book([(s, T(f"0{h}:00"), T(f"0{h}:00"), 99.0 + h, 99.5 + h, h, 1.0) for s in ("X", "Y") for h in (1, 2, 3)])
    book.assign(depth_bid=book["bid_size"] * 3, depth_ask=4.0).to_csv(tmp_path / "book.csv", index=False)
    cfg = {
        "source": "file",
        "path": str(tmp_path / "bars.parquet"),
        "streams": {"orderbook": str(tmp_path / "book.csv")},
    }
    panel = load_panel(cfg)
    assert {"bid", "ask", "bid_size", "ask_size", "depth_bid", "depth_ask", "depth_ask_missing"} <= set(panel.columns)
    x = panel[panel["symbol"] == "X"]
    np.testing.assert_array_equal(x["bid"].iloc[:5], [100.0, 101.0, 102.0, 102.0, 102.0])
    assert x["bid_missing"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    book.drop(columns="bid").to_csv(tmp_path / "book.csv", index=False)
    with pytest.raises(QuantmlInputError, match=r"lacks column\(s\) \['bid'\]"):
        load_panel(cfg)


# ------------------------------------------------------------------ the microstructure block
def _tiny_book_panel(depth=True):
    bars = _bars(5)
    rows = [
        ("X", T("01:00"), T("01:00"), 99.0, 101.0, 3.0, 1.0),
        ("X", T("02:00"), T("02:00"), 100.0, 101.0, 1.0, 1.0),
        ("X", T("03:00"), T("03:00"), 100.0, 102.0, 1.0, 3.0),
        ("X", T("04:00"), T("04:00"), 101.0, 103.0, 2.0, 2.0),
        ("X", T("05:00"), T("05:00"), 101.0, 102.0, 4.0, 0.0),
    ]
    book = _book(rows)
    if depth:
        book = book.assign(depth_bid=book["bid_size"] + 2.0, depth_ask=book["ask_size"] + 2.0)
    return validate_panel(join_streams(bars, {"orderbook": book}))


def test_exact_values_on_tiny_panel():
    fm = build_features(_tiny_book_panel(), {"name": "t", "blocks": {"microstructure": {"z_window": 3, "smooth": 2}}})
    f = fm.frame
    rel = np.array([2 / 100, 1 / 100.5, 2 / 101, 2 / 102, 1 / 101.5])
    np.testing.assert_allclose(f["ob_spread_bps"], (rel * 1e4).astype(np.float32), rtol=1e-6)
    imb = np.array([0.5, 0.0, -0.5, 0.0, 1.0])
    np.testing.assert_allclose(f["ob_imbalance"], imb)
    np.testing.assert_allclose(f["ob_imbalance_mean_2"], [np.nan, 0.25, -0.25, -0.25, 0.5])
    np.testing.assert_allclose(f["ob_depth_imbalance"], [2 / 8, 0, -2 / 8, 0, 4 / 8])
    ls = np.log(rel)  # z-score over 3 bars (min 2): (x - mean) / sample std
    z = [np.nan] + [
        (ls[i] - ls[max(0, i - 2) : i + 1].mean()) / ls[max(0, i - 2) : i + 1].std(ddof=1) for i in range(1, 5)
    ]
    np.testing.assert_allclose(f["ob_spread_z_3"], np.asarray(z, dtype=np.float32), rtol=1e-5)
    assert (f["ob_quote_missing"] == 0).all() and set(fm.modalities.values()) == {"microstructure"}
    assert {"bid", "ask", "bid_size", "ask_size", "depth_bid", "depth_ask"} <= set(fm.input_columns)


def test_block_skips_without_the_stream_and_notes_absent_depth():
    stocks = load_panel({"source": "stocks_daily", "symbols": ["IBM", "MSFT"], "start": "2010-01-01"})
    fm = build_features(stocks, FULL)
    assert fm.skipped["microstructure"].startswith("needs an order-book stream (columns ['bid', 'ask'")
    assert "microstructure" not in fm.modalities.values()
    without = {"name": "full", "blocks": {k: v for k, v in FULL["blocks"].items() if k != "microstructure"}}
    pd.testing.assert_frame_equal(fm.frame, build_features(stocks, without).frame)  # the demo is unchanged
    part = build_features(_tiny_book_panel(depth=False), MICRO)
    assert part.skipped == {"microstructure.depth": "needs column 'depth_bid', absent from the panel"}
    assert "ob_imbalance" in part.frame and "ob_depth_z_96" not in part.frame


@pytest.mark.parametrize("windows", [{"z_window": 24, "smooth": 3}, {"z_window": "1d", "smooth": "3h"}])
def test_block_is_causal(ob_panel, windows):
    cfg = {"name": "m", "blocks": {"microstructure": windows}}
    fm = build_features(ob_panel, cfg)
    assert fm.frame.shape[1] == 10 and bool(fm.resolved) == isinstance(windows["z_window"], str)
    cut = ob_panel["timestamp"].sort_values().iloc[len(ob_panel) // 2]
    assert causality_violations(ob_panel, cfg, cut=cut, seed=3) == {}


def test_full_set_with_the_book_is_causal(ob_panel):
    cut = ob_panel["timestamp"].quantile(0.7)
    assert causality_violations(ob_panel, FULL, cut=cut, seed=2) == {}


def test_stream_rows_published_after_t_change_nothing_up_to_t():
    """Perturb the raw order-book rows with available_at > cut (and add rows published later
    about earlier times): the joined features at or before cut are bit-identical."""
    from quantml.data.synthetic import generate_synthetic

    syn = generate_synthetic("1h", n_symbols=2, n_bars=400, seed=4, orderbook=True)
    cut = syn.bars["timestamp"].iloc[250]
    book = syn.streams["orderbook"]
    late = book["available_at"] > cut
    moved = book.copy()
    rng = np.random.default_rng(0)
    for c in ("bid_size", "ask_size", "depth_bid", "depth_ask"):
        moved.loc[late, c] = moved.loc[late, c] * rng.uniform(0.2, 5.0, int(late.sum()))
    moved.loc[late, "ask"] = moved.loc[late, "ask"] * 1.01
    revision = book[~late].tail(30).assign(available_at=cut + pd.Timedelta("1min"), bid_size=1e6)
    moved = pd.concat([moved, revision], ignore_index=True)
    cfg = {"name": "m", "blocks": {"microstructure": {"z_window": "1d", "smooth": 3}}}
    a = build_features(validate_panel(join_streams(syn.bars, {"orderbook": book})), cfg).frame
    b = build_features(validate_panel(join_streams(syn.bars, {"orderbook": moved})), cfg).frame
    past = (validate_panel(syn.bars)["timestamp"] <= cut).to_numpy()
    np.testing.assert_array_equal(a[past].to_numpy().view(np.uint32), b[past].to_numpy().view(np.uint32))
    assert not np.array_equal(a[~past].to_numpy(), b[~past].to_numpy(), equal_nan=True)  # the test can fail


def test_ablation_drops_the_block(ob_panel):
    abl = OmegaConf.load(CONF / "ablation" / "no_microstructure.yaml")
    assert abl.name == "no_microstructure" and list(abl.drop_modalities) == ["microstructure"]
    full = build_features(ob_panel, FULL)
    fm = build_features(ob_panel, FULL, drop_modalities=list(abl.drop_modalities))
    assert "ob_imbalance" in full.frame and "microstructure" not in fm.modalities.values()
    kept = [c for c in full.frame.columns if full.modalities[c] != "microstructure"]
    pd.testing.assert_frame_equal(fm.frame, full.frame[kept])
    assert not {"bid", "ask", "bid_size"} & set(fm.input_columns)


def test_planted_imbalance_is_findable():
    p = load_panel({"source": "synthetic", "n_symbols": 6, "n_bars": 5000, "seed": 11, "orderbook": True})
    fm = build_features(p, MICRO)
    y = make_labels(p, ["1h"], 0.0).ret_next_bar
    df = fm.frame.assign(y=y, s=p["symbol"].to_numpy())
    feats = ["ob_imbalance", "ob_depth_imbalance", "ob_spread_bps"]
    ic = pd.DataFrame({s: g[feats].corrwith(g["y"], method="spearman") for s, g in df.groupby("s")}).mean(axis=1)
    assert ic["ob_imbalance"] > 0.025 and ic["ob_depth_imbalance"] > 0.015
    assert abs(ic["ob_spread_bps"]) < 0.02 and ic.abs().max() < 0.1  # small, as planted


# ------------------------------------------------------------------ costs from the spread
def test_half_spread_costs_by_hand_on_three_bars():
    costs = CostModel(fee_bps=1.0, slippage_bps=2.0, impact_bps=0.0)
    pos = np.array([0.5, 1.0, -1.0])
    ret = np.array([0.01, 0.02, -0.01])
    hs = np.array([5e-4, np.nan, 1e-4])  # bar 1: no usable quote -> the constant 2 bps
    const = execute(pos, ret, costs)
    book = execute(pos, ret, costs, half_spread=hs)
    # trades 0.5, 0.5, -2; one way: fee 1 bps + (half-spread | slippage 2 bps)
    np.testing.assert_allclose(const["cost"], [0.5 * 3e-4, 0.5 * 3e-4, 2 * 3e-4], rtol=1e-12)
    np.testing.assert_allclose(book["cost"], [0.5 * 6e-4, 0.5 * 3e-4, 2 * 2e-4], rtol=1e-12)
    np.testing.assert_allclose(book["cost"] - const["cost"], [1.5e-4, 0.0, -2e-4], atol=1e-15)
    np.testing.assert_array_equal(book["gross"], const["gross"])
    held, replay = np.zeros(1), []  # the bar-by-bar replay charges the same
    for t in range(3):
        replay.append(execute_bar(held, pos[t : t + 1], ret[t : t + 1], costs, half_spread=hs[t : t + 1])[1])
        held = pos[t : t + 1]
    np.testing.assert_allclose(replay, book["cost"], rtol=1e-12)
    np.testing.assert_array_equal(execute(pos, ret, costs, half_spread=np.full(3, np.nan))["cost"], const["cost"])
    with pytest.raises(ValueError, match="half_spread"):
        execute(pos, ret, costs, half_spread=np.zeros(2))


def test_half_spread_from_the_joined_quotes():
    np.testing.assert_allclose(
        half_spread_of([99.0, 100.0, np.nan, 101.0, 0.0], [101.0, 100.0, 100.0, 100.0, 1.0]),
        [1 / 100, 0.0, np.nan, np.nan, np.nan],
    )
    panel = _tiny_book_panel()
    np.testing.assert_allclose(panel_half_spread(panel), [1 / 100, 0.5 / 100.5, 1 / 101, 1 / 102, 0.5 / 101.5])
    assert panel_half_spread(panel.drop(columns="bid")) is None
