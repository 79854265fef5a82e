"""As-of joins of exogenous streams onto bars, on publication time (``available_at``).

A stream is a DataFrame ``symbol`` (absent = market-wide, joined to every symbol),
``event_time`` (what the value refers to), ``available_at`` (when it could be known) and
value columns. For each bar ``(symbol, t)`` the join takes the row with the latest
``event_time`` among rows with ``available_at <= t`` (a late-arriving older revision never
overrides a newer value) and adds ``<col>_missing`` = 1.0 when there is none or it is older
than the staleness limit (measured from ``event_time``); the value is NaN then.

Event streams (those with an ``event_count`` column) are not as-of joined but bucketed:
each event lands on the first bar with ``timestamp >= available_at``; the bar gets the sum
of ``event_count`` (0.0 when none) and the count-weighted mean of the other columns (NaN
when none).

Order-book streams (named ``orderbook``, or any stream with a ``bid``/``ask``/``bid_size``/
``ask_size`` column) follow a grammar: ``bid``, ``ask``, ``bid_size``, ``ask_size`` at the touch,
optional ``depth_bid``, ``depth_ask`` (sizes summed over a few levels); prices > 0, ``ask >= bid``,
sizes >= 0 (NaN: not quoted, joined as missing). They are as-of joined like the others, with
the ``orderbook`` staleness default whatever the stream's name.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, parse_duration, require_columns

EVENT_COUNT = "event_count"
META = ("event_time", "available_at", SYMBOL)
# Default staleness limits per stream (name) -- raised to at least 2 bars of the panel.
DEFAULT_MAX_STALENESS = {
    "funding": "1D",
    "open_interest": "3h",
    "basis": "3h",
    "long_short": "3h",
    "taker": "1h",
    "onchain": "6h",
    "social": "3h",
    "macro": "14D",
    "rates": "45D",
    "orderbook": "1h",
}
FALLBACK_STALENESS = "7D"
ORDERBOOK_STREAM = "orderbook"
ORDERBOOK_COLUMNS = ("bid", "ask", "bid_size", "ask_size")  # required of an order-book stream
ORDERBOOK_DEPTH = ("depth_bid", "depth_ask")  # optional: sizes summed over a few levels


def _utc(s: pd.Series, name: str, col: str) -> pd.Series:
    if not pd.api.types.is_datetime64_any_dtype(s):
        s = pd.to_datetime(s, format="ISO8601")
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        raise QuantmlInputError(
            f"stream {name!r} column {col!r} is timezone-naive; localise it to UTC "
            f"(stream[{col!r}] = stream[{col!r}].dt.tz_localize('UTC'))"
        )
    return s.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def _prepare(name: str, stream: pd.DataFrame, bar_columns: set[str]) -> tuple[pd.DataFrame, list[str]]:
    require_columns(
        stream,
        ("event_time", "available_at"),
        f"stream {name!r}",
        "a stream needs event_time (what the value refers to) and available_at (when it was published), both UTC",
    )
    values = [c for c in stream.columns if c not in META]
    if not values:
        raise QuantmlInputError(f"stream {name!r} has no value columns besides {list(META)}")
    clash = sorted(set(values) & bar_columns)
    if clash:
        raise QuantmlInputError(
            f"stream {name!r} column(s) {clash} already exist in the bars; rename them in the stream"
        )
    s = stream.copy()
    s["event_time"] = _utc(s["event_time"], name, "event_time")
    s["available_at"] = _utc(s["available_at"], name, "available_at")
    early = (s["available_at"] < s["event_time"]).to_numpy()
    if early.any():
        i = int(np.flatnonzero(early)[0])
        raise QuantmlInputError(
            f"stream {name!r} has available_at earlier than event_time (row {i}: event_time="
            f"{s['event_time'].iloc[i]}, available_at={s['available_at'].iloc[i]}); "
            "available_at must be the publication time, at or after event_time"
        )
    for c in values:
        s[c] = pd.to_numeric(s[c], errors="coerce").astype("float64")
    if SYMBOL in s.columns:
        s[SYMBOL] = s[SYMBOL].astype(str)
    if is_orderbook(name, values):
        _check_orderbook(name, s)
    return s, values


def is_orderbook(name: str, values) -> bool:
    """A stream named ``orderbook`` or carrying any quote/size column of the order-book grammar."""
    return name == ORDERBOOK_STREAM or bool(set(values) & set(ORDERBOOK_COLUMNS))


def _check_orderbook(name: str, s: pd.DataFrame) -> None:
    """The order-book grammar: every quote/size column, positive prices, uncrossed, sizes >= 0."""
    require_columns(
        s,
        ORDERBOOK_COLUMNS,
        f"order-book stream {name!r}",
        "an order-book stream needs bid, ask (best prices) and bid_size, ask_size (sizes at the touch), "
        "plus event_time, available_at [, symbol]; depth_bid, depth_ask (sizes summed over a few levels) "
        "are optional. Rename your columns (e.g. stream.rename(columns={'best_bid': 'bid'}))",
    )
    cols = [*ORDERBOOK_COLUMNS, *(c for c in ORDERBOOK_DEPTH if c in s.columns)]
    v = {c: s[c].to_numpy(dtype="float64") for c in cols}

    def fail(mask: np.ndarray, what: str, fix: str) -> None:
        i = int(np.flatnonzero(mask)[0])
        row = s.iloc[i]
        where = f"symbol={row[SYMBOL]}, " if SYMBOL in s.columns else ""
        shown = ", ".join(f"{c}={row[c]!r}" for c in cols[:4])
        raise QuantmlInputError(
            f"order-book stream {name!r} has {what} at {int(mask.sum())} row(s) (first: {where}"
            f"event_time={row['event_time']}, {shown}); {fix}"
        )

    with np.errstate(invalid="ignore"):
        for c in cols:
            if np.isinf(v[c]).any():
                fail(np.isinf(v[c]), f"inf in {c!r}", "use NaN for a side that is not quoted")
        for c in ("bid", "ask"):
            if (v[c] <= 0).any():
                fail(v[c] <= 0, f"non-positive {c!r} prices", "prices must be > 0; drop those rows or set them NaN")
        crossed = v["ask"] < v["bid"]
        if crossed.any():
            fail(crossed, "a crossed book (ask < bid)", "swap bid and ask if they were mislabelled, or drop those rows")
        for c in cols[2:]:
            if (v[c] < 0).any():
                fail(v[c] < 0, f"negative sizes in {c!r}", "sizes must be >= 0 (NaN when unknown)")


def _drop_superseded(s: pd.DataFrame) -> pd.DataFrame:
    """Keep, in publication order, only rows newer (event_time) than everything already known."""
    keys = [SYMBOL] if SYMBOL in s.columns else []
    s = s.sort_values([*keys, "available_at", "event_time"], kind="mergesort")
    et = s["event_time"]
    prev_max = et.groupby(s[SYMBOL]).cummax().groupby(s[SYMBOL]).shift(1) if keys else et.cummax().shift(1)
    keep = prev_max.isna() | (et >= prev_max)
    return s.loc[keep.to_numpy()]


def _limit(name: str, col: str, max_staleness: Mapping, bar: pd.Timedelta, kind: str | None = None) -> pd.Timedelta:
    for key in (col, name):
        if key in max_staleness and max_staleness[key] is not None:
            return parse_duration(max_staleness[key], f"max_staleness[{key!r}]")
    default = parse_duration(DEFAULT_MAX_STALENESS.get(kind or name, FALLBACK_STALENESS))
    return max(default, 2 * bar)


def _bucket_events(left: pd.DataFrame, s: pd.DataFrame, values: list[str], n: int) -> dict[str, np.ndarray]:
    """Sum of event_count and count-weighted means of the other columns per arrival bar."""
    out = {c: np.full(n, np.nan) for c in values}
    out[EVENT_COUNT] = np.zeros(n)
    if SYMBOL not in s.columns:  # market-wide events land on every symbol
        s = s.merge(pd.DataFrame({SYMBOL: left[SYMBOL].unique()}), how="cross")
    ev = s.sort_values("available_at", kind="mergesort")
    # the bar an event lands on: first bar with timestamp >= available_at (merge_asof forward)
    hit = pd.merge_asof(
        ev, left, left_on="available_at", right_on=TIMESTAMP, by=SYMBOL, direction="forward", allow_exact_matches=True
    )
    hit = hit[hit["_row"].notna()]
    if hit.empty:
        return out
    rows = hit["_row"].to_numpy(dtype=np.int64)
    w = hit[EVENT_COUNT].fillna(0.0).to_numpy()
    np.add.at(out[EVENT_COUNT], rows, w)
    for c in values:
        if c == EVENT_COUNT:
            continue
        v = hit[c].to_numpy()
        ok = np.isfinite(v)
        num = np.zeros(n)
        den = np.zeros(n)
        np.add.at(num, rows[ok], (v * w)[ok])
        np.add.at(den, rows[ok], w[ok])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = np.where(den > 0, num / den, np.nan)
    return out


def join_streams(
    bars: pd.DataFrame, streams: Mapping[str, pd.DataFrame], max_staleness: Mapping | None = None
) -> pd.DataFrame:
    """Join every stream onto ``bars`` as of publication time; returns a new panel.

    Parameters
    ----------
    bars : panel with ``timestamp`` (UTC) and ``symbol`` (any row order; kept).
    streams : name -> stream table (see module docstring).
    max_staleness : stream name or column -> duration ("3h", "1D"); defaults from
        ``DEFAULT_MAX_STALENESS`` and never below 2 bars.

    Returns
    -------
    bars plus one column per stream value and ``<col>_missing`` (float 0/1) for as-of
    joined columns; same rows, same order.
    """
    from quantml.contracts import bar_size
    from quantml.data.panel import ts_int64

    max_staleness = dict(max_staleness or {})
    out = bars
    new: dict[str, np.ndarray] = {}
    n = len(out)
    try:  # staleness limits are never below 2 bars
        bar = bar_size(out)
    except QuantmlInputError:  # one bar per symbol: no bar size to respect
        bar = pd.Timedelta(0)
    sym_codes, sym_names = pd.factorize(out[SYMBOL].astype(str))
    left = pd.DataFrame(
        {
            TIMESTAMP: out[TIMESTAMP].astype("datetime64[ns, UTC]"),
            SYMBOL: sym_codes.astype(np.int64),
            "_row": np.arange(n, dtype=np.int64),
        }
    )
    left = left.sort_values(TIMESTAMP, kind="mergesort")
    bar_ts = ts_int64(left[TIMESTAMP])
    order = left["_row"].to_numpy()
    taken = set(out.columns)
    for name, stream in streams.items():
        s, values = _prepare(name, stream, taken)
        taken |= set(values)
        if SYMBOL in s.columns:  # same integer codes as the bars (-1: symbol not in the bars)
            s[SYMBOL] = pd.Index(sym_names).get_indexer(s[SYMBOL])
            s = s[s[SYMBOL] >= 0]
        if EVENT_COUNT in values:
            new.update(_bucket_events(left, s, values, n))
            continue
        kind = ORDERBOOK_STREAM if is_orderbook(name, values) else name
        s = _drop_superseded(s)
        by = SYMBOL if SYMBOL in s.columns else None
        s = s.sort_values("available_at", kind="mergesort")
        right = s[[*([SYMBOL] if by else []), "available_at", "event_time", *values]]
        m = pd.merge_asof(
            left.drop(columns=SYMBOL) if by is None else left,
            right,
            left_on=TIMESTAMP,
            right_on="available_at",
            by=by,
            direction="backward",
            allow_exact_matches=True,
        )
        et = m["event_time"]
        known = et.notna().to_numpy()
        age = np.where(known, bar_ts - ts_int64(et.fillna(pd.Timestamp(0, tz="UTC"))), 0)
        for c in values:
            v = m[c].to_numpy(dtype="float64", na_value=np.nan)
            limit = _limit(name, c, max_staleness, bar, kind)
            stale = ~known | (age > limit.value) | np.isnan(v)
            col = np.empty(n)
            col[order] = np.where(stale, np.nan, v)
            flag = np.empty(n)
            flag[order] = stale.astype("float64")
            new[c] = col
            new[f"{c}_missing"] = flag
    if not new:
        return bars.copy()
    block = np.empty((len(new), n), dtype=np.float64)  # one float block, no per-column copies
    for j, v in enumerate(new.values()):
        block[j] = v
    extra = pd.DataFrame(block.T, columns=list(new), index=bars.index, copy=False)
    return pd.concat([bars, extra], axis=1)
