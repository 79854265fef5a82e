"""The selection-bias statistics: PSR, E[max SR], DSR (Bailey and López de Prado 2014) and PBO by
CSCV (Bailey, Borwein, López de Prado and Zhu 2017), on numpy return matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from quantml.evaluation.overfitting import (
    deflated_sharpe,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    pbo_cscv,
    per_period_sharpe,
    probabilistic_sharpe_ratio,
    return_moments,
)


def test_the_papers_numerical_example():
    """Bailey and López de Prado (2014), "The Deflated Sharpe Ratio", section "A numerical example":
    N = 100 independent trials whose annualised Sharpe ratios have variance V = 1/2; the best one has
    an annualised SR of 2.5 over T = 1250 daily returns (250 a year) with skewness -3 and kurtosis 10.
    Per day: SR = 2.5/sqrt(250) = 0.1581, V[SR] = 0.5/250. The paper finds E[max SR] = 0.1132 per
    day (1.7894 annualised) and DSR = 0.9004."""
    sr, v = 2.5 / math.sqrt(250), 0.5 / 250
    sr0 = expected_max_sharpe(100, v)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    assert sr0 * math.sqrt(250) == pytest.approx(1.7894, abs=5e-4)
    dsr = deflated_sharpe_ratio(sr, 1250, 100, v, skewness=-3.0, kurtosis=10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)
    # the same through the PSR with the benchmark written out
    assert probabilistic_sharpe_ratio(sr, 1250, sr0, -3.0, 10.0) == pytest.approx(dsr, abs=1e-12)
    # fat left tails cost: the same SR from normal returns clears the bar with more confidence
    assert deflated_sharpe_ratio(sr, 1250, 100, v) > dsr


def test_one_trial_is_the_psr_against_zero():
    rng = np.random.default_rng(3)
    r = rng.standard_t(5, 800) * 0.01 + 0.0008
    d = deflated_sharpe(r, n_trials=1, sr_variance=0.37)  # no selection: the variance plays no part
    m = return_moments(r)
    assert d.expected_max_sr == 0.0
    assert d.dsr == pytest.approx(probabilistic_sharpe_ratio(m.sr, m.n_obs, 0.0, m.skewness, m.kurtosis))
    assert d.dsr == d.psr_zero
    # the moments are those of the returns (kurtosis not excess)
    assert m.skewness == pytest.approx(stats.skew(r))
    assert m.kurtosis == pytest.approx(stats.kurtosis(r) + 3.0)
    assert m.sr == pytest.approx(r.mean() / r.std(ddof=1))


def test_dsr_falls_as_the_number_of_trials_grows():
    rng = np.random.default_rng(4)
    r = rng.standard_normal(1000) * 0.01 + 0.001
    values = [deflated_sharpe(r, n, 1e-3).dsr for n in (1, 2, 5, 10, 100, 1000, 10_000)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] > 0.99 and values[-1] < 0.5
    # and as the trials' Sharpe ratios spread out
    spread = [deflated_sharpe(r, 50, v).dsr for v in (0.0, 1e-5, 1e-4, 1e-3)]
    assert all(a > b for a, b in zip(spread, spread[1:])), spread


def test_expected_max_sharpe_matches_the_maximum_of_simulated_trials():
    """E[max of N draws of N(0, V)] by simulation vs the paper's approximation (a few % apart)."""
    rng = np.random.default_rng(0)
    for n, v in ((10, 1.0), (100, 0.25), (1000, 4.0)):
        simulated = float(np.mean(np.max(rng.standard_normal((4000, n)) * math.sqrt(v), axis=1)))
        assert expected_max_sharpe(n, v) == pytest.approx(simulated, rel=0.03), (n, v)
    assert expected_max_sharpe(1, 5.0) == 0.0
    with pytest.raises(ValueError):
        expected_max_sharpe(0.5, 1.0)
    with pytest.raises(ValueError):
        expected_max_sharpe(10, -1.0)


def test_psr_against_zero_is_calibrated_under_the_null():
    """With zero true Sharpe, PSR(0) is about uniform: it exceeds 0.95 about 5% of the time."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 250))
    sr = x.mean(axis=1) / x.std(axis=1, ddof=1)
    psr = np.array([probabilistic_sharpe_ratio(s, 250) for s in sr])
    assert 0.035 < float(np.mean(psr > 0.95)) < 0.065
    assert 0.45 < float(np.mean(psr > 0.5)) < 0.55


def test_psr_edge_cases():
    assert math.isnan(probabilistic_sharpe_ratio(float("nan"), 100))
    assert math.isnan(probabilistic_sharpe_ratio(2.0, 100, skewness=5.0, kurtosis=3.0))  # 1 - 10 + 2 < 0
    with pytest.raises(ValueError):
        probabilistic_sharpe_ratio(0.1, 1)
    assert per_period_sharpe(np.zeros(10)) == 0.0
    assert math.isnan(per_period_sharpe(np.array([0.1])))
    flat = return_moments(np.zeros(10))
    assert (flat.sr, flat.skewness, flat.kurtosis) == (0.0, 0.0, 3.0)


@pytest.mark.parametrize("n_splits", [10, 16])
def test_pbo_of_pure_noise_is_about_one_half(n_splits):
    values = [pbo_cscv(np.random.default_rng(seed).standard_normal((600, 10)), n_splits).pbo for seed in range(30)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert 0.4 < float(np.mean(values)) < 0.7, values


def test_pbo_of_a_planted_edge_is_near_zero():
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((600, 10))
        x[:, seed] += 0.25  # one trial with a real edge (SR 0.25 per bar)
        result = pbo_cscv(x, 10)
        assert result.pbo < 0.1, (seed, result.pbo)
        assert np.mean(result.best_in_sample == seed) > 0.9


def test_pbo_shapes_and_definition():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((203, 4))  # 203 = 12 * 16 + 11: the first 11 rows are dropped
    result = pbo_cscv(x, 16)
    assert result.n_combinations == math.comb(16, 8) == len(result.logits) == len(result.oos_relative_rank)
    assert result.n_obs == 192 and result.n_trials == 4 and result.n_splits == 16
    assert set(np.round(result.oos_relative_rank * 5, 9)) <= {1.0, 2.0, 3.0, 4.0}  # rank / (N + 1)
    assert result.pbo == pytest.approx(np.mean(result.logits <= 0))
    # one combination by hand: blocks 0..7 in sample
    kept = x[11:].reshape(16, 12, 4)
    ins, oos = kept[:8].reshape(-1, 4), kept[8:].reshape(-1, 4)
    sr_in = ins.mean(0) / ins.std(0, ddof=1)
    sr_out = oos.mean(0) / oos.std(0, ddof=1)
    best = int(np.argmax(sr_in))
    omega = stats.rankdata(sr_out)[best] / 5
    assert result.best_in_sample[0] == best
    assert result.logits[0] == pytest.approx(math.log(omega / (1 - omega)))


def test_pbo_refuses_bad_input():
    x = np.random.default_rng(0).standard_normal((100, 3))
    for bad, splits in ((x, 7), (x[:, :1], 10), (x[:10], 16), (x[:, 0], 10)):
        with pytest.raises(ValueError):
            pbo_cscv(bad, splits)
    x[5, 1] = np.nan
    with pytest.raises(ValueError, match="common bars"):
        pbo_cscv(x, 10)
