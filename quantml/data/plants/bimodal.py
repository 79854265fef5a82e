"""A planted bimodal outcome (``data.bimodal=true``): after a scheduled trigger, the next bar jumps up or down.

The trigger is a calendar event known in advance: every bar whose close falls at ``hour`` (UTC) for
intraday bars, or on weekday ``weekday`` (0 = Monday) for daily and longer bars. The calendar block of
every packaged feature set exposes both (``hour_sin/cos`` for intraday bars, ``dow_sin/cos``), so the
trigger is learnable from the features of bar ``t``. The return of bar ``t+1`` after a trigger bar ``t``
gets ``+jump * sigma[t]`` or ``-jump * sigma[t]`` with equal probability (``sigma[t]``: the symbol's
per-bar volatility at the trigger, known at ``t``; the sign is a fair coin, unknowable at ``t``): the
next-bar return of a trigger row is a two-humped mixture whose median sits where there is hardly any mass.

truth: ``bimodal_trigger`` [T, N] (1.0 at trigger bars ``t``) and ``bimodal_jump`` [T, N] (the added
log return, at bar ``t+1``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.data.plants import Plant, PlantContext


class BimodalPlant(Plant):
    """``hour``: trigger hour of day (intraday bars); ``weekday``: trigger day (daily bars); ``jump``: the
    jump in per-bar sigmas (several, so the two modes separate)."""

    def __init__(self, hour: int = 8, weekday: int = 2, jump: float = 4.0) -> None:
        if not (isinstance(hour, (int, np.integer)) and 0 <= int(hour) <= 23):
            raise QuantmlInputError(f"data.bimodal.hour={hour!r} must be an hour of day, 0 to 23")
        if not (isinstance(weekday, (int, np.integer)) and 0 <= int(weekday) <= 6):
            raise QuantmlInputError(f"data.bimodal.weekday={weekday!r} must be a weekday, 0 (Monday) to 6")
        try:
            jump = float(jump)
        except (TypeError, ValueError):
            jump = float("nan")
        if not np.isfinite(jump) or jump <= 0:
            raise QuantmlInputError(f"data.bimodal.jump={jump!r} must be a positive number of sigmas (4)")
        self.hour, self.weekday, self.jump = int(hour), int(weekday), jump

    def trigger(self, ctx: PlantContext) -> np.ndarray:
        """bool [T]: the bars whose close is the scheduled event."""
        ts = pd.DatetimeIndex(ctx.ts)
        if ctx.bar < pd.Timedelta("1D"):
            return np.asarray(ts.hour == self.hour)
        return np.asarray(ts.dayofweek == self.weekday)

    def returns(self, ctx: PlantContext, ret: np.ndarray) -> np.ndarray:
        T, N = ret.shape
        fire = self.trigger(ctx)
        sign = np.where(ctx.rng.random((T, N)) < 0.5, -1.0, 1.0)  # drawn for every bar: reproducible
        trig = np.broadcast_to(fire[:, None], (T, N)).astype(np.float64)
        jump = np.zeros((T, N))
        jump[1:] = trig[:-1] * sign[:-1] * self.jump * ctx.sigma[:-1]  # bar t+1 after a trigger at t
        ctx.truth["bimodal_trigger"] = trig.copy()
        ctx.truth["bimodal_jump"] = jump
        return ret + jump
