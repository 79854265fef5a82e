"""The cross-section of a :class:`PanelData` as a grid: one row of assets per timestamp.

Shapes: ``T`` timestamps, ``N`` assets, ``F`` features, ``H`` horizons. ``pos[t, a]`` is the panel
row of asset ``a`` at timestamp ``t`` (``-1`` when the asset has no bar then).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantml.models.base import PanelData


@dataclass
class Grid:
    """``times``: datetime64[ns] [T] sorted; ``assets``: N symbol names; ``pos``: int64 [T, N] (-1 = absent)."""

    times: np.ndarray
    assets: list[str]
    pos: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """bool [T, N]: the asset has a bar at the timestamp."""
        return self.pos >= 0


def grid_of(data: PanelData, rows: np.ndarray, assets: list[str]) -> Grid:
    """The grid over the unique timestamps of ``rows``, filled with every row of ``data`` (not only
    ``rows``) of one of ``assets`` at those timestamps: the whole cross-section of each bar."""
    rows = np.asarray(rows, dtype=np.int64)
    t0 = np.asarray(data.t0, dtype="datetime64[ns]")
    times = np.unique(t0[rows])
    index = {s: i for i, s in enumerate(assets)}
    asset_of_code = np.array([index.get(str(s), -1) for s in data.symbols], dtype=np.int64)
    asset = asset_of_code[data.symbol_codes] if len(data.symbol_codes) else np.zeros(0, np.int64)
    t_idx = np.searchsorted(times, t0)
    inside = (t_idx < len(times)) & (asset >= 0)
    inside[inside] = times[t_idx[inside]] == t0[inside]
    pos = np.full((len(times), len(assets)), -1, dtype=np.int64)
    r = np.flatnonzero(inside)
    pos[t_idx[r], asset[r]] = r  # a duplicate (symbol, timestamp) keeps its last row
    return Grid(times, list(assets), pos)


def window_rows(data: PanelData, rows: np.ndarray, lookback: int) -> np.ndarray:
    """Sorted panel rows every look-back window of ``rows`` reads (``max(segment_start[r], r-L+1) .. r``)."""
    rows = np.asarray(rows, dtype=np.int64)
    mark = np.zeros(data.n_rows, dtype=bool)
    start = data.segment_start[rows] if len(rows) else rows
    for offset in range(max(int(lookback), 1)):
        back = rows - offset
        mark[back[back >= start]] = True
    return np.flatnonzero(mark)


def gather(values: np.ndarray, pos: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """``values`` [n, k] at ``pos`` [T, N] -> [T, N, k] (``fill`` where ``pos`` is -1)."""
    out = np.full((*pos.shape, values.shape[1]), fill, dtype=np.float64)
    ok = pos >= 0
    out[ok] = values[pos[ok]]
    return out
