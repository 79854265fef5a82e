"""Opt-in planted effects of the synthetic generator, one module each.

A plant is switched on by its flag (``data.<flag>=true``, ``generate_synthetic(plants={flag: {...}})``)
and changes the panel through three hooks of :class:`Plant`, in this order inside
:func:`quantml.data.synthetic.generate_synthetic`:

1. ``sigma(ctx, sigma)``: the per-bar volatility [T, N] before any return is drawn (planted regimes);
2. ``returns(ctx, ret)``: the log returns [T, N] once drift and noise are summed (row 0 is the first
   bar and stays 0): lead-lag, a bimodal outcome, a text-driven drift;
3. ``streams(ctx, ret)``: extra stream tables to emit (a raw text stream), and ``truth`` entries.

Every plant draws from its own generator (``ctx.rng``, seeded from (seed, the plant's key)), never from
the generator of the default panel, so with every flag off the panel is bit-identical to the generator
without plants, and with one on every stream the plant does not touch keeps its values. What a plant
adds to the return of bar ``t+1`` may only depend on what is known at bar ``t`` (no look-ahead).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError

# flag -> "module:Class"; the class takes the flag's options as keyword arguments
PLANTS = {
    "text_stream": "quantml.data.plants.text:TextStreamPlant",
    "lead_lag": "quantml.data.plants.lead_lag:LeadLagPlant",
    "vol_regimes": "quantml.data.plants.vol_regimes:VolRegimesPlant",
    "bimodal": "quantml.data.plants.bimodal:BimodalPlant",
}


@dataclass
class PlantContext:
    """What a plant may read: the clock, the symbols, the default panel's volatility and its own generator.

    ``ts``: bar closes [T] (UTC); ``bar``: bar length; ``symbols``: N names; ``sigma``: [T, N] per-bar
    volatility (after the ``sigma`` hooks); ``day_scale``: sqrt(bar / 1 day), the per-bar strength that
    gives a target IC at one day; ``rng``: this plant's generator; ``truth``: write planted quantities here.
    """

    ts: pd.DatetimeIndex
    bar: pd.Timedelta
    symbols: list[str]
    seed: int
    sigma: np.ndarray
    day_scale: float
    rng: np.random.Generator
    truth: dict[str, np.ndarray] = field(default_factory=dict)

    def bars_per(self, duration: str | pd.Timedelta) -> float:
        """Bars in a duration (``"6h"`` -> 72 at 5m)."""
        return pd.Timedelta(duration) / self.bar


class Plant:
    """Base class: every hook leaves the panel as it is. Subclasses override what they plant."""

    def sigma(self, ctx: PlantContext, sigma: np.ndarray) -> np.ndarray:
        return sigma

    def returns(self, ctx: PlantContext, ret: np.ndarray) -> np.ndarray:
        return ret

    def streams(self, ctx: PlantContext, ret: np.ndarray) -> dict[str, pd.DataFrame]:
        return {}


def plant_rng(seed: int, flag: str) -> np.random.Generator:
    """The generator of one plant: seeded from (seed, a key of its flag), independent of the panel's."""
    return np.random.default_rng([int(seed), zlib.crc32(flag.encode())])


def load_plants(plants: Mapping[str, Mapping | bool] | None) -> dict[str, Plant]:
    """``{flag: options}`` (``True`` = default options, ``False``/``None`` = off) -> ``{flag: Plant}``, in
    the order of :data:`PLANTS` (so the result never depends on the order flags were given)."""
    chosen = {}
    for flag, options in dict(plants or {}).items():
        if flag not in PLANTS:
            raise QuantmlInputError(f"unknown synthetic plant {flag!r}; choose from {sorted(PLANTS)}")
        if options is None or options is False:
            continue
        if options is True:
            options = {}
        if not isinstance(options, Mapping):
            raise QuantmlInputError(f"data.{flag}={options!r} must be true, false or a mapping of its options")
        chosen[flag] = dict(options)
    out = {}
    for flag, target in PLANTS.items():
        if flag in chosen:
            module, cls = target.split(":")
            out[flag] = getattr(importlib.import_module(module), cls)(**chosen[flag])
    return out
