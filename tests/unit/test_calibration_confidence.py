"""``quantml.signals.confidence_score``: higher confidence buckets must hit more often."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from quantml.signals import confidence_score


def quintile_hit_rates(confidence, hit):
    bucket = pd.qcut(pd.Series(confidence).rank(method="first"), 5, labels=False)
    return pd.Series(hit).groupby(bucket).mean().to_numpy()


@pytest.mark.parametrize("er_noise, p_noise", [(0.0, 0.0), (0.004, 0.5), (0.012, 0.3), (0.002, 2.0)])
def test_confidence_quintiles_are_monotone_in_hit_rate(er_noise, p_noise):
    # heteroscedastic returns with a real signal; the regression and direction heads are
    # separately noisy estimates of it, the interval follows the true volatility
    rng = np.random.default_rng(0)
    n = 100_000
    sig = np.exp(rng.normal(np.log(0.02), 0.5, n))
    mu = rng.normal(0, 0.006, n)
    ret = mu + sig * rng.normal(size=n)
    er = mu + er_noise * rng.normal(size=n)
    prob_up = norm.cdf(mu / sig + p_noise * rng.normal(size=n))
    conf = confidence_score(prob_up, er - 1.2816 * sig, er + 1.2816 * sig, er)
    assert ((conf >= 0) & (conf <= 1)).all()
    rates = quintile_hit_rates(conf, (er > 0) == (ret > 0))
    assert np.all(np.diff(rates) > 0), rates
    assert rates[-1] - rates[0] > 0.05


def test_confidence_is_zero_without_an_edge():
    conf = confidence_score(
        np.array([0.5, 0.9]), np.array([-0.02, -0.02]), np.array([0.02, 0.02]), np.array([0.01, 0.0])
    )
    np.testing.assert_allclose(conf, [0.0, 0.0])
