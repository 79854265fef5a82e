"""The panel contract: validation, bar frequency, bars per year and a content fingerprint.

A panel is a long table, one row per ``(symbol, timestamp)``: ``timestamp``
(datetime64[ns, UTC], bar close time), ``symbol`` (str), ``close`` (float64), the optional
bar columns ``open, high, low, volume`` (float64) and optional exogenous columns, sorted by
``(symbol, timestamp)`` with a fresh ``RangeIndex``.

An optional bar column is **absent** when it is missing or NaN on every row of the panel
(``validate_panel`` drops it); NaN for every bar of some symbols but not of others is an
error naming those symbols. OHLC is **degenerate** when open = high = low = close on every
bar (a close-only series), and volume when it is 0 on every bar. :func:`unavailable_columns`
names both kinds, and the feature blocks that read such a column are skipped.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from quantml.contracts import OHLCV, SYMBOL, TIMESTAMP, QuantmlInputError, require_columns
from quantml.contracts.schema import BAR_COLUMNS, CORE_COLUMNS, OPTIONAL_COLUMNS
from quantml.contracts.time import bar_size, modal_step, parse_duration, periods_per_year

# The panel's bar size is :func:`quantml.contracts.time.bar_size` (the data contract's name for it).
infer_bar_frequency = bar_size

__all__ = [
    "data_fingerprint",
    "degenerate_symbols",
    "infer_bar_frequency",
    "parse_duration",
    "periods_per_year",
    "ts_int64",
    "unavailable_columns",
    "validate_panel",
]

PRICE_COLUMNS = ("open", "high", "low", "close")
# The bar columns that collapse onto the close in a close-only series.
RANGE_COLUMNS = ("open", "high", "low")
# Relative tolerance of "equal to the close" (vendors round and rescale prices independently).
PRICE_RTOL = 1e-9
ABSENT = "absent from the panel (missing, or NaN on every bar)"
DEGENERATE_OHLC = "degenerate: open = high = low = close on every bar (a close-only series)"
DEGENERATE_VOLUME = "degenerate: 0 on every bar (no volume information)"
# Daily bars stamped at a fixed local close move by one hour in UTC twice a year (DST).
DAILY_TOLERANCE = pd.Timedelta("2h")
# A run of this many consecutive equal gaps larger than the bar is a change of frequency,
# not a weekend/holiday/outage (those come one gap at a time).
SWITCH_RUN = 8


def _fmt_rows(df: pd.DataFrame, mask: np.ndarray, cols: tuple[str, ...] = (), limit: int = 3) -> str:
    rows = df.loc[mask, [SYMBOL, TIMESTAMP, *cols]].head(limit)
    parts = []
    for rec in rows.itertuples(index=False):
        extra = ", ".join(f"{c}={v!r}" for c, v in zip(cols, rec[2:]))
        parts.append(f"({rec[0]}, {rec[1]}{', ' + extra if extra else ''})")
    more = int(mask.sum()) - len(rows)
    return "; ".join(parts) + (f" and {more} more" if more > 0 else "")


def _to_utc(ts: pd.Series) -> pd.Series:
    """Parse/convert a timestamp column to datetime64[ns, UTC]; naive input is an error."""
    if not isinstance(ts.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_any_dtype(ts):
        try:
            parsed = pd.to_datetime(ts, format="ISO8601")
        except (ValueError, TypeError):
            try:  # mixed UTC offsets parse only into UTC
                parsed = pd.to_datetime(ts, utc=True, format="ISO8601")
            except (ValueError, TypeError) as exc:
                raise QuantmlInputError(
                    f"column 'timestamp' could not be parsed as dates ({exc}); write ISO-8601 "
                    "timestamps with a UTC offset, e.g. '2024-01-01T00:00:00Z'"
                ) from None
        ts = parsed
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        first = ts.iloc[0] if len(ts) else None
        raise QuantmlInputError(
            f"column 'timestamp' is timezone-naive (first value {first}); quantml needs the bar "
            "close time in UTC: localise it, e.g. df['timestamp'] = "
            "df['timestamp'].dt.tz_localize('UTC') (or tz_localize('<exchange tz>').dt.tz_convert('UTC')), "
            "or write offsets like '2024-01-01T00:00:00Z' in the file"
        )
    return ts.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def ts_int64(s: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of a datetime column, tz-aware or not."""
    return pd.DatetimeIndex(s).asi8


def _symbol_segments(symbols: np.ndarray) -> np.ndarray:
    """Start positions of each symbol's run in a (symbol, timestamp)-sorted array, plus n."""
    n = len(symbols)
    if n == 0:
        return np.array([0], dtype=np.int64)
    change = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    return np.r_[0, change, n].astype(np.int64)


def _check_frequency(df: pd.DataFrame) -> None:
    """Raise when a symbol mixes bar sizes or symbols use different bar sizes."""
    ts = ts_int64(df[TIMESTAMP])
    sym = df[SYMBOL].to_numpy()
    bounds = _symbol_segments(sym)
    steps: dict[str, int] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a < 3:
            continue
        d = np.diff(ts[a:b])
        step = int(modal_step(d))
        tol = DAILY_TOLERANCE.value if step >= pd.Timedelta("1D").value else 0
        s = sym[a]
        step_td = pd.Timedelta(step, unit="ns")
        small = np.flatnonzero(d < step - tol)
        if small.size:
            i = a + small[0] + 1
            raise QuantmlInputError(
                f"mixed bar frequencies for symbol {s!r}: most bars are {step_td} apart but the bar at "
                f"{df[TIMESTAMP].iloc[i]} comes {pd.Timedelta(int(d[small[0]]), unit='ns')} after the "
                f"previous one; resample the symbol to one bar size (e.g. "
                f"df.resample('{_freq_alias(step_td)}', on='timestamp')) before loading"
            )
        off = d % step
        off = np.minimum(off, step - off)
        bad = np.flatnonzero(off > tol)
        if bad.size:
            i = a + bad[0] + 1
            raise QuantmlInputError(
                f"mixed bar frequencies for symbol {s!r}: bars are {step_td} apart but the bar at "
                f"{df[TIMESTAMP].iloc[i]} is off that grid ({pd.Timedelta(int(d[bad[0]]), unit='ns')} "
                "after the previous bar); resample to one bar size before loading"
            )
        big = d > step + tol
        if big.sum() >= SWITCH_RUN:
            # longest run of identical over-sized gaps
            dd = np.where(big, d, -1)
            brk = np.r_[True, dd[1:] != dd[:-1]]
            run_id = np.cumsum(brk)
            run_len = np.bincount(run_id)[run_id]
            hit = np.flatnonzero(big & (run_len >= SWITCH_RUN))
            if hit.size:
                i = a + hit[0] + 1
                raise QuantmlInputError(
                    f"mixed bar frequencies for symbol {s!r}: bars are {step_td} apart but from "
                    f"{df[TIMESTAMP].iloc[i - 1]} they are {pd.Timedelta(int(d[hit[0]]), unit='ns')} apart "
                    f"for {int(run_len[hit[0]])}+ bars (the bar size changes mid-series); resample the "
                    "whole series to the coarser bar size before loading"
                )
        steps[s] = step
    if len(set(steps.values())) > 1:
        desc = ", ".join(f"{k}: {pd.Timedelta(v, unit='ns')}" for k, v in list(steps.items())[:6])
        raise QuantmlInputError(
            f"symbols use different bar frequencies ({desc}); features and horizons are defined on one "
            "bar size: resample every symbol to the coarsest one, or load them in separate runs"
        )


def _freq_alias(td: pd.Timedelta) -> str:
    mins = td / pd.Timedelta("1min")
    if td >= pd.Timedelta("1D") and td % pd.Timedelta("1D") == pd.Timedelta(0):
        return f"{int(td / pd.Timedelta('1D'))}D"
    if td % pd.Timedelta("1h") == pd.Timedelta(0):
        return f"{int(td / pd.Timedelta('1h'))}h"
    return f"{int(mins)}min"


def _float_column(panel: pd.DataFrame, column: str) -> np.ndarray:
    return panel[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _collapsed_rows(panel: pd.DataFrame) -> np.ndarray | None:
    """Bool [n]: rows whose present open/high/low all equal the close (None: none present)."""
    present = [c for c in RANGE_COLUMNS if c in panel.columns and not np.isnan(_float_column(panel, c)).all()]
    if not present:
        return None
    close = _float_column(panel, "close")
    same = np.ones(len(panel), dtype=bool)
    for c in present:
        v = _float_column(panel, c)
        same &= np.abs(v - close) <= PRICE_RTOL * np.abs(close)  # NaN compares False
    return same


def degenerate_symbols(panel: pd.DataFrame) -> list[str]:
    """Symbols of a (symbol, timestamp)-sorted panel whose every bar has open = high = low =
    close (over the present ones of open/high/low); empty when none of them is present."""
    same = _collapsed_rows(panel)
    if same is None or len(panel) == 0:
        return []
    sym = panel[SYMBOL].to_numpy()
    starts = _symbol_segments(sym)[:-1]
    differs = np.add.reduceat((~same).astype(np.int64), starts)
    return [str(sym[a]) for a, k in zip(starts, differs) if k == 0]


def unavailable_columns(panel: pd.DataFrame) -> dict[str, str]:
    """The optional bar columns (``open, high, low, volume``) this panel cannot supply, each
    with why: absent (missing, or NaN on every bar), degenerate OHLC (open = high = low =
    close on every bar of every symbol: ``open``, ``high`` and ``low`` carry no information)
    or degenerate volume (0 on every bar). Feature blocks that read one are skipped.

    ``panel`` is sorted by (symbol, timestamp), as :func:`validate_panel` returns it."""
    out: dict[str, str] = {}
    for c in OPTIONAL_COLUMNS:
        if c not in panel.columns or np.isnan(_float_column(panel, c)).all():
            out[c] = ABSENT
    if "volume" not in out and len(panel) and (_float_column(panel, "volume") == 0).all():
        out["volume"] = DEGENERATE_VOLUME
    same = _collapsed_rows(panel)
    if same is not None and len(panel) and same.all():
        for c in RANGE_COLUMNS:
            out.setdefault(c, DEGENERATE_OHLC)
    return dict(sorted(out.items()))


def _coerce_numeric(out: pd.DataFrame, column: str) -> None:
    """``out[column]`` as float64; a value that is not a number (numeric strings are) is a
    ``QuantmlInputError`` naming the column, the symbol, the bar and the value."""
    raw = out[column]
    try:
        out[column] = pd.to_numeric(raw, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        return
    except (ValueError, TypeError):
        pass
    num = pd.to_numeric(raw, errors="coerce")
    bad = (num.isna() & raw.notna()).to_numpy()
    if not bad.any():  # coerced to something that is not a float (e.g. datetimes)
        raise QuantmlInputError(f"column {column!r} is not numeric (dtype {raw.dtype}); convert it to float") from None
    i = int(np.flatnonzero(bad)[0])
    more = int(bad.sum()) - 1
    raise QuantmlInputError(
        f"column {column!r} has a non-numeric value {raw.iloc[i]!r} at ({out[SYMBOL].iloc[i]}, "
        f"{out[TIMESTAMP].iloc[i]}){f' and {more} more' if more > 0 else ''}; convert those values to "
        f"numbers, or to NaN (e.g. pd.to_numeric(df[{column!r}], errors='coerce')) and then drop or "
        "repair those bars"
    ) from None


def _drop_absent(out: pd.DataFrame) -> pd.DataFrame:
    """Drop optional bar columns NaN on every bar; refuse one NaN on every bar of some symbols
    only (it would mean different things for different symbols)."""
    drop = []
    bounds = _symbol_segments(out[SYMBOL].to_numpy())
    for c in OPTIONAL_COLUMNS:
        if c not in out.columns:
            continue
        nan = np.isnan(out[c].to_numpy())
        if not nan.any():
            continue
        if nan.all():
            drop.append(c)
            continue
        n_nan = np.add.reduceat(nan.astype(np.int64), bounds[:-1])
        empty = [str(out[SYMBOL].iloc[a]) for a, b, k in zip(bounds[:-1], bounds[1:], n_nan) if k == b - a]
        if empty:
            shown = empty[:6] + (["..."] if len(empty) > 6 else [])
            raise QuantmlInputError(
                f"column {c!r} is NaN on every bar of symbol(s) {shown} ({len(empty)} of "
                f"{len(bounds) - 1}) but has values for the others; an optional column is either "
                "absent from the whole panel (missing or NaN on every bar: the features that need it "
                f"are skipped) or present for every symbol: supply {c!r} for those symbols, drop those "
                f"symbols, or drop the column for all (df.drop(columns={c!r})) to train without it"
            )
    return out.drop(columns=drop) if drop else out


def validate_panel(df: pd.DataFrame, *, check_frequency: bool = True) -> pd.DataFrame:
    """Check a panel against the data contract; return a normalised, sorted copy.

    Normalises: timestamp -> datetime64[ns, UTC], symbol -> str, OHLCV and numeric
    exogenous columns -> float64 (numeric strings are parsed), rows sorted by
    (symbol, timestamp), RangeIndex. Only timestamp, symbol and close are required; an
    optional bar column (open, high, low, volume) that is NaN on every bar is absent and
    dropped from the copy (see :func:`unavailable_columns` for what the features skip).

    Raises ``QuantmlInputError`` for: missing timestamp/symbol/close, an empty panel, naive or
    unparseable timestamps, a non-numeric value in a bar column (naming it), duplicate
    (symbol, timestamp), an optional column NaN for every bar of some symbols only, NaN/inf
    or non-positive prices, NaN/inf/negative volume, high < low, open/close outside
    [low, high], open/high/low equal to the close on every bar of some symbols only, inf in
    an exogenous column, mixed bar frequencies within a symbol (or across symbols).
    """
    if not isinstance(df, pd.DataFrame):
        raise QuantmlInputError(f"a panel must be a pandas DataFrame, got {type(df).__name__}")
    require_columns(
        df,
        CORE_COLUMNS,
        "panel",
        f"it has {list(df.columns)[:20]}. A panel needs timestamp (UTC bar close), symbol and close; "
        "open, high, low and volume are optional (rename your columns, e.g. "
        "df.rename(columns={'Date': 'timestamp', 'Close': 'close'}))",
    )
    if len(df) == 0:
        raise QuantmlInputError("panel has no rows; check the file and the symbols/start/end filters")
    out = df.copy(deep=False)  # copy-on-write: the caller's frame is never modified
    if str(out[TIMESTAMP].dtype) != "datetime64[ns, UTC]":
        out[TIMESTAMP] = _to_utc(out[TIMESTAMP])
    if out[TIMESTAMP].isna().any():
        bad = out[TIMESTAMP].isna().to_numpy()
        raise QuantmlInputError(
            f"column 'timestamp' has {int(bad.sum())} missing values (first at row "
            f"{int(np.flatnonzero(bad)[0])}); drop or fill those rows"
        )
    if out[SYMBOL].isna().any():
        raise QuantmlInputError(
            f"column 'symbol' has {int(out[SYMBOL].isna().sum())} missing values; every row needs a symbol"
        )
    if not pd.api.types.is_string_dtype(out[SYMBOL]) or pd.api.types.is_object_dtype(out[SYMBOL]):
        out[SYMBOL] = out[SYMBOL].astype(str)
    for c in OHLCV:
        if c in out.columns and out[c].dtype != np.float64:
            _coerce_numeric(out, c)
    codes = pd.factorize(out[SYMBOL], sort=True)[0]
    order = np.lexsort((ts_int64(out[TIMESTAMP]), codes))
    if (order != np.arange(len(out))).any():
        out = out.take(order)
    out = out.reset_index(drop=True)

    dup = out.duplicated([SYMBOL, TIMESTAMP], keep=False).to_numpy()
    if dup.any():
        raise QuantmlInputError(
            f"duplicate (symbol, timestamp) rows: {_fmt_rows(out, dup)}; keep one row per symbol and "
            "bar, e.g. df.drop_duplicates(['symbol', 'timestamp'], keep='last')"
        )
    out = _drop_absent(out)
    for c in PRICE_COLUMNS:
        if c not in out.columns:
            continue
        v = out[c].to_numpy()
        bad = ~np.isfinite(v)
        if bad.any():
            raise QuantmlInputError(
                f"column {c!r} has NaN/inf prices at {_fmt_rows(out, bad, (c,))}; drop or repair those bars"
            )
        bad = v <= 0
        if bad.any():
            raise QuantmlInputError(
                f"column {c!r} has non-positive prices at {_fmt_rows(out, bad, (c,))}; prices must be > 0 "
                "(log returns): drop those bars or fix the data"
            )
    if "volume" in out.columns:
        vol = out["volume"].to_numpy()
        bad = ~np.isfinite(vol) | (vol < 0)
        if bad.any():
            raise QuantmlInputError(
                f"column 'volume' has NaN/inf or negative values at {_fmt_rows(out, bad, ('volume',))}; "
                "use 0 for bars without trades (a panel without volume: drop the column, or leave it "
                "NaN on every bar)"
            )
    hi = out["high"].to_numpy() if "high" in out.columns else None
    lo = out["low"].to_numpy() if "low" in out.columns else None
    if hi is not None and lo is not None:
        bad = hi < lo
        if bad.any():
            raise QuantmlInputError(f"high < low at {_fmt_rows(out, bad, ('high', 'low'))}; swap or drop those bars")
    if hi is not None or lo is not None:
        bounds = tuple(c for c in ("low", "high") if c in out.columns)
        for c in ("open", "close"):
            if c not in out.columns:
                continue
            v = out[c].to_numpy()
            # relative tolerance: vendors round OHLC independently
            bad = np.zeros(len(v), dtype=bool)
            if hi is not None:
                bad |= v > hi * (1 + 1e-9)
            if lo is not None:
                bad |= v < lo * (1 - 1e-9)
            if bad.any():
                raise QuantmlInputError(
                    f"{c} outside [low, high] at {_fmt_rows(out, bad, (c, *bounds))}; repair those bars "
                    "(e.g. high = max(open, high, close), low = min(open, low, close))"
                )
    collapsed = degenerate_symbols(out)
    n_symbols = int(out[SYMBOL].nunique())
    if collapsed and len(collapsed) < n_symbols:
        shown = collapsed[:6] + (["..."] if len(collapsed) > 6 else [])
        ohl = [c for c in RANGE_COLUMNS if c in out.columns]
        raise QuantmlInputError(
            f"symbol(s) {shown} ({len(collapsed)} of {n_symbols}) have {'/'.join(ohl)} equal to the "
            "close on every bar (close-only series) while the other symbols have real ranges, so their "
            "range features (Parkinson volatility, ATR, structure gap) would be 0 or meaningless; load "
            "those symbols in a separate run, or drop "
            f"{ohl} for the whole panel (df.drop(columns={ohl})) to train on closes only"
        )
    for c in out.columns:
        if c in BAR_COLUMNS:
            continue
        if pd.api.types.is_bool_dtype(out[c]) or pd.api.types.is_numeric_dtype(out[c]):
            v = out[c].to_numpy(dtype="float64", na_value=np.nan)
            bad = np.isinf(v)
            if bad.any():
                raise QuantmlInputError(
                    f"exogenous column {c!r} has inf values at {_fmt_rows(out, bad, (c,))}; use NaN for missing values"
                )
            if out[c].dtype != np.float64:
                out[c] = v
    if check_frequency:
        _check_frequency(out)
    return out


def data_fingerprint(panel: pd.DataFrame) -> str:
    """Short sha256 (16 hex) of the panel's columns, dtypes and values; stable across runs."""
    h = hashlib.sha256()
    for c in panel.columns:
        h.update(f"{c}:{panel[c].dtype};".encode())
    row_hash = pd.util.hash_pandas_object(panel, index=False, categorize=False).to_numpy()
    h.update(np.ascontiguousarray(row_hash).tobytes())
    return h.hexdigest()[:16]
