"""Causal covariance of per-bar returns from a trailing window.

At bar ``t`` only returns realised by ``t``'s close are used: the return of bar ``s``
(close ``s-1`` -> close ``s``) is ``ret_next_bar[s-1]``, so the window for ``t`` is
``ret_next_bar[t-window : t]`` (rows strictly before ``t``). Missing returns count as 0.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window_covariance(window: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof=1) of a ``[W, N]`` window of returns -> ``[N, N]``."""
    x = np.nan_to_num(np.asarray(window, dtype=np.float64))
    x = x - x.mean(axis=0)
    return x.T @ x / (len(x) - 1)


def trailing_covariance(ret_next_bar: np.ndarray, window: int, min_periods: int | None = None) -> np.ndarray:
    """``[T, N, N]`` covariance per bar from the realised returns before it; NaN before warm-up.

    ``ret_next_bar``: ``[T, N]`` (row ``t`` = return from close ``t`` to close ``t+1``).
    Bar ``t`` uses the last ``min(window, t)`` rows before ``t``, and is NaN while fewer
    than ``min_periods`` (default ``window``) are available.
    """
    r = np.nan_to_num(np.asarray(ret_next_bar, dtype=np.float64))
    T, N = r.shape
    window = int(window)
    min_periods = window if min_periods is None else int(min_periods)
    if window < 2 or not 2 <= min_periods <= window:
        raise ValueError(f"need 2 <= min_periods ({min_periods}) <= window ({window})")
    cov = np.full((T, N, N), np.nan)
    # warm-up bars with an expanding window, then full sliding windows
    for t in range(min_periods, min(window, T)):
        cov[t] = window_covariance(r[:t])
    if T > window:
        win = sliding_window_view(r[:-1], window, axis=0)  # [T-window, N, window]; win[k] = r[k:k+window]
        x = win - win.mean(axis=2, keepdims=True)
        cov[window:] = np.einsum("knw,kmw->knm", x, x) / (window - 1)
    return cov


class TrailingCovariance:
    """Streaming twin of :func:`trailing_covariance` for the bar-by-bar replay.

    Call :meth:`current` for the covariance at the current bar, then :meth:`update`
    with the return realised at the next bar.
    """

    def __init__(self, n_assets: int, window: int, min_periods: int | None = None) -> None:
        self.window = int(window)
        self.min_periods = self.window if min_periods is None else int(min_periods)
        self.n_assets = n_assets
        self._rows: list[np.ndarray] = []

    def update(self, realised_return: np.ndarray) -> None:
        self._rows.append(np.nan_to_num(np.asarray(realised_return, dtype=np.float64)))
        if len(self._rows) > self.window:
            self._rows.pop(0)

    def state_dict(self) -> dict:
        """JSON-serialisable window (rows as lists of floats) for a resumable replay."""
        return {
            "window": self.window,
            "min_periods": self.min_periods,
            "n_assets": self.n_assets,
            "rows": [r.tolist() for r in self._rows],
        }

    @classmethod
    def from_state(cls, state: dict) -> TrailingCovariance:
        """The window :meth:`state_dict` wrote, bit for bit."""
        cov = cls(int(state["n_assets"]), int(state["window"]), int(state["min_periods"]))
        cov._rows = [np.asarray(r, dtype=np.float64) for r in state["rows"]]
        return cov

    def current(self) -> np.ndarray:
        if len(self._rows) < self.min_periods:
            return np.full((self.n_assets, self.n_assets), np.nan)
        return window_covariance(np.vstack(self._rows))
