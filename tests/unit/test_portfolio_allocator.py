"""Allocator: one test per constraint, attribution, and the panel/one-bar equivalence."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantml.contracts import QuantmlInputError
from quantml.portfolio import AllocatorConfig, allocate, allocate_panel, deduplicate
from quantml.portfolio.covariance import TrailingCovariance, trailing_covariance

PPY = 252.0
SYMS = ["A", "B", "C"]


def _signals(rows):
    return pd.DataFrame(rows, columns=["symbol", "horizon", "score", "confidence", "vol"])


def _cov(vols, corr=None):
    vols = np.asarray(vols, dtype=float)
    corr = np.eye(len(vols)) if corr is None else np.asarray(corr, dtype=float)
    return pd.DataFrame(np.outer(vols, vols) * corr, index=SYMS[: len(vols)], columns=SYMS[: len(vols)])


LOOSE = dict(symbol_cap=100.0, bucket_cap=100.0, max_gross=100.0, corr_threshold=None)


def _vol(pos, cov):
    return float(np.sqrt(pos @ cov.to_numpy() @ pos * PPY))


def test_target_volatility_is_met_exactly_when_no_cap_binds():
    cov = _cov([0.01, 0.02, 0.015], [[1, 0.3, 0], [0.3, 1, -0.2], [0, -0.2, 1]])
    sig = _signals([("A", "1d", 0.5, 0.8, 0.01), ("B", "1d", -0.2, 0.6, 0.02), ("C", "7d", 0.3, 0.5, 0.04)])
    out = allocate(sig, cov, AllocatorConfig(target_vol=0.12, **LOOSE), PPY)
    assert _vol(out.positions.to_numpy(), cov) == pytest.approx(0.12, rel=1e-12)
    assert out.ex_ante_vol == pytest.approx(0.12, rel=1e-12)
    assert out.positions["A"] > 0 and out.positions["B"] < 0 and out.positions["C"] > 0


def test_symbol_cap_binds_and_holds():
    cov = _cov([0.01, 0.01, 0.01])
    sig = _signals([("A", "1d", 2.0, 1.0, 0.01), ("B", "1d", 0.1, 1.0, 0.01), ("A", "7d", 1.0, 1.0, 0.01)])
    free = allocate(sig, cov, AllocatorConfig(target_vol=0.2, **LOOSE), PPY)
    assert abs(free.positions["A"]) > 0.3  # the cap below does bind
    capped = allocate(sig, cov, AllocatorConfig(target_vol=0.2, **{**LOOSE, "symbol_cap": 0.3}), PPY)
    assert capped.positions["A"] == pytest.approx(0.3, rel=1e-12)
    assert capped.positions["B"] == pytest.approx(free.positions["B"], rel=1e-12)  # others untouched
    np.testing.assert_allclose(capped.attribution.sum(axis=1), capped.positions, rtol=0, atol=1e-15)
    # both buckets of A scaled by the same factor
    ratio = capped.attribution.loc["A"] / free.attribution.loc["A"]
    assert ratio["1d"] == pytest.approx(ratio["7d"], rel=1e-12)
    assert capped.ex_ante_vol < 0.2


def test_bucket_cap_limits_each_horizons_gross_exposure():
    cov = _cov([0.01, 0.01, 0.01])
    sig = _signals(
        [
            ("A", "1d", 1.0, 1.0, 0.01),
            ("B", "1d", -1.0, 1.0, 0.01),
            ("C", "1d", 1.0, 1.0, 0.01),
            ("A", "7d", 0.2, 1.0, 0.01),
        ]
    )
    budget = {"1d": 1.0, "7d": 0.1}
    free = allocate(sig, cov, AllocatorConfig(target_vol=0.3, risk_budget=budget, **LOOSE), PPY)
    assert free.attribution["1d"].abs().sum() > 0.5 > free.attribution["7d"].abs().sum()
    cfg = AllocatorConfig(target_vol=0.3, risk_budget=budget, **{**LOOSE, "bucket_cap": 0.5})
    out = allocate(sig, cov, cfg, PPY)
    assert out.attribution["1d"].abs().sum() == pytest.approx(0.5, rel=1e-12)
    assert out.attribution["7d"].abs().sum() == pytest.approx(free.attribution["7d"].abs().sum(), rel=1e-12)


def test_max_gross_caps_total_exposure():
    cov = _cov([0.002, 0.002, 0.002])
    sig = _signals([(s, "1d", 1.0, 1.0, 0.01) for s in SYMS])
    out = allocate(sig, cov, AllocatorConfig(target_vol=0.5, **{**LOOSE, "max_gross": 1.5}), PPY)
    assert out.positions.abs().sum() == pytest.approx(1.5, rel=1e-12)


def test_correlated_symbols_keep_only_the_strongest_signal():
    corr = [[1, 0.97, 0.0], [0.97, 1, 0.0], [0.0, 0.0, 1]]
    cov = _cov([0.01, 0.01, 0.01], corr)
    sig = _signals([("A", "1d", 0.4, 1.0, 0.01), ("B", "1d", 0.6, 1.0, 0.01), ("C", "1d", 0.5, 1.0, 0.01)])
    keep = allocate(sig, cov, AllocatorConfig(target_vol=0.1, **{**LOOSE, "corr_threshold": 0.95}), PPY)
    assert keep.positions["A"] == 0.0 and keep.positions["B"] > 0 and keep.positions["C"] > 0
    # below the threshold nothing is dropped
    low = allocate(sig, cov, AllocatorConfig(target_vol=0.1, **{**LOOSE, "corr_threshold": 0.98}), PPY)
    assert (low.positions > 0).all()


def test_share_mode_splits_the_leaders_weight_across_the_cluster():
    corr = np.array([[1, 0.99, 0.0], [0.99, 1, 0.0], [0.0, 0.0, 1]])
    raw = np.array([[0.3, 0.6, 0.5]])
    out = deduplicate(raw, corr[None], 0.95, "share")
    # cluster {A, B}, leader B (0.6): gross 0.6 shared pro rata 0.3 : 0.6
    np.testing.assert_allclose(out, [[0.3 * 0.6 / 0.9, 0.6 * 0.6 / 0.9, 0.5]], rtol=1e-15)
    np.testing.assert_array_equal(deduplicate(raw, corr[None], 0.95, "keep"), [[0.0, 0.6, 0.5]])


def test_dedup_is_greedy_over_chains():
    # A~B, B~C, A and C uncorrelated; strengths A > B > C: B joins A, C stays (its only link is B, dropped)
    corr = np.array([[1, 0.96, 0.0], [0.96, 1, 0.96], [0.0, 0.96, 1]])
    out = deduplicate(np.array([[0.9, 0.5, -0.4]]), corr[None], 0.95, "keep")
    np.testing.assert_array_equal(out, [[0.9, 0.0, -0.4]])


def test_risk_budgets_set_each_buckets_standalone_volatility():
    cov = _cov([0.01, 0.02, 0.015])
    sig = _signals([("A", "1d", 0.5, 1.0, 0.01), ("B", "1d", 0.5, 1.0, 0.02), ("C", "7d", 0.2, 1.0, 0.03)])
    out = allocate(sig, cov, AllocatorConfig(target_vol=0.1, risk_budget={"1d": 3.0, "7d": 1.0}, **LOOSE), PPY)
    v1 = _vol(out.attribution["1d"].to_numpy(), cov)
    v7 = _vol(out.attribution["7d"].to_numpy(), cov)
    assert v1 / v7 == pytest.approx(3.0, rel=1e-12)


def test_flat_actions_and_missing_covariance_give_no_position():
    cov = _cov([0.01, 0.01, 0.01])
    sig = _signals([("A", "1d", 0.5, 1.0, 0.01), ("B", "1d", 0.5, 1.0, 0.01)]).assign(action=["long", "flat"])
    out = allocate(sig, cov, AllocatorConfig(**LOOSE), PPY)
    assert out.positions["B"] == 0.0 and out.positions["A"] > 0 and out.positions["C"] == 0.0
    nan_cov = cov * np.nan
    assert (allocate(sig, nan_cov, AllocatorConfig(**LOOSE), PPY).positions == 0).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["keep", "share"]))
def test_panel_equals_bar_by_bar_and_constraints_hold(seed, mode):
    rng = np.random.default_rng(seed)
    T, N, H = 5, 4, 2
    score = rng.normal(size=(T, N, H))
    conf = rng.uniform(size=(T, N, H))
    vol = rng.uniform(0.005, 0.03, size=(T, N, H))
    active = rng.integers(-1, 2, size=(T, N, H))
    a = rng.normal(size=(T, N, N)) * 0.01
    cov = np.einsum("tij,tkj->tik", a, a) + np.eye(N) * 1e-5
    cfg = AllocatorConfig(
        target_vol=0.15,
        symbol_cap=0.4,
        bucket_cap=0.8,
        max_gross=1.2,
        corr_threshold=0.6,
        dedup=mode,
        risk_budget={"x": 2.0},
    )
    pos, attr = allocate_panel(score, conf, vol, active, cov, ["x", "y"], cfg, PPY)
    for t in range(T):
        p1, a1 = allocate_panel(
            score[t : t + 1], conf[t : t + 1], vol[t : t + 1], active[t : t + 1], cov[t : t + 1], ["x", "y"], cfg, PPY
        )
        np.testing.assert_allclose(p1[0], pos[t], rtol=0, atol=1e-15)
        np.testing.assert_allclose(a1[0], attr[t], rtol=0, atol=1e-15)
    tol = 1e-12
    assert np.all(np.abs(pos) <= 0.4 + tol)
    assert np.all(np.abs(attr).sum(axis=1) <= 0.8 + tol)
    assert np.all(np.abs(pos).sum(axis=1) <= 1.2 + tol)
    assert np.all(np.sqrt(np.einsum("tn,tnm,tm->t", pos, cov, pos) * PPY) <= 0.15 * (1 + tol))
    np.testing.assert_allclose(attr.sum(axis=2), pos, atol=1e-15)
    assert np.all(attr[active == 0] == 0)


def test_invalid_settings_and_inputs_raise_with_the_fix():
    with pytest.raises(QuantmlInputError, match="allocator.target_vol"):
        AllocatorConfig(target_vol=0.0)
    with pytest.raises(QuantmlInputError, match="allocator.dedup"):
        AllocatorConfig(dedup="merge")
    with pytest.raises(QuantmlInputError, match="unknown allocator setting"):
        AllocatorConfig.from_dict({"target_volatility": 0.1})
    with pytest.raises(QuantmlInputError, match="no covariance row"):
        allocate(_signals([("Z", "1d", 1.0, 1.0, 0.01)]), _cov([0.01]), AllocatorConfig(), PPY)
    assert AllocatorConfig.from_dict(AllocatorConfig(risk_budget={"1d": 2.0}).to_dict()) == AllocatorConfig(
        risk_budget={"1d": 2.0}
    )


def test_trailing_covariance_uses_only_earlier_bars():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(40, 3))
    cov = trailing_covariance(r, window=10, min_periods=5)
    assert np.isnan(cov[:5]).all() and np.isfinite(cov[5:]).all()
    np.testing.assert_allclose(cov[7], np.cov(r[:7].T), rtol=1e-12)  # expanding during warm-up
    np.testing.assert_allclose(cov[25], np.cov(r[15:25].T), rtol=1e-12)  # rows strictly before 25
    future = r.copy()
    future[25:] = 99.0
    np.testing.assert_array_equal(trailing_covariance(future, 10, 5)[:26], cov[:26])
    stream = TrailingCovariance(3, 10, 5)
    for t in range(40):
        if t > 0:
            stream.update(r[t - 1])
        got = stream.current()
        np.testing.assert_allclose(got, cov[t], rtol=1e-12) if t >= 5 else np.testing.assert_array_equal(
            np.isnan(got), True
        )
