"""Planted lead-lag (``data.lead_lag=true``): a leader symbol's returns drive the followers 1-3 bars later.

For every follower ``j`` and bar ``t``::

    ret[t, j] += strength * loading[j] * sigma[t, j] * sum_k lag_weights[k-1] * ret[t-k, leader] / sigma[t-k, leader]

with ``k = 1 .. len(lag_weights)`` (at most 3). The leader's return enters standardised by its own
volatility and the term is scaled by the follower's, so ``strength`` is roughly the next-bar information
coefficient of the leader's last returns for a follower of loading 1 (before the default panel's noise).
Follower loadings are ``sign * U(0.5, 1)`` with signs balanced across the followers (half up, half down,
a seeded shuffle), so the leader moves the followers apart and the effect shows cross-sectionally as well
as over time. Only returns of bars ``< t`` enter bar ``t``: no look-ahead. The leader itself is untouched.

Truth (``[T, N]`` each): ``lead_lag_leader`` (1.0 in the leader's column), ``lead_lag_loading``
(``strength * loading``, 0 for the leader) and ``lead_lag_term`` (what was added to each return).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantml.contracts import QuantmlInputError
from quantml.data.plants import Plant, PlantContext

TRUTH_LEADER = "lead_lag_leader"
TRUTH_LOADING = "lead_lag_loading"
TRUTH_TERM = "lead_lag_term"
MAX_LAG = 3


class LeadLagPlant(Plant):
    """Options: ``leader`` (a symbol; default the first), ``strength`` (>= 0, default 0.3),
    ``lag_weights`` (1 to 3 non-negative weights of lags 1, 2, 3; default ``[0.5, 0.3, 0.2]``)."""

    def __init__(
        self, leader: str | None = None, strength: float = 0.3, lag_weights: Sequence[float] = (0.5, 0.3, 0.2)
    ) -> None:
        try:
            strength = float(strength)
            weights = np.asarray(list(lag_weights), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise QuantmlInputError(
                f"data.lead_lag: strength={strength!r} must be a number and lag_weights={lag_weights!r} a list of "
                "numbers, e.g. data.lead_lag='{strength: 0.3, lag_weights: [0.5, 0.3, 0.2]}'"
            ) from exc
        if not np.isfinite(strength) or strength < 0:
            raise QuantmlInputError(f"data.lead_lag.strength must be a finite number >= 0, got {strength}")
        if not 1 <= len(weights) <= MAX_LAG or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise QuantmlInputError(
                f"data.lead_lag.lag_weights must be 1 to {MAX_LAG} finite weights >= 0 (lags 1..{MAX_LAG}), "
                f"got {list(lag_weights)}"
            )
        self.leader = None if leader is None else str(leader)
        self.strength = strength
        self.lag_weights = weights

    def leader_index(self, symbols: list[str]) -> int:
        if len(symbols) < 2:
            raise QuantmlInputError("data.lead_lag needs at least 2 symbols (a leader and a follower); raise n_symbols")
        if self.leader is None:
            return 0
        if self.leader not in symbols:
            raise QuantmlInputError(
                f"data.lead_lag.leader={self.leader!r} is not a symbol of the panel; choose from {symbols}"
            )
        return symbols.index(self.leader)

    def returns(self, ctx: PlantContext, ret: np.ndarray) -> np.ndarray:
        """``ret`` [T, N] log returns -> the same with the followers' lead-lag term added."""
        T, N = ret.shape
        lead = self.leader_index(list(ctx.symbols))
        followers = np.array([j for j in range(N) if j != lead])
        signs = np.where(np.arange(len(followers)) % 2 == 0, 1.0, -1.0)
        signs = ctx.rng.permutation(signs)
        loading = np.zeros(N)
        loading[followers] = signs * ctx.rng.uniform(0.5, 1.0, len(followers))
        z = ret[:, lead] / np.where(ctx.sigma[:, lead] > 0, ctx.sigma[:, lead], 1.0)
        z = np.where(np.isfinite(z), z, 0.0)
        driver = np.zeros(T)
        for k, w in enumerate(self.lag_weights, start=1):
            driver[k:] += w * z[:-k]  # bar t reads the leader's returns of bars t-k only
        term = self.strength * ctx.sigma * loading[None, :] * driver[:, None]
        out = ret + term
        ctx.truth[TRUTH_LEADER] = np.broadcast_to((np.arange(N) == lead).astype(np.float64), (T, N)).copy()
        ctx.truth[TRUTH_LOADING] = np.broadcast_to(self.strength * loading, (T, N)).copy()
        ctx.truth[TRUTH_TERM] = term
        return out
