"""The executor (quantml.market.fills): equals execute() under `close` with no caps; caps carry and drop;
slices; netting; fill records; the state round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from quantml.backtest.vectorised import backtest
from quantml.contracts import QuantmlInputError
from quantml.market import BarQuotes, CostModel, ExecutionConfig, ExecutionPolicy, Executor, execute

INF = math.inf
AUM = 1e6


def _market(T=60, N=3, seed=0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, N)), axis=0))
    opn = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.002, (T, N)))
    high = np.maximum(opn, close) * np.exp(np.abs(rng.normal(0, 0.003, (T, N))))
    low = np.minimum(opn, close) * np.exp(-np.abs(rng.normal(0, 0.003, (T, N))))
    volume = rng.uniform(2e3, 6e3, (T, N))  # units: notional ~ 2e5..6e5 per bar
    return opn, high, low, close, volume


def _config(policies, horizon_policy=None, default=None):
    return ExecutionConfig(AUM, {p.name: p for p in policies}, horizon_policy or {}, default or policies[0].name)


def _run(ex, ts, quotes, targets):
    fills, pnl = [], []
    for t in range(len(ts)):
        out = ex.on_bar(ts[t], quotes[t], None if targets is None else targets[t])
        fills.append(out.fills)
        pnl.append(out.pnl)
    return fills, pnl


def _quotes(m, t, with_volume=True):
    o, h, lo, c, v = m
    return BarQuotes(o[t], h[t], lo[t], c[t], v[t] if with_volume else None)


@pytest.mark.parametrize("with_volume", [True, False])
def test_close_policy_without_caps_equals_execute_and_backtest(with_volume):
    T, N, H = 60, 3, 2
    m = _market(T, N)
    close, volume = m[3], m[4]
    rng = np.random.default_rng(3)
    targets = rng.normal(0, 0.3, (T, N, H))
    targets[rng.uniform(size=targets.shape) < 0.2] = 0.0
    costs = CostModel(fee_bps=2.0, slippage_bps=1.5, impact_bps=0.5, impact_coef=8.0, participation_cap=0.05)
    cfg = _config([ExecutionPolicy("close", "close", costs.slippage_bps, INF, INF)])
    ex = Executor(["a", "b", "c"], ["1h", "1d"], cfg, costs)
    ts = pd.date_range("2024-01-01", periods=T, freq="h", tz="UTC")
    _, pnl = _run(ex, ts, [_quotes(m, t, with_volume) for t in range(T)], targets)
    last = ex.finish()
    rows = pd.concat([*pnl, last.pnl], ignore_index=True)
    assert len(rows) == T * N * H
    per_bar = rows.groupby("timestamp", sort=True)["pnl"].sum().to_numpy()
    ret = np.vstack([close[1:] / close[:-1] - 1.0, np.full((1, N), np.nan)])
    notional = volume * close if with_volume else None
    ref = execute(targets.sum(axis=2), ret, costs, notional, AUM)
    assert ref["cost"].sum() > 0
    np.testing.assert_allclose(per_bar, ref["pnl"], rtol=0, atol=1e-12)
    bt = backtest(targets.sum(axis=2), ret, costs, 252.0, volume=notional, capital=AUM)
    np.testing.assert_allclose(per_bar, bt.bars["pnl"].to_numpy(), rtol=0, atol=1e-12)
    with pytest.raises(QuantmlInputError, match="finished"):
        ex.on_bar(ts[-1] + pd.Timedelta("1h"), _quotes(m, 0, with_volume), None)
    held = rows.groupby(["timestamp", "symbol"])["position"].sum().unstack().to_numpy()
    np.testing.assert_allclose(held, targets.sum(axis=2), atol=1e-15)


def _one_symbol(policy, costs, prices, volume, targets):
    """Run one symbol, one bucket over explicit bars; prices: list of (open, high, low, close)."""
    ex = Executor(["x"], ["1h"], _config([policy]), costs)
    ts = pd.date_range("2024-01-01", periods=len(prices), freq="h", tz="UTC")
    fills, pnl = [], []
    for t, (o, h, lo, c) in enumerate(prices):
        q = BarQuotes(np.array([o]), np.array([h]), np.array([lo]), np.array([c]), np.array([volume[t]]))
        tg = None if targets[t] is None else np.array([[targets[t]]])
        out = ex.on_bar(ts[t], q, tg)
        fills.append(out.fills)
        pnl.append(out.pnl)
    return ex, pd.concat(fills, ignore_index=True), pd.concat(pnl, ignore_index=True)


def test_participation_cap_fills_partly_and_carries_the_rest():
    pol = ExecutionPolicy("short_horizon", "next_open", 0.0, 0.1, INF)
    bars = [(100.0, 100.0, 100.0, 100.0)] * 5
    # 0.5 of 1e6 = 5e5 notional; each bar trades 2e4 units at 100 = 2e6 notional -> 2e5 a bar at 10 %
    ex, fills, _ = _one_symbol(pol, CostModel(0, 0), bars, [2e4] * 5, [0.5, None, None, None, None])
    np.testing.assert_allclose(fills["filled_notional"], [2e5, 2e5, 1e5])
    np.testing.assert_allclose(fills["order_notional"], [5e5, 3e5, 1e5])
    np.testing.assert_allclose(fills["carried_notional"], [3e5, 1e5, 0.0], atol=1e-9)
    np.testing.assert_allclose(fills["participation"], [0.1, 0.1, 0.05])
    assert (fills["decided_at"] == pd.Timestamp("2024-01-01", tz="UTC")).all()
    assert ex.position[0, 0] == pytest.approx(0.5, abs=1e-15)


def test_slippage_cap_fills_up_to_the_cap_and_drops_the_rest():
    costs = CostModel(fee_bps=0.0, slippage_bps=0.0, impact_coef=10.0, participation_cap=0.1)
    pol = ExecutionPolicy("close", "close", 5.0, INF, 15.0)
    bars = [(100.0, 100.0, 100.0, 100.0)] * 3
    # room for impact 15 - 5 = 10 bps = impact_coef * sqrt(p / 0.1) -> p = 0.1 of 1e6 notional = 1e5
    ex, fills, pnl = _one_symbol(pol, costs, bars, [1e4] * 3, [0.5, None, None])
    assert len(fills) == 1  # the rest was dropped, not carried
    row = fills.iloc[0]
    assert row["filled_notional"] == pytest.approx(1e5)
    assert row["carried_notional"] == pytest.approx(0.0, abs=1e-9)
    assert row["slippage_bps"] == pytest.approx(15.0)
    assert row["impact_bps"] == pytest.approx(10.0)
    assert ex.position[0, 0] == pytest.approx(0.1) and ex.remaining[0, 0] == 0.0
    # cost = 0.1 of aum x 15 bps
    assert pnl["cost"].iloc[0] == pytest.approx(0.1 * 15e-4)
    # a gap beyond the cap at the next open: nothing fills, the order is dropped
    pol2 = ExecutionPolicy("short_horizon", "next_open", 0.0, INF, 50.0)
    ex2, fills2, _ = _one_symbol(
        pol2, CostModel(0, 0), [(100, 100, 100, 100), (101, 101, 101, 101)] * 2, [1e4] * 4, [0.2, None, None, None]
    )
    assert len(fills2) == 1 and fills2["filled_notional"].iloc[0] == 0.0
    assert np.isnan(fills2["fill_price"].iloc[0]) and ex2.position[0, 0] == 0.0


def test_long_horizon_slices_the_order_over_bars_at_the_typical_price():
    pol = ExecutionPolicy("long_horizon", "typical", 0.0, INF, INF, slices=4)
    bars = [(100.0, 103.0, 97.0, 100.0 + t) for t in range(6)]
    ex, fills, _ = _one_symbol(pol, CostModel(0, 0), bars, [1e4] * 6, [0.4, None, None, None, None, None])
    assert len(fills) == 4
    np.testing.assert_allclose(fills["filled_notional"], [1e5] * 4)
    np.testing.assert_allclose(ex.position, [[0.4]], atol=1e-15)
    typical = [(103.0 + 97.0 + 100.0 + t) / 3 for t in range(1, 5)]
    np.testing.assert_allclose(fills["fill_price"], typical, rtol=1e-12)
    np.testing.assert_allclose(fills["theoretical_price"], [100.0, 101.0, 102.0, 103.0])


def test_buckets_trading_opposite_ways_pay_only_the_net_trade():
    costs = CostModel(fee_bps=3.0, slippage_bps=2.0, impact_bps=1.0, impact_coef=5.0, participation_cap=0.1)
    cfg = _config([ExecutionPolicy("close", "close", costs.slippage_bps, INF, INF)])
    ex = Executor(["x"], ["1h", "1d"], cfg, costs)
    ts = pd.date_range("2024-01-01", periods=2, freq="h", tz="UTC")
    q = BarQuotes.from_close(np.array([100.0]), np.array([1e4]))
    ex.on_bar(ts[0], q, np.array([[0.3, -0.2]]))
    out = ex.on_bar(ts[1], BarQuotes.from_close(np.array([101.0]), np.array([1e4])), None)
    ref = execute(np.array([[0.1]]), np.array([[0.01]]), costs, np.array([[1e6]]), AUM)
    assert out.pnl["cost"].sum() == pytest.approx(ref["cost"][0], rel=1e-12)
    assert out.pnl["pnl"].sum() == pytest.approx(ref["pnl"][0], rel=1e-12)
    f = out.fills.set_index("bucket")
    # the short bucket crossed internally: no cost, at the theoretical price
    assert f.loc["1d", "filled_notional"] == pytest.approx(2e5) and f.loc["1d", "slippage_bps"] == 0.0
    assert f.loc["1d", "fill_price"] == 100.0 and f.loc["1d", "participation"] == 0.0
    # the long bucket paid for the net 1e5 going to the market (participation of the net trade)
    assert f.loc["1h", "participation"] == pytest.approx(0.1)
    p = out.pnl.set_index("bucket")
    assert p.loc["1d", "cost"] == 0.0 and p.loc["1h", "cost"] == pytest.approx(ref["cost"][0], rel=1e-12)
    np.testing.assert_allclose(p["gross"], [0.3 * 0.01, -0.2 * 0.01], rtol=1e-12)


def _tiered():
    return _config(
        [
            ExecutionPolicy("short_horizon", "next_open", None, 0.1, 50.0),
            ExecutionPolicy("long_horizon", "typical", None, 0.02, 20.0, slices=4),
        ],
        {"<=4h": "short_horizon"},
        "long_horizon",
    )


def test_fill_records_and_attribution_add_up():
    T, N = 80, 3
    m = _market(T, N, seed=4)
    costs = CostModel(fee_bps=1.0, slippage_bps=2.0, impact_bps=0.5, impact_coef=6.0, participation_cap=0.1)
    ex = Executor(["a", "b", "c"], ["1h", "1d"], _tiered(), costs)
    targets = np.random.default_rng(5).normal(0, 0.2, (T, N, 2))
    ts = pd.date_range("2024-01-01", periods=T, freq="h", tz="UTC")
    fills, pnl = _run(ex, ts, [_quotes(m, t) for t in range(T)], targets)
    fills, pnl = pd.concat(fills, ignore_index=True), pd.concat(pnl, ignore_index=True)
    done = fills[fills["filled_notional"] > 0]
    assert (fills["carried_notional"] > 0).any() and (done["participation"] <= 0.1 + 1e-12).all()
    slip = done["side"] * (done["fill_price"] - done["theoretical_price"]) / done["theoretical_price"] * 1e4
    np.testing.assert_allclose(done["slippage_bps"], slip, rtol=1e-9, atol=1e-9)
    assert (done["slippage_bps"] <= np.where(done["policy"] == "short_horizon", 50.0, 20.0) + 1e-9).all()
    assert set(done["policy"]) == {"short_horizon", "long_horizon"}
    assert set(pnl.loc[pnl["bucket"] == "1d", "policy"]) == {"long_horizon"}
    # the per-bucket cost is the sum of that bucket's market fills' fee + slippage
    fills_cost = (done["filled_notional"] / AUM * (done["fee_bps"] + done["slippage_bps"]) / 1e4).sum()
    assert pnl["cost"].sum() == pytest.approx(fills_cost, rel=1e-9)
    assert pnl["pnl"].sum() == pytest.approx(pnl["gross"].sum() - pnl["cost"].sum(), rel=1e-12)
    market = done[done["participation"] > 0]
    assert (market["spread_bps"] >= 0).all() and (market["spread_bps"] > 0).mean() > 0.5  # estimated from high/low


def test_state_round_trip_mid_stream_is_bit_identical():
    T, N = 70, 3
    m = _market(T, N, seed=8)
    costs = CostModel(fee_bps=1.0, slippage_bps=2.0, impact_bps=0.5, impact_coef=6.0, participation_cap=0.1)
    targets = np.random.default_rng(9).normal(0, 0.2, (T, N, 2))
    targets[::3] = np.nan  # NaN targets = flat
    ts = pd.date_range("2024-01-01", periods=T, freq="h", tz="UTC")
    quotes = [_quotes(m, t) for t in range(T)]
    whole = Executor(["a", "b", "c"], ["1h", "1d"], _tiered(), costs)
    f_all, p_all = _run(whole, ts, quotes, targets)
    k = 33
    first = Executor(["a", "b", "c"], ["1h", "1d"], _tiered(), costs)
    f1, p1 = _run(first, ts[:k], quotes[:k], targets[:k])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = Executor.from_state(state, ["a", "b", "c"], ["1h", "1d"], _tiered(), costs)
    f2, p2 = _run(resumed, ts[k:], quotes[k:], targets[k:])
    pd.testing.assert_frame_equal(
        pd.concat(f1 + f2, ignore_index=True), pd.concat(f_all, ignore_index=True), check_exact=True
    )
    pd.testing.assert_frame_equal(
        pd.concat(p1 + p2, ignore_index=True), pd.concat(p_all, ignore_index=True), check_exact=True
    )
    assert resumed.state_dict() == whole.state_dict()
    with pytest.raises(QuantmlInputError, match="symbols"):
        Executor.from_state(state, ["a", "b"], ["1h", "1d"], _tiered(), costs)


def test_bad_input_names_the_fix():
    with pytest.raises(QuantmlInputError, match="price"):
        ExecutionPolicy("p", "vwap", None, INF, INF)
    with pytest.raises(QuantmlInputError, match="aum"):
        ExecutionConfig(0.0, {"c": ExecutionPolicy("c", "close", None, INF, INF)}, {}, "c")
    with pytest.raises(QuantmlInputError, match="default_policy"):
        ExecutionConfig.from_config({"aum": 1e6, "policies": {"c": {"price": "close"}}, "default_policy": "x"})
    ex = Executor(["a"], ["1h"], _config([ExecutionPolicy("c", "close", None, INF, INF)]), CostModel())
    q = BarQuotes.from_close(np.array([1.0]))
    ex.on_bar(pd.Timestamp("2024-01-02", tz="UTC"), q, None)
    with pytest.raises(QuantmlInputError, match="time order"):
        ex.on_bar(pd.Timestamp("2024-01-01", tz="UTC"), q, None)
    with pytest.raises(QuantmlInputError, match="targets"):
        ex.on_bar(pd.Timestamp("2024-01-03", tz="UTC"), q, np.zeros((2, 1)))
