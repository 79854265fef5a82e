"""Horizon-tiered execution: target weights per (symbol, horizon bucket) -> fills, costs and PnL, bar by bar.

The one execution path of the backtest (:func:`quantml.backtest.executed.executed_backtest`), the paper
replay and the paper trader (``quantml paper``). Money: positions, PnL and costs are fractions of the
portfolio capital ``aum``; notionals are in the panel's price currency (``fraction * aum``); the bar's
notional volume is ``volume * price``.

Per bar, :meth:`Executor.on_bar` (``t``: this bar, ``t-1``: the previous decision bar):

1. **Fills.** Each bucket works its order (``target - position``, decided at a close) under its
   policy (:class:`ExecutionPolicy`): ``next_open`` fills at bar ``t``'s open, ``typical`` at bar ``t``'s
   ``(high + low + close) / 3``, ``close`` at the decision bar's own close (the returns-based backtest's
   assumption). A policy with ``slices = k`` releases ``1/k`` of the order a bar. Per symbol, the
   buckets' working quantities are **netted first**: buys and sells of different buckets cross
   internally at the theoretical price, free of cost; only the net goes to the market, paid for by the
   buckets on its side (pro rata to their quantity). A market fill pays ``fee_bps`` plus a slippage of
   ``timing + half-spread + impact`` bps over the theoretical price (the previous bar's close), where
   timing is ``side * (base price - theoretical) / theoretical`` (0 for ``close``), the half-spread is the
   policy's ``half_spread_bps`` or, when None, the estimate below, and impact is the cost model's
   ``impact_bps + impact_coef * sqrt(participation / participation_cap)`` on the symbol's whole market
   participation this bar (filled notional over notional volume, as :meth:`CostModel.trade_cost`).
   Caps: a policy fills at most ``max_participation`` of the bar's notional volume (the rest is
   **carried** to the next bar) and never beyond ``max_slippage_bps`` (the size at which slippage would
   pass it is the most it fills; the rest of that bar's working quantity is **dropped**, like a limit
   order). A bar without a price for the symbol fills nothing (all carried); a bar without a usable
   volume has no participation cap and charges impact at ``participation_cap`` (``volume=None``
   everywhere: participation is the trade itself, as in :func:`quantml.market.execution.execute`).
2. **Mark to market.** Every bucket's position (after the fills) earns the bar's simple close-to-close
   return (previous close -> this close; the last known close when a bar is missing). With the fills'
   costs this is the PnL of decision bar ``t-1``: one row per symbol x bucket (``PNL_COLUMNS``).
3. **New orders.** ``targets [N, H]`` (fractions of aum, decided at this close; NaN = 0, None = keep)
   replace the order of every (symbol, bucket) whose target changed.

With policy ``close`` everywhere, no caps and ``half_spread_bps = slippage_bps`` the summed PnL equals
:func:`~quantml.market.execution.execute` bar for bar (tested to 1e-12).

**Half-spread estimate** (``half_spread_bps: null``): Abdi & Ranaldo (2017, "A simple estimation of
bid-ask spreads from daily close, high, and low prices"): with log close ``c`` and log mid-range
``eta = (log high + log low) / 2``, ``S^2 = 4 E[(c[t-1] - eta[t-1]) (c[t-1] - eta[t])]``; the expectation
is an exponential moving average (span :data:`SPREAD_SPAN` bars) per symbol, the half-spread
``S / 2 = sqrt(E[...])``. A fill bar without high/low, before the first estimate, or while the average
is not positive (no bid-ask bounce in the prices: the estimator has no evidence of a spread) pays the
cost model's ``slippage_bps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, parse_duration
from quantml.contracts.logs import FILL_COLUMNS, PNL_COLUMNS
from quantml.market.execution import CostModel

POLICY_PRICES = ("next_open", "typical", "close")
POLICY_KEYS = ("price", "half_spread_bps", "max_participation", "max_slippage_bps", "slices")
CONFIG_KEYS = ("aum", "policies", "horizon_policy", "default_policy")
SPREAD_SPAN = 20  # bars of the half-spread estimator's moving average
STATE_VERSION = 1
OUT_FILL_COLUMNS = tuple(c for c in FILL_COLUMNS if c not in ("model_name", "model_version"))
OUT_PNL_COLUMNS = tuple(c for c in PNL_COLUMNS if c not in ("model_name", "model_version"))


def _number(value, what: str, *, none_is=None) -> float:
    if value is None:
        if none_is is None:
            raise QuantmlInputError(f"{what} is missing; set it to a number")
        return float(none_is)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise QuantmlInputError(f"{what}={value!r} must be a number") from None


@dataclass(frozen=True)
class ExecutionPolicy:
    """How one horizon tier trades (see the module doc).

    ``price``: ``next_open`` | ``typical`` | ``close``; ``half_spread_bps``: None = estimated from
    high/low; ``max_participation``: of the fill bar's notional volume (inf = no cap);
    ``max_slippage_bps``: beyond it the rest is dropped (inf = no cap); ``slices``: bars an order is
    worked over (``1/slices`` of it released a bar).
    """

    name: str
    price: str
    half_spread_bps: float | None
    max_participation: float
    max_slippage_bps: float
    slices: int = 1

    def __post_init__(self) -> None:
        where = f"execution.policies.{self.name}"
        if self.price not in POLICY_PRICES:
            raise QuantmlInputError(f"{where}.price={self.price!r}; use one of {list(POLICY_PRICES)}")
        if self.half_spread_bps is not None:
            hs = _number(self.half_spread_bps, f"{where}.half_spread_bps")
            if not (math.isfinite(hs) and hs >= 0):
                raise QuantmlInputError(f"{where}.half_spread_bps={hs} must be >= 0 (or null: estimated)")
            object.__setattr__(self, "half_spread_bps", hs)
        mp = _number(self.max_participation, f"{where}.max_participation", none_is=math.inf)
        if not mp > 0:
            raise QuantmlInputError(f"{where}.max_participation={mp} must be > 0 (.inf: no cap)")
        ms = _number(self.max_slippage_bps, f"{where}.max_slippage_bps", none_is=math.inf)
        if not ms >= 0:
            raise QuantmlInputError(f"{where}.max_slippage_bps={ms} must be >= 0 (.inf: no cap)")
        try:
            slices = int(self.slices)
        except (TypeError, ValueError):
            raise QuantmlInputError(f"{where}.slices={self.slices!r} must be an integer >= 1") from None
        if slices < 1 or slices != self.slices:
            raise QuantmlInputError(f"{where}.slices={self.slices!r} must be an integer >= 1")
        object.__setattr__(self, "max_participation", mp)
        object.__setattr__(self, "max_slippage_bps", ms)
        object.__setattr__(self, "slices", slices)

    def to_dict(self) -> dict:
        return {
            "price": self.price,
            "half_spread_bps": self.half_spread_bps,
            "max_participation": self.max_participation,
            "max_slippage_bps": self.max_slippage_bps,
            "slices": self.slices,
        }


@dataclass(frozen=True)
class ExecutionConfig:
    """Portfolio capital and the policy of each horizon bucket (the ``execution`` config group).

    ``horizon_policy`` maps a horizon label (``1h``) or a rule (``<=4h``, ``>4h``: compared as
    durations) to a policy name; an exact label wins over rules, the first matching rule over the
    rest; anything else gets ``default_policy``.
    """

    aum: float
    policies: dict[str, ExecutionPolicy]
    horizon_policy: dict[str, str] = field(default_factory=dict)
    default_policy: str = "close"

    def __post_init__(self) -> None:
        aum = _number(self.aum, "execution.aum")
        if not (math.isfinite(aum) and aum > 0):
            raise QuantmlInputError(f"execution.aum={aum} must be a positive number (portfolio capital), e.g. 1e6")
        object.__setattr__(self, "aum", aum)
        if not self.policies:
            raise QuantmlInputError("execution.policies is empty; define at least one policy (conf/execution/*.yaml)")
        known = sorted(self.policies)
        if self.default_policy not in self.policies:
            raise QuantmlInputError(
                f"execution.default_policy={self.default_policy!r} is not a policy; use one of {known}"
            )
        for h, p in self.horizon_policy.items():
            if p not in self.policies:
                raise QuantmlInputError(f"execution.horizon_policy.{h}={p!r} is not a policy; use one of {known}")
            if str(h).startswith(("<", ">")):
                _rule(str(h))  # validates the duration

    @classmethod
    def from_config(cls, cfg) -> ExecutionConfig:
        """From the ``execution`` mapping (a DictConfig or a dict, e.g. :meth:`to_dict`'s)."""
        if cfg is None:
            raise QuantmlInputError("no execution config; compose one, e.g. execution=tiered or execution=close")
        if hasattr(cfg, "_metadata"):  # a DictConfig: resolve interpolations
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        cfg.pop("name", None)
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise QuantmlInputError(f"unknown execution setting(s) {unknown}; known: {list(CONFIG_KEYS)}")
        policies = {}
        for name, p in dict(cfg.get("policies") or {}).items():
            p = dict(p or {})
            bad = sorted(set(p) - set(POLICY_KEYS))
            if bad:
                raise QuantmlInputError(
                    f"unknown setting(s) {bad} in execution.policies.{name}; known: {list(POLICY_KEYS)}"
                )
            if "price" not in p:
                raise QuantmlInputError(f"execution.policies.{name}.price is missing; use one of {list(POLICY_PRICES)}")
            policies[str(name)] = ExecutionPolicy(
                name=str(name),
                price=p["price"],
                half_spread_bps=p.get("half_spread_bps"),
                max_participation=p.get("max_participation", math.inf),
                max_slippage_bps=p.get("max_slippage_bps", math.inf),
                slices=p.get("slices", 1),
            )
        return cls(
            aum=cfg.get("aum"),
            policies=policies,
            horizon_policy={str(k): str(v) for k, v in dict(cfg.get("horizon_policy") or {}).items()},
            default_policy=str(cfg.get("default_policy") or (next(iter(policies)) if len(policies) == 1 else "")),
        )

    def to_dict(self) -> dict:
        return {
            "aum": self.aum,
            "policies": {k: p.to_dict() for k, p in self.policies.items()},
            "horizon_policy": dict(self.horizon_policy),
            "default_policy": self.default_policy,
        }

    def policy_for(self, horizon: str) -> ExecutionPolicy:
        """The policy of a horizon bucket (exact label, then the first matching rule, then the default)."""
        horizon = str(horizon)
        if horizon in self.horizon_policy:
            return self.policies[self.horizon_policy[horizon]]
        try:
            dur = parse_duration(horizon, "horizon")
        except QuantmlInputError:
            dur = None
        if dur is not None:
            for key, name in self.horizon_policy.items():
                if key.startswith(("<", ">")) and _rule(key)(dur):
                    return self.policies[name]
        return self.policies[self.default_policy]


def _rule(key: str):
    for op, fn in (("<=", lambda a, b: a <= b), (">=", lambda a, b: a >= b), ("<", lambda a, b: a < b)):
        if key.startswith(op):
            bound = parse_duration(key[len(op) :].strip(), f"execution.horizon_policy rule {key!r}")
            return lambda d, fn=fn, bound=bound: fn(d, bound)
    if key.startswith(">"):
        bound = parse_duration(key[1:].strip(), f"execution.horizon_policy rule {key!r}")
        return lambda d: d > bound
    raise QuantmlInputError(f"execution.horizon_policy rule {key!r}: write <=DUR, <DUR, >=DUR or >DUR (e.g. <=4h)")


@dataclass
class BarQuotes:
    """One bar's prices, arrays ``[N]`` in the executor's symbol order (NaN = unknown); ``volume`` in
    units (shares, coins: the notional volume is ``volume * price``) or None (no volume at all)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray | None = None

    @classmethod
    def from_close(cls, close: np.ndarray, volume: np.ndarray | None = None) -> BarQuotes:
        """A bar known only by its close (open, high and low NaN)."""
        close = np.asarray(close, dtype=np.float64)
        nan = np.full(close.shape, np.nan)
        return cls(nan, nan.copy(), nan.copy(), close, volume)


@dataclass
class BarOutcome:
    """What one bar produced: ``fills`` (``FILL_COLUMNS`` minus model name/version: one row per
    bucket order worked in the bar) and ``pnl`` (``PNL_COLUMNS`` minus model name/version: rows of the
    previous decision bar, one per symbol x bucket; empty on the first bar)."""

    fills: pd.DataFrame
    pnl: pd.DataFrame


def _f64(x, n: int, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (n,):
        raise QuantmlInputError(f"BarQuotes.{what} has shape {a.shape}; it must be [{n}] (one per symbol)")
    return a


def _enc(a: np.ndarray) -> list:
    return [
        None if (isinstance(v, float) and math.isnan(v)) else v
        for v in np.asarray(a, dtype=np.float64).ravel().tolist()
    ]


def _dec(values, shape) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64).reshape(shape)


def _ts(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts


class Executor:
    """Streaming executor for ``N`` symbols x ``H`` horizon buckets: one :meth:`on_bar` per bar, in time order."""

    def __init__(self, symbols: list[str], horizons: list[str], config: ExecutionConfig, costs: CostModel) -> None:
        self.symbols, self.horizons = [str(s) for s in symbols], [str(h) for h in horizons]
        if not self.symbols or not self.horizons:
            raise QuantmlInputError("the executor needs at least one symbol and one horizon bucket")
        self.config, self.costs = config, costs
        N, H = len(self.symbols), len(self.horizons)
        self.bucket_policy = [config.policy_for(h) for h in self.horizons]
        # policy groups in the config's order: name -> bucket indices
        self._groups: list[tuple[ExecutionPolicy, np.ndarray]] = []
        for name, pol in config.policies.items():
            idx = np.array([i for i, p in enumerate(self.bucket_policy) if p.name == name], dtype=int)
            if len(idx):
                self._groups.append((pol, idx))
        self._slices = np.array([p.slices for p in self.bucket_policy], dtype=np.float64)
        self.position = np.zeros((N, H))  # held, fraction of aum
        self.target = np.zeros((N, H))  # the last decided target
        self.remaining = np.zeros((N, H))  # signed order still to work
        self.slice_size = np.zeros((N, H))  # |order| / slices, released per bar
        self.quota = np.zeros((N, H))  # released, not yet filled (carried) quantity
        self.decided_at: list[list[str | None]] = [[None] * H for _ in range(N)]
        self.last_timestamp: pd.Timestamp | None = None
        self.last_close = np.full(N, np.nan)  # last known close per symbol (marks, theoretical price)
        self.prev_close = np.full(N, np.nan)  # the previous bar's own close (NaN when it had none)
        self.prev_volume: np.ndarray | None = None  # the previous bar's volume (close-policy fills)
        self.prev_spread = np.full(N, np.nan)  # the previous bar's half-spread estimate, bps
        self.prev_log_close = np.full(N, np.nan)  # estimator state
        self.prev_eta = np.full(N, np.nan)
        self.spread_ewma = np.full(N, np.nan)
        self.finished = False  # finish() was called: no bar after it

    # ------------------------------------------------------------------ the bar

    def on_bar(self, timestamp, quotes: BarQuotes, targets: np.ndarray | None) -> BarOutcome:
        """Fill the pending orders in this bar, mark to market (-> the previous decision bar's PnL rows),
        take ``targets [N, H]`` (fractions of aum; None: keep) as the new orders."""
        N, H = self.position.shape
        ts = _ts(timestamp)
        if self.finished:
            raise QuantmlInputError(
                "the executor was finished (end of data); resume from a state saved before finish()"
            )
        if self.last_timestamp is not None and not ts > self.last_timestamp:
            raise QuantmlInputError(
                f"bar {ts} is not after the last bar {self.last_timestamp}; feed the executor bars in time order"
            )
        o, h, lo, c = (_f64(getattr(quotes, k), N, k) for k in ("open", "high", "low", "close"))
        v = None if quotes.volume is None else _f64(quotes.volume, N, "volume")
        if targets is not None:
            targets = np.asarray(targets, dtype=np.float64)
            if targets.shape != (N, H):
                raise QuantmlInputError(
                    f"targets have shape {targets.shape}; they must be [{N}, {H}] (symbols x buckets)"
                )
        spread = self._update_spread(h, lo, c)
        fills, pnl = [], None
        if self.last_timestamp is not None:
            cost = self._fill(ts, o, h, lo, c, v, spread, fills)
            with np.errstate(invalid="ignore", divide="ignore"):
                ok = np.isfinite(c) & np.isfinite(self.last_close) & (self.last_close > 0)
                ret = np.where(ok, c / np.where(ok, self.last_close, 1.0) - 1.0, 0.0)
            pnl = self._pnl_rows(self.last_timestamp, self.position * ret[:, None], cost)
        self.last_close = np.where(np.isfinite(c), c, self.last_close)
        self.prev_close, self.prev_volume, self.prev_spread = c, v, spread
        self.last_timestamp = ts
        if targets is not None:
            self._new_orders(ts, np.nan_to_num(targets, nan=0.0, posinf=0.0, neginf=0.0))
        return BarOutcome(self._fill_frame(fills), pnl if pnl is not None else self._pnl_rows(None, None, None))

    def finish(self) -> BarOutcome:
        """End of data: fill what the decision bar's close can (``close`` policy) and return the last
        decision bar's PnL rows with an unknown next return (gross 0, costs charged), as the
        returns-based backtest books its last bar. The executor takes no bar after it."""
        if self.last_timestamp is None or self.finished:
            return BarOutcome(self._fill_frame([]), self._pnl_rows(None, None, None))
        self.finished = True
        N = len(self.symbols)
        nan = np.full(N, np.nan)
        fills: list[dict] = []
        cost = self._fill(None, nan, nan, nan, nan, None, nan, fills)
        pnl = self._pnl_rows(self.last_timestamp, np.zeros_like(self.position), cost)
        return BarOutcome(self._fill_frame(fills), pnl)

    # ------------------------------------------------------------------ internals

    def _update_spread(self, h, lo, c) -> np.ndarray:
        """This bar's half-spread estimate (bps, NaN: none) and the estimator's update."""
        with np.errstate(invalid="ignore", divide="ignore"):
            okhl = np.isfinite(h) & np.isfinite(lo) & (h > 0) & (lo > 0) & (h >= lo)
            eta = np.where(okhl, 0.5 * (np.log(np.where(okhl, h, 1.0)) + np.log(np.where(okhl, lo, 1.0))), np.nan)
            okc = np.isfinite(c) & (c > 0)
            logc = np.where(okc, np.log(np.where(okc, c, 1.0)), np.nan)
        prod = (self.prev_log_close - self.prev_eta) * (self.prev_log_close - eta)
        good = np.isfinite(prod)
        alpha = 2.0 / (SPREAD_SPAN + 1.0)
        self.spread_ewma = np.where(
            good,
            np.where(
                np.isfinite(self.spread_ewma), (1 - alpha) * self.spread_ewma + alpha * np.where(good, prod, 0.0), prod
            ),
            self.spread_ewma,
        )
        self.prev_log_close, self.prev_eta = logc, eta
        with np.errstate(invalid="ignore"):
            est = np.where(self.spread_ewma > 0, np.sqrt(np.where(self.spread_ewma > 0, self.spread_ewma, 0.0)), np.nan)
        return np.where(okhl, est * 1e4, np.nan)

    def _new_orders(self, ts: pd.Timestamp, targets: np.ndarray) -> None:
        changed = targets != self.target
        self.target = np.where(changed, targets, self.target)
        order = targets - self.position
        self.remaining = np.where(changed, order, self.remaining)
        self.slice_size = np.where(changed, np.abs(order) / self._slices[None, :], self.slice_size)
        self.quota = np.where(changed, 0.0, self.quota)
        iso = ts.isoformat()
        for n, hh in zip(*np.nonzero(changed)):
            self.decided_at[n][hh] = iso

    def _fill(self, ts, o, h, lo, c, v, spread, fills: list) -> np.ndarray:
        """Work every bucket's order in this bar (``ts`` None: only the decision bar's close is left);
        updates positions and orders, appends fill rows; returns the cost ``[N, H]`` (fraction of aum)."""
        N, H = self.position.shape
        aum, costs = self.config.aum, self.costs
        theo = self.last_close.copy()  # theoretical price: the close the mark to market starts from
        # per-bucket fill bar: close policy -> the decision bar (its close, volume, spread); else this bar
        base = np.full((N, H), np.nan)
        bar_vol = np.full((N, H), np.nan)
        hs_est = np.full((N, H), np.nan)
        fill_ts: list = [None] * H
        has_volume = v is not None if ts is not None else self.prev_volume is not None
        for pol, idx in self._groups:
            if pol.price == "close":
                price, vol, est, when = self.prev_close, self.prev_volume, self.prev_spread, self.last_timestamp
            else:
                if ts is None:
                    continue
                when, vol, est = ts, v, spread
                if pol.price == "next_open":
                    price = o
                else:
                    typ = (h + lo + c) / 3.0
                    price = np.where(np.isfinite(typ), typ, c)
            base[:, idx] = price[:, None]
            if vol is not None:
                bar_vol[:, idx] = vol[:, None]
            hs = est if pol.half_spread_bps is None else np.full(N, pol.half_spread_bps)
            hs = np.where(np.isfinite(hs), hs, costs.slippage_bps)
            hs_est[:, idx] = hs[:, None]
            for i in idx:
                fill_ts[i] = when
        can = np.isfinite(base) & (base > 0) & np.isfinite(theo)[:, None] & (theo > 0)[:, None]
        # this bar's working quantity: released slices not yet filled
        self.quota = np.minimum(self.quota + np.where(can, self.slice_size, 0.0), np.abs(self.remaining))
        working = np.where(can, np.sign(self.remaining) * self.quota, 0.0)
        # netting per symbol: opposite buckets cross internally at the theoretical price
        buy = np.where(working > 0, working, 0.0).sum(axis=1)
        sell = np.where(working < 0, -working, 0.0).sum(axis=1)
        crossed = np.minimum(buy, sell)
        with np.errstate(invalid="ignore", divide="ignore"):
            keep_buy = np.where(buy > 0, 1.0 - crossed / np.where(buy > 0, buy, 1.0), 0.0)
            keep_sell = np.where(sell > 0, 1.0 - crossed / np.where(sell > 0, sell, 1.0), 0.0)
        residual = np.where(working > 0, working * keep_buy[:, None], working * keep_sell[:, None])
        if crossed.any():
            residual = np.where(np.isclose(np.abs(residual), 0.0, atol=1e-15), 0.0, residual)
        cross_fill = working - residual
        # market: one quantity per symbol x policy group, capped
        G = len(self._groups)
        want = np.zeros((N, G))  # |residual| per group
        notional = np.full((N, G), np.nan)  # the bar's notional volume at the group's price
        for g, (_, idx) in enumerate(self._groups):
            want[:, g] = np.abs(residual[:, idx]).sum(axis=1)
            notional[:, g] = bar_vol[:, idx[0]] * base[:, idx[0]]
        vol_ok = np.isfinite(notional) & (notional > 0)
        x = want.copy()
        for g, (pol, _) in enumerate(self._groups):
            if has_volume and math.isfinite(pol.max_participation):
                cap = np.where(
                    vol_ok[:, g], pol.max_participation * np.where(vol_ok[:, g], notional[:, g], 0.0) / aum, np.inf
                )
                x[:, g] = np.minimum(x[:, g], cap)
        after_part = x.copy()

        def participation(x: np.ndarray) -> np.ndarray:  # [N, G] per group
            if not has_volume:
                return x.copy()
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(
                    vol_ok, x * aum / np.where(vol_ok, notional, 1.0), np.where(x > 0, costs.participation_cap, 0.0)
                )

        side = np.sign(buy - sell)  # the net side per symbol
        timing = np.zeros((N, G))
        spread_g = np.zeros((N, G))
        for g, (_, idx) in enumerate(self._groups):
            with np.errstate(invalid="ignore", divide="ignore"):
                timing[:, g] = np.where(can[:, idx[0]], side * (base[:, idx[0]] - theo) / theo * 1e4, 0.0)
            spread_g[:, g] = hs_est[:, idx[0]]
        coef = costs.impact_coef
        for g, (pol, _) in enumerate(self._groups):
            if not math.isfinite(pol.max_slippage_bps):
                continue
            part = participation(x)
            total = part.sum(axis=1)
            impact = costs.impact_bps + (coef * np.sqrt(total / costs.participation_cap) if coef else 0.0)
            over = (x[:, g] > 0) & (timing[:, g] + spread_g[:, g] + impact > pol.max_slippage_bps)
            if not over.any():
                continue
            room = pol.max_slippage_bps - timing[:, g] - spread_g[:, g] - costs.impact_bps
            if coef:  # the largest participation whose impact keeps slippage within the cap
                p_max = costs.participation_cap * (np.maximum(room, 0.0) / coef) ** 2
                allowed_part = np.where(room > 0, np.maximum(p_max - (total - part[:, g]), 0.0), 0.0)
                if has_volume:  # an unknown volume charges participation_cap whatever the size: all or nothing
                    with np.errstate(invalid="ignore"):
                        allowed = np.where(
                            vol_ok[:, g], allowed_part * np.where(vol_ok[:, g], notional[:, g], 0.0) / aum, 0.0
                        )
                else:
                    allowed = allowed_part
            else:
                allowed = np.zeros(N)  # slippage does not depend on size: all or nothing
            x[:, g] = np.where(over, np.minimum(x[:, g], allowed), x[:, g])
        part = participation(x)
        total = part.sum(axis=1)
        impact = costs.impact_bps + (coef * np.sqrt(total / costs.participation_cap) if coef else 0.0)
        impact = np.where(total > 0, impact, costs.impact_bps)
        dropped_g = after_part - x
        # back to buckets, pro rata to their residual
        with np.errstate(invalid="ignore", divide="ignore"):
            fill_frac = np.where(want > 0, x / np.where(want > 0, want, 1.0), 0.0)
            drop_frac = np.where(want > 0, dropped_g / np.where(want > 0, want, 1.0), 0.0)
        market = np.zeros((N, H))
        dropped = np.zeros((N, H))
        slip = np.zeros((N, H))
        spread_b = np.zeros((N, H))
        part_b = np.full((N, H), np.nan)
        for g, (_, idx) in enumerate(self._groups):
            market[:, idx] = residual[:, idx] * fill_frac[:, g][:, None]
            dropped[:, idx] = residual[:, idx] * drop_frac[:, g][:, None]
            slip[:, idx] = (timing[:, g] + spread_g[:, g] + impact)[:, None]
            spread_b[:, idx] = spread_g[:, g][:, None]
            if has_volume:
                with np.errstate(invalid="ignore", divide="ignore"):
                    part_b[:, idx] = np.where(
                        vol_ok[:, g][:, None],
                        np.abs(market[:, idx]) * aum / np.where(vol_ok[:, g], notional[:, g], 1.0)[:, None],
                        np.nan,
                    )
        cost = np.abs(market) * (costs.fee_bps + slip) / 1e4
        filled = cross_fill + market
        self.position = self.position + filled
        self.remaining = self.remaining - filled - dropped
        self.quota = np.maximum(self.quota - np.abs(filled) - np.abs(dropped), 0.0)
        done = np.isclose(self.remaining, 0.0, atol=1e-15)
        self.remaining = np.where(done, 0.0, self.remaining)
        self.quota = np.where(done, 0.0, self.quota)
        # fill records
        for n, hh in zip(*np.nonzero(working)):
            w, f, m = working[n, hh], filled[n, hh], market[n, hh]
            sgn = 1.0 if w > 0 else -1.0
            af, am = abs(f), abs(m)
            share = am / af if af > 0 else 0.0
            slip_row = slip[n, hh] * share if af > 0 else np.nan
            fills.append(
                {
                    "timestamp": fill_ts[hh],
                    "decided_at": pd.Timestamp(self.decided_at[n][hh]) if self.decided_at[n][hh] else pd.NaT,
                    "symbol": self.symbols[n],
                    "bucket": self.horizons[hh],
                    "policy": self.bucket_policy[hh].name,
                    "side": int(sgn),
                    "order_notional": abs(w) * aum,
                    "filled_notional": af * aum,
                    "carried_notional": max(abs(w) - af - abs(dropped[n, hh]), 0.0) * aum,
                    "theoretical_price": theo[n],
                    "fill_price": theo[n] * (1.0 + sgn * slip_row / 1e4) if af > 0 else np.nan,
                    "slippage_bps": slip_row,
                    "fee_bps": costs.fee_bps * share if af > 0 else np.nan,
                    "spread_bps": spread_b[n, hh] * share if af > 0 else np.nan,
                    "impact_bps": impact[n] * share if af > 0 else np.nan,
                    "participation": part_b[n, hh] if am > 0 else (0.0 if af > 0 else np.nan),
                    "market_notional": am * aum,
                }
            )
        return cost

    def _pnl_rows(self, decision_ts, gross, cost) -> pd.DataFrame:
        if decision_ts is None:
            return pd.DataFrame({c: pd.Series(dtype=_PNL_DTYPES.get(c, "float64")) for c in OUT_PNL_COLUMNS})
        N, H = self.position.shape
        g = np.asarray(gross, dtype=np.float64)
        return pd.DataFrame(
            {
                "timestamp": [decision_ts] * (N * H),
                "symbol": np.repeat(self.symbols, H),
                "bucket": np.tile(self.horizons, N),
                "policy": np.tile([p.name for p in self.bucket_policy], N),
                "position": self.position.ravel(),
                "gross": g.ravel(),
                "cost": cost.ravel(),
                "pnl": (g - cost).ravel(),
            },
            columns=list(OUT_PNL_COLUMNS),
        )

    @staticmethod
    def _fill_frame(rows: list[dict]) -> pd.DataFrame:
        if not rows:
            return pd.DataFrame({c: pd.Series(dtype=_FILL_DTYPES.get(c, "float64")) for c in OUT_FILL_COLUMNS})
        return pd.DataFrame(rows, columns=list(OUT_FILL_COLUMNS))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """JSON-serialisable state (lists, floats, ISO strings; NaN as null): resuming from it gives
        bit-identical results to an uninterrupted run."""
        N, H = self.position.shape
        return {
            "version": STATE_VERSION,
            "symbols": list(self.symbols),
            "horizons": list(self.horizons),
            "config": self.config.to_dict(),
            "last_timestamp": None if self.last_timestamp is None else self.last_timestamp.isoformat(),
            "position": _enc(self.position),
            "target": _enc(self.target),
            "remaining": _enc(self.remaining),
            "slice_size": _enc(self.slice_size),
            "quota": _enc(self.quota),
            "decided_at": [list(r) for r in self.decided_at],
            "last_close": _enc(self.last_close),
            "prev_close": _enc(self.prev_close),
            "prev_volume": None if self.prev_volume is None else _enc(self.prev_volume),
            "prev_spread": _enc(self.prev_spread),
            "prev_log_close": _enc(self.prev_log_close),
            "prev_eta": _enc(self.prev_eta),
            "spread_ewma": _enc(self.spread_ewma),
            "finished": self.finished,
        }

    @classmethod
    def from_state(cls, state: dict, symbols, horizons, config: ExecutionConfig, costs: CostModel) -> Executor:
        """An executor resumed from :meth:`state_dict` (symbols and buckets must be the same, in order)."""
        ex = cls(symbols, horizons, config, costs)
        if state.get("version") != STATE_VERSION:
            raise QuantmlInputError(
                f"executor state version {state.get('version')!r} is not {STATE_VERSION}; start a fresh state"
            )
        if list(state.get("symbols", [])) != ex.symbols or list(state.get("horizons", [])) != ex.horizons:
            raise QuantmlInputError(
                f"the executor state was written for symbols {state.get('symbols')} and buckets "
                f"{state.get('horizons')}, not {ex.symbols} / {ex.horizons}; start a fresh state"
            )
        N, H = ex.position.shape
        for k in ("position", "target", "remaining", "slice_size", "quota"):
            setattr(ex, k, _dec(state[k], (N, H)))
        for k in ("last_close", "prev_close", "prev_spread", "prev_log_close", "prev_eta", "spread_ewma"):
            setattr(ex, k, _dec(state[k], (N,)))
        ex.prev_volume = None if state.get("prev_volume") is None else _dec(state["prev_volume"], (N,))
        ex.decided_at = [list(r) for r in state["decided_at"]]
        ex.finished = bool(state.get("finished", False))
        ex.last_timestamp = None if state.get("last_timestamp") is None else pd.Timestamp(state["last_timestamp"])
        return ex


_FILL_DTYPES = {
    "timestamp": "datetime64[ns, UTC]",
    "decided_at": "datetime64[ns, UTC]",
    "symbol": "object",
    "bucket": "object",
    "policy": "object",
    "side": "int64",
}
_PNL_DTYPES = {"timestamp": "datetime64[ns, UTC]", "symbol": "object", "bucket": "object", "policy": "object"}
