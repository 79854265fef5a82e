"""Close-only panels: what a vendor of adjusted closes ships (no volume, OHLC collapsed).

``close_only_stocks(tmp_path)`` writes the bundled daily stocks as such a panel, the way the
issue measured a real one: ``volume`` NaN on every bar and open = high = low = close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP


def close_only_frame(start: str | None = None) -> pd.DataFrame:
    """The bundled stocks (``load_stocks_daily``) with volume NaN and open/high/low set to the
    close; rows from ``start`` (UTC date) on when given."""
    from quantml.data.loaders import load_stocks_daily

    df = load_stocks_daily()
    if start is not None:
        df = df[df[TIMESTAMP] >= pd.Timestamp(start, tz="UTC")]
    close = df["close"].to_numpy(dtype=np.float64)
    out = pd.DataFrame(
        {
            TIMESTAMP: df[TIMESTAMP].to_numpy(),
            SYMBOL: df[SYMBOL].astype(str).to_numpy(),
            "open": close,
            "high": close,
            "low": close,
            "close": close,
            "volume": np.full(len(df), np.nan),
        }
    )
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    return out.sort_values([SYMBOL, TIMESTAMP], kind="stable").reset_index(drop=True)


def close_only_stocks(tmp_path: str | Path, start: str | None = None, name: str = "close_only.parquet") -> Path:
    """Write :func:`close_only_frame` as a parquet file under ``tmp_path``; return its path
    (for ``data=parquet data.path=<it>``)."""
    path = Path(tmp_path) / name
    close_only_frame(start).to_parquet(path, index=False)
    return path
