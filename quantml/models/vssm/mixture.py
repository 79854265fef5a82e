"""The predictive distribution of one horizon: a mixture over regimes, summarised and sampled.

Shapes: ``n`` rows, ``K`` regimes, ``S`` samples. ``w`` [n, K] mixture weights (the filtered regime
posterior), ``mean``/``sd`` [n, K] each regime's Gaussian return.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
_ROWS_PER_CHUNK = 4096


def common_draws(seed: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(u, eps)`` [S]: uniforms that pick a regime and standard normals, drawn once from ``seed``
    and shared by every row (common random numbers: a row's quantiles depend on its own mixture only)."""
    rng = np.random.default_rng([int(seed), 0x5353])
    return rng.random(n_samples), rng.standard_normal(n_samples)


def sampled_quantiles(w: np.ndarray, mean: np.ndarray, sd: np.ndarray, u: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """[3, n] P10/P50/P90 of ``S`` draws from each row's mixture (sorted: they never cross)."""
    n = len(w)
    out = np.empty((len(QUANTILE_LEVELS), n))
    cum = np.cumsum(w, axis=1)
    cum[:, -1] = 1.0
    for lo in range(0, n, _ROWS_PER_CHUNK):
        hi = min(n, lo + _ROWS_PER_CHUNK)
        k = (u[None, :, None] > cum[lo:hi, None, :-1]).sum(-1)  # [c, S] regime of each draw
        m = np.take_along_axis(mean[lo:hi], k, axis=1)
        s = np.take_along_axis(sd[lo:hi], k, axis=1)
        out[:, lo:hi] = np.quantile(m + s * eps[None, :], QUANTILE_LEVELS, axis=1)
    return np.sort(out, axis=0)


def mixture_mean(w: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """[n] the mixture's expected return."""
    return (w * mean).sum(1)


def mixture_prob_up(w: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """[n] P(return > 0) under the mixture."""
    return np.clip((w * ndtr(mean / sd)).sum(1), 0.0, 1.0)
