"""Multi-horizon labels measured in time, not bars.

For a bar at ``t`` and horizon ``h`` the label ends at ``t1``: the first bar of the same
symbol with ``timestamp >= t + h`` (so weekends, holidays and outages are handled); the
label is NaN when that bar is beyond the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, bar_size, parse_duration
from quantml.data.panel import ts_int64


def parse_horizon(text: str) -> pd.Timedelta:
    """``"30m"``, ``"1h"``, ``"4h"``, ``"1d"``, ``"7d"``, ``"2w"`` -> Timedelta (m = minutes).

    The grammar is :func:`quantml.contracts.parse_duration`; this adds the hint for the
    horizon presets (``swing``, ``intraday``)."""
    try:
        return parse_duration(text, "horizon")
    except QuantmlInputError as err:
        if str(text).strip().lower() in ("swing", "intraday"):
            raise QuantmlInputError(
                f"{err} ('swing' and 'intraday' are presets of the horizon config group: horizon=swing)"
            ) from None
        raise


@dataclass
class Labels:
    """Targets for ``n`` panel rows and ``H`` horizons (NaN where the label runs past the data).

    ret, ret_after_cost, dir, vol : float64 [n, H]
        gross forward log return close[t1]/close[t]; ``sign(ret) * max(|ret| - cost, 0)``;
        1.0 if ret > 0 else 0.0; sqrt of the sum of squared 1-bar log returns over (t, t1].
    t0 : datetime64[ns] [n] (UTC, naive numpy)   the bar's own timestamp.
    t1 : datetime64[ns] [n, H]   label end per horizon (NaT when past the data).
    t1_max : datetime64[ns] [n]   latest t1 over horizons; NaT when any horizon is NaT
        (its end is unknown, beyond the data).
    ret_next_bar : float64 [n]   log return to the next bar of the same symbol (NaN at the end).
    """

    horizons: list[str]
    ret: np.ndarray
    ret_after_cost: np.ndarray
    dir: np.ndarray
    vol: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    t1_max: np.ndarray
    ret_next_bar: np.ndarray

    def frame(self, horizon: str) -> pd.DataFrame:
        """Columns ret, ret_after_cost, dir, vol, t1 of one horizon, plus ret_next_bar."""
        j = self.horizons.index(horizon)
        return pd.DataFrame(
            {
                "ret": self.ret[:, j],
                "ret_after_cost": self.ret_after_cost[:, j],
                "dir": self.dir[:, j],
                "vol": self.vol[:, j],
                "t1": self.t1[:, j],
                "ret_next_bar": self.ret_next_bar,
            }
        )


def _suggest(bar: pd.Timedelta) -> str:
    if bar >= pd.Timedelta("1D"):
        return "use horizon=1d or swing (1d, 7d)"
    if bar >= pd.Timedelta("1h"):
        return f"use horizon={int(bar / pd.Timedelta('1h'))}h or longer (e.g. horizon=4h, 1d)"
    return f"use horizon={int(bar / pd.Timedelta('1min'))}m or longer (e.g. horizon=1h)"


def make_labels(panel: pd.DataFrame, horizons: Sequence[str], round_trip_cost: float) -> Labels:
    """Forward returns, after-cost returns, direction and realised vol for each horizon.

    Parameters
    ----------
    panel : validated panel sorted by (symbol, timestamp), n rows.
    horizons : durations, e.g. ["1h", "4h", "1d"]; each must be >= one bar of the panel.
    round_trip_cost : cost of entering and leaving, as a log-return fraction (>= 0).
    """
    horizons = [str(h) for h in (horizons or [])]
    if not horizons:
        raise QuantmlInputError("make_labels needs at least one horizon; set horizon=1d (or another)")
    if len(set(horizons)) != len(horizons):
        raise QuantmlInputError(f"horizons {horizons} contain duplicates; list each once")
    try:
        cost = float(round_trip_cost)
    except (TypeError, ValueError):
        raise QuantmlInputError(f"round_trip_cost={round_trip_cost!r} must be a number >= 0") from None
    if not np.isfinite(cost) or cost < 0:
        raise QuantmlInputError(f"round_trip_cost={round_trip_cost!r} must be finite and >= 0")
    deltas = [parse_horizon(h) for h in horizons]
    sym = pd.factorize(panel[SYMBOL])[0]  # int codes: no Python string object per row
    bar = bar_size(panel[TIMESTAMP], sym)
    for h, d in zip(horizons, deltas):
        if d < bar:
            raise QuantmlInputError(
                f"horizon={h} is shorter than one bar ({bar}) of this panel, so it has no label; {_suggest(bar)}"
            )
    n, H = len(panel), len(horizons)
    ts = ts_int64(panel[TIMESTAMP])
    lc = np.log(panel["close"].to_numpy(dtype=np.float64))
    change = np.flatnonzero(sym[1:] != sym[:-1]) + 1
    bounds = np.r_[0, change, n]

    r1 = np.full(n, np.nan)
    r1[1:] = np.diff(lc)
    r1[bounds[:-1]] = np.nan
    ret_next = np.full(n, np.nan)
    ret_next[:-1] = r1[1:]
    ret_next[bounds[1:] - 1] = np.nan
    # sum of r^2 up to each row, restarted per symbol: a running sum over the whole panel would
    # let a symbol's later bars round an earlier symbol-segment's differences (no look-ahead, bit for bit)
    sq = np.nan_to_num(r1) ** 2
    cs = np.empty(n)
    for a, b in zip(bounds[:-1], bounds[1:]):
        cs[a:b] = np.cumsum(sq[a:b])

    # symbol by symbol into preallocated outputs: the temporaries are one symbol's, not [n, H] panel-wide
    ret = np.empty((n, H))
    after = np.empty((n, H))
    direction = np.empty((n, H))
    vol = np.empty((n, H))
    t1_ns = np.empty((n, H), dtype=np.int64)
    t1_max_ns = np.empty(n, dtype=np.int64)
    nat = np.iinfo(np.int64).min
    any_ok = np.zeros(H, dtype=bool)
    for a, b in zip(bounds[:-1], bounds[1:]):  # loop over symbols, vectorised over rows
        seg, lc_seg, cs_seg = ts[a:b], lc[a:b], cs[a:b]
        L = b - a
        r, v, t = np.empty((L, H)), np.empty((L, H)), np.empty((L, H), dtype=np.int64)
        for j, d in enumerate(deltas):
            k = np.searchsorted(seg, seg + d.value, side="left")
            ok = k < L
            e = np.where(ok, k, 0)
            r[:, j] = np.where(ok, lc_seg[e] - lc_seg, np.nan)
            v[:, j] = np.where(ok, np.sqrt(np.maximum(cs_seg[e] - cs_seg, 0.0)), np.nan)
            t[:, j] = np.where(ok, seg[e], nat)
            any_ok[j] |= bool(ok.any())
        ret[a:b] = r  # whole rows of the [n, H] outputs: contiguous writes
        after[a:b] = np.sign(r) * np.maximum(np.abs(r) - cost, 0.0)
        direction[a:b] = np.where(np.isnan(r), np.nan, (r > 0).astype(np.float64))
        vol[a:b] = v
        t1_ns[a:b] = t
        t1_max_ns[a:b] = np.where((t != nat).all(axis=1), t.max(axis=1), nat)
    t1 = t1_ns.view("datetime64[ns]")
    t1_max = t1_max_ns.view("datetime64[ns]")
    empty = [h for h, some in zip(horizons, any_ok) if not some]
    if empty:
        raise QuantmlInputError(
            f"horizon(s) {empty} are longer than every symbol's history, so no row has a label; "
            "use a shorter horizon or load more data"
        )
    return Labels(
        horizons=horizons,
        ret=ret,
        ret_after_cost=after,
        dir=direction,
        vol=vol,
        t0=ts.view("datetime64[ns]").copy(),
        t1=t1,
        t1_max=t1_max,
        ret_next_bar=ret_next,
    )
