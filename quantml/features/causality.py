"""A look-ahead detector for feature sets: perturb the future, check the past is unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from quantml.contracts import OHLCV, SYMBOL, TIMESTAMP
from quantml.features.build import build_features


def perturb_after(panel: pd.DataFrame, cut: pd.Timestamp, seed: int = 0) -> pd.DataFrame:
    """Copy of ``panel`` where every row with ``timestamp > cut`` (all symbols) has new values
    in every column but timestamp/symbol: OHLC rescaled by one random factor per row (stays a
    valid bar; a close-only series stays one), volume rescaled, other numeric columns
    rescaled, shifted and 10% set to NaN."""
    rng = np.random.default_rng(seed)
    out = panel.copy()
    after = (out[TIMESTAMP] > cut).to_numpy()
    m = int(after.sum())
    if m == 0:
        return out
    f = np.exp(rng.normal(0.0, 0.05, m))
    for c in ("open", "high", "low", "close"):
        if c in out.columns:  # open/high/low are optional
            out.loc[after, c] = out.loc[after, c].to_numpy() * f
    scale = rng.uniform(0.5, 2.0, m)
    if "volume" in out.columns:
        out.loc[after, "volume"] = out.loc[after, "volume"].to_numpy() * scale
    for c in out.columns:
        if c in (TIMESTAMP, SYMBOL, *OHLCV) or not pd.api.types.is_numeric_dtype(out[c]):
            continue
        v = out.loc[after, c].to_numpy(dtype=np.float64, na_value=np.nan)
        v = np.where(np.isnan(v), rng.normal(0.0, 1.0, m), v * rng.uniform(0.5, 1.5, m) + rng.normal(0.0, 1.0, m))
        v[rng.random(m) < 0.1] = np.nan
        out[c] = out[c].astype(np.float64)
        out.loc[after, c] = np.abs(v) if c.endswith(("_count", "_missing")) else v
    return out


def causality_violations(
    panel: pd.DataFrame,
    feature_set_cfg: Mapping,
    cut: pd.Timestamp | str | None = None,
    drop_modalities: Iterable[str] = (),
    seed: int = 0,
) -> dict[str, int]:
    """Features whose value at or before ``cut`` changes when every row after ``cut`` changes.

    Returns feature name -> number of rows (timestamp <= cut) that are not bit-identical;
    empty when the feature set is causal. ``cut`` defaults to the panel's median timestamp.
    """
    ts = panel[TIMESTAMP]
    cut = ts.sort_values().iloc[len(ts) // 2] if cut is None else pd.Timestamp(cut)
    base = build_features(panel, feature_set_cfg, drop_modalities).frame
    moved = build_features(perturb_after(panel, cut, seed), feature_set_cfg, drop_modalities).frame
    past = (ts <= cut).to_numpy()
    bad: dict[str, int] = {}
    for c in base.columns:
        a = base[c].to_numpy()[past]
        b = moved[c].to_numpy()[past] if c in moved.columns else np.full_like(a, np.inf)
        same = a.view(np.uint32) == b.view(np.uint32)  # bit-identical, NaN included
        if not same.all():
            bad[c] = int((~same).sum())
    return bad
