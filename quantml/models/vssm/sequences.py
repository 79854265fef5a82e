"""Which stretches of a panel the regime filter runs over, and batches of them.

Rows live on **tracks**, one regime chain each: with ``scope="symbol"`` a track is a segment (a symbol's
bars, cut at flagged gaps: :attr:`PanelData.segment_start`) and a row's step is its position in it; with
``scope="market"`` there is one track, the panel's sorted unique timestamps, and every row of a timestamp
sits on that step (the chain is market-wide: each step observes every symbol's bar of that time).

A stretch ``(track, start, main, end)`` runs the filter over steps ``start .. end - 1`` of a track; the
rows on steps ``main .. end - 1`` count (``start .. main - 1`` is burn-in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantml.models.base import PanelData

SCOPES = ("market", "symbol")


@dataclass
class Tracks:
    """``track``/``step`` int64 [n]: the chain and step of every panel row; ``order`` [n] the rows sorted
    by (track, step, row) and ``keys`` [n] their sort keys ``track * span + step``."""

    track: np.ndarray
    step: np.ndarray
    span: int
    order: np.ndarray
    keys: np.ndarray

    @classmethod
    def of(cls, data: PanelData, scope: str) -> Tracks:
        n = data.n_rows
        if scope == "symbol":
            starts = data.segment_start
            track = np.unique(starts, return_inverse=True)[1].astype(np.int64)
            step = np.arange(n, dtype=np.int64) - starts
        else:
            t0 = data.t0.astype("datetime64[ns]").astype(np.int64)
            track = np.zeros(n, dtype=np.int64)
            step = np.unique(t0, return_inverse=True)[1].astype(np.int64)
        span = int(step.max()) + 2 if n else 1
        keys = track * span + step
        order = np.lexsort((np.arange(n), keys))
        return cls(track, step, span, order, keys[order])

    def rows_between(self, track: int, lo: int, hi: int) -> np.ndarray:
        """Panel rows on steps ``lo .. hi - 1`` of ``track`` (sorted by step, then row)."""
        a, b = np.searchsorted(self.keys, [track * self.span + lo, track * self.span + hi])
        return self.order[a:b]


def full_stretches(tracks: Tracks, rows: np.ndarray) -> list[tuple[int, int, int, int]]:
    """One stretch per track holding ``rows``: from its first step to the last step of a row of ``rows``
    (the exact filter: every earlier step is read, no later one)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    for tr in np.unique(tracks.track[rows]):
        last = int(tracks.step[rows][tracks.track[rows] == tr].max())
        out.append((int(tr), 0, 0, last + 1))
    return out


def chunk_stretches(
    tracks: Tracks, rows: np.ndarray, chunk_len: int, burn_in: int, offset: int = 0
) -> list[tuple[int, int, int, int]]:
    """Stretches of at most ``chunk_len`` counted steps after up to ``burn_in`` steps of burn-in, tiling
    every track up to its last step of ``rows``; the first chunk is ``offset`` (mod ``chunk_len``) steps
    shorter. Only chunks holding a row of ``rows`` are kept."""
    rows = np.asarray(rows, dtype=np.int64)
    out = []
    for tr, _, _, end in full_stretches(tracks, rows):
        steps = np.unique(tracks.step[rows][tracks.track[rows] == tr])
        bounds = np.r_[0, np.arange(offset % chunk_len or chunk_len, end, chunk_len), end]
        for main, stop in zip(bounds[:-1], bounds[1:]):
            lo, hi = np.searchsorted(steps, [main, stop])
            if stop > main and hi > lo:
                out.append((tr, int(max(0, main - burn_in)), int(main), int(stop)))
    return out


@dataclass
class Batch:
    """The rows of a batch of stretches: ``rows`` [R] panel rows, ``b``/``l`` [R] their stretch and step
    in it, ``counted`` bool [R] rows whose outputs count; ``shape`` (B, L) of the filter grid."""

    rows: np.ndarray
    b: np.ndarray
    l: np.ndarray  # noqa: E741
    counted: np.ndarray
    shape: tuple[int, int]


def gather(tracks: Tracks, stretches, counted: np.ndarray | None = None) -> Batch:
    """The :class:`Batch` of ``stretches``; with ``counted``, only its rows on the main steps count."""
    counted_set = None if counted is None else np.unique(np.asarray(counted, dtype=np.int64))
    parts_r, parts_b, parts_l, parts_c = [], [], [], []
    for i, (tr, start, main, end) in enumerate(stretches):
        r = tracks.rows_between(tr, start, end)
        step = tracks.step[r]
        c = step >= main
        if counted_set is not None:
            c &= np.isin(r, counted_set)
        parts_r.append(r)
        parts_b.append(np.full(len(r), i, dtype=np.int64))
        parts_l.append(step - start)
        parts_c.append(c)
    L = max((end - start for _, start, _, end in stretches), default=0)
    cat = lambda p, dt: np.concatenate(p) if p else np.zeros(0, dt)  # noqa: E731
    return Batch(
        cat(parts_r, np.int64),
        cat(parts_b, np.int64),
        cat(parts_l, np.int64),
        cat(parts_c, bool),
        (len(stretches), int(L)),
    )
