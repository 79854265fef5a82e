"""executed_backtest: the backtest through the Executor equals the vectorised one under `close`; the paper
trader with execution equals it under the tiered policies, and resumes from its state bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.backtest.executed import executed_backtest, quote_planes
from quantml.backtest.paper import PaperTrader, paper_replay
from quantml.backtest.vectorised import backtest
from quantml.cli.common import CONFIG_DIR
from quantml.market import BarQuotes, CostModel, ExecutionConfig, ExecutionPolicy
from quantml.portfolio import AllocatorConfig, SignalPanel
from quantml.portfolio.strategy import Book, strategy_positions
from quantml.signals import SignalConfig
from tests.helpers.synthetic_oos import synthetic_oos_frame

AUM = 5e6
SIG = SignalConfig(threshold={"1d": 0.02, "5d": 0.04}, min_confidence={"5d": 0.05}, cost=0.0008)
ALLOC = AllocatorConfig(
    target_vol=0.2, symbol_cap=0.3, bucket_cap=0.6, corr_threshold=0.9, cov_window=30, cov_min_periods=10
)
COSTS = CostModel(fee_bps=2.0, slippage_bps=1.0, impact_bps=0.5, impact_coef=8.0, participation_cap=0.05)


def _setup(n_bars=160):
    panel = SignalPanel.from_frame(synthetic_oos_frame(n_symbols=4, n_bars=n_bars, seed=5, duplicate_symbol=True))
    rng = np.random.default_rng(2)
    T, N = len(panel.timestamps), len(panel.symbols)
    close = 100.0 * np.cumprod(np.vstack([np.ones((1, N)), 1.0 + np.nan_to_num(panel.next_return[:-1])]), axis=0)
    opn = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.002, (T, N)))
    high = np.maximum(opn, close) * np.exp(np.abs(rng.normal(0, 0.003, (T, N))))
    low = np.minimum(opn, close) * np.exp(-np.abs(rng.normal(0, 0.003, (T, N))))
    volume = rng.uniform(2e4, 8e4, (T, N))
    quotes = pd.DataFrame(
        {
            "symbol": np.tile(panel.symbols, T),
            "timestamp": np.repeat(panel.timestamps, N),
            "open": opn.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": volume.ravel(),
        }
    )
    ret = np.vstack([close[1:] / close[:-1] - 1.0, np.full((1, N), np.nan)])
    return panel, quotes, ret, close * volume


def _tiered(aum=AUM):
    root = OmegaConf.create({"execution": OmegaConf.load(Path(CONFIG_DIR) / "execution" / "tiered.yaml")})
    cfg = ExecutionConfig.from_config(root.execution)
    return ExecutionConfig(aum, cfg.policies, cfg.horizon_policy, cfg.default_policy)


def test_executed_backtest_under_close_equals_the_vectorised_backtest():
    panel, quotes, ret, notional = _setup()
    pos, attr = strategy_positions(panel, SIG, ALLOC, 365.25)
    book = Book(pos, ret, panel.timestamps, panel.symbols, attribution=attr, horizons=panel.horizons)
    close_cfg = OmegaConf.create(
        {"cost": COSTS.to_dict(), "execution": OmegaConf.load(Path(CONFIG_DIR) / "execution" / "close.yaml")}
    )
    cfg = ExecutionConfig.from_config(close_cfg.execution)
    cfg = ExecutionConfig(AUM, cfg.policies, cfg.horizon_policy, cfg.default_policy)
    assert cfg.policies["close"].half_spread_bps == COSTS.slippage_bps
    res, fills, pnl = executed_backtest(book, quotes, cfg, COSTS, 365.25)
    vec = backtest(pos, ret, COSTS, 365.25, volume=notional, capital=AUM, timestamps=panel.timestamps)
    assert vec.bars["turnover"].sum() > 1.0
    for col in ("gross", "cost", "pnl", "turnover"):
        np.testing.assert_allclose(res.bars[col].to_numpy(), vec.bars[col].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.positions.to_numpy(), pos, atol=1e-12)
    assert res.stats["sharpe"] == pytest.approx(vec.stats["sharpe"], abs=1e-9)
    # per-bucket attribution adds up to the total
    np.testing.assert_allclose(res.horizon_pnl.sum(axis=1), res.bars["pnl"], atol=1e-15)
    assert set(fills["policy"]) == {"close"} and (fills["slippage_bps"].dropna() >= 0).all()
    assert len(pnl) == len(panel.timestamps) * len(panel.symbols) * len(panel.horizons)


def test_tiered_caps_bind_and_the_paper_trader_matches_executed_backtest():
    panel, quotes, ret, notional = _setup()
    pos, attr = strategy_positions(panel, SIG, ALLOC, 365.25)
    book = Book(pos, ret, panel.timestamps, panel.symbols, attribution=attr, horizons=panel.horizons)
    tiered = _tiered()
    assert [tiered.policy_for(h).name for h in panel.horizons] == ["long_horizon", "long_horizon"]
    tiered = ExecutionConfig(AUM, tiered.policies, {"1d": "short_horizon"}, "long_horizon")
    res, fills, pnl = executed_backtest(book, quotes, tiered, COSTS, 365.25)
    assert (fills["carried_notional"] > 0).any()  # the participation caps bind at 5e6 of capital
    dropped = fills["order_notional"] - fills["filled_notional"] - fills["carried_notional"]
    assert (dropped > 1e-6).any()  # and the slippage caps
    assert set(fills["policy"]) == {"short_horizon", "long_horizon"}
    np.testing.assert_allclose(res.horizon_pnl.sum(axis=1), res.bars["pnl"], atol=1e-15)
    paper = paper_replay(panel, SIG, ALLOC, COSTS, 365.25, capital=AUM, execution=tiered, quotes=quotes)
    np.testing.assert_allclose(paper.bars["pnl"].to_numpy(), res.bars["pnl"].to_numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(paper.positions.to_numpy(), res.positions.to_numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(paper.horizon_pnl.to_numpy(), res.horizon_pnl.to_numpy(), rtol=0, atol=1e-9)


def test_paper_trader_resumes_from_its_state_bit_for_bit():
    panel, quotes, _, _ = _setup(n_bars=100)
    planes = quote_planes(quotes, panel.timestamps, panel.symbols)
    tiered = _tiered()
    n = len(panel.symbols)

    def feed(trader, t0, t1):
        for t in range(t0, t1):
            q = BarQuotes(
                planes["open"][t], planes["high"][t], planes["low"][t], planes["close"][t], planes["volume"][t]
            )
            realised = panel.next_return[t - 1] if t else np.full(n, np.nan)
            trader.on_bar(
                panel.timestamps[t], realised, panel.score[t], panel.confidence[t], panel.vol_forecast[t], quotes=q
            )

    def make():
        return PaperTrader(panel.symbols, panel.horizons, SIG, ALLOC, COSTS, 365.25, AUM, execution=tiered)

    whole = make()
    feed(whole, 0, len(panel.timestamps))
    k = 47
    first = make()
    feed(first, 0, k)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PaperTrader.from_state(state, panel.symbols, panel.horizons, SIG, ALLOC, COSTS, 365.25, AUM, tiered)
    feed(resumed, k, len(panel.timestamps))
    pd.testing.assert_frame_equal(
        pd.concat(first.pnl + resumed.pnl, ignore_index=True), pd.concat(whole.pnl, ignore_index=True), check_exact=True
    )
    pd.testing.assert_frame_equal(
        pd.concat(first.fills + resumed.fills, ignore_index=True),
        pd.concat(whole.fills, ignore_index=True),
        check_exact=True,
    )
    assert resumed.state_dict() == whole.state_dict()
    # without execution the trader's state round-trips too
    plain = PaperTrader(panel.symbols, panel.horizons, SIG, ALLOC, COSTS, 365.25, AUM)
    assert (
        PaperTrader.from_state(
            json.loads(json.dumps(plain.state_dict())), panel.symbols, panel.horizons, SIG, ALLOC, COSTS, 365.25, AUM
        ).state_dict()
        == plain.state_dict()
    )
    with pytest.raises(Exception, match="execution"):
        PaperTrader.from_state(state, panel.symbols, panel.horizons, SIG, ALLOC, COSTS, 365.25, AUM)
    assert math.isfinite(whole.result().stats["sharpe"])


def test_executed_backtest_refuses_misshapen_targets():
    panel, quotes, _, _ = _setup(n_bars=40)
    with pytest.raises(Exception, match="timestamps"):
        executed_backtest(np.zeros((3, 4, 2)), quotes, _tiered(), COSTS, 365.25)
    with pytest.raises(Exception, match="do not match"):
        executed_backtest(
            np.zeros((3, 4, 2)),
            quotes,
            _tiered(),
            COSTS,
            365.25,
            timestamps=panel.timestamps,
            symbols=panel.symbols,
            horizons=panel.horizons,
        )
    pol = ExecutionPolicy("close", "close", None, math.inf, math.inf)
    assert pol.to_dict()["slices"] == 1
