"""Build a feature matrix from a panel and a feature-set config."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import MODALITIES, SYMBOL, TIMESTAMP, QuantmlInputError, bar_size, modality_of, parse_duration
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
    bars_missing : float [n], per row: how many of its symbol's usual bars the gap before it
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


def _check_sorted(panel: pd.DataFrame) -> None:
    codes, uniques = pd.factorize(panel[SYMBOL])
    ts = ts_int64(panel[TIMESTAMP])
    same = codes[1:] == codes[:-1]
    runs = int((~same).sum()) + (len(codes) > 0)
    if (same & (np.diff(ts) <= 0)).any() or runs != len(uniques):
        raise QuantmlInputError(
            "panel is not sorted by (symbol, timestamp) with unique timestamps per symbol; "
            "pass it through quantml.data.validate_panel first"
        )


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
    cfg = _plain(feature_set_cfg)
    drop = set(drop_modalities or ())
    unknown = sorted(drop - set(MODALITIES))
    if unknown:
        raise QuantmlInputError(f"drop_modalities {unknown} are not modalities; choose from {list(MODALITIES)}")
    blocks = _blocks_of(cfg)
    min_missing, break_windows = _gaps_of(cfg)
    _check_sorted(panel)
    bar = bar_size(panel) if len(panel) > 1 else pd.Timedelta("1D")
    symbols = panel[SYMBOL].to_numpy()
    declared = dict(declared or {})
    if declared:
        gap_bars = panel_bars_missing(panel[TIMESTAMP], symbols, declared)
    else:
        gap_bars = bars_missing(panel[TIMESTAMP], symbols) if len(panel) else np.zeros(0)
    pinned = _pinned(calendar)
    ts_ns = ts_int64(panel[TIMESTAMP]) if declared else None
    for sym, code in declared.items():
        if sym not in pinned:
            pinned[sym] = declared_calendar(code, ts_ns[symbols.astype(str) == sym])
    flagged = flag_gaps(panel, gap_bars, min_missing, {s: pinned[s] for s in declared})
    ctx = Context(
        panel=panel,
        ops=SegmentOps(symbols, breaks=flagged if break_windows else None),
        bar=bar,
        unavailable=unavailable_columns(panel),
        pinned=pinned,
    )
    for name, params in blocks.items():
        ctx.block = name
        spec = BLOCKS[name]
        if set(spec.modalities) <= drop:
            ctx.skipped[name] = f"all its modalities {list(spec.modalities)} are in drop_modalities"
            continue
        missing = [c for c in spec.requires if not ctx.has(c)]
        if missing:
            ctx.skipped[name] = "; ".join(f"needs column {c!r}, {ctx.why_not(c)}" for c in missing)
            continue
        try:
            spec.fn(ctx, **params)
        except Skip as why:
            ctx.skipped[name] = str(why)
    names = [n for n in ctx.features if ctx.modalities[n] not in drop]
    if expected is not None:
        lacking = [n for n in expected if n not in names]
        if lacking:
            raise QuantmlInputError(
                f"the model needs feature(s) {lacking[:8]}{' ...' if len(lacking) > 8 else ''} that this panel "
                f"cannot provide (skipped blocks: {ctx.skipped}); add the missing raw columns to the panel, with "
                "real values (not NaN on every bar, not open = high = low = close)"
            )
        names = list(expected)
    dropped = [n for n in ctx.features if ctx.modalities[n] in drop]
    if not names:
        raise QuantmlInputError(
            f"feature set {cfg.get('name', '?')!r} produced no features (skipped: {ctx.skipped}, "
            f"dropped modalities: {sorted(drop)}); choose a feature set whose columns the panel has"
        )
    # one contiguous row per feature: pandas keeps it as a single float32 block [F, n]
    block = np.empty((len(names), len(panel)), dtype=np.float32)
    for j, n in enumerate(names):
        block[j] = ctx.features.pop(n)
    frame = pd.DataFrame(block.T, columns=names, index=panel.index, copy=False)
    # raw exogenous columns of a dropped modality feed only dropped features
    used = sorted(c for c in ctx.used if modality_of(c.removesuffix("_missing")) not in drop)
    rows = np.flatnonzero(flagged)
    gaps = pd.DataFrame(
        {
            SYMBOL: panel[SYMBOL].to_numpy()[rows],
            TIMESTAMP: panel[TIMESTAMP].to_numpy()[rows],
            "previous": panel[TIMESTAMP].to_numpy()[rows - 1] if len(rows) else panel[TIMESTAMP].to_numpy()[:0],
            "bars_missing": gap_bars[rows],
        }
    )
    return FeatureMatrix(
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
