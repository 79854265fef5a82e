"""Panel sources: the bundled daily stocks, user parquet/CSV files, the synthetic generator.

``load_panel(cfg)`` takes the ``data`` config group and returns a validated panel.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import logging
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.data.panel import validate_panel

try:  # what pyarrow raises for a corrupt or truncated parquet file
    from pyarrow.lib import ArrowException
except ImportError:  # no parquet engine: read_parquet says so (an ImportError, reported below)
    ArrowException = OSError

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


def _flag(cfg: Mapping, key: str) -> bool:
    """A true/false setting of the data config (default false); anything else names the fix."""
    value = _get(cfg, key, False)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise QuantmlInputError(f"data.{key}={value!r} must be true or false (e.g. data.{key}=true)")


def _plants(cfg: Mapping) -> dict:
    """The synthetic plants switched on: ``data.<flag>=true`` or ``data.<flag>={option: value}``."""
    from omegaconf import DictConfig, OmegaConf

    from quantml.data.plants import PLANTS

    out = {}
    for flag in PLANTS:
        value = _get(cfg, flag, False)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        out[flag] = value if isinstance(value, Mapping) else _flag(cfg, flag)
    return out


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
def _unreadable(path: Path, what: str, exc: BaseException | None = None) -> QuantmlInputError:
    text = str(exc).splitlines()[0] if exc is not None and str(exc) else ""
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)  # it names the path again
    detail = f" ({type(exc).__name__}: {text[:160]})" if text else ""
    return QuantmlInputError(
        f"data file {path} {what}{detail}; re-export or re-download it, or point data.path elsewhere"
    )


def _check_csv_shape(path: Path, df: pd.DataFrame) -> None:
    """A CSV that is not comma-separated, or whose last line stops mid-row (a truncated copy)."""
    if len(df.columns) == 1:
        header = str(df.columns[0])
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if sep in header:
                raise QuantmlInputError(
                    f"data file {path} is separated by {name}, not commas (its one column is {header[:80]!r}); "
                    f"save it as a comma-separated CSV, e.g. pd.read_csv(path, sep={sep!r}).to_csv(path, index=False)"
                )
    if path.name.lower().endswith(".gz"):
        return  # a truncated gzip stream fails to decompress instead
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 65536))
        tail = fh.read()
    if tail.endswith((b"\n", b"\r")):
        return
    last = tail.splitlines()[-1].decode("utf-8", "replace") if tail.splitlines() else ""
    n_fields = len(next(csv.reader([last]), []))
    if 0 < n_fields < len(df.columns):
        raise QuantmlInputError(
            f"data file {path} looks truncated: its last line stops mid-row ({n_fields} of {len(df.columns)} "
            "fields, no final newline); re-export or re-download it (or delete the partial last line)"
        )


def _read_one(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        size = path.stat().st_size
        if not os.access(path, os.R_OK):
            raise PermissionError(f"no read permission for {path}")
    except PermissionError as exc:
        raise QuantmlInputError(
            f"data file {path} cannot be read: permission denied ({exc.strerror or exc}); "
            f"give this user read access (chmod u+r {path}) or copy the file somewhere readable"
        ) from None
    if size == 0:
        raise QuantmlInputError(f"data file {path} is empty (0 bytes); point data.path at a panel file")
    if not name.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES):
        raise QuantmlInputError(f"data file {path} has an unknown extension; use .parquet/.pq or .csv/.csv.gz")
    kind = "CSV" if name.endswith(CSV_SUFFIXES) else "parquet"
    try:
        df = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise QuantmlInputError(f"data file {path} has no rows or columns; point data.path at a panel file") from None
    except PermissionError as exc:
        raise QuantmlInputError(
            f"data file {path} cannot be read: permission denied; give this user read access (chmod u+r {path})"
        ) from exc
    except ImportError as exc:
        raise QuantmlInputError(f"reading {path} needs a parquet engine: pip install pyarrow ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _unreadable(path, "is not a text CSV (it is binary or not UTF-8 encoded)", exc) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _unreadable(path, "is a truncated or corrupt gzip file", exc) from None
    except pd.errors.ParserError as exc:
        raise _unreadable(path, "is not a well-formed CSV (rows with more fields than the header?)", exc) from None
    except (ArrowException, OSError, ValueError) as exc:
        if kind == "parquet":
            raise _unreadable(path, "is not a readable parquet file (corrupt or truncated)", exc) from None
        raise _unreadable(path, f"could not be read as {kind}", exc) from None
    if len(df) == 0:
        raise QuantmlInputError(f"data file {path} has columns but no rows; point data.path at a panel file")
    if kind == "CSV":
        _check_csv_shape(path, df)
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
    if not os.access(p, os.R_OK | os.X_OK):
        raise QuantmlInputError(
            f"data.path directory {str(p)!r} cannot be listed: permission denied; give this user read access "
            f"(chmod u+rx {p}) or point data.path elsewhere"
        )
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


def _same_schema(files: list[Path], frames: list[pd.DataFrame]) -> None:
    """The files of a directory are one table: the same columns in each (named when they differ)."""
    first, columns = files[0], list(frames[0].columns)
    for path, frame in zip(files[1:], frames[1:]):
        only_first = [c for c in columns if c not in frame.columns]
        only_here = [c for c in frame.columns if c not in columns]
        if only_first or only_here:
            parts = [
                f"only {first.name} has {only_first}" if only_first else "",
                f"only {path.name} has {only_here}" if only_here else "",
            ]
            raise QuantmlInputError(
                f"data files {first} and {path} have different columns ({'; '.join(p for p in parts if p)}); "
                "the files of a data.path directory must share one schema: rename or add the columns, "
                "or move the odd file out of the directory"
            )


_PARTITION_DIR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[^/]+$")


def is_partitioned(path: str | Path) -> bool:
    """A directory laid out as a hive-partitioned parquet dataset (``symbol=BTC/year=2024/*.parquet``)."""
    p = Path(path).expanduser()
    return p.is_dir() and any(d.is_dir() and _PARTITION_DIR.match(d.name) for d in p.iterdir())


def _bound(value, key: str) -> pd.Timestamp:
    try:
        bound = pd.Timestamp(str(value))
    except ValueError:
        raise QuantmlInputError(f"data.{key}={value!r} is not a date; use e.g. 2005-01-01") from None
    return bound.tz_localize("UTC") if bound.tzinfo is None else bound.tz_convert("UTC")


def load_partitioned(path: str | Path, symbols=None, start=None, end=None) -> pd.DataFrame:
    """Read a hive-partitioned parquet directory as one pyarrow dataset, reading only the partitions
    and row groups that ``symbols`` and the ``[start, end]`` timestamps keep (the filters are pushed
    down: a 10-symbol, 8-year panel asked for one symbol reads one symbol's files). ``symbol`` may
    be a partition key or a column of the files; other partition keys (``year``) are not panel
    columns and are dropped. Not yet validated."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    p = Path(path).expanduser()
    try:
        dataset = ds.dataset(p, format="parquet", partitioning="hive", exclude_invalid_files=False)
    except (ArrowException, OSError, ValueError) as exc:
        raise _unreadable(p, "is not a readable partitioned parquet dataset", exc) from None
    names = dataset.schema.names
    for col in (SYMBOL, TIMESTAMP):
        if col not in names:
            raise QuantmlInputError(
                f"partitioned dataset {p} has no {col!r} (neither a partition key like {col}=... nor a column of "
                f"its files; it has {names}); partition it by symbol=<name>/ or add the column"
            )
    expr = None
    if symbols:
        wanted = [s.strip() for s in symbols.split(",")] if isinstance(symbols, str) else [str(s) for s in symbols]
        expr = pc.field(SYMBOL).cast(pa.string()).isin(wanted)
    ts_type = dataset.schema.field(TIMESTAMP).type
    if pa.types.is_timestamp(ts_type):
        for key, value in (("start", start), ("end", end)):
            if value is None:
                continue
            bound = _bound(value, key)
            if key == "end" and len(str(value).strip()) <= 10:  # a bare date: that whole day
                bound = bound + pd.Timedelta("1D")
            if ts_type.tz is None:
                bound = bound.tz_convert(None)
            scalar = pa.scalar(bound.to_pydatetime(), type=ts_type)
            cond = pc.field(TIMESTAMP) >= scalar if key == "start" else pc.field(TIMESTAMP) < scalar
            expr = cond if expr is None else expr & cond
    try:
        table = dataset.to_table(filter=expr)
    except (ArrowException, OSError, ValueError) as exc:
        why = "holds a parquet file that cannot be read (corrupt, truncated or another schema)"
        raise _unreadable(p, why, exc) from None
    first = next(iter(dataset.get_fragments()), None)
    in_files = set(first.physical_schema.names) if first is not None else set(names)
    keys = [n for n in names if n not in in_files and n != SYMBOL]  # partition keys that are no panel column
    df = table.drop_columns(keys).to_pandas() if keys else table.to_pandas()
    df[SYMBOL] = df[SYMBOL].astype(str)
    return df.sort_values([SYMBOL, TIMESTAMP], kind="stable").reset_index(drop=True)


def load_files(path: str | Path) -> pd.DataFrame:
    """Read and concatenate a panel file or a directory of them (not yet validated)."""
    files = list_panel_files(path)
    frames = [_read_one(f) for f in files]
    if len(frames) == 1:
        return frames[0]
    _same_schema(files, frames)
    return pd.concat(frames, ignore_index=True)


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
        bound = _bound(value, key)
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
    (``freq, n_symbols, n_bars, start, seed``, opt-in ``orderbook``, ``price_signal`` and
    ``regime_shift_at``; streams joined as-of with ``*_missing`` flags) or ``file`` (``path``:
    parquet/CSV file or directory). ``symbols``, ``start``, ``end`` filter rows. Returns the validated
    panel (see ``validate_panel``).
    """
    source = _get(cfg, "source")
    if source == "stocks_daily":
        df = load_stocks_daily()
        df[TIMESTAMP] = df[TIMESTAMP].astype("datetime64[ns, UTC]")
    elif source == "synthetic":
        from quantml.data.asof import join_streams
        from quantml.data.synthetic import default_bars, generate_synthetic

        freq = str(_get(cfg, "freq", "1h"))
        n_bars = _get(cfg, "n_bars")
        syn = generate_synthetic(
            freq=freq,
            n_symbols=int(_get(cfg, "n_symbols", 4)),
            n_bars=default_bars(freq) if n_bars is None else int(n_bars),
            seed=int(_get(cfg, "seed", 0)),
            start=str(_get(cfg, "start", "2024-01-01")),
            orderbook=_flag(cfg, "orderbook"),
            price_signal=_flag(cfg, "price_signal"),
            regime_shift_at=_get(cfg, "regime_shift_at"),
            regime_shift_vol=_get(cfg, "regime_shift_vol", 3.0),
            plants=_plants(cfg),
        )
        max_staleness = _get(cfg, "max_staleness")
        # the raw text stream travels beside the panel (quantml.data.text_stream), never as-of joined
        syn.streams.pop("social_text", None)
        df = join_streams(syn.bars, syn.streams, dict(max_staleness) if max_staleness else None)
        # the generator's start is where the series begins: only symbols/end filter here
        cfg = {k: _get(cfg, k) for k in ("symbols", "end")}
    elif source == "file":
        path = _get(cfg, "path")
        if not path or path == "???":
            raise QuantmlInputError("data source 'file' needs data.path=<parquet/CSV file or directory>")
        if is_partitioned(path):  # symbol=/year= directories: read only what the filters keep
            df = load_partitioned(path, _get(cfg, "symbols"), _get(cfg, "start"), _get(cfg, "end"))
        else:
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
