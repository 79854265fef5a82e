"""The signal strategy: out-of-sample predictions -> thresholds -> allocator -> target positions.

:class:`SignalPanel` turns the long prediction frame (contract of
``predictions/oos_predictions.parquet``, one CPCV path) into dense arrays ``[T, N, H]``
(bars x symbols x horizons); :func:`strategy_positions` applies a :class:`SignalConfig`
and an :class:`AllocatorConfig` to it, for every bar at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.portfolio.allocator import AllocatorConfig, allocate_panel
from quantml.portfolio.covariance import trailing_covariance
from quantml.contracts import QuantmlInputError, SYMBOL, TIMESTAMP
from quantml.signals.core import SignalConfig, decide_actions

PANEL_COLUMNS = (SYMBOL, TIMESTAMP, "horizon", "score", "confidence", "vol_forecast", "ret_next_bar")


@dataclass
class SignalPanel:
    """Dense view of one path of a prediction frame.

    ``timestamps [T]`` (sorted, UTC), ``symbols [N]``, ``horizons [H]``;
    ``score, confidence, vol_forecast`` float ``[T, N, H]`` (NaN where a row is missing);
    ``next_return [T, N]``: simple return from close ``t`` to close ``t+1`` (``expm1`` of the
    contract's log ``ret_next_bar``; NaN when unknown);
    ``volume [T, N]`` traded notional per bar or None.
    """

    timestamps: pd.DatetimeIndex
    symbols: list[str]
    horizons: list[str]
    score: np.ndarray
    confidence: np.ndarray
    vol_forecast: np.ndarray
    next_return: np.ndarray
    volume: np.ndarray | None = None
    _cov_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, horizons: list[str] | None = None,
                   volume_column: str | None = None) -> "SignalPanel":
        """Build from a long frame with one row per (symbol, timestamp, horizon).

        ``horizons`` fixes the bucket order (default: order of first appearance).
        ``volume_column`` (optional) names a per-bar traded-notional column.
        """
        missing = [c for c in PANEL_COLUMNS if c not in frame.columns]
        if missing:
            raise QuantmlInputError(f"prediction frame lacks column(s) {missing}; it must follow the "
                                    "oos_predictions.parquet contract (symbol, timestamp, horizon, score, "
                                    "confidence, vol_forecast, ret_next_bar, ...)")
        if volume_column is not None and volume_column not in frame.columns:
            raise QuantmlInputError(f"volume column {volume_column!r} is not in the frame; add it or pass None")
        if "path" in frame.columns and frame["path"].nunique() > 1:
            raise QuantmlInputError(f"the frame holds CPCV paths {sorted(frame['path'].unique())}; build one "
                                    "panel per path (frame[frame.path == p])")
        keys = [SYMBOL, TIMESTAMP, "horizon"]
        dup = frame.duplicated(keys)
        if dup.any():
            row = frame.loc[dup, keys].iloc[0]
            raise QuantmlInputError(f"duplicate prediction for symbol {row[SYMBOL]!r}, timestamp "
                                    f"{row[TIMESTAMP]}, horizon {row['horizon']!r}; keep one row per key")
        ts = pd.DatetimeIndex(frame[TIMESTAMP])
        if ts.tz is None:
            raise QuantmlInputError("the timestamp column is tz-naive; localise it to UTC "
                                    "(frame['timestamp'].dt.tz_localize('UTC'))")
        all_h = list(dict.fromkeys(frame["horizon"]))
        horizons = list(horizons) if horizons is not None else all_h
        unknown = sorted(set(all_h) - set(horizons))
        if unknown:
            raise QuantmlInputError(f"horizon(s) {unknown} are in the frame but not in horizons={horizons}")
        timestamps = pd.DatetimeIndex(np.sort(ts.unique()))
        symbols = sorted(frame[SYMBOL].astype(str).unique())
        t_idx = timestamps.get_indexer(ts)
        n_idx = pd.Index(symbols).get_indexer(frame[SYMBOL].astype(str))
        h_idx = pd.Index(horizons).get_indexer(frame["horizon"])
        T, N, H = len(timestamps), len(symbols), len(horizons)

        def cube(col: str) -> np.ndarray:
            out = np.full((T, N, H), np.nan)
            out[t_idx, n_idx, h_idx] = frame[col].to_numpy(dtype=np.float64)
            return out

        def plane(col: str) -> np.ndarray:
            out = np.full((T, N), np.nan)
            out[t_idx, n_idx] = frame[col].to_numpy(dtype=np.float64)
            return out

        return cls(timestamps, symbols, horizons, cube("score"), cube("confidence"), cube("vol_forecast"),
                   np.expm1(plane("ret_next_bar")), None if volume_column is None else plane(volume_column))

    def __len__(self) -> int:
        return len(self.timestamps)

    def covariance(self, window: int, min_periods: int) -> np.ndarray:
        """Trailing (causal) covariance ``[T, N, N]``, cached per (window, min_periods).

        Call it on the full panel before :meth:`slice` so slices inherit the history."""
        key = (int(window), int(min_periods))
        if key not in self._cov_cache:
            self._cov_cache[key] = trailing_covariance(self.next_return, *key)
        return self._cov_cache[key]

    def slice(self, start: int, stop: int) -> "SignalPanel":
        """Bars ``[start, stop)``; the trailing covariance of the full panel is carried over, so a
        later slice keeps the history it was estimated from."""
        sl = slice(start, stop)
        return SignalPanel(self.timestamps[sl], self.symbols, self.horizons, self.score[sl], self.confidence[sl],
                           self.vol_forecast[sl], self.next_return[sl],
                           None if self.volume is None else self.volume[sl],
                           {k: v[sl] for k, v in self._cov_cache.items()})

    def actions(self, config: SignalConfig) -> np.ndarray:
        """Action sign ``[T, N, H]`` (+1 long, 0 flat, -1 short) under ``config``'s thresholds."""
        thr = np.array([config.threshold_for(h) for h in self.horizons])
        conf = np.array([config.min_confidence_for(h) for h in self.horizons])
        return decide_actions(self.score, self.confidence, thr, conf)


def strategy_positions(panel: SignalPanel, signal: SignalConfig, allocator: AllocatorConfig,
                       periods_per_year: float) -> tuple[np.ndarray, np.ndarray]:
    """Target positions ``[T, N]`` and per-horizon attribution ``[T, N, H]`` for every bar.

    Uses only bar ``t``'s signals and returns realised by ``t`` (trailing covariance).
    """
    cov = panel.covariance(allocator.cov_window, allocator.cov_min_periods)
    active = panel.actions(signal)
    return allocate_panel(np.nan_to_num(panel.score), np.nan_to_num(panel.confidence),
                          np.nan_to_num(panel.vol_forecast, nan=1.0), active, cov, panel.horizons,
                          allocator, periods_per_year)
