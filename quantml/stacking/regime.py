"""Regime features as combiner inputs: the ``regime`` feature block joined to the OOF (or serving) table.

The regime core (volatility and volume regime, momentum, ATR slope, structure gap, funding and
open-interest slopes: :func:`quantml.features.blocks.regime`) is built on the experts' panel with
:func:`quantml.features.build_features` on a feature set holding only that block, so every value at
``t`` reads bars ``<= t`` only (the block is causal; ``tests/unit/test_stack_regime.py`` perturbs the
future and checks the past bit-identical). Its columns are renamed ``regime__<feature>`` and joined to
the table on ``(symbol, timestamp)``::

    regime = regime_features(panel)                  # symbol, timestamp, regime__regime_vol_z, ...
    table = attach_regime(oof_table, regime)         # same rows, same order, same index, + regime__*
    regime_columns(table)                            # ["regime__atr_slope", ...]

A regime model's posterior (a VSSM run's out-of-fold ``regime_p*``) is the other source:
:mod:`quantml.stacking.regime_posterior` (``regime_source=`` of ``quantml stack``, docs/stacking.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.data.panel import ts_int64
from quantml.features import build_features

REGIME_PREFIX = "regime__"
REGIME_BLOCK = "regime"
FULL_FEATURE_SET = Path(__file__).resolve().parents[1] / "conf" / "feature_set" / "full.yaml"


def default_regime_params() -> dict:
    """The ``regime`` block's settings of ``quantml/conf/feature_set/full.yaml``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(FULL_FEATURE_SET), resolve=True)
    return dict((cfg.get("blocks") or {}).get(REGIME_BLOCK) or {})


def regime_features(panel: pd.DataFrame, params: dict | None = None, calendar: dict | None = None) -> pd.DataFrame:
    """The regime core features of every row of ``panel`` (same index, same row order).

    Columns: ``symbol``, ``timestamp`` and ``regime__<name>`` for every regime-core feature the panel
    supports; a part the panel cannot build (no volume, no high/low, no funding or open interest) is an
    absent column, never zeros. ``params``: the regime block's settings (default: the ``regime`` block
    of ``conf/feature_set/full.yaml``); ``calendar``: symbol -> calendar durations resolve on (the
    experts' ``FeatureMatrix.calendar``; see :func:`quantml.features.build_features`). Values at ``t``
    use bars ``<= t`` only. A panel not sorted by (symbol, timestamp) is sorted for the build and the
    result put back in the panel's order."""
    for col in (SYMBOL, TIMESTAMP):
        if col not in panel.columns:
            raise QuantmlInputError(
                f"regime_features: the panel has no {col!r} column; pass the experts' panel (quantml.data)"
            )
    block = default_regime_params() if params is None else dict(params)
    feature_set = {"name": "stack_regime", "blocks": {REGIME_BLOCK: block}}
    codes = pd.factorize(panel[SYMBOL].astype(str), sort=True)[0]
    order = np.lexsort((ts_int64(panel[TIMESTAMP]), codes))
    ordered = panel.iloc[order]
    fm = build_features(ordered, feature_set, calendar=calendar)
    values = np.empty((len(panel), fm.frame.shape[1]), dtype=np.float64)
    values[order] = fm.frame.to_numpy(np.float64)
    out = pd.DataFrame({SYMBOL: panel[SYMBOL].to_numpy(), TIMESTAMP: panel[TIMESTAMP].to_numpy()}, index=panel.index)
    features = pd.DataFrame(values, columns=[REGIME_PREFIX + n for n in fm.frame.columns], index=panel.index)
    out = pd.concat([out, features], axis=1)
    out.attrs["skipped"] = {k: v for k, v in fm.skipped.items() if k.startswith(REGIME_BLOCK)}
    return out


def regime_columns(rows: pd.DataFrame) -> list[str]:
    """The ``regime__*`` columns of ``rows``, sorted."""
    return sorted(c for c in rows.columns if isinstance(c, str) and c.startswith(REGIME_PREFIX))


def attach_regime(table: pd.DataFrame, regime: pd.DataFrame) -> pd.DataFrame:
    """``table`` (the OOF table or a serving table) left-joined with ``regime``'s ``regime__*`` columns
    on ``(symbol, timestamp)``: the same rows in the same order with the same index; a key ``regime``
    lacks gets NaN. Columns of ``regime`` that ``table`` already has are replaced; its other regime columns
    stay (so the regime block and a regime model's posterior can be attached one after the other)."""
    cols = regime_columns(regime)
    for name, frame in (("table", table), ("regime", regime)):
        lacking = [c for c in (SYMBOL, TIMESTAMP) if c not in frame.columns]
        if lacking:
            raise QuantmlInputError(f"attach_regime: the {name} has no column(s) {lacking}; it needs symbol, timestamp")
    if not cols:
        raise QuantmlInputError(
            f"attach_regime: the regime frame has no {REGIME_PREFIX}* column; build it with regime_features(panel)"
        )
    right = pd.MultiIndex.from_arrays([regime[SYMBOL].astype(str).to_numpy(), ts_int64(regime[TIMESTAMP])])
    if not right.is_unique:
        raise QuantmlInputError(
            "attach_regime: the regime frame repeats a (symbol, timestamp) key; build it with regime_features "
            "on a panel with one bar per symbol and timestamp"
        )
    left = pd.MultiIndex.from_arrays([table[SYMBOL].astype(str).to_numpy(), ts_int64(table[TIMESTAMP])])
    pos = right.get_indexer(left)
    found = pos >= 0
    values = np.full((len(table), len(cols)), np.nan)
    values[found] = regime[cols].to_numpy(np.float64)[pos[found]]
    joined = pd.DataFrame(values, columns=cols, index=table.index)
    return pd.concat([table.drop(columns=[c for c in regime_columns(table) if c in cols]), joined], axis=1)
