"""Backtest: textbook performance formulas, cost arithmetic, one-bar lag, paper replay == vectorised."""

import numpy as np
import pandas as pd
import pytest

from quantml.backtest.paper import PaperTrader, paper_replay
from quantml.backtest.vectorised import backtest, backtest_signals
from quantml.contracts import periods_per_year
from quantml.market import CostModel, execute, execute_bar, performance_stats
from quantml.market.performance import (
    annualised_return,
    calmar_ratio,
    max_drawdown,
    max_drawdown_additive,
    sharpe_ratio,
)
from quantml.portfolio import AllocatorConfig, SignalPanel
from quantml.portfolio.strategy import strategy_positions
from quantml.signals import SignalConfig
from tests.helpers.synthetic_oos import synthetic_oos_frame

PNL = np.array([0.01, -0.02, 0.03, -0.01, 0.02])


def test_performance_against_hand_computed_numbers():
    # mean 0.006 -> 0.006 * 252 = 1.512; sample var = (0.004^2+0.026^2+0.024^2+0.016^2+0.014^2)/4 = 4.3e-4
    assert annualised_return(PNL, 252) == pytest.approx(1.512, rel=1e-12)
    assert sharpe_ratio(PNL, 252) == pytest.approx(1.512 / (np.sqrt(4.3e-4) * np.sqrt(252)), rel=1e-12)
    assert sharpe_ratio(PNL, 252) == pytest.approx(4.593220, rel=1e-6)
    # equity 0.01, -0.01, 0.02, 0.01, 0.03; peaks 0.01, 0.01, 0.02, 0.02, 0.03 -> worst -0.02
    assert max_drawdown(PNL) == pytest.approx(-0.02, abs=1e-15)
    assert calmar_ratio(PNL, 252) == pytest.approx(75.6, rel=1e-12)
    # a loss on the first bar is a drawdown from the starting capital
    # (compounded, metrics version 2: 0.99 * 1.005 * 0.98 - 1; the additive one is -0.025)
    assert max_drawdown(np.array([-0.01, 0.005, -0.02])) == pytest.approx(0.99 * 1.005 * 0.98 - 1, abs=1e-15)
    assert max_drawdown_additive(np.array([-0.01, 0.005, -0.02])) == pytest.approx(-0.025, abs=1e-15)
    stats = performance_stats(PNL, np.array([1.0, 0.0, 2.0, 0.0, 1.0]), 252)
    assert stats["turnover"] == pytest.approx(0.8) and stats["calmar"] == pytest.approx(75.6)


def test_execute_costs_and_pnl_by_hand():
    costs = CostModel(fee_bps=10.0, slippage_bps=0.0)
    out = execute(np.array([0.5, 0.5, -0.5, 0.0]), np.array([0.01, -0.02, 0.03, 0.01]), costs)
    # trades 0.5, 0, -1, 0.5 at 10 bps; gross 0.005, -0.01, -0.015, 0
    np.testing.assert_allclose(out["cost"], [0.0005, 0.0, 0.001, 0.0005], atol=1e-18)
    np.testing.assert_allclose(out["pnl"], [0.0045, -0.01, -0.016, -0.0005], atol=1e-15)
    np.testing.assert_allclose(out["turnover"], [0.5, 0.0, 1.0, 0.5])
    # compounded equity 1.0045, x0.99, x0.984, x0.9995 from the peak 1.0045
    np.testing.assert_allclose(out["drawdown"], [0.0, -0.01, 0.99 * 0.984 - 1, 0.99 * 0.984 * 0.9995 - 1], atol=1e-15)


def test_impact_grows_with_participation_in_the_bars_volume():
    costs = CostModel(fee_bps=0.0, slippage_bps=0.0, impact_coef=10.0, participation_cap=0.1)
    # 0.5 of 1e6 capital = 5e5 notional; at 5e6 volume participation is 0.1 -> 10 bps on 0.5
    _, c1, _ = execute_bar(np.zeros(1), np.array([0.5]), np.array([0.0]), costs, np.array([5e6]), 1e6)
    assert c1 == pytest.approx(0.5 * 10e-4, rel=1e-12)
    # 4x the participation -> 2x the impact
    _, c2, _ = execute_bar(np.zeros(1), np.array([0.5]), np.array([0.0]), costs, np.array([1.25e6]), 1e6)
    assert c2 == pytest.approx(0.5 * 20e-4, rel=1e-12)
    # no volume: |trade| stands for participation -> sqrt(0.5 / 0.1) * 10 bps
    _, c3, _ = execute_bar(np.zeros(1), np.array([0.5]), np.array([0.0]), costs)
    assert c3 == pytest.approx(0.5 * np.sqrt(5.0) * 10e-4, rel=1e-12)
    vec = execute(np.array([[0.5], [0.5]]), np.zeros((2, 1)), costs, volume=np.array([[5e6], [5e6]]), capital=1e6)
    np.testing.assert_allclose(vec["cost"], [c1, 0.0], rtol=1e-12)


def test_positions_earn_the_next_bars_return_not_the_current_one():
    close = pd.DataFrame({"A": [100.0, 110.0, 99.0, 108.9]})
    next_ret = close.pct_change().shift(-1)  # [0.1, -0.1, 0.1, NaN]
    realised = close.pct_change()  # what is known at each bar's close
    # a position set from what is known at t cannot capture the move that already happened
    lagged = backtest(np.sign(realised.fillna(0.0)).to_numpy(), next_ret.to_numpy(), CostModel(0, 0), 252)
    np.testing.assert_allclose(lagged.bars["gross"], [0.0, -0.1, -0.1, 0.0], atol=1e-12)
    foresight = backtest(np.array([[1.0], [-1.0], [1.0], [0.0]]), next_ret.to_numpy(), CostModel(0, 0), 252)
    np.testing.assert_allclose(foresight.bars["gross"], [0.1, 0.1, 0.1, 0.0], atol=1e-12)


def _panel(**kw):
    frame = synthetic_oos_frame(**{"n_symbols": 4, "n_bars": 260, "seed": 5, "duplicate_symbol": True, **kw})
    rng = np.random.default_rng(1)
    frame["dollar_volume"] = rng.uniform(2e6, 8e6, len(frame))
    return SignalPanel.from_frame(frame, volume_column="dollar_volume")


@pytest.mark.parametrize("dedup", ["keep", "share"])
def test_paper_replay_matches_vectorised_pnl(dedup):
    panel = _panel()
    sig = SignalConfig(threshold={"1d": 0.02, "5d": 0.04}, min_confidence={"5d": 0.05}, cost=0.0008)
    alloc = AllocatorConfig(
        target_vol=0.2,
        symbol_cap=0.3,
        bucket_cap=0.6,
        corr_threshold=0.9,
        dedup=dedup,
        cov_window=30,
        cov_min_periods=10,
    )
    costs = CostModel(fee_bps=2.0, slippage_bps=1.0, impact_bps=0.5, impact_coef=8.0, participation_cap=0.05)
    vec = backtest_signals(panel, sig, alloc, costs, 365.25, capital=5e6)
    paper = paper_replay(panel, sig, alloc, costs, 365.25, capital=5e6)
    assert len(paper.bars) == len(vec.bars) == len(panel)
    assert vec.bars["turnover"].sum() > 1.0 and (vec.positions.abs().sum(axis=1) > 0).mean() > 0.5
    np.testing.assert_allclose(paper.bars["pnl"].to_numpy(), vec.bars["pnl"].to_numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(paper.bars["cost"].to_numpy(), vec.bars["cost"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(paper.positions.to_numpy(), vec.positions.to_numpy(), rtol=0, atol=1e-12)
    assert paper.stats["sharpe"] == pytest.approx(vec.stats["sharpe"], abs=1e-9)
    # attribution per horizon adds up to the total after-cost PnL
    np.testing.assert_allclose(vec.horizon_pnl.sum(axis=1), vec.bars["pnl"], atol=1e-15)


def test_strategy_positions_do_not_depend_on_future_bars():
    panel = _panel()
    sig = SignalConfig(threshold={"1d": 0.02}, cost=0.0008)
    alloc = AllocatorConfig(cov_window=30, cov_min_periods=10)
    pos, _ = strategy_positions(panel, sig, alloc, 365.25)
    k = 150
    for name in ("score", "confidence", "vol_forecast", "next_return"):
        tampered = _panel()
        arr = getattr(tampered, name)
        arr[k + 1 :] = np.random.default_rng(9).normal(size=arr[k + 1 :].shape)
        if name == "next_return":  # the return realised at k+1 is next_return[k]: tamper from k on
            arr[k:] = 0.5
        pos2, _ = strategy_positions(tampered, sig, alloc, 365.25)
        np.testing.assert_array_equal(pos2[: k + 1], pos[: k + 1])
        assert not np.array_equal(pos2, pos)


def test_paper_trader_never_receives_the_next_bars_return():
    panel = _panel(n_bars=80)
    seen = []

    class Spy(PaperTrader):
        def on_bar(self, timestamp, realised_return, *args, **kw):
            seen.append(np.array(realised_return))
            return super().on_bar(timestamp, realised_return, *args, **kw)

    trader = Spy(
        panel.symbols,
        panel.horizons,
        SignalConfig(),
        AllocatorConfig(cov_window=20, cov_min_periods=5),
        CostModel(),
        365.25,
    )
    for t, ts in enumerate(panel.timestamps):
        trader.on_bar(
            ts,
            panel.next_return[t - 1] if t else np.full(4, np.nan),
            panel.score[t],
            panel.confidence[t],
            panel.vol_forecast[t],
        )
    for t in range(1, len(seen)):
        np.testing.assert_array_equal(seen[t], panel.next_return[t - 1])


def test_backtest_slice_restarts_equity_and_recomputes_stats():
    res = backtest(
        np.ones((5, 1)), PNL[:, None], CostModel(0, 0), 252, timestamps=pd.date_range("2024-01-01", periods=5, tz="UTC")
    )
    part = res.slice(start=pd.Timestamp("2024-01-03", tz="UTC"))
    np.testing.assert_allclose(part.bars["equity"], [0.03, 0.02, 0.04])
    assert part.stats["max_drawdown"] == pytest.approx(-0.01)
    assert part.stats["ann_return"] == pytest.approx(np.mean([0.03, -0.01, 0.02]) * 252)


def test_periods_per_year_from_timestamps():
    # one definition (quantml.contracts.periods_per_year): bars actually observed per year
    assert periods_per_year(pd.date_range("2024-01-01", periods=50, freq="1D", tz="UTC")) == 365.25
    # 10 weeks of business days: 49 gaps over 67 days (about 252 over a year with holidays)
    assert periods_per_year(pd.bdate_range("2024-01-01", periods=50, tz="UTC")) == pytest.approx(49 / 67 * 365.25)
    assert periods_per_year(pd.date_range("2024-01-01", periods=500, freq="1h", tz="UTC")) == 365.25 * 24
    assert periods_per_year(pd.date_range("2024-01-01", periods=30, freq="7D", tz="UTC")) == pytest.approx(365.25 / 7)
