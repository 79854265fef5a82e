"""The continuous ranked probability score (CRPS) of forecast distributions, and the interval score.

Two forecast shapes, one score (lower is better, in return units; ``CRPS(F, y) = E|X - y| - E|X - X'|/2
= 2 * integral over tau of the pinball loss of F's tau-quantile``):

- :func:`sample_crps`: from draws (a diffusion head's ``sample``): the fair (unbiased) estimate of the
  sampler's CRPS, or the empirical distribution's own;
- :func:`quantile_crps`: for the distribution three quantiles imply: the quantile function is linear in
  ``tau`` between (0.1, q10), (0.5, q50) and (0.9, q90) (a piecewise-linear CDF between the knots), with
  normal tails beyond them (below q10: ``q10 + (q50 - q10) / z * (Phi^-1(tau) + z)``, above q90 the mirror
  with ``q90 - q50``; ``z = Phi^-1(0.9)``), integrated on ``n_levels`` midpoint levels. This is how a quantile
  head's CRPS is put beside a diffusion head's (and the ``crps`` of every backbone's q10/q50/q90).

:func:`interval_score`: the proper score of a central ``1 - alpha`` interval (Gneiting and Raftery 2007),
``(hi - lo) + 2/alpha * (lo - y)+ + 2/alpha * (y - hi)+``: width plus a penalty for each miss.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from quantml.contracts import QuantmlInputError

Z90 = float(norm.ppf(0.9))
_ROW_CHUNK = 20000


def sample_crps(samples: np.ndarray, realised: np.ndarray, fair: bool = True) -> np.ndarray:
    """CRPS from ``samples`` [n, S, H] at ``realised`` [n, H] -> [n, H] (NaN where ``realised`` is NaN):
    ``mean_i |x_i - y| - sum_i (2i - S - 1) x_(i) / D``. ``fair`` (default): ``D = S (S - 1)``, the
    unbiased estimate of the CRPS of the distribution the draws come from (Ferro 2014; the empirical
    distribution's own CRPS, ``D = S^2``, overstates it by ``E|X - X'| / (2 S)``); ``fair=False``: ``D = S^2``."""
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(realised, dtype=np.float64)
    if x.ndim != 3 or y.shape != (x.shape[0], x.shape[2]):
        raise QuantmlInputError(f"sample_crps needs samples [n, S, H] and realised [n, H], got {x.shape}, {y.shape}")
    S = x.shape[1]
    xs = np.sort(x, axis=1)
    w = (2.0 * np.arange(1, S + 1) - S - 1.0)[None, :, None]
    spread = (w * xs).sum(axis=1) / (S * (S - 1) if fair and S > 1 else S**2)
    out = np.abs(x - y[:, None, :]).mean(axis=1) - spread
    return np.where(np.isfinite(y), out, np.nan)


def implied_quantiles(q10, q50, q90, levels: np.ndarray) -> np.ndarray:
    """The quantile function the three quantiles imply (see the module docstring) at ``levels`` [M]:
    ``q10``/``q50``/``q90`` [n, ...] -> [n, ..., M]."""
    q10, q50, q90 = (np.asarray(a, dtype=np.float64)[..., None] for a in (q10, q50, q90))
    tau = np.asarray(levels, dtype=np.float64)
    z = norm.ppf(tau)
    mid_lo = q10 + (q50 - q10) * (tau - 0.1) / 0.4
    mid_hi = q50 + (q90 - q50) * (tau - 0.5) / 0.4
    low = q10 + (q50 - q10) / Z90 * (z + Z90)
    high = q90 + (q90 - q50) / Z90 * (z - Z90)
    return np.where(tau < 0.1, low, np.where(tau < 0.5, mid_lo, np.where(tau <= 0.9, mid_hi, high)))


def quantile_crps(q10, q50, q90, realised, n_levels: int = 400) -> np.ndarray:
    """CRPS of the distribution implied by ``q10 <= q50 <= q90`` [n, H] at ``realised`` [n, H] -> [n, H]
    (NaN where any input is NaN): ``2 * mean over levels tau of pinball_tau(y - Q(tau))``."""
    y = np.asarray(realised, dtype=np.float64)
    q = [np.asarray(a, dtype=np.float64) for a in (q10, q50, q90)]
    if any(a.shape != y.shape for a in q):
        raise QuantmlInputError(
            f"quantile_crps needs q10, q50, q90 and realised of one shape, got {[a.shape for a in q]}"
        )
    tau = (np.arange(n_levels) + 0.5) / n_levels
    out = np.empty(y.shape)
    for lo in range(0, len(y), _ROW_CHUNK):
        sl = slice(lo, lo + _ROW_CHUNK)
        e = y[sl][..., None] - implied_quantiles(q[0][sl], q[1][sl], q[2][sl], tau)
        out[sl] = 2.0 * np.maximum(tau * e, (tau - 1.0) * e).mean(axis=-1)
    ok = np.isfinite(y) & np.isfinite(q[0]) & np.isfinite(q[1]) & np.isfinite(q[2])
    return np.where(ok, out, np.nan)


def interval_score(lo, hi, realised, alpha: float = 0.2) -> np.ndarray:
    """Interval score of the central ``1 - alpha`` interval ``[lo, hi]`` at ``realised`` (elementwise)."""
    lo, hi, y = (np.asarray(a, dtype=np.float64) for a in (lo, hi, realised))
    return (hi - lo) + 2.0 / alpha * np.maximum(lo - y, 0.0) + 2.0 / alpha * np.maximum(y - hi, 0.0)
