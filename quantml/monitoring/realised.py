"""Realised outcomes of logged predictions, from the panel, with the training labels' definitions.

A logged row ``(symbol, timestamp, horizon)`` is realised once the panel holds the label's end
(the first bar of the symbol at or after ``timestamp + horizon``: :func:`quantml.labels.make_labels`):
its ``ret`` (log return close[t1]/close[t]), ``dir`` (1[ret > 0]) and ``t1``. Rows whose label runs
past the panel, or whose bar is not in the panel, stay NaN ("pending").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.labels import make_labels

REALISED = ("ret", "dir", "t1")


def realised_outcomes(predictions: pd.DataFrame, panel: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``predictions`` (the prediction log's rows) with ``ret, dir, t1`` per row.

    ``panel``: a validated panel (sorted by symbol, timestamp) covering the logged bars and
    what followed them. Shapes: [n] rows in, [n] rows out, in the same order."""
    out = predictions.copy()
    for c in ("ret", "dir"):
        out[c] = np.nan
    out["t1"] = pd.NaT
    if out.empty or panel.empty:
        return out
    horizons = [str(h) for h in pd.unique(out["horizon"].astype(str))]
    at = pd.Series(
        np.arange(len(panel)),
        index=pd.MultiIndex.from_arrays([panel[SYMBOL].astype(str), pd.to_datetime(panel[TIMESTAMP], utc=True)]),
    )
    at = at[~at.index.duplicated()]
    key = pd.MultiIndex.from_arrays([out[SYMBOL].astype(str), pd.to_datetime(out[TIMESTAMP], utc=True)])
    pos = at.reindex(key).to_numpy(dtype=np.float64)
    found = np.isfinite(pos)
    rows = np.where(found, pos, 0).astype(np.int64)
    ret = np.full(len(out), np.nan)
    direction = np.full(len(out), np.nan)
    t1 = np.full(len(out), np.datetime64("NaT"), dtype="datetime64[ns]")
    logged = out["horizon"].astype(str).to_numpy()
    for h in horizons:
        try:
            labels = make_labels(panel, [h], 0.0)
        except QuantmlInputError:  # no bar of the panel is that far ahead yet: every row pending
            continue
        sel = found & (logged == h)
        ret[sel] = labels.ret[rows[sel], 0]
        direction[sel] = labels.dir[rows[sel], 0]
        t1[sel] = labels.label_end(rows[sel], 0)
    out["ret"] = ret
    out["dir"] = direction
    t1_series = pd.Series(pd.to_datetime(t1)).dt.tz_localize("UTC")
    t1_series[~np.isfinite(ret)] = pd.NaT
    out["t1"] = t1_series.to_numpy()
    return out
