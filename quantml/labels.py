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

    ret, dir, vol : float64 [n, H] (``dir`` float32: its 0, 1 and NaN are exact)
        gross forward log return close[t1]/close[t]; 1.0 if ret > 0 else 0.0; sqrt of the sum of
        squared 1-bar log returns over (t, t1].
    ret_after_cost : float64 [n, H]   ``sign(ret) * max(|ret| - cost, 0)``, computed from ``ret`` when
        read (:meth:`after_cost` for some rows): it is not stored (float32 labels: from the rounded ``ret``).
    t0 : datetime64[ns] [n] (UTC, naive numpy)   the bar's own timestamp.
    t1 : datetime64[ns] [n, H]   label end per horizon (NaT when past the data), read from ``t0`` at
        ``t1_row`` when asked (:meth:`label_end` for some rows).
    t1_row : int32 (int64 past 2**31 rows) [n, H]   the row whose bar ends each label (-1: past the data).
    t1_max : datetime64[ns] [n]   latest t1 over horizons; NaT when any horizon is NaT
        (its end is unknown, beyond the data).
    ret_next_bar : float64 [n]   log return to the next bar of the same symbol (NaN at the end).
    cost : the round-trip cost ``ret_after_cost`` takes off.

    Storing ``ret_after_cost`` and ``t1`` would cost 12 bytes per row and horizon (0.4 GB at 8.4M rows
    and four horizons) for values that are recomputed bit for bit.
    """

    horizons: list[str]
    ret: np.ndarray
    dir: np.ndarray
    vol: np.ndarray
    t0: np.ndarray
    t1_row: np.ndarray
    t1_max: np.ndarray
    ret_next_bar: np.ndarray
    cost: float

    @property
    def ret_after_cost(self) -> np.ndarray:
        return self.after_cost(slice(None))

    @property
    def t1(self) -> np.ndarray:
        return self.label_end(slice(None))

    def after_cost(self, rows, j=slice(None)) -> np.ndarray:
        """``ret_after_cost[rows, j]``: the label's formula on the stored ``ret``."""
        return after_cost(self.ret[rows, j], self.cost)

    def label_end(self, rows, j=slice(None)) -> np.ndarray:
        """``t1[rows, j]`` (datetime64[ns]; NaT past the data)."""
        end = self.t1_row[rows, j]
        t = self.t0.view(np.int64)[np.maximum(end, 0)]
        t[end < 0] = np.iinfo(np.int64).min
        return t.view("datetime64[ns]")

    def frame(self, horizon: str) -> pd.DataFrame:
        """Columns ret, ret_after_cost, dir, vol, t1 of one horizon, plus ret_next_bar."""
        j = self.horizons.index(horizon)
        return pd.DataFrame(
            {
                "ret": self.ret[:, j],
                "ret_after_cost": self.after_cost(slice(None), j),
                "dir": self.dir[:, j],
                "vol": self.vol[:, j],
                "t1": self.label_end(slice(None), j),
                "ret_next_bar": self.ret_next_bar,
            }
        )


def after_cost(ret: np.ndarray, cost: float) -> np.ndarray:
    """``sign(ret) * max(|ret| - cost, 0)``: a gross log return less a round trip, never past zero;
    computed in float64, returned in ``ret``'s float type."""
    r = np.asarray(ret, dtype=np.float64)
    return (np.sign(r) * np.maximum(np.abs(r) - cost, 0.0)).astype(np.asarray(ret).dtype, copy=False)


def _suggest(bar: pd.Timedelta) -> str:
    if bar >= pd.Timedelta("1D"):
        return "use horizon=1d or swing (1d, 7d)"
    if bar >= pd.Timedelta("1h"):
        return f"use horizon={int(bar / pd.Timedelta('1h'))}h or longer (e.g. horizon=4h, 1d)"
    return f"use horizon={int(bar / pd.Timedelta('1min'))}m or longer (e.g. horizon=1h)"


def check_horizons(horizons: Sequence[str], round_trip_cost: float, bar: pd.Timedelta) -> tuple[list[str], list, float]:
    """``(horizons, their Timedeltas, cost)`` after checking them against one bar of the panel."""
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
    if bar is not None:
        for h, d in zip(horizons, deltas):
            if d < bar:
                raise QuantmlInputError(
                    f"horizon={h} is shorter than one bar ({bar}) of this panel, so it has no label; {_suggest(bar)}"
                )
    return horizons, deltas, cost


class LabelWriter:
    """Labels of ``n`` rows written symbol segment by symbol segment (:meth:`write`) into
    preallocated [n, H] outputs of ``dtype`` (float64 by default; float32 rounds each value once,
    computed in float64; ``dir`` is float32 either way), then :meth:`finish`. ``alloc(shape, dtype)``
    makes the outputs."""

    def __init__(
        self, n: int, horizons: Sequence[str], round_trip_cost: float, bar=None, dtype=np.float64, alloc=np.empty
    ):
        self.horizons, self.deltas, self.cost = check_horizons(horizons, round_trip_cost, bar)
        H = len(self.horizons)
        self.ret = alloc((n, H), dtype)
        self.direction = alloc((n, H), np.float32)  # 0, 1 or NaN: exact in float32, half of float64
        self.vol = alloc((n, H), dtype)
        self.t1_row = alloc((n, H), np.int32 if n < 2**31 else np.int64)
        self.t1_max_ns = alloc((n,), np.int64)
        self.ret_next = alloc((n,), dtype)

    def check_bar(self, bar: pd.Timedelta) -> None:
        """Every horizon at least one bar (``bar``: the panel's) long, else the error naming the fix."""
        check_horizons(self.horizons, self.cost, bar)

    def write(self, a: int, ts: np.ndarray, close: np.ndarray, sym: np.ndarray) -> None:
        """Rows ``[a, a + len(ts))``: int64 ns timestamps, closes and symbol codes of whole symbols."""
        change = np.flatnonzero(sym[1:] != sym[:-1]) + 1
        bounds = np.r_[0, change, len(ts)]
        for s, e in zip(bounds[:-1], bounds[1:]):
            self._segment(a + int(s), ts[s:e], np.log(np.asarray(close[s:e], dtype=np.float64)))

    def _segment(self, a: int, seg: np.ndarray, lc_seg: np.ndarray) -> None:
        L, nat = len(seg), np.iinfo(np.int64).min
        if L == 0:
            return
        b = a + L
        r1 = np.full(L, np.nan)
        r1[1:] = np.diff(lc_seg)
        self.ret_next[a : b - 1] = r1[1:]
        self.ret_next[b - 1 : b] = np.nan
        # sum of r^2 up to each row, restarted per symbol: a running sum over the whole panel would
        # let a symbol's later bars round an earlier symbol-segment's differences (no look-ahead, bit for bit)
        cs_seg = np.cumsum(np.nan_to_num(r1) ** 2)
        del r1
        # one horizon at a time, straight into its column of the outputs: the temporaries stay [L]
        t_max, unknown = np.full(L, nat), np.zeros(L, dtype=bool)
        for j, d in enumerate(self.deltas):
            k = np.searchsorted(seg, seg + d.value, side="left")
            ok = k < L
            e = np.where(ok, k, 0)
            del k
            r = np.where(ok, lc_seg[e] - lc_seg, np.nan)
            self.ret[a:b, j] = r
            self.direction[a:b, j] = np.where(np.isnan(r), np.nan, (r > 0).astype(np.float64))
            del r
            self.vol[a:b, j] = np.where(ok, np.sqrt(np.maximum(cs_seg[e] - cs_seg, 0.0)), np.nan)
            self.t1_row[a:b, j] = np.where(ok, a + e, -1)
            t = np.where(ok, seg[e], nat)
            np.maximum(t_max, t, out=t_max)
            unknown |= ~ok
        t_max[unknown] = nat
        self.t1_max_ns[a:b] = t_max

    def finish(self, t0: np.ndarray) -> Labels:
        """The :class:`Labels` (``t0``: datetime64[ns] [n], kept as given, not copied)."""
        # from the outputs, not a flag each write sets: segments may be written from several threads
        labelled = (self.t1_row >= 0).any(axis=0) if len(self.t1_row) else np.zeros(len(self.horizons), bool)
        empty = [h for h, some in zip(self.horizons, labelled) if not some]
        if empty:
            raise QuantmlInputError(
                f"horizon(s) {empty} are longer than every symbol's history, so no row has a label; "
                "use a shorter horizon or load more data"
            )
        return Labels(
            horizons=self.horizons,
            ret=self.ret,
            dir=self.direction,
            vol=self.vol,
            t0=t0,
            t1_row=self.t1_row,
            t1_max=self.t1_max_ns.view("datetime64[ns]"),
            ret_next_bar=self.ret_next,
            cost=self.cost,
        )


def make_labels(panel: pd.DataFrame, horizons: Sequence[str], round_trip_cost: float) -> Labels:
    """Forward returns, after-cost returns, direction and realised vol for each horizon.

    Parameters
    ----------
    panel : validated panel sorted by (symbol, timestamp), n rows.
    horizons : durations, e.g. ["1h", "4h", "1d"]; each must be >= one bar of the panel.
    round_trip_cost : cost of entering and leaving, as a log-return fraction (>= 0).
    """
    check_horizons(horizons, round_trip_cost, None)
    sym = pd.factorize(panel[SYMBOL])[0]  # int codes: no Python string object per row
    writer = LabelWriter(len(panel), horizons, round_trip_cost, bar_size(panel[TIMESTAMP], sym))
    ts = ts_int64(panel[TIMESTAMP])
    writer.write(0, ts, panel["close"].to_numpy(dtype=np.float64), sym)  # symbol by symbol
    return writer.finish(ts.view("datetime64[ns]").copy())


def features_and_labels(
    panel: pd.DataFrame,
    feature_set_cfg,
    horizons: Sequence[str],
    round_trip_cost: float,
    drop_modalities=(),
    declared=None,
):
    """:func:`quantml.features.build_features` and :func:`make_labels` (float64) in one pass over the
    symbols: ``(FeatureMatrix, Labels)``, each equal to what the two functions return."""
    from quantml.features.build import InMemory, build
    from quantml.features.memory import populated

    check_horizons(horizons, round_trip_cost, None)

    def writer(n: int) -> LabelWriter:  # checked against the panel's bar in build
        return LabelWriter(n, horizons, round_trip_cost, alloc=populated)

    return build(InMemory(panel), feature_set_cfg, drop_modalities, declared=declared, labels=writer)


def partitioned_features_and_labels(
    path,
    feature_set_cfg,
    horizons: Sequence[str],
    round_trip_cost: float,
    drop_modalities=(),
    symbols=None,
    calendar=None,
    dtype=np.float32,
    threads: int | None = None,
):
    """Features and labels of every row of a symbol-partitioned parquet directory, read one symbol at
    a time (:func:`quantml.features.partitioned.build_partitioned`): a ``PartitionedBuild`` (``keys``,
    ``features``, ``labels``). Labels [n, H] of ``dtype`` (float32: each value computed in float64 and
    rounded once, so they equal :func:`make_labels` up to float32 rounding; ``t1`` exact). ``threads``: symbols
    built at once (None: this job's share of the CPUs)."""
    from quantml.features.memory import populated
    from quantml.features.partitioned import build_partitioned

    check_horizons(horizons, round_trip_cost, None)

    def writer(n: int) -> LabelWriter:
        return LabelWriter(n, horizons, round_trip_cost, dtype=dtype, alloc=populated)

    return build_partitioned(path, feature_set_cfg, drop_modalities, symbols, calendar, labels=writer, threads=threads)
