"""Planted volatility regimes: a market-wide two-state Markov chain that scales every symbol's sigma.

``data.vol_regimes=true`` (or a mapping of the options below) switches it on. The chain's spells have
geometric durations with mean ``mean_duration`` (a duration, e.g. ``"5D"``); in the calm state (0) the
panel's per-bar volatility is multiplied by ``calm`` (0.5), in the turbulent state (1) by ``turbulent``
(2.0). The state of bar ``t`` scales the return of bar ``t`` (it is drawn before any return, from the
plant's own generator: with the flag off the panel is bit-identical). ``truth["vol_regime"]``: float
[T, N], 0.0 calm / 1.0 turbulent, the same in every column (market-wide).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.data.plants import Plant, PlantContext

TRUTH_KEY = "vol_regime"


class VolRegimesPlant(Plant):
    """Two persistent market-wide volatility regimes (calm x ``calm`` / turbulent x ``turbulent``)."""

    def __init__(self, mean_duration: str = "5D", calm: float = 0.5, turbulent: float = 2.0) -> None:
        try:
            self.mean_duration = pd.Timedelta(mean_duration)
        except (TypeError, ValueError):
            raise QuantmlInputError(
                f"data.vol_regimes.mean_duration={mean_duration!r} is not a duration; use e.g. 5D or 36h"
            ) from None
        if self.mean_duration <= pd.Timedelta(0):
            raise QuantmlInputError(f"data.vol_regimes.mean_duration={mean_duration!r} must be positive (e.g. 5D)")
        for name, value in (("calm", calm), ("turbulent", turbulent)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
                raise QuantmlInputError(f"data.vol_regimes.{name}={value!r} must be a positive number")
        self.calm, self.turbulent = float(calm), float(turbulent)

    def sigma(self, ctx: PlantContext, sigma: np.ndarray) -> np.ndarray:
        """``sigma`` [T, N] x the multiplier of each bar's planted state; writes ``truth["vol_regime"]``."""
        T, N = sigma.shape
        state = markov_states(ctx.rng, T, max(1.0, ctx.bars_per(self.mean_duration)))
        ctx.truth[TRUTH_KEY] = np.broadcast_to(state.astype(np.float64)[:, None], (T, N)).copy()
        mult = np.where(state == 1, self.turbulent, self.calm)
        return sigma * mult[:, None]


def markov_states(rng: np.random.Generator, n_bars: int, mean_bars: float) -> np.ndarray:
    """int8 [n_bars]: a two-state chain whose spells last Geometric(1 / ``mean_bars``) bars, alternating,
    starting in a random state."""
    p = 1.0 / max(mean_bars, 1.0)
    durs = rng.geometric(p, size=int(n_bars * p * 2) + 16)
    while durs.sum() < n_bars:
        durs = np.r_[durs, rng.geometric(p, size=len(durs))]
    first = int(rng.integers(0, 2))
    states = (first + np.arange(len(durs))) % 2
    return np.repeat(states, durs)[:n_bars].astype(np.int8)
