"""Panel sources: the bundled daily stocks, user parquet/CSV files, the synthetic generator.

``load_panel(cfg)`` takes the ``data`` config group and returns a validated panel.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.data.panel import validate_panel

log = logging.getLogger(__name__)

SOURCES = ("stocks_daily", "synthetic", "file")
# The bundled daily bars are stamped 21:00 UTC: the 16:00 New York close in winter (EST),
# one hour after it in summer (EDT) -- never before the close, so never look-ahead.
STOCKS_CLOSE_UTC = pd.Timedelta(hours=21)
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def _get(cfg: Mapping, key: str, default=None):
    try:
        value = cfg.get(key, default)
    except Exception:  # omegaconf MissingMandatoryValue ("???")
        return default
    return default if value is None else value


# --------------------------------------------------------------------------- stocks_daily
def stocks_csv_path() -> Path:
    """Location of ``stocks.csv.gz`` inside the installed ``bokeh_sampledata`` package."""
    spec = importlib.util.find_spec("bokeh_sampledata")
    if spec is None or not spec.submodule_search_locations:
        raise QuantmlInputError(
            "data source 'stocks_daily' needs the bokeh_sampledata package: pip install bokeh-sampledata "
            "(or choose data=synthetic / data=parquet)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "_data" / "stocks.csv.gz"
    if not path.is_file():
        raise QuantmlInputError(f"bundled stocks data not found at {path}; reinstall bokeh-sampledata")
    return path


def repair_ohlc(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Drop unusable bars and widen high/low around open/close, logging every change.

    For the bundled demo data only: user files get strict errors from ``validate_panel``.
    """
    prices = df[["open", "high", "low", "close"]].to_numpy()
    bad = ~np.isfinite(prices).all(axis=1) | (prices <= 0).any(axis=1) | ~np.isfinite(df["volume"].to_numpy())
    if bad.any():
        log.warning(
            "%s: dropped %d bars with NaN/inf or non-positive prices: %s",
            source,
            int(bad.sum()),
            df.loc[bad, [SYMBOL, TIMESTAMP]].head(5).to_dict("records"),
        )
        df = df.loc[~bad]
    dup = df.duplicated([SYMBOL, TIMESTAMP], keep="last")
    if dup.any():
        log.warning("%s: dropped %d duplicate (symbol, timestamp) bars", source, int(dup.sum()))
        df = df.loc[~dup]
    o, h, low, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    hi, lo = np.maximum.reduce([o, h, low, c]), np.minimum.reduce([o, h, low, c])
    # price adjustment leaves 1e-15 rounding outside the range: fix silently, log real repairs
    real = (hi > h * (1 + 1e-9)) | (lo < low * (1 - 1e-9))
    if real.any():
        log.warning(
            "%s: repaired high/low of %d bars (high < low or open/close outside the range): %s",
            source,
            int(real.sum()),
            df.loc[real, [SYMBOL, TIMESTAMP]].head(5).to_dict("records"),
        )
    df = df.assign(high=hi, low=lo)
    neg = df["volume"].to_numpy() < 0
    if neg.any():
        log.warning("%s: set negative volume to 0 on %d bars", source, int(neg.sum()))
        df = df.assign(volume=np.where(neg, 0.0, df["volume"].to_numpy()))
    return df


def load_stocks_daily() -> pd.DataFrame:
    """Daily OHLCV of AAPL, IBM, MSFT, GOOG, FB (2000-2013), split/dividend-adjusted.

    O/H/L/C are scaled by ``Adj Close / Close`` and volume by its inverse, so close-to-close
    log returns are total returns and splits (AAPL 2000, 2005) are not jumps.
    Timestamp = trade date + 21:00 UTC.
    """
    raw = pd.read_csv(stocks_csv_path())
    factor = (raw["Adj Close"] / raw["Close"]).to_numpy()
    df = pd.DataFrame(
        {
            TIMESTAMP: pd.to_datetime(raw["Date"]).dt.tz_localize("UTC") + STOCKS_CLOSE_UTC,
            SYMBOL: raw["Ticker"].astype(str),
            "open": raw["Open"].to_numpy() * factor,
            "high": raw["High"].to_numpy() * factor,
            "low": raw["Low"].to_numpy() * factor,
            "close": raw["Adj Close"].to_numpy(dtype="float64"),
            "volume": raw["Volume"].to_numpy(dtype="float64") / factor,
        }
    )
    return repair_ohlc(df, "stocks_daily")


# --------------------------------------------------------------------------- files
def _read_one(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if path.stat().st_size == 0:
        raise QuantmlInputError(f"data file {path} is empty (0 bytes); point data.path at a panel file")
    try:
        if name.endswith(CSV_SUFFIXES):
            df = pd.read_csv(path)
        elif name.endswith(PARQUET_SUFFIXES):
            df = pd.read_parquet(path)
        else:
            raise QuantmlInputError(f"data file {path} has an unknown extension; use .parquet/.pq or .csv/.csv.gz")
    except pd.errors.EmptyDataError:
        raise QuantmlInputError(f"data file {path} has no rows or columns; point data.path at a panel file") from None
    if len(df) == 0:
        raise QuantmlInputError(f"data file {path} has columns but no rows; point data.path at a panel file")
    return df


def list_panel_files(path: str | Path) -> list[Path]:
    """The file itself, or every parquet/CSV file under a directory (sorted, recursive)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise QuantmlInputError(
            f"data.path {str(p)!r} does not exist; set data.path=<file or directory of parquet/CSV files>"
        )
    if p.is_file():
        return [p]
    files = sorted(
        f
        for f in p.rglob("*")
        if f.is_file()
        and f.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)
        and not f.name.startswith((".", "_"))
    )
    if not files:
        raise QuantmlInputError(
            f"data.path directory {str(p)!r} holds no .parquet/.pq/.csv/.csv.gz files; put the panel files there"
        )
    return files


def load_files(path: str | Path) -> pd.DataFrame:
    """Read and concatenate a panel file or a directory of them (not yet validated)."""
    frames = [_read_one(f) for f in list_panel_files(path)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# --------------------------------------------------------------------------- dispatch
def _filter(df: pd.DataFrame, cfg: Mapping) -> pd.DataFrame:
    symbols = _get(cfg, "symbols")
    if symbols:
        if isinstance(symbols, str):
            symbols = [s.strip() for s in symbols.split(",")]
        symbols = [str(s) for s in symbols]
        have = set(df[SYMBOL].astype(str).unique())
        unknown = [s for s in symbols if s not in have]
        if unknown:
            raise QuantmlInputError(f"data.symbols {unknown} not in the data; available symbols: {sorted(have)}")
        df = df[df[SYMBOL].astype(str).isin(symbols)]
    for key, op in (("start", "ge"), ("end", "le")):
        value = _get(cfg, key)
        if value is None:
            continue
        try:
            bound = pd.Timestamp(str(value))
        except ValueError:
            raise QuantmlInputError(f"data.{key}={value!r} is not a date; use e.g. 2005-01-01") from None
        bound = bound.tz_localize("UTC") if bound.tzinfo is None else bound.tz_convert("UTC")
        if key == "end" and len(str(value).strip()) <= 10:  # a bare date: include that whole day
            bound, op = bound + pd.Timedelta("1D"), "lt"
        df = df[getattr(df[TIMESTAMP], op)(bound)]
    if len(df) == 0:
        raise QuantmlInputError(
            f"no rows left after data.symbols={_get(cfg, 'symbols')}, data.start={_get(cfg, 'start')}, "
            f"data.end={_get(cfg, 'end')}; widen the filters"
        )
    return df


def load_panel(cfg: Mapping) -> pd.DataFrame:
    """Load and validate the panel described by the ``data`` config group.

    ``cfg.source``: ``stocks_daily`` (bundled, adjusted daily equities), ``synthetic``
    (``freq, n_symbols, n_bars, start, seed``; streams joined as-of with ``*_missing``
    flags) or ``file`` (``path``: parquet/CSV file or directory). ``symbols``, ``start``,
    ``end`` filter rows. Returns the validated panel (see ``validate_panel``).
    """
    source = _get(cfg, "source")
    if source == "stocks_daily":
        df = load_stocks_daily()
        df[TIMESTAMP] = df[TIMESTAMP].astype("datetime64[ns, UTC]")
    elif source == "synthetic":
        from quantml.data.asof import join_streams
        from quantml.data.synthetic import generate_synthetic

        syn = generate_synthetic(
            freq=str(_get(cfg, "freq", "1h")),
            n_symbols=int(_get(cfg, "n_symbols", 4)),
            n_bars=int(_get(cfg, "n_bars", 3000)),
            seed=int(_get(cfg, "seed", 0)),
            start=str(_get(cfg, "start", "2024-01-01")),
        )
        max_staleness = _get(cfg, "max_staleness")
        df = join_streams(syn.bars, syn.streams, dict(max_staleness) if max_staleness else None)
        # the generator's start is where the series begins: only symbols/end filter here
        cfg = {k: _get(cfg, k) for k in ("symbols", "end")}
    elif source == "file":
        path = _get(cfg, "path")
        if not path or path == "???":
            raise QuantmlInputError("data source 'file' needs data.path=<parquet/CSV file or directory>")
        df = load_files(path)
        if TIMESTAMP in df.columns and SYMBOL in df.columns:
            from quantml.data.panel import _to_utc

            df[TIMESTAMP] = _to_utc(df[TIMESTAMP])
        streams = _get(cfg, "streams")
        if streams:
            # separately published exogenous data: {name: file or directory} with
            # event_time, available_at [, symbol] and value columns, joined as-of
            from quantml.data.asof import join_streams

            max_staleness = _get(cfg, "max_staleness")
            df = join_streams(
                validate_panel(df),
                {name: load_files(p) for name, p in dict(streams).items()},
                dict(max_staleness) if max_staleness else None,
            )
    else:
        raise QuantmlInputError(
            f"unknown data.source {source!r}; choose one of {list(SOURCES)} "
            "(data=stocks_daily, data=synthetic, or data=parquet data.path=...)"
        )
    if TIMESTAMP in df.columns and SYMBOL in df.columns:
        df = _filter(df, cfg)
    return validate_panel(df)
