"""Quant metrics against hand-computed values and the reference implementations (sklearn, scipy)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm, pearsonr, spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, mean_pinball_loss

from quantml.backtest import run_backtest
from quantml.contracts import QuantmlInputError
from quantml.evaluation import evaluate_predictions, ic_mode_for, ic_series
from quantml.evaluation.evaluate import backtest_metrics
from quantml.evaluation.metrics import expected_calibration_error, hit_rate, ts_bucket_for
from quantml.market import CostModel, information_ratio, performance_stats
from quantml.portfolio.strategy import RankLongShort, forecast_weights


def synthetic_frame(n_symbols=4, n_bars=300, horizons=("1d",), freq="1D", seed=0, signal=0.01):
    """Prediction frame with a real, heteroscedastic signal (forecast = true conditional mean)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2021-01-01", periods=n_bars, freq=freq, tz="UTC")
    parts = []
    for h in horizons:
        for s in range(n_symbols):
            mu = rng.normal(0, signal, n_bars)
            sig = np.exp(rng.normal(np.log(0.02), 0.3, n_bars))
            ret = mu + sig * rng.normal(size=n_bars)
            parts.append(
                pd.DataFrame(
                    {
                        "symbol": f"S{s}",
                        "timestamp": ts,
                        "horizon": h,
                        "expected_return": mu,
                        "q10": mu - 1.2816 * sig,
                        "q50": mu,
                        "q90": mu + 1.2816 * sig,
                        "prob_up": norm.cdf(mu / sig),
                        "vol_forecast": sig,
                        "ret": ret,
                        "dir": (ret > 0).astype(float),
                        "vol": sig,
                        "ret_next_bar": rng.normal(0, 0.01, n_bars),
                        "fold": 0,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def hand_frame(er, ret, ret_next=None):
    """3 timestamps x 3 symbols from [T][N] lists."""
    er, ret = np.asarray(er, float), np.asarray(ret, float)
    T, N = er.shape
    ts = pd.date_range("2022-01-03", periods=T, freq="1D", tz="UTC")
    ret_next = np.zeros((T, N)) if ret_next is None else np.asarray(ret_next, float)
    rows = []
    for t in range(T):
        for n in range(N):
            rows.append(
                {
                    "symbol": f"S{n}",
                    "timestamp": ts[t],
                    "horizon": "1d",
                    "expected_return": er[t, n],
                    "q10": er[t, n] - 1,
                    "q50": er[t, n],
                    "q90": er[t, n] + 1,
                    "prob_up": 0.5,
                    "ret": ret[t, n],
                    "dir": float(ret[t, n] > 0),
                    "ret_next_bar": ret_next[t, n],
                }
            )
    return pd.DataFrame(rows)


COSTS = CostModel(fee_bps=1.0, slippage_bps=1.0)


def test_ic_mode_for():
    assert ic_mode_for(1) == "time_series"
    assert ic_mode_for(2) == "time_series"
    assert ic_mode_for(3) == "cross_sectional"
    assert ic_mode_for(50) == "cross_sectional"


def test_ic_hand_computed_three_timestamps():
    # t0: perfectly aligned (IC 1), t1: reversed (-1), t2: [1,2,3] vs [1,3,2] -> 0.5
    frame = hand_frame([[1, 2, 3], [1, 2, 3], [1, 2, 3]], [[1, 2, 3], [3, 2, 1], [1, 3, 2]])
    m = evaluate_predictions(frame, "test", 252, COSTS, "cross_sectional")
    assert m["test_ic/1d"] == pytest.approx(0.5 / 3)
    assert m["test_icir/1d"] == pytest.approx(1 / np.sqrt(39))  # mean 1/6, std sqrt(39)/6
    assert m["test_rank_ic/1d"] == pytest.approx(0.5 / 3)
    assert m["test_rank_icir/1d"] == pytest.approx(1 / np.sqrt(39))
    series = ic_series(frame, "cross_sectional")
    np.testing.assert_allclose(series.to_numpy(), [1.0, -1.0, 0.5])


def test_rank_ic_matches_scipy_spearman_with_ties():
    frame = synthetic_frame(n_symbols=7, n_bars=40, seed=3)
    frame["expected_return"] = np.round(frame["expected_return"] * 300) / 300  # create ties
    series = ic_series(frame, "cross_sectional", "spearman")
    expected = frame.groupby("timestamp").apply(
        lambda g: spearmanr(g["expected_return"], g["ret"]).statistic, include_groups=False
    )
    np.testing.assert_allclose(series.to_numpy(), expected.to_numpy(), atol=1e-12)
    pearson = ic_series(frame, "cross_sectional", "pearson")
    expected_p = frame.groupby("timestamp").apply(
        lambda g: pearsonr(g["expected_return"], g["ret"]).statistic, include_groups=False
    )
    np.testing.assert_allclose(pearson.to_numpy(), expected_p.to_numpy(), atol=1e-12)


def test_time_series_ic_is_mean_of_monthly_correlations():
    frame = synthetic_frame(n_symbols=2, n_bars=120, seed=4)
    series = ic_series(frame, "time_series")
    month = frame["timestamp"].dt.tz_localize(None).dt.to_period("M")
    per = frame.groupby([month, "symbol"]).apply(
        lambda g: pearsonr(g["expected_return"], g["ret"]).statistic, include_groups=False
    )
    expected = per.groupby(level=0).mean()
    assert len(series) == 4  # Jan..Apr 2021 (120 days)
    np.testing.assert_allclose(series.to_numpy(), expected.to_numpy(), atol=1e-12)
    m = evaluate_predictions(frame, "val", 252, COSTS, "time_series")
    assert m["val_ic/1d"] == pytest.approx(expected.mean())
    assert m["val_icir/1d"] == pytest.approx(expected.mean() / expected.std(ddof=1))
    ranks = frame.groupby([month, "symbol"]).apply(
        lambda g: spearmanr(g["expected_return"], g["ret"]).statistic, include_groups=False
    )
    assert m["val_rank_ic/1d"] == pytest.approx(ranks.groupby(level=0).mean().mean())


def test_time_series_bucket_follows_bar_spacing():
    assert ts_bucket_for(pd.Timedelta("5min")) == "D"
    assert ts_bucket_for(pd.Timedelta("1h")) == "W"
    assert ts_bucket_for(pd.Timedelta("4h")) == "W"
    assert ts_bucket_for(pd.Timedelta("1D")) == "M"
    assert ts_bucket_for(pd.Timedelta("7D")) == "Y"
    hourly = synthetic_frame(n_symbols=1, n_bars=24 * 21, freq="1h", seed=5)
    assert len(ic_series(hourly, "time_series")) in (3, 4)  # 21 days -> 3-4 ISO weeks


def test_errors_direction_and_probability_metrics_match_sklearn():
    frame = synthetic_frame(n_symbols=3, n_bars=200, seed=1)
    frame["prob_up_raw"] = np.clip(frame["prob_up"] * 1.3 - 0.15, 0.01, 0.99)
    m = evaluate_predictions(frame, "test", 252, COSTS, "cross_sectional")
    er, ret, d = frame["expected_return"], frame["ret"], frame["dir"].astype(int)
    assert m["test_rmse/1d"] == pytest.approx(np.sqrt(np.mean((er - ret) ** 2)))
    assert m["test_mae/1d"] == pytest.approx(np.mean(np.abs(er - ret)))
    assert m["test_hit_rate/1d"] == pytest.approx(np.mean((er > 0) == (ret > 0)))
    assert m["test_ap/1d"] == pytest.approx(average_precision_score(d, frame["prob_up"]))
    assert m["test_brier/1d"] == pytest.approx(brier_score_loss(d, frame["prob_up"]))
    assert m["test_log_loss/1d"] == pytest.approx(log_loss(d, frame["prob_up"]))
    assert m["test_brier_raw/1d"] == pytest.approx(brier_score_loss(d, frame["prob_up_raw"]))
    assert m["test_log_loss_raw/1d"] == pytest.approx(log_loss(d, frame["prob_up_raw"]))
    for q, level in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
        assert m[f"test_pinball_{q}/1d"] == pytest.approx(mean_pinball_loss(ret, frame[q], alpha=level))
        assert m[f"test_coverage_{q}/1d"] == pytest.approx(np.mean(ret <= frame[q]))
    assert m["test_pinball/1d"] == pytest.approx(np.mean([m[f"test_pinball_{q}/1d"] for q in ("q10", "q50", "q90")]))
    assert m["test_coverage_80/1d"] == pytest.approx(np.mean((frame["q10"] <= ret) & (ret <= frame["q90"])))
    # a correctly specified Gaussian forecaster covers ~80%
    assert 0.75 < m["test_coverage_80/1d"] < 0.85


def test_every_contract_metric_is_named_for_every_horizon():
    frame = synthetic_frame(n_symbols=3, n_bars=60, horizons=("1d", "7d"), seed=2)
    m = evaluate_predictions(frame, "oos", 252, COSTS, "cross_sectional")
    keys = (
        "rmse mae hit_rate ap ic icir rank_ic rank_icir ann_return sharpe_after_cost max_drawdown turnover "
        "ece brier log_loss coverage_80 coverage_q10 coverage_q50 coverage_q90 pinball_q10 "
        "pinball_q50 pinball_q90 pinball"
    ).split()
    for h in ("1d", "7d"):
        for k in keys:
            assert np.isfinite(m[f"oos_{k}/{h}"]), k
        # metrics version 2: a dollar-neutral book has no buy-and-hold benchmark -> NaN, but named
        assert np.isnan(m[f"oos_information_ratio/{h}"])
    ts = evaluate_predictions(frame, "oos", 252, COSTS, "time_series")
    assert all(np.isfinite(ts[f"oos_information_ratio/{h}"]) for h in ("1d", "7d"))


def test_ece_hand_computed():
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.95])
    y = np.array([0, 1, 0, 1, 1])
    # bins: [0,.1): p .05 y 0 -> |.05-0|*1 ; [.1,.2): p .15 y .5 -> |.15-.5|*2 ; [.9,1]: p .95 y 1 -> .05*2
    expected = (0.05 + 0.35 * 2 + 0.05 * 2) / 5
    assert expected_calibration_error(p, y, 10, "uniform") == pytest.approx(expected)
    # equal mass, 2 bins: sorted [.05 .15 .15 | .95 .95] -> (|.35/3... |)
    first = abs(np.mean([0.05, 0.15, 0.15]) - np.mean([0, 1, 0])) * 3
    second = abs(0.95 - 1.0) * 2
    assert expected_calibration_error(p, y, 2, "quantile") == pytest.approx((first + second) / 5)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0]), 10) == 0.0


def test_cross_sectional_backtest_hand_computed():
    er = [[1, 2, 3], [3, 2, 1], [1, 3, 2]]
    ret_next = [[0.01, 0.02, -0.01], [0.00, 0.01, 0.03], [-0.02, 0.01, 0.0]]
    frame = hand_frame(er, np.zeros((3, 3)), ret_next)
    weights = forecast_weights(
        frame.pivot(index="timestamp", columns="symbol", values="expected_return"), "cross_sectional"
    )
    np.testing.assert_allclose(weights.to_numpy(), [[-0.5, 0, 0.5], [0.5, 0, -0.5], [-0.5, 0.5, 0]])
    bt = run_backtest(RankLongShort("cross_sectional"), frame, COSTS, 252)
    metrics = backtest_metrics(bt)
    simple = np.expm1(np.asarray(ret_next))
    w = weights.to_numpy()
    trades = np.diff(w, axis=0, prepend=0)
    pnl = (w * simple).sum(1) - np.abs(trades).sum(1) * 2e-4
    np.testing.assert_allclose(bt.pnl.to_numpy(), pnl)
    stats = performance_stats(pnl, np.abs(trades).sum(1), 252)
    assert metrics["ann_return"] == pytest.approx(stats["ann_return"])
    assert metrics["sharpe_after_cost"] == pytest.approx(stats["sharpe"])
    assert metrics["max_drawdown"] == pytest.approx(stats["max_drawdown"])
    assert metrics["turnover"] == pytest.approx(np.mean([1.0, 2.0, 2.0]))
    # metrics version 2: the dollar-neutral rank book has no buy-and-hold benchmark
    assert np.isnan(metrics["information_ratio"])
    assert bt.benchmark is None
    m = evaluate_predictions(frame, "test", 252, COSTS, "cross_sectional")
    assert m["test_sharpe_after_cost/1d"] == pytest.approx(stats["sharpe"])


def test_time_series_information_ratio_hand_computed():
    # every forecast is positive: the sign book holds 1/3 of each symbol = the equal-weight
    # benchmark, so active = -cost: [-2e-4 (turnover 1 at 2 bps), 0, 0];
    # mean = -2e-4/3, std(ddof=1) = 2e-4 * sqrt(1/3) -> IR = -sqrt(1/3) * sqrt(252) = -sqrt(84)
    er = [[1, 2, 3], [3, 2, 1], [1, 3, 2]]
    ret_next = [[0.01, 0.02, -0.01], [0.00, 0.01, 0.03], [-0.02, 0.01, 0.0]]
    bt = run_backtest(RankLongShort("time_series"), hand_frame(er, np.zeros((3, 3)), ret_next), COSTS, 252)
    np.testing.assert_allclose(bt.benchmark.to_numpy(), np.expm1(np.asarray(ret_next)).mean(1))
    assert backtest_metrics(bt)["information_ratio"] == pytest.approx(-np.sqrt(84.0))


def test_time_series_backtest_uses_sign_spread_over_symbols():
    frame = hand_frame(
        [[0.5, -0.1], [-2.0, 0.3], [0.0, 1.0]], np.zeros((3, 2)), [[0.01, 0.02], [0.02, -0.01], [0.03, 0.01]]
    )
    bt = run_backtest(RankLongShort("time_series"), frame, CostModel(0, 0), 252)
    np.testing.assert_allclose(bt.positions.to_numpy(), [[0.5, -0.5], [-0.5, 0.5], [0, 0.5]])
    simple = np.expm1(np.array([[0.01, 0.02], [0.02, -0.01], [0.03, 0.01]]))
    np.testing.assert_allclose(bt.pnl.to_numpy(), (bt.positions.to_numpy() * simple).sum(1))


def test_cpcv_paths_are_evaluated_separately_then_averaged():
    a = synthetic_frame(n_symbols=3, n_bars=80, seed=7).assign(path=0)
    b = synthetic_frame(n_symbols=3, n_bars=80, seed=8).assign(path=1)
    both = evaluate_predictions(pd.concat([a, b], ignore_index=True), "oos", 252, COSTS, "cross_sectional")
    ma = evaluate_predictions(a, "oos", 252, COSTS, "cross_sectional")
    mb = evaluate_predictions(b, "oos", 252, COSTS, "cross_sectional")
    for key in ("oos_ic/1d", "oos_sharpe_after_cost/1d", "oos_rmse/1d", "oos_ece/1d"):
        assert both[key] == pytest.approx((ma[key] + mb[key]) / 2)


def test_signal_is_found_and_noise_is_not():
    good = evaluate_predictions(synthetic_frame(n_symbols=5, n_bars=400, seed=9), "test", 252, COSTS, "cross_sectional")
    noise = synthetic_frame(n_symbols=5, n_bars=400, seed=9)
    noise["expected_return"] = np.random.default_rng(0).permutation(noise["expected_return"].to_numpy())
    bad = evaluate_predictions(noise, "test", 252, COSTS, "cross_sectional")
    assert good["test_ic/1d"] > 0.3 and abs(bad["test_ic/1d"]) < 0.05
    assert good["test_hit_rate/1d"] > 0.6 and abs(bad["test_hit_rate/1d"] - 0.5) < 0.05


def test_bad_inputs_raise_clear_errors():
    frame = synthetic_frame(n_bars=20)
    with pytest.raises(QuantmlInputError, match="ret_next_bar"):
        evaluate_predictions(frame.drop(columns="ret_next_bar"), "test", 252, COSTS, "cross_sectional")
    with pytest.raises(QuantmlInputError, match="tz-aware UTC"):
        evaluate_predictions(
            frame.assign(timestamp=frame["timestamp"].dt.tz_localize(None)), "test", 252, COSTS, "cross_sectional"
        )
    with pytest.raises(QuantmlInputError, match="ic_mode"):
        evaluate_predictions(frame, "test", 252, COSTS, "pooled")
    with pytest.raises(QuantmlInputError, match="periods_per_year"):
        evaluate_predictions(frame, "test", 0, COSTS, "cross_sectional")
    dup = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    with pytest.raises(QuantmlInputError, match="duplicate prediction for symbol='S0'"):
        evaluate_predictions(dup, "test", 252, COSTS, "cross_sectional")


def test_information_ratio_degenerate():
    assert np.isnan(information_ratio(np.ones(5), np.ones(5), 252))
    assert np.isnan(information_ratio(np.ones(1), np.zeros(1), 252))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["exp", "cube", "affine"]))
def test_rank_ic_invariant_to_increasing_transforms(seed, kind):
    frame = synthetic_frame(n_symbols=5, n_bars=15, seed=seed)
    transform = {"exp": np.exp, "cube": lambda x: x**3, "affine": lambda x: 3 * x + 1}[kind]
    moved = frame.assign(expected_return=transform(frame["expected_return"] * 50))
    a = ic_series(frame, "cross_sectional", "spearman")
    b = ic_series(moved, "cross_sectional", "spearman")
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-9)
    ic = ic_series(frame, "cross_sectional", "pearson")
    assert ((ic >= -1) & (ic <= 1)).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=40), st.integers(0, 100))
def test_hit_rate_is_a_share_and_symmetric(values, seed):
    f = np.array(values)
    r = np.random.default_rng(seed).normal(size=len(f))
    h = hit_rate(f, r)
    assert 0.0 <= h <= 1.0
    nonzero = (f != 0) & (r != 0)
    if nonzero.any():
        assert hit_rate(-f[nonzero], r[nonzero]) == pytest.approx(1 - hit_rate(f[nonzero], r[nonzero]))


def test_frames_with_a_repeated_index_are_fine():
    a = synthetic_frame(n_symbols=3, n_bars=50, seed=11).assign(path=0)
    b = synthetic_frame(n_symbols=3, n_bars=50, seed=12).assign(path=1)
    glued = pd.concat([a, b])  # index repeats 0..n-1 twice
    clean = pd.concat([a, b], ignore_index=True)
    assert evaluate_predictions(glued, "oos", 252, COSTS, "cross_sectional") == pytest.approx(
        evaluate_predictions(clean, "oos", 252, COSTS, "cross_sectional"), nan_ok=True
    )
