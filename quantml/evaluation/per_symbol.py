"""Forecast quality per symbol and horizon: what a route map's entry (a version serving some symbols) is
judged on, read from each fold run's ``metrics/per_symbol.csv`` (docs/routing.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL

PER_SYMBOL_COLUMNS = ("symbol", "horizon", "n", "ic", "rank_ic", "hit_rate")


def per_symbol_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (symbol, horizon) of a prediction frame with realised ``ret``: the rows scored
    (``n``), the time-series IC and rank IC of ``expected_return`` against ``ret``, and the hit rate
    of its sign. NaN where fewer than 3 realised rows (or no variation) leave nothing to correlate."""
    if frame.empty or "ret" not in frame.columns:
        return pd.DataFrame(columns=list(PER_SYMBOL_COLUMNS))
    rows = []
    ok = frame[
        np.isfinite(frame["ret"].to_numpy(np.float64)) & np.isfinite(frame["expected_return"].to_numpy(np.float64))
    ]
    for (sym, h), part in ok.groupby([ok[SYMBOL].astype(str), ok["horizon"].astype(str)], sort=True):
        f, r = part["expected_return"].to_numpy(np.float64), part["ret"].to_numpy(np.float64)
        varied = len(part) >= 3 and np.std(f) > 0 and np.std(r) > 0
        ic = float(np.corrcoef(f, r)[0, 1]) if varied else np.nan
        rank = float(pd.Series(f).rank().corr(pd.Series(r).rank())) if varied else np.nan
        hit = float(np.mean(np.sign(f) == np.sign(r))) if len(part) else np.nan
        rows.append((sym, h, len(part), ic, rank, hit))
    return pd.DataFrame(rows, columns=list(PER_SYMBOL_COLUMNS))
