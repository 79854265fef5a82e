"""Seeded synthetic crypto-style panel with every exogenous stream.

What is planted (so tests and demos have a small, real, causal signal to find):

* Volatility follows a 3-state Markov regime (calm/normal/turbulent, x0.6/x1/x1.9)
  per symbol, mixed with a market-wide regime; a common factor carries half the
  variance; innovations are Student-t(4) (fat tails).
* The drift of bar ``t+1`` loads on values *published and available* at bar ``t``:
  funding rate (contrarian), social sentiment, on-chain net flow (inflows bearish),
  a decaying post-event drift from event sentiment, and a decaying post-release drift of
  the common factor from the macro surprise. Strength is set per unit of time so the
  information coefficient is about 0.08 at a 1-day horizon whatever the bar size
  (about 0.015 per 1h bar, 0.005 per 5m bar).
* OHLC around the close (open = previous close + tiny gap, high/low outside both),
  volume rising with volatility and with |return|.
* Streams are separate tables ``symbol, event_time, available_at, <values>`` with a
  publication lag, 1% random gaps and one multi-hour outage per stream; social data of the
  last symbol starts late; events arrive at random times with random (sometimes hours-long)
  publication lags; macro tables have no symbol (market-wide) and ``event_time`` is the
  reference period, days before ``available_at``.

* With ``orderbook=True`` (opt-in), an order-book stream too: a snapshot at every bar close
  (bid/ask around the close, sizes at the touch, depth over a few levels), relative spreads
  that widen with the volatility regime (and touch depth that thins), and an imbalance at the
  touch whose value at bar ``t`` moves the drift of bar ``t+1`` (a next-bar IC of about
  ``K_BOOK`` at any bar size). Its draws come from a generator of their own, so every other
  stream keeps its values; the bars (and the taker stream, tied to returns) differ by the
  planted drift only. ``orderbook=False`` is bit-identical to the generator without the flag.
* With ``price_signal=True`` (opt-in), a price-based drift too: a short-term cross-sectional
  reversal. The drift of bar ``t+1`` loads (strength ``K_PRICE`` per unit of time, like the
  exogenous state's ``K_STATE``) on minus an exponentially weighted sum (half-life
  ``PRICE_HALF_LIFE``) of the symbol's idiosyncratic return shocks of bars ``<= t``, so its past
  returns relative to the other symbols' forecast it. The two signals are complementary: the
  reversal is strong in the turbulent market-wide volatility regime and weak in the calm one, the
  exogenous drift the other way round (weights ``PRICE_REGIME_WEIGHT`` and ``2 -`` them), so an
  expert of either kind sees about half of the planted drift. Nothing new is drawn: every stream
  not tied to returns (and ``sigma``, ``regime``) keeps its values; the bars (and the taker stream)
  differ by the drift only; ``truth["price_signal"]`` holds the planted reversal term.
  ``price_signal=False`` is bit-identical to the generator without the flag.

* With ``regime_shift_at=<time>`` (opt-in; planted drift for ``quantml monitor``'s tests), from the
  first bar at or after that time the volatility level jumps (``sigma`` x ``regime_shift_vol``, 3) and
  the planted exogenous loadings flip sign (the drift of bar ``t+1`` loads on minus the state seen
  at ``t``), so a model trained before the shift sees its features drift, its intervals under-cover
  and its forecasts point the wrong way. Nothing new is drawn: every stream not tied to returns keeps
  its values; ``truth["regime_shift"]`` is 1.0 from the shift bar on. ``regime_shift_at=None``
  is bit-identical to the generator without the flag.

Same arguments -> identical data. 10 symbols x 100k 5m bars take a few seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, parse_duration
from quantml.data.plants import PlantContext, load_plants, plant_rng

NAMES = ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX", "DOT", "LINK")
REGIME_VOL = np.array([0.6, 1.0, 1.9])
_DAY = pd.Timedelta("1D")
# signal strengths (IC at a 1-day horizon, before noise from the other components)
K_STATE = 0.15  # funding / sentiment / net-flow combination
K_EVENT = 0.10  # post-event drift
K_MACRO = 0.06  # post-macro-release drift of the common factor
EVENTS_PER_DAY = 0.7
K_BOOK = 0.04  # order-book imbalance -> next-bar return (IC per bar, whatever the bar size)
# order-book draws use their own generator, seeded from (seed, this key): the default panel's
# draws are untouched by the flag
_ORDERBOOK_KEY = 0x0B00C
K_PRICE = 0.15  # short-term reversal of past idiosyncratic returns (per unit of time, like K_STATE)
PRICE_HALF_LIFE = pd.Timedelta("12h")  # memory of the reversal's trailing shocks
# weight of the reversal in the calm / normal / turbulent market volatility regime; the exogenous
# drift gets 2 - weight (complementary experts: each sees about half the planted drift)
PRICE_REGIME_WEIGHT = np.array([0.3, 1.0, 1.7])
REGIME_SHIFT_VOL = 3.0  # default volatility multiplier from regime_shift_at on (regime_shift_vol)


@dataclass
class SyntheticData:
    """``bars``: OHLCV panel (timestamp, symbol, open, high, low, close, volume).

    ``streams``: name -> DataFrame(``symbol`` [absent for market-wide], ``event_time``,
    ``available_at``, value columns), sorted by (symbol, event_time).
    ``truth``: name -> float array [n_bars, n_symbols] of latent/planted quantities
    (``drift``, ``sigma``, ``regime``) for tests.
    """

    bars: pd.DataFrame
    streams: dict[str, pd.DataFrame]
    truth: dict[str, np.ndarray] = field(default_factory=dict)


def _orderbook_state(
    b: _Builder, rng: np.random.Generator, mult: np.ndarray, bars_per
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The order book's latent state and its stream rows (prices filled in once the closes exist).

    Returns the stream (``_pos``/``_sym``: the bar and symbol each row snapshots; ``bid``/``ask``
    still missing) and [n_bars, n_symbols] arrays: ``spread`` (relative, ask/bid around the close)
    and the imbalance at the touch ``imbalance``.
    """
    T, N = b.n_bars, b.n_sym
    # imbalance at the touch: short-lived (half-life 30 min, at least a bar)
    hl = max(1.0, bars_per(pd.Timedelta("30min")))
    imb = np.tanh(0.9 * _ar1(rng, (T, N), hl) + 0.25 * rng.standard_normal((T, N)))
    # touch size thins in turbulent regimes; depth over a few levels is a multiple of it
    touch = np.exp(
        rng.uniform(2.0, 6.0, N)[None, :]
        + 0.3 * _ar1(rng, (T, N), bars_per(pd.Timedelta("1D")))
        - 0.5 * np.log(mult)
        + 0.2 * rng.standard_normal((T, N))
    )
    depth_imb = np.tanh(0.5 * np.arctanh(np.clip(imb, -0.999, 0.999)) + 0.4 * rng.standard_normal((T, N)))
    extra = 4.0 * touch * np.exp(0.25 * rng.standard_normal((T, N)))
    # relative spread: 1-5 bps per symbol, x mult^1.5 (about x2.6 in the turbulent regime)
    spread = rng.uniform(1.0, 5.0, N)[None, :] * 1e-4 * mult**1.5 * np.exp(0.15 * rng.standard_normal((T, N)))
    bid_size = touch * (1.0 + imb) / 2.0
    ask_size = touch * (1.0 - imb) / 2.0
    table = b.stream(
        np.arange(T),
        pd.Timedelta(0),  # a snapshot at the bar close, known at the close
        {
            "_pos": np.broadcast_to(np.arange(T, dtype=np.float64)[:, None], (T, N)),
            "_sym": np.broadcast_to(np.arange(N, dtype=np.float64)[None, :], (T, N)),
            "bid_size": bid_size,
            "ask_size": ask_size,
            "depth_bid": bid_size + extra * (1.0 + depth_imb) / 2.0,
            "depth_ask": ask_size + extra * (1.0 - depth_imb) / 2.0,
        },
    )
    return table, {"spread": spread, "imbalance": imb}


def _orderbook_prices(table: pd.DataFrame, close: np.ndarray, spread: np.ndarray) -> pd.DataFrame:
    """Fill bid/ask around each snapshot's close; the stream's columns in grammar order."""
    pos, sym = table.pop("_pos").to_numpy(np.int64), table.pop("_sym").to_numpy(np.int64)
    mid, half = close[pos, sym], spread[pos, sym] / 2.0
    table.insert(3, "bid", mid * (1.0 - half))
    table.insert(4, "ask", mid * (1.0 + half))
    return table


def _symbols(n: int) -> list[str]:
    return [NAMES[i] if i < len(NAMES) else f"SYN{i:03d}" for i in range(n)]


def _ar1(rng: np.random.Generator, shape: tuple[int, int], half_life_bars: float) -> np.ndarray:
    """Stationary unit-variance AR(1) columns with the given half-life (in bars)."""
    phi = 0.5 ** (1.0 / max(half_life_bars, 1e-9))
    eps = rng.standard_normal(shape)
    x = lfilter([np.sqrt(1 - phi * phi)], [1.0, -phi], eps, axis=0)
    x0 = rng.standard_normal(shape[1])
    return x + np.power(phi, np.arange(1, shape[0] + 1))[:, None] * x0[None, :]


def _markov_regimes(rng: np.random.Generator, n_bars: int, n_cols: int, mean_dur: float) -> np.ndarray:
    """3-state Markov chain per column: geometric durations, jumps to another state."""
    out = np.empty((n_bars, n_cols), dtype=np.int8)
    p = 1.0 / max(mean_dur, 1.0)
    for j in range(n_cols):  # loop over columns (symbols), never over bars
        k = int(n_bars * p * 2) + 16
        durs = rng.geometric(p, size=k)
        while durs.sum() < n_bars:
            durs = np.r_[durs, rng.geometric(p, size=k)]
        states = (rng.integers(0, 3) + np.cumsum(rng.integers(1, 3, size=len(durs)))) % 3
        out[:, j] = np.repeat(states, durs)[:n_bars]
    return out


def _decay(impulses: np.ndarray, half_life_bars: float) -> np.ndarray:
    d = 0.5 ** (1.0 / max(half_life_bars, 1e-9))
    return lfilter([1.0], [1.0, -d], impulses, axis=0)


def _utc(ns: np.ndarray) -> pd.DatetimeIndex:
    """int64 nanoseconds since the epoch -> tz-aware UTC DatetimeIndex (fast path)."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("datetime64[ns]")).tz_localize("UTC")


def _ffill(a: np.ndarray) -> np.ndarray:
    return pd.DataFrame(a).ffill().to_numpy()


class _Builder:
    """Holds the bar clock and turns [n_bars, n_symbols] arrays into stream tables."""

    def __init__(self, ts: pd.DatetimeIndex, bar: pd.Timedelta, symbols: list[str], rng: np.random.Generator):
        self.ts = ts
        self.ts_ns = ts.asi8
        self.bar = bar
        self.symbols = np.asarray(symbols, dtype=object)
        self.rng = rng
        self.n_bars = len(ts)
        self.n_sym = len(symbols)

    def every(self, period: pd.Timedelta) -> np.ndarray:
        """Bar positions where a stream with this period publishes (at least every bar)."""
        k = max(1, int(round(period / self.bar)))
        return np.arange(k - 1, self.n_bars, k)

    def stream(
        self,
        idx: np.ndarray,
        lag: pd.Timedelta,
        values: dict[str, np.ndarray],
        gap_frac: float = 0.01,
        outage_frac: float = 0.02,
        late_start: dict[int, float] | None = None,
    ) -> pd.DataFrame:
        """Rows (symbol, event_time = bar close at ``idx``, available_at = +lag, values[idx])."""
        m = len(idx)
        sym = np.repeat(self.symbols, m)
        pos = np.tile(idx, self.n_sym)
        event = self.ts_ns[pos]
        keep = self.rng.random(m * self.n_sym) >= gap_frac
        if outage_frac > 0 and m > 10:
            j = int(self.rng.integers(self.n_sym))
            length = max(2, int(m * outage_frac))
            s = int(self.rng.integers(0, m - length))
            keep[j * m + s : j * m + s + length] = False
        for j, frac in (late_start or {}).items():
            keep[j * m : j * m + int(m * frac)] = False
        cols = {SYMBOL: sym[keep], "event_time": _utc(event[keep]), "available_at": _utc(event[keep] + lag.value)}
        for name, arr in values.items():
            cols[name] = arr[idx].T.ravel()[keep].astype("float64")
        return pd.DataFrame(cols)

    def observed(self, table: pd.DataFrame, column: str) -> np.ndarray:
        """[n_bars, n_symbols]: latest value of ``column`` available at each bar (NaN before)."""
        out = np.full((self.n_bars, self.n_sym), np.nan)
        codes = pd.Categorical(table[SYMBOL], categories=self.symbols).codes
        vis = np.searchsorted(self.ts_ns, pd.DatetimeIndex(table["available_at"]).asi8, side="left")
        ok = vis < self.n_bars
        out[vis[ok], codes[ok]] = table[column].to_numpy()[ok]
        return _ffill(out)


def _as_utc(value) -> pd.Timestamp:
    try:
        t = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise QuantmlInputError(
            f"synthetic regime_shift_at={value!r} is not a time; give an ISO time such as 2024-03-01T00:00"
        ) from None
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


DEFAULT_BARS = 3000  # 125 days of hourly bars
DEFAULT_SPAN = pd.Timedelta(hours=DEFAULT_BARS)


def default_bars(freq: str) -> int:
    """The bars of ``data.n_bars: null``: 3000 at bars of 1h and longer; for shorter bars, those of the
    hourly default's 125 days (36,000 at 5m), so the default horizons (up to 7d) still leave every
    walk-forward fold training and test rows after purging."""
    bar = parse_duration(freq, "synthetic freq")
    if bar <= pd.Timedelta(0) or bar >= pd.Timedelta(hours=1):
        return DEFAULT_BARS
    return int(DEFAULT_SPAN // bar)


def _check_args(freq: str, n_symbols: int, n_bars: int) -> pd.Timedelta:
    bar = parse_duration(freq, "synthetic freq")
    if bar <= pd.Timedelta(0) or bar > _DAY or (_DAY % bar) != pd.Timedelta(0):
        raise QuantmlInputError(f"synthetic freq={freq!r} must divide one day (e.g. 5m, 15m, 1h, 4h, 1d)")
    if n_symbols < 1 or n_bars < 10:
        raise QuantmlInputError(f"synthetic data needs n_symbols >= 1 and n_bars >= 10 (got {n_symbols}, {n_bars})")
    return bar


def generate_synthetic(
    freq: str = "1h",
    n_symbols: int = 4,
    n_bars: int = 3000,
    seed: int = 0,
    start: str = "2024-01-01",
    orderbook: bool = False,
    price_signal: bool = False,
    regime_shift_at: str | pd.Timestamp | None = None,
    regime_shift_vol: float = REGIME_SHIFT_VOL,
    plants: Mapping[str, Mapping | bool] | None = None,
) -> SyntheticData:
    """Generate bars and exogenous streams; see the module docstring for what is planted.

    Bars are stamped at their close: ``start + bar, start + 2 bar, ...`` (UTC). ``orderbook``:
    also emit the ``orderbook`` stream (and plant its imbalance effect on next-bar returns).
    ``price_signal``: also plant a short-term reversal of past returns, complementary to the
    exogenous drift (see the module docstring). ``regime_shift_at``: a time (ISO, UTC when naive)
    from which the volatility jumps (x ``regime_shift_vol``) and the exogenous loadings flip sign
    (planted drift). ``plants``: opt-in planted effects, ``{flag: options or True}``
    (:mod:`quantml.data.plants`: ``text_stream``, ``lead_lag``, ``vol_regimes``, ``bimodal``), each
    drawing from its own generator.
    """
    bar = _check_args(freq, n_symbols, n_bars)
    planted = load_plants(plants)
    rng = np.random.default_rng(seed)
    T, N = int(n_bars), int(n_symbols)
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    ts = pd.DatetimeIndex(t0 + bar * np.arange(1, T + 1)).as_unit("ns")
    symbols = _symbols(N)
    b = _Builder(ts, bar, symbols, rng)
    bars_per = lambda td: td / bar  # noqa: E731  (bars in a duration)
    dt_years = bar / pd.Timedelta(days=365.25)
    day_scale = np.sqrt(bar / _DAY)  # per-bar strength giving the target IC at 1 day

    # --- volatility: Markov regimes (symbol + market), common factor, fat tails
    mean_dur = max(20.0, bars_per(pd.Timedelta("10D")))
    reg_sym = _markov_regimes(rng, T, N, mean_dur)
    reg_mkt = _markov_regimes(rng, T, 1, mean_dur)
    mult = np.sqrt(0.5 * REGIME_VOL[reg_sym] ** 2 + 0.5 * REGIME_VOL[reg_mkt] ** 2)
    base_vol = rng.uniform(0.5, 1.0, N) * np.sqrt(dt_years)
    sigma = base_vol[None, :] * mult
    shifted = None
    if regime_shift_at is not None:  # planted drift: nothing drawn, only sigma and the loadings change
        shifted = ts >= _as_utc(regime_shift_at)
        try:
            factor = float(regime_shift_vol)
        except (TypeError, ValueError):
            factor = float("nan")
        if not np.isfinite(factor) or factor <= 0:
            raise QuantmlInputError(f"synthetic regime_shift_vol={regime_shift_vol!r} must be a positive number (3)")
        sigma = np.where(shifted[:, None], factor * sigma, sigma)
    contexts = {}
    for flag, plant in planted.items():  # planted volatility regimes: before anything uses sigma
        contexts[flag] = PlantContext(ts, bar, symbols, int(seed), sigma, float(day_scale), plant_rng(seed, flag))
        sigma = np.asarray(plant.sigma(contexts[flag], sigma), dtype=np.float64)
        if sigma.shape != (T, N):
            raise ValueError(f"plant {flag!r} returned sigma of shape {sigma.shape}, expected {(T, N)}")
    for ctx in contexts.values():
        ctx.sigma = sigma
    beta = rng.uniform(0.7, 1.3, N)
    t4 = lambda shape: rng.standard_t(4, size=shape) / np.sqrt(2.0)  # noqa: E731  unit variance
    z_mkt = t4((T, 1))
    z_idio = t4((T, N))

    # --- latent states
    F = _ar1(rng, (T, N), bars_per(pd.Timedelta("3D")))  # funding / crowding
    S = _ar1(rng, (T, N), bars_per(pd.Timedelta("1D")))  # social mood
    NF = _ar1(rng, (T, N), bars_per(pd.Timedelta("12h")))  # exchange net inflow
    OI = _ar1(rng, (T, N), bars_per(pd.Timedelta("7D")))  # open-interest level

    # --- streams whose values do not depend on returns
    hour = pd.Timedelta("1h")
    streams: dict[str, pd.DataFrame] = {}
    streams["funding"] = b.stream(
        b.every(pd.Timedelta("8h")),
        pd.Timedelta("1min"),
        {"funding_rate": 1e-4 + 2.5e-4 * F + 2e-5 * rng.standard_normal((T, N))},
    )
    streams["open_interest"] = b.stream(
        b.every(hour),
        pd.Timedelta("5min"),
        {"open_interest": np.exp(rng.uniform(18, 22, N)[None, :] + 0.25 * OI + 0.1 * F)},
    )
    streams["basis"] = b.stream(
        b.every(hour), pd.Timedelta("5min"), {"basis": 0.05 + 0.08 * F + 0.02 * rng.standard_normal((T, N))}
    )
    streams["long_short"] = b.stream(
        b.every(hour),
        pd.Timedelta("5min"),
        {"long_short_ratio": np.exp(0.25 * F + 0.1 * _ar1(rng, (T, N), bars_per(pd.Timedelta("6h"))))},
    )
    streams["onchain"] = b.stream(
        b.every(hour), pd.Timedelta("30min"), {"onchain_netflow": 1000.0 * NF + 300.0 * rng.standard_normal((T, N))}
    )
    per_hour = max(bar / hour, 1.0)
    posts = rng.poisson(20.0 * per_hour * np.exp(0.4 * np.abs(S) + 0.5 * np.log(mult)))
    sources = 1 + np.minimum(posts, rng.poisson(4.0 + 2.0 * np.abs(S)))
    streams["social"] = b.stream(
        b.every(hour),
        pd.Timedelta("10min"),
        {
            "social_posts": posts,
            "social_comments": rng.poisson(3.0 * posts + 1.0),
            "social_sentiment": np.tanh(0.6 * S + 0.3 * rng.standard_normal((T, N))),
            "social_sources": sources,
        },
        late_start={N - 1: 0.1} if N > 1 else None,
    )

    # --- events: Poisson arrivals at random times, random publication lags
    span_days = (ts[-1] - t0) / _DAY
    ev_sym, ev_time, ev_lag, ev_cnt, ev_sent = [], [], [], [], []
    for j in range(N):  # per symbol, vectorised over events
        n_ev = int(rng.poisson(EVENTS_PER_DAY * span_days))
        et = np.sort(t0.value + (rng.random(n_ev) * (ts[-1].value - t0.value))).astype("int64")
        lag = (
            pd.Timedelta("2min").value
            + rng.exponential(pd.Timedelta("15min").value, n_ev)
            + (rng.random(n_ev) < 0.1) * rng.exponential(pd.Timedelta("3h").value, n_ev)
        ).astype("int64")
        pos = np.clip(np.searchsorted(b.ts_ns, et, side="right") - 1, 0, T - 1)
        ev_sym.append(np.full(n_ev, symbols[j], dtype=object))
        ev_time.append(et)
        ev_lag.append(lag)
        ev_cnt.append(1.0 + rng.poisson(0.3, n_ev))
        ev_sent.append(np.clip(0.35 * S[pos, j] + 0.5 * rng.standard_normal(n_ev), -1, 1))
    et = np.concatenate(ev_time)
    streams["events"] = pd.DataFrame(
        {
            SYMBOL: np.concatenate(ev_sym),
            "event_time": _utc(et),
            "available_at": _utc(et + np.concatenate(ev_lag)),
            "event_count": np.concatenate(ev_cnt),
            "event_sentiment": np.concatenate(ev_sent),
        }
    )

    # --- macro (market-wide): weekly surprise about a period ending 5 days before release;
    #     monthly policy rate decisions
    rel = pd.date_range(t0.normalize() + pd.Timedelta("2D 12:30:00"), ts[-1], freq="7D")
    surprise = rng.standard_normal(len(rel))
    streams["macro"] = pd.DataFrame(
        {
            "event_time": (rel - pd.Timedelta("5D")).as_unit("ns"),
            "available_at": rel.as_unit("ns"),
            "macro_surprise": surprise,
        }
    )
    dec = pd.date_range(t0.normalize() + pd.Timedelta("18h"), ts[-1], freq="30D")
    rate = 3.0 + np.cumsum(rng.choice([-0.25, 0.0, 0.25], size=len(dec), p=[0.2, 0.6, 0.2]))
    streams["rates"] = pd.DataFrame(
        {"event_time": dec.as_unit("ns"), "available_at": dec.as_unit("ns"), "macro_rate": rate}
    )

    # --- planted drift: only from values available at the previous bar
    def z(a: np.ndarray) -> np.ndarray:
        s = np.nanstd(a)
        return np.nan_to_num((a - np.nanmean(a)) / (s if s > 0 else 1.0))

    state = (
        -0.55 * z(b.observed(streams["funding"], "funding_rate"))
        + 0.60 * z(b.observed(streams["social"], "social_sentiment"))
        - 0.35 * z(b.observed(streams["onchain"], "onchain_netflow"))
    ) / np.sqrt(0.55**2 + 0.6**2 + 0.35**2)
    ev = streams["events"]
    vis = np.searchsorted(b.ts_ns, pd.DatetimeIndex(ev["available_at"]).asi8, side="left")
    ok = vis < T
    imp = np.zeros((T, N))
    np.add.at(
        imp,
        (vis[ok], pd.Categorical(ev[SYMBOL], categories=symbols).codes[ok]),
        (ev["event_count"] * ev["event_sentiment"]).to_numpy()[ok],
    )
    event_drift = z(_decay(imp, bars_per(pd.Timedelta("6h"))))
    mvis = np.searchsorted(b.ts_ns, pd.DatetimeIndex(streams["macro"]["available_at"]).asi8, side="left")
    mimp = np.zeros((T, 1))
    mok = mvis < T
    np.add.at(mimp, (mvis[mok], 0), surprise[mok])
    macro_drift = z(_decay(mimp, bars_per(pd.Timedelta("12h"))))
    signal = K_STATE * state + K_EVENT * event_drift + K_MACRO * beta[None, :] * macro_drift
    if shifted is not None:  # the signal seen at bar t drives bar t+1: flip it from the bar before the shift
        flip = np.r_[shifted[1:], shifted[-1:]]
        signal = np.where(flip[:, None], -signal, signal)
    if price_signal:  # reversal of the idiosyncratic shocks up to bar t moves bar t+1 (nothing drawn)
        weight = PRICE_REGIME_WEIGHT[reg_mkt]  # the market's regime: every symbol of a bar alike
        shocks = z_idio.copy()
        shocks[0] = 0.0  # the first bar has no return
        price = -weight * z(_decay(shocks, bars_per(PRICE_HALF_LIFE)))
        signal = (2.0 - weight) * signal
    drift = np.zeros((T, N))
    drift[1:] = day_scale * sigma[1:] * signal[:-1]
    if price_signal:
        drift[1:] += K_PRICE * day_scale * sigma[1:] * price[:-1]
    if orderbook:  # the imbalance seen at bar t (through the stream's gaps) moves bar t+1
        ob_rng = np.random.default_rng([int(seed), _ORDERBOOK_KEY])
        ob_table, ob_truth = _orderbook_state(_Builder(ts, bar, symbols, ob_rng), ob_rng, mult, bars_per)
        seen = np.zeros((T, N))  # a bar without its snapshot (a gap, the outage) plants nothing
        at = (ob_table["_pos"].to_numpy(np.int64), ob_table["_sym"].to_numpy(np.int64))
        seen[at] = z(ob_truth["imbalance"])[at]
        drift[1:] += K_BOOK * sigma[1:] * seen[:-1]
    # macro release moves the common factor on the release bar
    shock = np.zeros((T, 1))
    np.add.at(shock, (mvis[mok], 0), 0.5 * surprise[mok])

    ret = drift + sigma * (np.sqrt(0.5) * beta[None, :] * (z_mkt + shock) + np.sqrt(0.5) * z_idio)
    ret[0] = 0.0
    for flag, plant in planted.items():  # lead-lag, bimodal outcomes, text-driven drift
        ret = np.asarray(plant.returns(contexts[flag], ret), dtype=np.float64)
        if ret.shape != (T, N):
            raise ValueError(f"plant {flag!r} returned returns of shape {ret.shape}, expected {(T, N)}")
        ret[0] = 0.0
    close = np.exp(rng.uniform(0.0, 10.0, N)[None, :] + np.cumsum(ret, axis=0))
    prev = np.vstack([close[:1], close[:-1]])
    open_ = prev * np.exp(0.05 * sigma * rng.standard_normal((T, N)))
    wick = lambda: np.exp(0.6 * sigma * np.abs(rng.standard_normal((T, N))))  # noqa: E731
    high = np.maximum(open_, close) * wick()
    low = np.minimum(open_, close) / wick()
    zr = ret / sigma
    volume = (
        np.exp(rng.uniform(3, 8, N))[None, :]
        * (bar / hour)
        * np.exp(np.log(mult) + 0.5 * (np.abs(zr) - 0.8) + 0.25 * rng.standard_normal((T, N)))
    )

    streams["taker"] = b.stream(
        np.arange(T),
        pd.Timedelta(0),
        {"taker_buy_sell_ratio": np.exp(0.25 * np.tanh(zr) + 0.08 * rng.standard_normal((T, N)))},
        gap_frac=0.005,
        outage_frac=0.0,
    )

    bars = pd.DataFrame(
        {
            TIMESTAMP: _utc(np.tile(ts.asi8, N)),
            SYMBOL: np.repeat(np.asarray(symbols, dtype=object), T).astype(str),
            "open": open_.T.ravel(),
            "high": high.T.ravel(),
            "low": low.T.ravel(),
            "close": close.T.ravel(),
            "volume": volume.T.ravel(),
        }
    )
    bars[TIMESTAMP] = bars[TIMESTAMP].astype("datetime64[ns, UTC]")
    truth = {"drift": drift, "sigma": sigma, "regime": reg_sym.astype(np.float64), "signal": signal}
    if price_signal:
        truth["price_signal"] = price
    if shifted is not None:
        truth["regime_shift"] = np.broadcast_to(shifted.astype(np.float64)[:, None], (T, N)).copy()
    if orderbook:
        streams["orderbook"] = _orderbook_prices(ob_table, close, ob_truth["spread"])
        truth.update(ob_truth)
    for flag, plant in planted.items():
        for name, table in plant.streams(contexts[flag], ret).items():
            if name in streams:
                raise ValueError(f"plant {flag!r} emits stream {name!r}, which the generator already emits")
            streams[name] = table
        truth.update(contexts[flag].truth)
    for k, v in streams.items():
        sort = [SYMBOL, "event_time"] if SYMBOL in v.columns else ["event_time"]
        streams[k] = v.sort_values(sort, kind="mergesort").reset_index(drop=True)
    return SyntheticData(bars=bars, streams=streams, truth=truth)
