"""Per-symbol feature standardisation and per-horizon target scales, fitted on training rows only.

Shapes: ``n`` rows, ``F`` features, ``H`` horizons, ``S`` symbols seen at fit time. Row 0 of the
statistics holds the pooled (all-symbol) values, used for a symbol unseen at fit time.
"""

from __future__ import annotations

import numpy as np

from quantml.models.base import PanelData

_FLOOR = 1e-8


class VSSMScaler:
    """``mean_``/``std_`` [S + 1, F] of the features, ``ret_scale_``/``vol_scale_`` [H] of the targets
    (std of the return, median realised vol), ``static_`` [S + 1, 2] per-symbol log ratios of both."""

    def __init__(self, clip: float = 10.0) -> None:
        self.clip = float(clip)

    def fit(self, data: PanelData, rows: np.ndarray) -> VSSMScaler:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        X = data.X[rows].astype(np.float64)
        codes = data.symbol_codes[rows]
        present = np.unique(codes)
        self.symbols_ = [str(data.symbols[c]) for c in present]
        g_mean, g_std = _moments(X)
        means, stds = [g_mean], [g_std]
        y_ret, y_vol = data.y_ret[rows], np.where(data.y_vol[rows] > 0, data.y_vol[rows], np.nan)
        self.ret_scale_ = _stat(y_ret, np.nanstd)
        self.vol_scale_ = _stat(y_vol, np.nanmedian)
        static = [np.zeros(2)]
        for code in present:
            sel = codes == code
            m, s = _moments(X[sel])
            means.append(np.where(np.isfinite(m), m, g_mean))
            stds.append(np.where(np.isfinite(s) & (s > _FLOOR), s, g_std))
            static.append(
                np.array(
                    [
                        np.log(_stat(y_ret[sel, :1], np.nanstd)[0] / self.ret_scale_[0]),
                        np.log(_stat(y_vol[sel, :1], np.nanmedian)[0] / self.vol_scale_[0]),
                    ]
                )
            )
        self.mean_ = np.vstack(means)
        self.std_ = np.vstack(stds)
        self.static_ = np.vstack(static)
        return self

    def index_of(self, data: PanelData, rows: np.ndarray) -> np.ndarray:
        """Statistics index [len(rows)] of each row's symbol (0 = unseen at fit time)."""
        lookup = {s: i + 1 for i, s in enumerate(self.symbols_)}
        per_code = np.array([lookup.get(str(s), 0) for s in data.symbols], dtype=np.int64)
        return per_code[data.symbol_codes[rows]]

    def features(self, data: PanelData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(z, finite)``: float32 [len(rows), F] standardised, clipped, NaN -> 0, and bool [len(rows), F]
        where the raw feature was finite."""
        idx = self.index_of(data, rows)
        raw = data.X[rows].astype(np.float64)
        finite = np.isfinite(raw)
        z = (raw - self.mean_[idx]) / self.std_[idx]
        z = np.clip(np.where(finite, z, 0.0), -self.clip, self.clip)
        return z.astype(np.float32), finite

    def static(self, data: PanelData, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), 2]: the row's symbol's log return-scale and vol-level ratios."""
        return self.static_[self.index_of(data, rows)].astype(np.float32)


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(X)
        cnt = ok.sum(0)
        x = np.where(ok, X, 0.0)
        mean = np.where(cnt > 0, x.sum(0) / np.maximum(cnt, 1), 0.0)
        var = np.where(cnt > 1, (np.where(ok, X - mean, 0.0) ** 2).sum(0) / np.maximum(cnt - 1, 1), 1.0)
    std = np.sqrt(var)
    return mean, np.where(std > _FLOOR, std, 1.0)


def _stat(y: np.ndarray, fn) -> np.ndarray:
    y = np.where(np.isfinite(y), y, np.nan)
    out = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        col = y[:, j][np.isfinite(y[:, j])]
        out[j] = fn(col) if len(col) > 1 else 1.0
    return np.where(np.isfinite(out) & (out > _FLOOR), out, 1.0)
