"""Feature blocks: small causal functions, each tagged with a modality.

A block is ``fn(ctx, **params) -> None``; it reads raw columns through ``ctx.col`` (which
records them as inputs) and adds features with ``ctx.add(name, values, modality)``.
Windows, lags and half-lives are **bars** of the panel (an int, bit for bit as always) or
**durations** (``"1d"``, ``"4h"``, ``"2w"``: the grammar of ``quantml.contracts.parse_duration``),
each converted to bars on each symbol's own trading calendar
(``quantml.contracts.time.duration_to_bars``; :meth:`Context.windows`). A feature is named by what
was written (``ret_24``, ``ret_1d``); what a duration resolved to per symbol is recorded in
``Context.resolved``. A duration shorter than one bar of the panel skips that feature (a list
value) or the block (a single-valued parameter), with the reason. Blocks whose source columns are
absent raise :class:`Skip` (reported in ``FeatureMatrix.skipped``, not an error). An optional
bar column the panel cannot supply (``quantml.data.panel.unavailable_columns``: missing, NaN on
every bar, or degenerate, such as high = low = close in a close-only series) counts as absent:
``ctx.has`` is False and ``ctx.col`` raises :class:`Skip` saying why, so a block (or the part of
one, :meth:`Context.part`) that reads it is skipped instead of computing zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import EXOGENOUS_MODALITY, MODALITIES, SYMBOL, TIMESTAMP, QuantmlInputError, modality_of
from quantml.contracts.schema import BAR_COLUMNS
from quantml.contracts.time import Calendar, DurationTooShort, duration_parts, duration_to_bars, infer_calendars
from quantml.data.panel import ts_int64
from quantml.features import kernels
from quantml.features.ops import SegmentOps

_LN2_4 = 4.0 * np.log(2.0)


class Skip(Exception):
    """A block (or part of one) cannot run on this panel; the message says why."""


@dataclass(frozen=True)
class Window:
    """A window, lag or half-life of a block, resolved to bars.

    label : how it appears in feature names: the bar count (``"24"``) or the duration as written,
        in canonical units (``"1d"``, ``"4h"``, ``"30min"``, ``"2w"``).
    bars : an ``int`` (a bar count: the same on every symbol) or a tuple of one count per symbol
        (a duration, in the order the symbols first appear in the panel).
    """

    label: str
    bars: int | tuple[int, ...]

    @property
    def typical(self) -> float:
        """Mean bars over symbols (to order windows from short to long)."""
        return float(np.mean(self.bars))


_WINDOW_FORMS = "a positive whole number of bars (24) or a duration (30min, 4h, 1d, 5d, 2w)"


@dataclass
class Context:
    """What a block sees: the panel, per-symbol ops, and the features built so far."""

    panel: pd.DataFrame
    ops: SegmentOps
    bar: pd.Timedelta
    features: dict[str, np.ndarray] = field(default_factory=dict)
    modalities: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    known_future: list[str] = field(default_factory=list)
    # optional bar columns the panel cannot supply -> why (quantml.data.panel.unavailable_columns)
    unavailable: dict[str, str] = field(default_factory=dict)
    # symbol -> Calendar pinned by the caller (a served model's training calendars); the rest inferred
    pinned: dict[str, Calendar] = field(default_factory=dict)
    block: str = ""  # the block running now (for skip and resolution keys)
    # "<block>.<param>=<duration>" -> {symbol: bars}, for every duration a block resolved
    resolved: dict[str, dict[str, int]] = field(default_factory=dict)
    _calendars: dict[str, Calendar] | None = None
    _cache: dict = field(default_factory=dict)
    # the whole panel's context when this one covers a group of its symbols (``build_features`` runs
    # the per-symbol blocks group by group): symbols and calendars are the whole panel's, so windows
    # resolve identically in every group
    parent: Context | None = None
    origin: dict[str, str] = field(default_factory=dict)  # feature -> the block that built it
    # every column of the panel when ``panel`` holds only some (a partitioned panel's whole-panel steps)
    columns: tuple[str, ...] | None = None
    # feature name -> where its float32 values go (its row of the feature matrix); others are kept here
    sink: dict[str, np.ndarray] | None = None

    def release(self, keys: pd.DataFrame) -> None:
        """Drop the cached whole-panel arrays and keep only ``keys`` (timestamp, symbol) as the panel:
        what group contexts still read from their parent (symbols, calendars) is kept."""
        _ = self.symbols  # computed from the panel before it goes
        self._cache = {"symbols": self._cache["symbols"]}
        self.panel = keys
        self.ops = None

    def forget_columns(self) -> None:
        """Drop cached arrays other than the bar columns and the 1-bar return (a later block computes or
        reads them again, to the same bits): a group's working set stays one block's."""
        for key in [k for k in self._cache if isinstance(k, tuple) and not (k[0] == "col" and k[1] in BAR_COLUMNS)]:
            del self._cache[key]

    # -- windows: bars or durations
    @property
    def symbols(self) -> list[str]:
        """Symbols in the order they first appear (the order of per-symbol window tuples)."""
        if self.parent is not None:
            return self.parent.symbols
        if "symbols" not in self._cache:
            self._cache["symbols"] = [str(s) for s in pd.unique(self.panel[SYMBOL])]
        return self._cache["symbols"]

    @property
    def calendars(self) -> dict[str, Calendar]:
        """Each symbol's calendar: pinned, else inferred from the panel (only when a duration is used)."""
        if self.parent is not None:
            return self.parent.calendars
        if self._calendars is None:
            need = [s for s in self.symbols if s not in self.pinned]
            inferred = infer_calendars(self.panel[[TIMESTAMP, SYMBOL]]) if need else {}
            self._calendars = {s: self.pinned.get(s) or inferred[s] for s in self.symbols}
        return self._calendars

    def _window(self, value, param: str) -> Window:
        what = f"{self.block}.{param}" if self.block else param
        if isinstance(value, bool) or value is None:
            raise QuantmlInputError(f"feature parameter {what}={value!r} must be {_WINDOW_FORMS}")
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, (int, np.integer, float, np.floating)):
            if not float(value).is_integer() or int(value) < 1:
                raise QuantmlInputError(
                    f"feature parameter {what}={value!r} must be positive whole numbers of bars, "
                    f"or durations: {_WINDOW_FORMS}"
                )
            return Window(str(int(value)), int(value))
        try:
            count, unit = duration_parts(value, what)
        except QuantmlInputError:
            raise QuantmlInputError(
                f"feature parameter {what}={value!r} is neither a whole number of bars nor a duration; "
                f"write {_WINDOW_FORMS}"
            ) from None
        label = f"{count}{unit}"
        bars = []
        for sym in self.symbols:
            try:
                bars.append(duration_to_bars(value, self.calendars[sym], what))
            except DurationTooShort as why:
                raise Skip(f"{why} (symbol {sym})") from None
        self.resolved[f"{what}={label}"] = dict(zip(self.symbols, bars))
        return Window(label, tuple(bars))

    def window(self, value, param: str) -> Window:
        """One window/lag/half-life parameter resolved to bars; a duration under one bar skips the
        block (or the part running)."""
        return self._window(value, param)

    def windows(self, values, param: str) -> list[Window]:
        """A list parameter resolved to bars; a duration under one bar drops that value alone
        (noted as ``skipped["<block>.<param>=<duration>"]``), and none left skips the block."""
        out = []
        for v in values if isinstance(values, (list, tuple)) else [values]:
            try:
                out.append(self._window(v, param))
            except Skip as why:
                key = f"{self.block}.{param}={v}" if self.block else f"{param}={v}"
                self.skipped[key] = str(why)
        if not out:
            raise Skip(f"every {param} value is shorter than one bar of this panel: {values}")
        return out

    def has(self, column: str) -> bool:
        present = column in self.columns if self.columns is not None else column in self.panel.columns
        return present and column not in self.unavailable

    def why_not(self, column: str) -> str:
        """Why ``column`` cannot be read (for a skip message)."""
        return self.unavailable.get(column, "absent from the panel")

    def col(self, column: str) -> np.ndarray:
        """Raw column as float64 (recorded as an input of the feature set)."""
        if not self.has(column):
            raise Skip(f"needs column {column!r}, {self.why_not(column)}")
        self.used.add(column)
        key = ("col", column)
        if key not in self._cache:
            values = self.panel[column]
            if values.dtype == np.float64:  # a float64 column as it is (read-only): no copy per read
                self._cache[key] = values.to_numpy()
            else:
                self._cache[key] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return self._cache[key]

    def add(self, name: str, values: np.ndarray, modality: str, known_future: bool = False) -> None:
        if name in self.features:
            raise ValueError(f"feature {name!r} defined twice; rename it in the feature-set config")
        dest = self.sink.get(name) if self.sink is not None else None
        with np.errstate(over="ignore", invalid="ignore"):
            if dest is not None:  # straight into the feature matrix: the same float32 rounding
                np.copyto(dest, values, casting="unsafe")
                v = dest
            else:
                v = np.asarray(values, dtype=np.float32)  # stored as float32 at once: half the memory
                if v is values:  # never write into the caller's (or the panel's) array
                    v = v.copy()
        v[~np.isfinite(v)] = np.nan
        self.features[name] = v
        self.modalities[name] = modality
        self.origin[name] = self.block
        if known_future:
            self.known_future.append(name)

    def note_absent(self, block: str, wanted: tuple[str, ...]) -> list[str]:
        """Columns of ``wanted`` present in the panel; each absent one is noted in ``skipped``."""
        present = [c for c in wanted if self.has(c)]
        if present:
            for c in wanted:
                if c not in present:
                    self.skipped[f"{block}.{c}"] = f"column {c!r} {self.why_not(c)}"
        return present

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Run one part of a block: a :class:`Skip` inside it is noted as ``skipped[name]`` and
        the rest of the block goes on. A part reads every column before it adds a feature."""
        try:
            yield
        except Skip as why:
            self.skipped[name] = str(why)

    def add_missing_flag(self, column: str, modality: str) -> None:
        flag = f"{column}_missing"
        if self.has(flag):
            self.add(flag, self.col(flag), modality)

    # -- shared building blocks, computed once
    def logret(self) -> np.ndarray:
        """1-bar log return of the close (NaN on each symbol's first bar)."""
        if "r1" not in self._cache:
            self._cache["r1"] = self.ops.diff(np.log(self.col("close")), 1)
        return self._cache["r1"]

    def realised_vol(self, window) -> np.ndarray:
        """sqrt of the mean squared 1-bar log return over ``window`` bars (an int or per symbol)."""
        key = ("rv", window)
        if key not in self._cache:
            r = self.logret()
            self._cache[key] = np.sqrt(self.ops.mean(r * r, window))
        return self._cache[key]

    def atr_frac(self, window) -> np.ndarray:
        """Average true range over ``window`` bars as a fraction of the close."""
        key = ("atr", window)
        if key not in self._cache:
            h, lo, c = self.col("high"), self.col("low"), self.col("close")
            pc = self.ops.shift(c, 1)
            tr = np.fmax(h - lo, np.fmax(np.abs(h - pc), np.abs(lo - pc)))  # fmax: first bar uses h-l
            self._cache[key] = self.ops.mean(tr / c, window)
        return self._cache[key]


def _safe_log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)


def _log1p(x: np.ndarray) -> np.ndarray:
    """log(1 + x) for counts; NaN where x <= -1 (corrupt input) instead of a warning."""
    return _safe_log(1.0 + np.asarray(x, dtype=np.float64))


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _minp(w):
    """Min observations for exogenous rolling stats (they have gaps); per symbol for a tuple."""
    if isinstance(w, tuple):
        return tuple(max(2, b // 2) for b in w)
    return max(2, w // 2)


# ---------------------------------------------------------------------------- price
def returns(ctx: Context, lags=(1, 2, 4, 8, 24)) -> None:
    """``ret_<k>``: log(close_t / close_{t-k}) for each lag k (bars or a duration)."""
    lc = np.log(ctx.col("close"))
    for k in ctx.windows(lags, "lags"):
        ctx.add(f"ret_{k.label}", ctx.ops.diff(lc, k.bars), "price")


def volatility(ctx: Context, windows=(12, 48, 192), parkinson: bool = True) -> None:
    """Realised vol ``rv_<w>`` = sqrt(mean r^2), term structure ``rv_ratio_<w0>_<w>`` =
    log(rv_w0 / rv_w) for every longer window, Parkinson range vol ``pk_vol_<w0>``."""
    ws = sorted(ctx.windows(windows, "windows"), key=lambda w: w.typical)
    for w in ws:
        ctx.add(f"rv_{w.label}", ctx.realised_vol(w.bars), "price")
    w0 = ws[0]
    for w in ws[1:]:
        ratio = _safe_log(_ratio(ctx.realised_vol(w0.bars), ctx.realised_vol(w.bars)))
        ctx.add(f"rv_ratio_{w0.label}_{w.label}", ratio, "price")
    if parkinson:
        with ctx.part("volatility.pk_vol"):
            hl = np.log(ctx.col("high") / ctx.col("low"))
            ctx.add(f"pk_vol_{w0.label}", np.sqrt(ctx.ops.mean(hl * hl, w0.bars) / _LN2_4), "price")


# ---------------------------------------------------------------------------- volume
def volume(ctx: Context, windows=(24, 96), impact_window: int = 24) -> None:
    """``volume_z_<w>``: z-score of log(1+volume); ``amihud_<w>``: log of the mean of
    |r| / dollar volume (Amihud illiquidity; bars without volume are ignored)."""
    lv = _log1p(ctx.col("volume"))
    ws = ctx.windows(windows, "windows")
    w = ctx.window(impact_window, "impact_window")
    for v in ws:
        ctx.add(f"volume_z_{v.label}", ctx.ops.zscore(lv, v.bars), "volume")
    dollar = ctx.col("close") * ctx.col("volume")
    illiq = _ratio(np.abs(ctx.logret()), dollar)
    illiq[dollar <= 0] = np.nan
    ctx.add(f"amihud_{w.label}", _safe_log(ctx.ops.mean(illiq, w.bars, _minp(w.bars))), "volume")


# ---------------------------------------------------------------------------- regime core
def regime(
    ctx: Context,
    vol_window: int = 24,
    regime_window: int = 480,
    volume_fast: int = 12,
    volume_slow: int = 96,
    momentum_window: int = 96,
    atr_window: int = 24,
    slope_lag: int = 24,
    structure_window: int = 96,
) -> None:
    """Regime core: volatility regime, volume regime, momentum, ATR slope, structure gap
    (price/volume), and the funding / open-interest slopes (derivatives). Each part whose
    columns are absent is skipped alone: the volume regime without volume, the ATR slope and
    the structure gap without high/low ranges, the slopes without their columns."""
    named = {
        "vol_window": vol_window,
        "regime_window": regime_window,
        "volume_fast": volume_fast,
        "volume_slow": volume_slow,
        "momentum_window": momentum_window,
        "atr_window": atr_window,
        "slope_lag": slope_lag,
        "structure_window": structure_window,
    }
    w = {k: ctx.window(v, k) for k, v in named.items()}
    vw, rw, vf, vs, aw, sl = (
        w[k].bars for k in ("vol_window", "regime_window", "volume_fast", "volume_slow", "atr_window", "slope_lag")
    )
    mw, sw = w["momentum_window"], w["structure_window"]
    ops = ctx.ops
    lrv = _safe_log(ctx.realised_vol(vw))
    ctx.add("regime_vol_z", ops.zscore(lrv, rw, _minp(rw)), "price")
    with ctx.part("regime.regime_volume"):
        lv = ctx.col("volume")
        ctx.add("regime_volume", _safe_log(_ratio(ops.mean(lv, vf), ops.mean(lv, vs))), "volume")
    lc = np.log(ctx.col("close"))
    momentum = _ratio(ops.diff(lc, mw.bars), ctx.realised_vol(vw) * np.sqrt(ops.per_row(mw.bars)))
    ctx.add(f"momentum_{mw.label}", momentum, "price")
    with ctx.part("regime.atr_slope"):
        atr = ctx.atr_frac(aw)
        ctx.add("atr_slope", _safe_log(_ratio(atr, ops.shift(atr, sl))), "price")
    with ctx.part("regime.structure_gap"):
        atr = ctx.atr_frac(aw)
        hi = np.log(ops.max(ctx.col("high"), sw.bars))
        lo = np.log(ops.min(ctx.col("low"), sw.bars))
        ctx.add(f"gap_high_{sw.label}", _ratio(lc - hi, atr), "price")
        ctx.add(f"gap_low_{sw.label}", _ratio(lc - lo, atr), "price")
        ctx.add(f"range_pos_{sw.label}", _ratio(lc - lo, hi - lo), "price")
    if ctx.has("funding_rate"):
        f = ops.mean(ctx.col("funding_rate"), sl, _minp(sl)) * 1e4
        ctx.add("funding_slope", ops.diff(f, sl), "derivatives")
    else:
        ctx.skipped["regime.funding_slope"] = f"needs column 'funding_rate', {ctx.why_not('funding_rate')}"
    if ctx.has("open_interest"):
        ctx.add("oi_slope", ops.diff(_safe_log(ctx.col("open_interest")), sl), "derivatives")
    else:
        ctx.skipped["regime.oi_slope"] = f"needs column 'open_interest', {ctx.why_not('open_interest')}"


# ---------------------------------------------------------------------------- derivatives
DERIVATIVE_COLUMNS = ("funding_rate", "open_interest", "basis", "long_short_ratio", "taker_buy_sell_ratio")


def derivatives(ctx: Context, z_window: int = 96, change_lags=(1, 24), smooth: int = 12) -> None:
    """Funding (bps, z-score), open-interest change and z-score, basis (level, z-score),
    long/short ratio (log, change), taker buy/sell ratio (log, smoothed); ``*_missing`` flags."""
    present = ctx.note_absent("derivatives", DERIVATIVE_COLUMNS)
    if not present:
        raise Skip(f"needs at least one of {list(DERIVATIVE_COLUMNS)}, none in the panel")
    ops, zw = ctx.ops, ctx.window(z_window, "z_window")
    lags = ctx.windows(change_lags, "change_lags")
    smw = ctx.window(smooth, "smooth")
    w, sm = zw.bars, smw.bars
    m = "derivatives"
    if "funding_rate" in present:
        f = ctx.col("funding_rate") * 1e4
        ctx.add("funding_bps", f, m)
        ctx.add(f"funding_z_{zw.label}", ops.zscore(f, w, _minp(w)), m)
    if "open_interest" in present:
        loi = _safe_log(ctx.col("open_interest"))
        for k in lags:
            ctx.add(f"oi_chg_{k.label}", ops.diff(loi, k.bars), m)
        ctx.add(f"oi_z_{zw.label}", ops.zscore(loi, w, _minp(w)), m)
    if "basis" in present:
        bs = ctx.col("basis")
        ctx.add("basis", bs, m)
        ctx.add(f"basis_z_{zw.label}", ops.zscore(bs, w, _minp(w)), m)
    if "long_short_ratio" in present:
        ls = _safe_log(ctx.col("long_short_ratio"))
        ctx.add("ls_log", ls, m)
        for k in lags:
            ctx.add(f"ls_chg_{k.label}", ops.diff(ls, k.bars), m)
    if "taker_buy_sell_ratio" in present:
        tk = _safe_log(ctx.col("taker_buy_sell_ratio"))
        ctx.add("taker_log", tk, m)
        ctx.add(f"taker_mean_{smw.label}", ops.mean(tk, sm, _minp(sm)), m)
    for c in present:
        ctx.add_missing_flag(c, m)


# ---------------------------------------------------------------------------- on-chain
def onchain(ctx: Context, windows=(24, 168)) -> None:
    """``netflow_z_<w>``: z-score of exchange net flow; ``netflow_t_<w>``: mean / std
    over the window (persistent in- or outflow)."""
    x = ctx.col("onchain_netflow")
    for v in ctx.windows(windows, "windows"):
        w = v.bars
        ctx.add(f"netflow_z_{v.label}", ctx.ops.zscore(x, w, _minp(w)), "onchain")
        mu, sd = ctx.ops.mean(x, w, _minp(w)), ctx.ops.std(x, w, _minp(w))
        ctx.add(f"netflow_t_{v.label}", _ratio(mu, sd), "onchain")
    ctx.add_missing_flag("onchain_netflow", "onchain")


# ---------------------------------------------------------------------------- text / social
SOCIAL_COLUMNS = ("social_posts", "social_comments", "social_sentiment", "social_sources")


def text(ctx: Context, fast: int = 6, slow: int = 72, sentiment_halflife: float | str = 12.0) -> None:
    """Social statistics: post velocity (log posts vs slow mean), acceleration, comments per
    post, sentiment (raw, EWM, change), source diversity, attention-weighted sentiment."""
    present = ctx.note_absent("text", SOCIAL_COLUMNS)
    if not present:
        raise Skip(f"needs at least one of {list(SOCIAL_COLUMNS)}, none in the panel")
    ops = ctx.ops
    fw, sw = ctx.window(fast, "fast").bars, ctx.window(slow, "slow").bars
    if isinstance(sentiment_halflife, str):  # a duration; a number of bars stays as given (may be fractional)
        sentiment_halflife = ctx.window(sentiment_halflife, "sentiment_halflife").bars
    m = "text"
    velocity = None
    if "social_posts" in present:
        lp = _log1p(ctx.col("social_posts"))
        velocity = lp - ops.mean(lp, sw, _minp(sw))
        ctx.add("social_velocity", velocity, m)
        ctx.add("social_accel", ops.mean(lp, fw, _minp(fw)) - ops.mean(lp, sw, _minp(sw)), m)
        if "social_comments" in present:
            ctx.add("comments_per_post", _log1p(ctx.col("social_comments")) - lp, m)
    if "social_sentiment" in present:
        s = ctx.col("social_sentiment")
        hl = sentiment_halflife if isinstance(sentiment_halflife, tuple) else float(sentiment_halflife)
        ema = ops.ewm_mean(s, hl, min_periods=1)
        ctx.add("sentiment", s, m)
        ctx.add("sentiment_ewm", ema, m)
        ctx.add("sentiment_chg", ema - ops.mean(s, sw, _minp(sw)), m)
        if velocity is not None:
            ctx.add("attention_sentiment", ema * np.fmax(velocity, 0.0), m)
    if "social_sources" in present:
        src = ctx.col("social_sources")
        ctx.add("source_diversity", _log1p(src), m)
        if "social_posts" in present:
            ctx.add("sources_per_post", _ratio(src, ctx.col("social_posts") + 1.0), m)
    for c in present:
        ctx.add_missing_flag(c, m)


# ---------------------------------------------------------------------------- events
def event(ctx: Context, halflives=(6, 48)) -> None:
    """Decayed event intensity ``event_intensity_<hl>`` (sum of counts, half-life hl bars),
    decayed event sentiment ``event_sent_<hl>``, ``bars_since_event`` (log1p; NaN before
    the first event)."""
    cnt = np.nan_to_num(ctx.col("event_count"))
    sent = ctx.col("event_sentiment") if ctx.has("event_sentiment") else None
    for hl in ctx.windows(halflives, "halflives"):
        ctx.add(f"event_intensity_{hl.label}", ctx.ops.decay_sum(cnt, hl.bars), "event")
        if sent is not None:
            ctx.add(f"event_sent_{hl.label}", ctx.ops.decay_sum(cnt * np.nan_to_num(sent), hl.bars), "event")
    ctx.add("bars_since_event", _log1p(ctx.ops.bars_since(cnt > 0)), "event")


# ---------------------------------------------------------------------------- macro
def macro(ctx: Context, halflife: int = 24, change_lag: int = 168) -> None:
    """``macro_surprise`` (latest release, NaN when stale) and its decay since release
    ``macro_surprise_decay``; ``macro_rate`` level and change ``macro_rate_chg_<lag>``."""
    present = ctx.note_absent("macro", ("macro_surprise", "macro_rate"))
    if not present:
        raise Skip("needs column 'macro_surprise' or 'macro_rate', none in the panel")
    hlw, lagw = ctx.window(halflife, "halflife"), ctx.window(change_lag, "change_lag")
    hl, lag = hlw.bars, lagw.bars
    ops = ctx.ops
    if "macro_surprise" in present:
        v = ctx.col("macro_surprise")
        prev = ops.shift(v, 1)
        new = np.isfinite(v) & ~((v == prev) | (np.isnan(v) & np.isnan(prev)))
        age = ops.bars_since(new)
        ctx.add("macro_surprise", v, "macro")
        ctx.add("macro_surprise_decay", v * 0.5 ** (age / ops.per_row(hl)), "macro")
    if "macro_rate" in present:
        r = ctx.col("macro_rate")
        ctx.add("macro_rate", r, "macro")
        ctx.add(f"macro_rate_chg_{lagw.label}", ops.diff(r, lag), "macro")
    for c in present:
        ctx.add_missing_flag(c, "macro")


# ---------------------------------------------------------------------------- microstructure
def _any_flag(ctx: Context, columns: tuple[str, ...]) -> np.ndarray | None:
    """1.0 where any of the columns' as-of ``*_missing`` flags is set (None: no flag in the panel)."""
    flags = [ctx.col(f"{c}_missing") for c in columns if ctx.has(f"{c}_missing")]
    return None if not flags else np.fmax.reduce(flags) if len(flags) > 1 else flags[0]


def microstructure(ctx: Context, z_window: int = 96, smooth: int = 6) -> None:
    """Order-book snapshots joined as of publication (``bid, ask, bid_size, ask_size`` [+
    ``depth_bid, depth_ask``]): relative spread ``ob_spread_bps`` and its z-score
    ``ob_spread_z_<w>`` (of the log spread), imbalance at the touch ``ob_imbalance`` =
    (bid_size - ask_size) / (bid_size + ask_size) and its mean ``ob_imbalance_mean_<s>``, the
    z-score of the log touch size ``ob_touch_z_<w>``, depth imbalance ``ob_depth_imbalance`` and
    z-score ``ob_depth_z_<w>`` over a few levels; flags ``ob_quote_missing``, ``ob_size_missing``,
    ``ob_depth_missing`` (any of their columns missing or stale). Each part is skipped alone when
    its columns are absent; the whole block when the stream is."""
    from quantml.data.asof import ORDERBOOK_COLUMNS, ORDERBOOK_DEPTH

    if not any(ctx.has(c) for c in (*ORDERBOOK_COLUMNS, *ORDERBOOK_DEPTH)):
        raise Skip(
            f"needs an order-book stream (columns {list(ORDERBOOK_COLUMNS)}: data.streams: {{orderbook: FILE}}, "
            "or data.orderbook=true on synthetic data), none in the panel"
        )
    ops, m = ctx.ops, "microstructure"
    zw, smw = ctx.window(z_window, "z_window"), ctx.window(smooth, "smooth")
    w, sm = zw.bars, smw.bars
    with ctx.part("microstructure.spread"):
        bid, ask = ctx.col("bid"), ctx.col("ask")
        flag = _any_flag(ctx, ("bid", "ask"))
        rel = _ratio(ask - bid, (ask + bid) / 2.0)
        rel[rel < 0] = np.nan  # a crossed quote carries no spread
        ctx.add("ob_spread_bps", rel * 1e4, m)
        ctx.add(f"ob_spread_z_{zw.label}", ops.zscore(_safe_log(rel), w, _minp(w)), m)
        if flag is not None:
            ctx.add("ob_quote_missing", flag, m)
    with ctx.part("microstructure.imbalance"):
        bs, asz = ctx.col("bid_size"), ctx.col("ask_size")
        flag = _any_flag(ctx, ("bid_size", "ask_size"))
        imb = _ratio(bs - asz, bs + asz)
        ctx.add("ob_imbalance", imb, m)
        ctx.add(f"ob_imbalance_mean_{smw.label}", ops.mean(imb, sm, _minp(sm)), m)
        ctx.add(f"ob_touch_z_{zw.label}", ops.zscore(_safe_log(bs + asz), w, _minp(w)), m)
        if flag is not None:
            ctx.add("ob_size_missing", flag, m)
    with ctx.part("microstructure.depth"):
        db, da = ctx.col("depth_bid"), ctx.col("depth_ask")
        flag = _any_flag(ctx, ("depth_bid", "depth_ask"))
        ctx.add("ob_depth_imbalance", _ratio(db - da, db + da), m)
        ctx.add(f"ob_depth_z_{zw.label}", ops.zscore(_safe_log(db + da), w, _minp(w)), m)
        if flag is not None:
            ctx.add("ob_depth_missing", flag, m)


# ---------------------------------------------------------------------------- calendar
def calendar(ctx: Context, hour: bool | None = None, day_of_week: bool = True, month: bool = False) -> None:
    """Hour-of-day and day-of-week (and optionally month) as sin/cos; known in advance.
    ``hour=None`` adds hour features only for intraday bars."""
    ts = ctx.panel[TIMESTAMP].dt
    use_hour = (ctx.bar < pd.Timedelta("1D")) if hour is None else bool(hour)
    parts = []
    if use_hour:
        parts.append(("hour", (ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0) / 24.0))
    if day_of_week:
        parts.append(("dow", ts.dayofweek.to_numpy() / 7.0))
    if month:
        parts.append(("month", (ts.month.to_numpy() - 1) / 12.0))
    for name, frac in parts:
        ctx.add(f"{name}_sin", np.sin(2 * np.pi * frac), "calendar", known_future=True)
        ctx.add(f"{name}_cos", np.cos(2 * np.pi * frac), "calendar", known_future=True)


# ---------------------------------------------------------------------------- cross-section
def cross_section(ctx: Context, lags=(1, 24), vol_window: int = 48) -> None:
    """Percentile rank across symbols at the same timestamp of ``ret_<k>`` and ``rv``
    (uses only bars at t of other symbols: causal)."""
    if ctx.panel[SYMBOL].nunique() < 2:
        raise Skip("needs at least 2 symbols")
    lc = np.log(ctx.col("close"))
    tcodes, n_times = kernels.time_codes(ts_int64(ctx.panel[TIMESTAMP]))
    scodes, n_syms = ctx.ops.codes, int(ctx.ops.codes.max()) + 1
    w = ctx.window(vol_window, "vol_window")

    def rank(x: np.ndarray) -> np.ndarray:
        return kernels.rank_pct(x, tcodes, n_times, scodes, n_syms)

    for k in ctx.windows(lags, "lags"):
        ctx.add(f"xs_rank_ret_{k.label}", rank(ctx.ops.diff(lc, k.bars)), "cross_section")
    ctx.add(f"xs_rank_rv_{w.label}", rank(ctx.realised_vol(w.bars)), "cross_section")


# ---------------------------------------------------------------------------- passthrough
KNOWN_EXOGENOUS = set(EXOGENOUS_MODALITY)


def passthrough(ctx: Context, include_known: bool = False) -> None:
    """User exogenous columns tagged by prefix (``macro_*``, ``text_*``, ``onchain_*`` ...)
    that no other block reads, as raw values with their modality (+ ``*_missing`` flags)."""
    added = 0
    for c in ctx.panel.columns:
        if c in BAR_COLUMNS or c.endswith("_missing") or (c in KNOWN_EXOGENOUS and not include_known):
            continue
        mod = modality_of(c)
        if mod is None or not pd.api.types.is_numeric_dtype(ctx.panel[c]):
            continue
        ctx.add(f"x_{c}", ctx.col(c), mod)
        ctx.add_missing_flag(c, mod)
        added += 1
    if not added:
        raise Skip("no extra exogenous columns (named <modality>_*) in the panel")


@dataclass(frozen=True)
class BlockSpec:
    fn: Callable
    modalities: tuple[str, ...]  # modalities the block can produce (for drop_modalities)
    requires: tuple[str, ...] = ()  # every one needed, else the block is skipped
    # computed on time slices across every symbol (on the whole panel); the others see groups of whole symbols
    cross_sectional: bool = False


BLOCKS: dict[str, BlockSpec] = {
    "returns": BlockSpec(returns, ("price",), ("close",)),
    "volatility": BlockSpec(volatility, ("price",), ("close",)),  # Parkinson part: high, low
    "volume": BlockSpec(volume, ("volume",), ("close", "volume")),
    "regime": BlockSpec(regime, ("price", "volume", "derivatives"), ("close",)),  # parts: volume, high, low
    "derivatives": BlockSpec(derivatives, ("derivatives",)),
    "onchain": BlockSpec(onchain, ("onchain",), ("onchain_netflow",)),
    "text": BlockSpec(text, ("text",)),
    "event": BlockSpec(event, ("event",), ("event_count",)),
    "macro": BlockSpec(macro, ("macro",)),
    "microstructure": BlockSpec(microstructure, ("microstructure",)),
    "calendar": BlockSpec(calendar, ("calendar",)),
    "cross_section": BlockSpec(cross_section, ("cross_section",), ("close",), cross_sectional=True),
    "passthrough": BlockSpec(
        passthrough,
        tuple(sorted(MODALITIES)),  # tags by prefix: any modality (microstructure_* too)
    ),
}
