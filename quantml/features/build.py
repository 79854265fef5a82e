"""Build a feature matrix from a panel and a feature-set config."""

from __future__ import annotations

import inspect
import queue
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import MODALITIES, SYMBOL, TIMESTAMP, QuantmlInputError, bar_size, modality_of, parse_duration
from quantml.contracts.cpus import job_threads
from quantml.contracts.exchange_calendars import declared_calendar, panel_bars_missing
from quantml.contracts.time import Calendar, bars_missing, infer_calendars
from quantml.data.panel import ts_int64, unavailable_columns
from quantml.features.blocks import BLOCKS, Context, Skip
from quantml.features.ops import SegmentOps


@dataclass
class FeatureMatrix:
    """Features for every row of the panel, in the panel's row order.

    frame : DataFrame [n, F] float32 (NaN during warm-up / when a source is missing).
    modalities : feature name -> modality. known_future : calendar features.
    input_columns : raw panel columns the features read (besides timestamp, symbol).
    skipped : block (or ``block.part``) -> why it was not built (absent source columns, optional
        bar columns the panel cannot supply -- see ``unavailable`` --, or every modality of the
        block dropped).
    unavailable : optional bar column -> why the panel cannot supply it (missing, NaN on every
        bar, degenerate OHLC or volume; ``quantml.data.panel.unavailable_columns``).
    dropped : features of partly-dropped blocks removed by ``drop_modalities``.
    resolved : every window, lag or half-life written as a duration -> its bars per symbol,
        ``{"returns.lags=1d": {"AAPL": 1, "BTC": 24}}`` (bar counts are the same everywhere: not listed).
    calendar : symbol -> its calendar (``Calendar.to_dict()``: step, bars per day, bars per week) the
        durations were resolved on; empty when the feature set has no duration. Pass it back as
        ``build_features(..., calendar=)`` to resolve the durations identically on another panel.
    bars_missing : float32 [n], per row: how many of its symbol's usual bars the gap before it
        skipped (``quantml.contracts.time.bars_missing``; 0 for none). No row is ever added for
        them and nothing is forward-filled.
    gaps : the flagged gaps (:func:`flag_gaps`: ``bars_missing >= gaps.min_missing`` of the feature
        set, default 5, and more than a trading day of an exchange calendar), one row each:
        symbol, timestamp (the first bar after the gap), previous (the last bar before it),
        bars_missing.
    window_breaks : bool [n] or None: with ``gaps: {break_windows: true}``, the rows right after a
        flagged gap, where every window restarts: the rolling features here, and the sequence
        backbones' look-back windows (``PanelData.breaks``), never reach across the gap.
    """

    frame: pd.DataFrame
    modalities: dict[str, str]
    known_future: list[str] = field(default_factory=list)
    input_columns: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    resolved: dict[str, dict[str, int]] = field(default_factory=dict)
    calendar: dict[str, dict] = field(default_factory=dict)
    bars_missing: np.ndarray | None = None
    gaps: pd.DataFrame | None = None
    window_breaks: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return list(self.frame.columns)

    def by_modality(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.frame.columns:
            out.setdefault(self.modalities[name], []).append(name)
        return out


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _blocks_of(cfg: Mapping) -> dict[str, dict]:
    blocks = cfg.get("blocks")
    if blocks is None:
        raise QuantmlInputError(
            f"feature set {cfg.get('name', '?')!r} has no 'blocks' mapping; e.g. blocks: {{returns: {{lags: [1, 4]}}}}"
        )
    if isinstance(blocks, (list, tuple)):
        blocks = {b: {} for b in blocks}
    out = {}
    for name, params in blocks.items():
        if name not in BLOCKS:
            raise QuantmlInputError(
                f"unknown feature block {name!r} in feature set {cfg.get('name', '?')!r}; "
                f"available blocks: {sorted(BLOCKS)}"
            )
        params = dict(params or {})
        sig = inspect.signature(BLOCKS[name].fn)
        allowed = [p for p in sig.parameters if p != "ctx"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise QuantmlInputError(
                f"feature block {name!r} has no parameter(s) {unknown}; its parameters are {allowed}"
            )
        out[name] = params
    return out


GAP_MIN_MISSING = 5  # a gap that skips at least this many usual bars is flagged


def flag_gaps(
    panel: pd.DataFrame,
    gap_bars: np.ndarray,
    min_missing: int = GAP_MIN_MISSING,
    declared: Mapping[str, Calendar] | None = None,
) -> np.ndarray:
    """Bool [n]: rows whose gap before them is flagged. A gap is flagged when it skipped at least
    ``min_missing`` of the symbol's usual bars (``gap_bars``, from ``bars_missing``) and, on a
    calendar with closures (fewer bars a week than 7 days of its bars a day: an exchange), also
    more than one trading day of bars: one lost session reads as a holiday, not an outage. So
    24/7 hourly bars flag 5 missing hours, hourly equities two lost sessions (a holiday is 7
    bars), daily equities 5 lost trading days. ``declared``: symbol -> the calendar of a declared
    exchange schedule; its ``gap_bars`` count only bars the exchange expected (a holiday is 0), so
    a gap is flagged from ``min_missing`` missing bars on, without the one-trading-day allowance."""
    flagged = np.asarray(gap_bars) >= min_missing
    if not flagged.any():
        return flagged
    declared = dict(declared or {})
    cals = infer_calendars(panel[[TIMESTAMP, SYMBOL]])
    per_row = pd.Series(
        {
            s: 0.0 if s in declared else (c.bars_per_day if c.bars_per_week < 7 * c.bars_per_day - 0.5 else 0.0)
            for s, c in cals.items()
        }
    )
    day = per_row.reindex(panel[SYMBOL].astype(str).to_numpy()).to_numpy(dtype=np.float64)
    return flagged & (np.asarray(gap_bars) > day)


def _gaps_of(cfg: Mapping) -> tuple[int, bool]:
    """``(min_missing, break_windows)`` of the feature set's optional ``gaps`` mapping."""
    gaps = dict(cfg.get("gaps") or {})
    unknown = sorted(set(gaps) - {"min_missing", "break_windows"})
    if unknown:
        raise QuantmlInputError(
            f"feature set {cfg.get('name', '?')!r}: gaps has no setting(s) {unknown}; its settings are "
            "min_missing (usual bars a gap must skip to be flagged, default 5) and break_windows "
            "(true: no window spans a flagged gap; default false)"
        )
    k = gaps.get("min_missing", GAP_MIN_MISSING)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise QuantmlInputError(f"feature set gaps.min_missing={k!r} must be a positive whole number of bars")
    brk = gaps.get("break_windows", False)
    if not isinstance(brk, bool):
        raise QuantmlInputError(f"feature set gaps.break_windows={brk!r} must be true or false")
    return int(k), brk


def _pinned(calendar: Mapping | None) -> dict[str, Calendar]:
    if not calendar:
        return {}
    return {str(s): c if isinstance(c, Calendar) else Calendar.from_dict(c) for s, c in calendar.items()}


def _check_sorted(panel: pd.DataFrame) -> np.ndarray:
    """The panel's symbol codes [n] (order of first appearance), after checking the panel's order."""
    codes, uniques = pd.factorize(panel[SYMBOL])
    ts = ts_int64(panel[TIMESTAMP])
    same = codes[1:] == codes[:-1]
    runs = int((~same).sum()) + (len(codes) > 0)
    if (same & (np.diff(ts) <= 0)).any() or runs != len(uniques):
        raise QuantmlInputError(
            "panel is not sorted by (symbol, timestamp) with unique timestamps per symbol; "
            "pass it through quantml.data.validate_panel first"
        )
    return codes.astype(np.int64, copy=False)


GROUP_ROWS = 1 << 18  # per-symbol blocks run on groups of whole symbols of at least this many rows


def _symbol_groups(codes: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of consecutive whole symbols, each at least ``rows`` long (the last may be shorter)."""
    n = len(codes)
    if n == 0:
        return [(0, 0)]
    bounds = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1, n]
    out, a = [], 0
    for b in bounds[1:]:
        if b - a >= rows or b == n:
            out.append((a, int(b)))
            a = int(b)
    return out


def _group_context(ctx: Context, a: int, b: int, breaks: np.ndarray | None, codes: np.ndarray, sub) -> Context:
    """A context on rows ``[a, b)`` (whole symbols; ``sub``: those rows of the panel, every column) of
    ``ctx``'s panel: the panel's symbols, calendars, unavailable columns and bar size; records (used
    columns, skips, resolved durations) go to ``ctx``."""
    ops = SegmentOps(
        np.arange(b - a),  # unused: codes below say which symbol each row is
        breaks=None if breaks is None else breaks[a:b],
        codes=codes[a:b],
    )
    return Context(
        panel=sub,
        ops=ops,
        bar=ctx.bar,
        used=ctx.used,
        skipped=ctx.skipped,
        unavailable=ctx.unavailable,
        pinned=ctx.pinned,
        resolved=ctx.resolved,
        parent=ctx,
    )


def _write_rows(block: np.ndarray, a: int, b: int, scratch: np.ndarray, columns: list[int]) -> None:
    """``block[a:b, columns[k]] = scratch[k, :b - a]`` for each ``k`` (``columns`` sorted), a run of
    consecutive columns at a time (one transposed copy per run, no gathered temporary)."""
    m = b - a
    start = 0
    for k in range(1, len(columns) + 1):
        if k == len(columns) or columns[k] != columns[k - 1] + 1:
            j0, j1 = columns[start], columns[k - 1] + 1
            block[a:b, j0:j1] = scratch[start:k, :m].T
            start = k


def _run_block(ctx: Context, name: str, params: dict) -> None:
    ctx.block = name
    try:
        BLOCKS[name].fn(ctx, **params)
    except Skip as why:
        ctx.skipped[name] = str(why)


def _final_names(cfg: Mapping, every: list[str], ctx: Context, drop: set, expected) -> list[str]:
    """The frame's columns: ``every`` feature built (in block order) less dropped modalities, or ``expected``."""
    names = [n for n in every if ctx.modalities[n] not in drop]
    if expected is not None:
        lacking = [n for n in expected if n not in names]
        if lacking:
            raise QuantmlInputError(
                f"the model needs feature(s) {lacking[:8]}{' ...' if len(lacking) > 8 else ''} that this panel "
                f"cannot provide (skipped blocks: {ctx.skipped}); add the missing raw columns to the panel, with "
                "real values (not NaN on every bar, not open = high = low = close)"
            )
        names = list(expected)
    if not names:
        raise QuantmlInputError(
            f"feature set {cfg.get('name', '?')!r} produced no features (skipped: {ctx.skipped}, "
            f"dropped modalities: {sorted(drop)}); choose a feature set whose columns the panel has"
        )
    return names


def build_features(
    panel: pd.DataFrame,
    feature_set_cfg: Mapping,
    drop_modalities: Iterable[str] = (),
    expected: Sequence[str] | None = None,
    calendar: Mapping | None = None,
    declared: Mapping[str, str] | None = None,
) -> FeatureMatrix:
    """Compute every block of the feature set on a validated panel.

    Parameters
    ----------
    panel : validated panel (sorted by symbol, timestamp), n rows.
    feature_set_cfg : ``{name: str, blocks: {block: {param: value}}}`` (a feature_set config).
    drop_modalities : modalities whose features are removed (ablations), e.g. ["text", "event"].
    expected : feature names a fitted model needs (serving). When given, the frame has exactly
        these columns in this order, and a feature that cannot be built (its source column is
        absent from this panel) is a ``QuantmlInputError`` naming the missing raw column.
    calendar : symbol -> calendar (``FeatureMatrix.calendar`` of the training build) that durations
        resolve on; symbols not in it are inferred from ``panel``. Bar-count windows ignore it.
    declared : symbol -> exchange calendar code (``data.calendars``, resolved by
        :func:`quantml.contracts.exchange_calendars.resolve_calendars`). Those symbols' durations
        resolve on the exchange's sessions (:func:`~quantml.contracts.exchange_calendars.declared_calendar`,
        unless ``calendar`` pins one) and their gaps are judged against its schedule (a holiday is
        no gap, a lost session hour is one); a bar outside the sessions is an error.

    Returns
    -------
    FeatureMatrix with ``frame`` [n, F] float32 in the panel's row order.
    """
    return build(InMemory(panel), feature_set_cfg, drop_modalities, expected, calendar, declared)[0]


class InMemory:
    """A panel held in memory as the source of :func:`build`: every row at hand."""

    def __init__(self, panel: pd.DataFrame) -> None:
        self.keys = self.panel = panel  # keys: timestamp, symbol of every row; panel: for whole-panel blocks
        self.columns = list(panel.columns)

    def groups(self, codes: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges of whole symbols the per-symbol blocks run on (a few symbols at a time)."""
        return _symbol_groups(codes, GROUP_ROWS)

    def rows(self, a: int, b: int) -> pd.DataFrame:
        return self.panel.iloc[a:b]


class _LaterGroup:
    """The per-symbol blocks of one group after the first (whose features fixed ``names``) into its rows
    of ``block`` (and of the labels): callable from several threads at once, each group's rows its own;
    every group's records go to ``ctx`` as the first group's did (same keys, same values)."""

    def __init__(self, source, ctx, breaks, codes, per_symbol, runnable, columns_of, names, made, block, labels):
        self.source, self.ctx, self.breaks, self.codes = source, ctx, breaks, codes
        self.per_symbol, self.runnable, self.columns_of = per_symbol, runnable, columns_of
        self.names, self.made, self.block, self.labels = names, made, block, labels
        self.width = max(map(len, columns_of.values()), default=0)
        self._scratch: queue.SimpleQueue = queue.SimpleQueue()  # one per thread at most, reused

    def __call__(self, a: int, b: int) -> None:
        rows = self.source.rows(a, b)
        sub = _group_context(self.ctx, a, b, self.breaks, self.codes, rows)
        try:
            scratch = self._scratch.get_nowait()
        except queue.Empty:
            scratch = np.empty((self.width, 0), np.float32)
        if scratch.shape[1] < b - a:  # a feature-major scratch as wide as the widest block
            scratch = np.empty((self.width, b - a), np.float32)
        built: list[str] = []
        for name in self.per_symbol:
            cols = self.columns_of.get(name, [])
            if cols:
                sub.sink = {self.names[j]: scratch[k, : b - a] for k, j in enumerate(cols)}
            _run_block(sub, name, self.runnable[name])
            sub.forget_columns()
            if cols:  # then into the block's rows of the matrix: one block's features at a time
                _write_rows(self.block, a, b, scratch, cols)
            built.extend(sub.features)
            sub.features.clear()
            sub.sink = None
        self._scratch.put(scratch)
        if built != self.made:
            raise QuantmlInputError(
                f"the feature blocks built {sorted(set(self.made) ^ set(built))[:6]} on some symbols "
                f"only (rows {a}:{b} against the first symbols); a column present for some symbols only "
                "must be present (or NaN) for every symbol: pass the panel through quantml.data.validate_panel"
            )
        del sub
        if self.labels is not None:
            close = rows["close"].to_numpy(dtype=np.float64)
            self.labels.write(a, ts_int64(rows[TIMESTAMP]), close, self.codes[a:b])


def build(
    source,
    feature_set_cfg: Mapping,
    drop_modalities: Iterable[str] = (),
    expected: Sequence[str] | None = None,
    calendar: Mapping | None = None,
    declared: Mapping[str, str] | None = None,
    labels=None,
    threads: int | None = None,
) -> tuple[FeatureMatrix, object]:
    """:func:`build_features` on a ``source``: ``keys`` (timestamp, symbol of every row, sorted),
    ``panel`` (keys plus the columns the whole-panel steps read: the optional bar columns and what the
    cross-sectional blocks need), ``columns`` (every panel column), ``groups(codes)`` (row ranges of whole
    symbols) and ``rows(a, b)`` (rows ``[a, b)`` with every column). Cross-sectional blocks run first,
    on ``panel`` (time slices across every symbol); the per-symbol blocks then run group by group, so
    how the rows are grouped never changes a feature. ``labels``: a :class:`quantml.labels.LabelWriter`
    fed each group's timestamps and closes (returned second, finished; None: no labels).
    The [n, F] float32 matrix (:mod:`quantml.features.memory`) is faulted in once the first group's
    features are in it; each later group's per-symbol features are written one block at a time into a
    feature-major scratch as wide as the widest block, then copied into their rows. The groups after the
    first run on ``threads`` threads at once (None: this job's share of the CPUs,
    :func:`quantml.contracts.cpus.job_threads`); each writes only its own rows, so the values do not depend
    on the thread count."""
    from quantml.features.memory import lazy, prefault, reused_heap, trim

    cfg = _plain(feature_set_cfg)
    drop = set(drop_modalities or ())
    unknown = sorted(drop - set(MODALITIES))
    if unknown:
        raise QuantmlInputError(f"drop_modalities {unknown} are not modalities; choose from {list(MODALITIES)}")
    blocks = _blocks_of(cfg)
    min_missing, break_windows = _gaps_of(cfg)
    keys = source.keys
    codes = _check_sorted(keys)  # symbols as int codes: no Python string object per row
    n = len(keys)
    labels = labels(n) if labels is not None else None
    bar = bar_size(keys[TIMESTAMP], codes) if n > 1 else pd.Timedelta("1D")
    if labels is not None:
        labels.check_bar(bar if n > 1 else bar_size(keys[TIMESTAMP], codes))
    declared = dict(declared or {})
    symbols = keys[SYMBOL].to_numpy() if declared else None
    if declared:
        gap_bars = panel_bars_missing(keys[TIMESTAMP], symbols, declared)
    else:
        gap_bars = bars_missing(keys[TIMESTAMP], codes) if n else np.zeros(0)
    gap_bars = gap_bars.astype(np.float32)  # whole bar counts: exact in float32, half the memory of a row
    pinned = _pinned(calendar)
    ts_ns = ts_int64(keys[TIMESTAMP]) if declared else None
    for sym, code in declared.items():
        if sym not in pinned:
            pinned[sym] = declared_calendar(code, ts_ns[symbols.astype(str) == sym])
    flagged = flag_gaps(keys, gap_bars, min_missing, {s: pinned[s] for s in declared})
    breaks = flagged if break_windows else None
    ctx = Context(
        panel=source.panel,
        ops=SegmentOps(codes, breaks=breaks, codes=codes),
        bar=bar,
        unavailable=unavailable_columns(source.panel),
        pinned=pinned,
        columns=tuple(source.columns),
    )
    runnable = {}
    for name, params in blocks.items():
        spec = BLOCKS[name]
        if set(spec.modalities) <= drop:
            ctx.skipped[name] = f"all its modalities {list(spec.modalities)} are in drop_modalities"
            continue
        missing = [c for c in spec.requires if not ctx.has(c)]
        if missing:
            ctx.skipped[name] = "; ".join(f"needs column {c!r}, {ctx.why_not(c)}" for c in missing)
            continue
        runnable[name] = params
    # cross-sectional blocks on the whole panel (time slices across every symbol); the others group by
    # group of whole symbols, so their temporaries stay small and the float32 matrix is the one big array
    for name in [n for n in runnable if BLOCKS[n].cross_sectional]:
        _run_block(ctx, name, runnable[name])
    ctx.release(keys)  # the whole-panel columns and per-row arrays: not needed from here
    if hasattr(source, "release"):
        source.release()
    codes = codes.astype(np.int16 if len(ctx.symbols) < 2**15 else np.int64)
    per_symbol = [n for n in runnable if not BLOCKS[n].cross_sectional]
    groups = source.groups(codes)
    with reused_heap():  # every group's temporaries reuse the pages of the group before
        # the first group fixes the features (every group resolves the same windows) and the matrix
        (a, b), later = groups[0], groups[1:]
        rows = source.rows(a, b)
        sub = _group_context(ctx, a, b, breaks, codes, rows)
        for name in per_symbol:
            _run_block(sub, name, runnable[name])
            sub.forget_columns()
        made = list(sub.features)
        twice = sorted(set(made) & set(ctx.features))
        if twice:
            raise ValueError(f"feature {twice[0]!r} defined twice; rename it in the feature-set config")
        ctx.modalities.update(sub.modalities)
        ctx.origin.update(sub.origin)
        ctx.known_future.extend(sub.known_future)
        every = [n for blk in blocks for n in (*ctx.features, *made) if ctx.origin[n] == blk]
        names = _final_names(cfg, every, ctx, drop, expected)
        # row-major [n, F]: a fit's row blocks are views of it (the models read rows, not columns)
        block = lazy((n, len(names)), np.float32)
        columns_of: dict[str, list[int]] = {}  # per-symbol block -> its columns of the matrix
        for j, name in enumerate(names):
            if name in sub.features:
                columns_of.setdefault(ctx.origin[name], []).append(j)
        for j in (j for cols in columns_of.values() for j in cols):
            block[a:b, j] = sub.features[names[j]]
        del sub  # the first group's features, before the cross-sectional columns touch every page
        trim()
        prefault(block.reshape(1, -1))
        for j, name in enumerate(names):
            if name in ctx.features:  # a cross-sectional feature, built on the whole panel
                block[:, j] = ctx.features.pop(name)
        if labels is not None:
            labels.write(a, ts_int64(rows[TIMESTAMP]), rows["close"].to_numpy(dtype=np.float64), codes[a:b])
        del rows
        group = _LaterGroup(source, ctx, breaks, codes, per_symbol, runnable, columns_of, names, made, block, labels)
        workers = min(len(later), job_threads() if threads is None else max(1, int(threads)))
        if workers <= 1:
            for a, b in later:
                group(a, b)
        else:  # the kernels (pandas' rolling, numpy, parquet reads) release the GIL: groups overlap
            with ThreadPoolExecutor(workers, thread_name_prefix="quantml-features") as pool:
                for _ in pool.map(lambda ab: group(*ab), later):
                    pass
    dropped = [n for n in every if ctx.modalities[n] in drop]
    ctx.features.clear()
    frame = pd.DataFrame(block, columns=names, index=keys.index, copy=False)
    # raw exogenous columns of a dropped modality feed only dropped features
    used = sorted(c for c in ctx.used if modality_of(c.removesuffix("_missing")) not in drop)
    rows = np.flatnonzero(flagged)
    stamps = keys[TIMESTAMP]  # indexed before converting: a whole tz-aware column to numpy is one object per row
    gaps = pd.DataFrame(
        {
            SYMBOL: keys[SYMBOL].iloc[rows].to_numpy(),
            TIMESTAMP: stamps.iloc[rows].to_numpy(),
            "previous": stamps.iloc[rows - 1].to_numpy() if len(rows) else stamps.iloc[:0].to_numpy(),
            "bars_missing": gap_bars[rows].astype(np.float64),
        }
    )
    matrix = FeatureMatrix(
        frame=frame,
        modalities={n: ctx.modalities[n] for n in names},
        known_future=[n for n in ctx.known_future if n in names],
        input_columns=used,
        skipped=dict(ctx.skipped),
        dropped=dropped,
        unavailable=dict(ctx.unavailable),
        resolved=dict(ctx.resolved),
        calendar={s: c.to_dict() for s, c in ctx.calendars.items()} if ctx.resolved else {},
        bars_missing=gap_bars,
        gaps=gaps,
        window_breaks=flagged if break_windows else None,
    )
    if labels is None:
        return matrix, None
    t0 = stamps.array.asi8.view("datetime64[ns]") if n else np.zeros(0, "datetime64[ns]")
    return matrix, labels.finish(t0 if getattr(source, "owns_keys", False) else t0.copy())


def event_activity_mask(panel: pd.DataFrame, window: str) -> np.ndarray:
    """Bool [n]: True where an event became available within the trailing ``window``
    (``t - window < arrival <= t``) for that symbol. Needs the ``event_count`` column."""
    if "event_count" not in panel.columns:
        raise QuantmlInputError(
            "ablation event_window needs an 'event_count' column (an events stream joined with "
            "quantml.data.asof.join_streams, e.g. data=synthetic); use ablation=full for this panel"
        )
    w = parse_duration(window, "event_window")
    ops = SegmentOps(panel[SYMBOL].to_numpy())
    ts = (ts_int64(panel[TIMESTAMP]) // 1000).astype(np.float64)  # microseconds: exact in float64
    hit = np.nan_to_num(panel["event_count"].to_numpy(dtype=np.float64, na_value=np.nan)) > 0
    last = ops.ffill(np.where(hit, ts, np.nan))
    with np.errstate(invalid="ignore"):
        return np.isfinite(last) & ((ts - last) < w.value // 1000)
