"""Selection-bias statistics of a search: the deflated Sharpe ratio and the probability of
backtest overfitting. Pure numpy/scipy; every Sharpe ratio here is PER PERIOD (per bar), never
annualised.

- :func:`probabilistic_sharpe_ratio` (Bailey and López de Prado 2012/2014)::

      PSR(SR*) = Φ( (SR − SR*) √(T − 1) / sqrt(1 − γ3 SR + (γ4 − 1)/4 SR²) )

  ``SR`` the observed per-period Sharpe ratio over ``T`` returns, ``γ3`` their skewness,
  ``γ4`` their kurtosis (NOT excess: 3 for normal returns), ``SR*`` the benchmark.
- :func:`expected_max_sharpe`: the expected maximum of ``N`` independent trials' Sharpe ratios
  when every true Sharpe ratio is zero (False Strategy theorem, Bailey and López de Prado 2014)::

      E[max SR] ≈ sqrt(V[SR]) ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e)))

  ``V[SR]`` the variance of the trials' Sharpe ratios, ``γ`` ≈ 0.5772 the Euler–Mascheroni
  constant (``N = 1``: 0).
- :func:`deflated_sharpe_ratio`: ``PSR(E[max SR])`` — the probability that the selected
  strategy's true Sharpe ratio is positive after correcting for the ``N`` trials it was
  chosen from, for non-normal returns and for the sample length ("The Deflated Sharpe Ratio:
  Correcting for Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio
  Management 40(5), 2014). With one trial it is ``PSR(0)``.
- :func:`pbo_cscv`: the probability of backtest overfitting by combinatorially symmetric
  cross-validation (Bailey, Borwein, López de Prado and Zhu, "The Probability of Backtest
  Overfitting", Journal of Computational Finance 20(4), 2017) over a ``T × N`` matrix of the
  trials' per-period returns.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

EULER_GAMMA = float(np.euler_gamma)


# -- Sharpe ratio and its moments -----------------------------------------------------------------
def per_period_sharpe(returns: np.ndarray) -> float:
    """``mean / std(ddof=1)`` of a 1-D return series ``[T]`` (NaN dropped); 0 when flat, NaN when
    fewer than 2 returns."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return float("nan")
    sd = float(np.std(r, ddof=1))
    return float(np.mean(r) / sd) if sd > 0 else 0.0


@dataclass(frozen=True)
class ReturnMoments:
    """What the PSR needs of a return series: per-period Sharpe ``sr``, ``n_obs`` (T),
    ``skewness`` (γ3) and ``kurtosis`` (γ4, normal = 3)."""

    sr: float
    n_obs: int
    skewness: float
    kurtosis: float


def return_moments(returns: np.ndarray) -> ReturnMoments:
    """:class:`ReturnMoments` of a 1-D return series ``[T]`` (NaN dropped). A flat series (zero
    variance) has skewness 0 and kurtosis 3 (the normal values: nothing to correct)."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if len(r) < 2:
        raise ValueError(f"a Sharpe ratio needs at least 2 returns, got {len(r)}")
    if float(np.std(r)) == 0.0:
        return ReturnMoments(0.0, len(r), 0.0, 3.0)
    return ReturnMoments(
        per_period_sharpe(r),
        len(r),
        float(stats.skew(r, bias=True)),
        float(stats.kurtosis(r, fisher=False, bias=True)),
    )


# -- PSR, expected maximum Sharpe, DSR ----------------------------------------------------------
def probabilistic_sharpe_ratio(
    sr: float, n_obs: int, sr_benchmark: float = 0.0, skewness: float = 0.0, kurtosis: float = 3.0
) -> float:
    """``PSR(SR*) = Φ((SR − SR*) √(T − 1) / sqrt(1 − γ3 SR + (γ4 − 1)/4 SR²))``.

    ``sr``, ``sr_benchmark``: per-period Sharpe ratios (scalars); ``n_obs``: T, the number of
    returns ``sr`` was measured on (>= 2); ``skewness`` γ3; ``kurtosis`` γ4 (not excess). NaN when
    the variance term is not positive (a Sharpe ratio far outside what the moments allow)."""
    if n_obs < 2:
        raise ValueError(f"the PSR needs n_obs >= 2 returns, got {n_obs}")
    if not (math.isfinite(sr) and math.isfinite(sr_benchmark)):
        return float("nan")
    var = 1.0 - skewness * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if not var > 0:
        return float("nan")
    z = (sr - sr_benchmark) * math.sqrt(n_obs - 1.0) / math.sqrt(var)
    return float(stats.norm.cdf(z))


def expected_max_sharpe(n_trials: float, sr_variance: float, sr_mean: float = 0.0) -> float:
    """``E[max SR] ≈ mean + sqrt(V[SR]) ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e)))``.

    ``n_trials``: N >= 1 (may be an effective, non-integer number); ``sr_variance``: V[SR] of the
    trials' per-period Sharpe ratios (>= 0); ``sr_mean``: their expected value under the null (0).
    One trial: ``sr_mean`` (no selection, nothing to deflate)."""
    if not n_trials >= 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not sr_variance >= 0:
        raise ValueError(f"sr_variance must be >= 0, got {sr_variance}")
    if n_trials == 1:
        return float(sr_mean)
    g = EULER_GAMMA
    z = (1.0 - g) * stats.norm.ppf(1.0 - 1.0 / n_trials) + g * stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(sr_mean + math.sqrt(sr_variance) * z)


def deflated_sharpe_ratio(
    sr: float, n_obs: int, n_trials: float, sr_variance: float, skewness: float = 0.0, kurtosis: float = 3.0
) -> float:
    """``DSR = PSR(E[max SR])``: :func:`probabilistic_sharpe_ratio` of the selected strategy's
    per-period ``sr`` against :func:`expected_max_sharpe` of ``n_trials`` trials with Sharpe-ratio
    variance ``sr_variance``. ``n_trials = 1``: ``PSR(0)``. A probability in [0, 1]."""
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return probabilistic_sharpe_ratio(sr, n_obs, sr0, skewness, kurtosis)


@dataclass(frozen=True)
class DeflatedSharpe:
    """A DSR with its inputs: the selected run's moments, N, V[SR], E[max SR] and the result."""

    dsr: float
    sr: float
    n_obs: int
    skewness: float
    kurtosis: float
    n_trials: float
    sr_variance: float
    expected_max_sr: float
    psr_zero: float  # PSR(0): the same returns without the selection correction

    def annualised(self, periods_per_year: float) -> tuple[float, float]:
        """(SR, E[max SR]) annualised by ``sqrt(periods_per_year)``, for display only."""
        k = math.sqrt(periods_per_year)
        return self.sr * k, self.expected_max_sr * k


def deflated_sharpe(returns: np.ndarray, n_trials: float, sr_variance: float) -> DeflatedSharpe:
    """:func:`deflated_sharpe_ratio` of a selected strategy's per-period returns ``[T]``: Sharpe
    ratio, skewness and kurtosis from ``returns``, ``n_trials`` and ``sr_variance`` from the search."""
    m = return_moments(returns)
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return DeflatedSharpe(
        dsr=probabilistic_sharpe_ratio(m.sr, m.n_obs, sr0, m.skewness, m.kurtosis),
        sr=m.sr,
        n_obs=m.n_obs,
        skewness=m.skewness,
        kurtosis=m.kurtosis,
        n_trials=float(n_trials),
        sr_variance=float(sr_variance),
        expected_max_sr=sr0,
        psr_zero=probabilistic_sharpe_ratio(m.sr, m.n_obs, 0.0, m.skewness, m.kurtosis),
    )


# -- PBO by CSCV --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PBOResult:
    """The CSCV outcome: ``pbo`` (share of logits <= 0), the ``logits`` ``[C]`` (one per
    combination), the in-sample best trial ``[C]`` and its out-of-sample relative rank ``[C]``
    (in (0, 1), 1 = best), ``n_splits`` S, ``n_obs`` (rows used: a multiple of S) and ``n_trials`` N."""

    pbo: float
    logits: np.ndarray
    best_in_sample: np.ndarray
    oos_relative_rank: np.ndarray
    n_splits: int
    n_obs: int
    n_trials: int

    @property
    def n_combinations(self) -> int:
        return len(self.logits)


def _block_sharpe(sums: np.ndarray, squares: np.ndarray, n: int) -> np.ndarray:
    mean = sums / n
    var = (squares - n * mean * mean) / (n - 1)
    sd = np.sqrt(np.maximum(var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 1e-15 * (np.abs(mean) + 1.0), mean / np.where(sd > 0, sd, 1.0), 0.0)


def pbo_cscv(returns: np.ndarray, n_splits: int = 16) -> PBOResult:
    """Probability of backtest overfitting of choosing the best of ``N`` trials on returns ``[T, N]``.

    The ``T`` rows (bars, in time order; the first ``T mod S`` are dropped so the blocks are equal)
    are cut into ``S = n_splits`` contiguous blocks. For each of the ``C(S, S/2)`` ways to pick half
    the blocks as the in-sample set ``J`` (the rest ``J̄`` out of sample): ``n*`` = the trial with the
    best in-sample Sharpe ratio; ``ω`` = the out-of-sample rank of ``n*`` among the N trials divided
    by ``N + 1`` (1 worst ... N best; ties averaged); ``λ = ln(ω / (1 − ω))``. ``PBO`` = the share of
    combinations with ``λ <= 0``: how often the in-sample winner is at or below the out-of-sample
    median. Pure noise gives about 0.5; one trial with a real edge, about 0."""
    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"returns must be a T x N matrix, got shape {x.shape}")
    t, n = x.shape
    s = int(n_splits)
    if s < 2 or s % 2:
        raise ValueError(f"n_splits must be an even number >= 2, got {n_splits}")
    if n < 2:
        raise ValueError(f"PBO compares trials: it needs N >= 2 columns, got {n}")
    if not np.isfinite(x).all():
        raise ValueError("returns contain NaN/inf: align the trials on their common bars first")
    block = t // s
    if block < 2:
        raise ValueError(f"{t} rows are too few for n_splits={s} (each block needs >= 2 rows); use fewer splits")
    x = x[t - block * s :]
    blocks = x.reshape(s, block, n)
    sums, squares = blocks.sum(axis=1), (blocks * blocks).sum(axis=1)  # [S, N]
    combos = np.array(list(itertools.combinations(range(s), s // 2)), dtype=np.int64)  # [C, S/2]
    mask = np.zeros((len(combos), s))
    np.put_along_axis(mask, combos, 1.0, axis=1)
    half = block * (s // 2)
    sr_in = _block_sharpe(mask @ sums, mask @ squares, half)  # [C, N]
    sr_out = _block_sharpe((1.0 - mask) @ sums, (1.0 - mask) @ squares, half)
    best = np.argmax(sr_in, axis=1)
    ranks = stats.rankdata(sr_out, axis=1, method="average")  # 1 = worst ... N = best
    omega = ranks[np.arange(len(best)), best] / (n + 1.0)
    logits = np.log(omega / (1.0 - omega))
    return PBOResult(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        best_in_sample=best,
        oos_relative_rank=omega,
        n_splits=s,
        n_obs=block * s,
        n_trials=n,
    )
