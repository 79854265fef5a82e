"""The continuous ranked probability score (CRPS) of forecast distributions, and the interval score.

Two forecast shapes, one score (lower is better, in return units; ``CRPS(F, y) = E|X - y| - E|X - X'|/2
= 2 * integral over tau of the pinball loss of F's tau-quantile``):

- :func:`sample_crps`: from draws (a diffusion head's ``sample``): the fair (unbiased) estimate of the
  sampler's CRPS, or the empirical distribution's own;
- :func:`quantile_crps`: for the distribution three quantiles imply: the quantile function is linear in
  ``tau`` between (0.1, q10), (0.5, q50) and (0.9, q90) (a piecewise-linear CDF between the knots), with
  normal tails beyond them (below q10: ``q10 + (q50 - q10) / z * (Phi^-1(tau) + z)``, above q90 the mirror
  with ``q90 - q50``; ``z = Phi^-1(0.9)``), integrated in closed form over its four pieces (exact, O(n): the
  report scores tens of millions of rows, once per symbol, horizon and fold). This is how a quantile head's
  CRPS is put beside a diffusion head's (and the ``crps`` of every backbone's q10/q50/q90).

:func:`interval_score`: the proper score of a central ``1 - alpha`` interval (Gneiting and Raftery 2007),
``(hi - lo) + 2/alpha * (lo - y)+ + 2/alpha * (y - hi)+``: width plus a penalty for each miss.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr
from scipy.stats import norm

from quantml.contracts import QuantmlInputError

Z90 = float(norm.ppf(0.9))
_TWO_SQRT_PI = 2.0 * float(np.sqrt(np.pi))
_SQRT_TWO_PI = float(np.sqrt(2.0 * np.pi))


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


def quantile_crps(q10, q50, q90, realised) -> np.ndarray:
    """CRPS of the distribution implied by ``q10 <= q50 <= q90`` [n, H] at ``realised`` [n, H] -> [n, H]
    (NaN where any input is NaN): ``2 * integral over tau in (0, 1) of pinball_tau(y - Q(tau))``, exact.

    With ``rho_tau(y - Q) = (Q - y)^+ - tau (Q - y)``, each of the four pieces of ``Q`` (normal tail,
    linear, linear, normal tail) is monotone, so ``(Q - y)^+`` integrates exactly on either side of the
    piece's crossing of ``y``; crossed quantiles (``q10 > q50``) keep each piece monotone and are scored
    as the same integral."""
    y = np.asarray(realised, dtype=np.float64)
    q = [np.asarray(a, dtype=np.float64) for a in (q10, q50, q90)]
    if any(a.shape != y.shape for a in q):
        raise QuantmlInputError(
            f"quantile_crps needs q10, q50, q90 and realised of one shape, got {[a.shape for a in q]}"
        )
    a, b, c = q
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pieces = (
            _TailPiece(b, (b - a) / Z90, 0.0, 0.1),
            _LinearPiece(a, (b - a) / 0.4, 0.1, 0.1, 0.5),
            _LinearPiece(b, (c - b) / 0.4, 0.5, 0.5, 0.9),
            _TailPiece(b, (c - b) / Z90, 0.9, 1.0),
        )
        out = 2.0 * (sum(p.positive_part(y) - p.tau_moment(y) for p in pieces))
    ok = np.isfinite(y) & np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
    return np.where(ok, out, np.nan)


class _Piece:
    """``Q(tau)`` on ``[lo, hi]``, monotone: ``F`` its integral, ``M`` the integral of ``tau Q``, ``level``
    where ``Q = y`` (clipped to the piece; any point of the piece where ``Q`` is flat)."""

    lo: float
    hi: float

    def positive_part(self, y: np.ndarray) -> np.ndarray:
        """``integral over the piece of (Q - y)^+``: the crossing splits it into two parts of one sign."""
        t, f_t = self.crossing(y)
        first = f_t - self.F(self.lo) - y * (t - self.lo)
        second = self.F(self.hi) - self.F(t) - y * (self.hi - t)
        return np.maximum(first, 0.0) + np.maximum(second, 0.0)

    def tau_moment(self, y: np.ndarray) -> np.ndarray:
        """``integral over the piece of tau (Q - y)``."""
        return self.M(self.hi) - self.M(self.lo) - y * (self.hi**2 - self.lo**2) / 2.0


class _LinearPiece(_Piece):
    """``Q = start + slope * (tau - tau0)``."""

    def __init__(self, start, slope, tau0: float, lo: float, hi: float) -> None:
        self.start, self.slope, self.tau0, self.lo, self.hi = start, slope, tau0, lo, hi

    def F(self, t):
        d = t - self.tau0
        return self.start * d + self.slope * d * d / 2.0

    def M(self, t):
        # integral of t (start + slope (t - tau0)) = (start - slope tau0) t^2 / 2 + slope t^3 / 3
        return (self.start - self.slope * self.tau0) * t * t / 2.0 + self.slope * t**3 / 3.0

    def crossing(self, y):
        """``(t, F(t))`` at the level ``t`` where ``Q = y``, clipped to the piece."""
        t = np.clip(np.where(self.slope != 0, self.tau0 + (y - self.start) / self.slope, self.lo), self.lo, self.hi)
        return t, self.F(t)


class _TailPiece(_Piece):
    """``Q = centre + scale * Phi^-1(tau)``: ``integral Phi^-1 = -phi(z)``, ``integral tau Phi^-1 =
    -tau phi(z) + Phi(sqrt(2) z) / (2 sqrt(pi))`` at ``z = Phi^-1(tau)`` (both 0 at ``tau = 0``)."""

    def __init__(self, centre, scale, lo: float, hi: float) -> None:
        self.centre, self.scale, self.lo, self.hi = centre, scale, lo, hi

    def F(self, t):
        return self.centre * t - self.scale * norm.pdf(norm.ppf(t))

    def M(self, t):
        z = norm.ppf(t)
        return self.centre * t * t / 2.0 + self.scale * (-t * norm.pdf(z) + norm.cdf(np.sqrt(2.0) * z) / _TWO_SQRT_PI)

    def crossing(self, y):
        """``(t, F(t))`` where ``Q = y``, clipped to the piece: on the ``z = Phi^-1(t)`` scale, where the
        crossing is ``(y - centre) / scale`` (no inverse normal per row)."""
        z_lo, z_hi = norm.ppf(self.lo), norm.ppf(self.hi)
        z = np.clip(np.where(self.scale != 0, (y - self.centre) / self.scale, z_lo), z_lo, z_hi)
        pdf = np.exp(-0.5 * z * z) / _SQRT_TWO_PI
        t = ndtr(z)
        return t, self.centre * t - self.scale * pdf


def interval_score(lo, hi, realised, alpha: float = 0.2) -> np.ndarray:
    """Interval score of the central ``1 - alpha`` interval ``[lo, hi]`` at ``realised`` (elementwise)."""
    lo, hi, y = (np.asarray(a, dtype=np.float64) for a in (lo, hi, realised))
    return (hi - lo) + 2.0 / alpha * np.maximum(lo - y, 0.0) + 2.0 / alpha * np.maximum(y - hi, 0.0)
