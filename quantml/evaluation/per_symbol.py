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
    # four columns as arrays, groups by sorting codes: no copy of the long frame, no string per row
    f_all = frame["expected_return"].to_numpy(np.float64)
    r_all = frame["ret"].to_numpy(np.float64)
    key, labels = _group_keys(frame[SYMBOL], frame["horizon"])
    idx = np.flatnonzero(np.isfinite(r_all) & np.isfinite(f_all) & (key >= 0))
    order = idx[np.argsort(key[idx], kind="stable")]  # each group's rows in frame order
    keys = key[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    rows = []
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        if a == b:
            continue
        f, r = f_all[order[a:b]], r_all[order[a:b]]
        varied = len(f) >= 3 and np.std(f) > 0 and np.std(r) > 0
        ic = float(np.corrcoef(f, r)[0, 1]) if varied else np.nan
        rank = float(pd.Series(f).rank().corr(pd.Series(r).rank())) if varied else np.nan
        hit = float(np.mean(np.sign(f) == np.sign(r)))
        rows.append((*labels[int(keys[a])], len(f), ic, rank, hit))
    return pd.DataFrame(rows, columns=list(PER_SYMBOL_COLUMNS))


def _group_keys(symbols: pd.Series, horizons: pd.Series) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``key [n]`` numbering each row's (symbol, horizon) in the order of their names as strings
    (-1: a missing symbol or horizon) and ``labels[key]`` the pair of names."""
    s_codes, s_names = pd.factorize(symbols)
    h_codes, h_names = pd.factorize(horizons)
    s_names, h_names = [str(v) for v in s_names], [str(v) for v in h_names]
    s_rank = np.argsort(np.argsort(np.array(s_names, dtype=object), kind="stable"), kind="stable")
    h_rank = np.argsort(np.argsort(np.array(h_names, dtype=object), kind="stable"), kind="stable")
    n_h = max(len(h_names), 1)
    ok = (s_codes >= 0) & (h_codes >= 0)
    key = np.where(ok, s_rank[np.maximum(s_codes, 0)] * n_h + h_rank[np.maximum(h_codes, 0)], -1)
    labels = [("", "")] * (len(s_names) * n_h)
    for i, s in enumerate(s_names):
        for j, h in enumerate(h_names):
            labels[s_rank[i] * n_h + h_rank[j]] = (s, h)
    return key.astype(np.int64), labels
