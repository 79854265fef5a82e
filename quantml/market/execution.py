"""Execution: turn target positions into after-cost PnL.

One function does the arithmetic for the vectorised backtest and for the bar-by-bar
paper replay, so the two can only agree.

Positions decided at the close of bar ``t`` earn the return of bar ``t+1``
(``ret_next_bar``): the signal is never applied on the bar it was computed from.

Costs of a trade of size ``|trade|`` (fraction of capital), in basis points of traded
notional: ``fee + slippage + impact_bps`` plus a square-root market impact
``impact_coef * sqrt(participation / participation_cap)``, where participation is the
trade's notional over the bar's traded notional (``|trade| * capital / volume``) when a
volume is given, else ``|trade|`` itself (capital taken as one bar's volume).

``slippage_bps`` is the configured half-spread (the price paid over the mid). When the panel
carries an order-book stream, the bar's own half-spread replaces it: ``half_spread`` (a fraction
of notional per bar and asset, :func:`half_spread_of` from the joined ``bid``/``ask``: known at
the decision bar, so causal); a bar without a usable quote (NaN: missing or stale) pays the
constant, and without the argument every bar does, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantml.market.performance import compounded_drawdown

COST_KEYS = ("fee_bps", "slippage_bps", "impact_bps", "impact_coef", "participation_cap")


@dataclass(frozen=True)
class CostModel:
    """Costs in basis points of traded notional, one way.

    ``impact_coef`` is the impact in bps of a trade whose participation equals
    ``participation_cap``; impact grows with the square root of participation. ``name``
    (``conf/cost/*.yaml``: equity, crypto, zero) is a label: it takes no part in equality.
    Built from the ``cost`` config group by ``_target_: quantml.market.CostModel``.
    """

    fee_bps: float = 1.0
    slippage_bps: float = 1.0
    impact_bps: float = 0.0
    impact_coef: float = 0.0
    participation_cap: float = 1.0
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from quantml.contracts import QuantmlInputError

        for k in COST_KEYS:
            try:
                v = float(getattr(self, k))
            except (TypeError, ValueError):
                raise QuantmlInputError(f"cost.{k}={getattr(self, k)!r} must be a number (basis points)") from None
            if not np.isfinite(v):
                raise QuantmlInputError(f"cost.{k}={v} must be a finite number (basis points)")
            object.__setattr__(self, k, v)

    @classmethod
    def from_config(cls, cfg) -> CostModel:
        """From a ``cost`` mapping (a DictConfig, a logged config; ``_target_`` and ``name`` are ignored)."""
        return cls(**{k: float(cfg[k]) for k in COST_KEYS if k in cfg and cfg[k] is not None})

    @property
    def one_way(self) -> float:
        """Fixed one-way cost as a fraction of notional."""
        return (self.fee_bps + self.slippage_bps + self.impact_bps) / 1e4

    @property
    def round_trip(self) -> float:
        """Fixed round-trip cost as a fraction (log-return units for small costs)."""
        return 2.0 * self.one_way

    def to_dict(self) -> dict[str, float]:
        return {
            "fee_bps": self.fee_bps,
            "slippage_bps": self.slippage_bps,
            "impact_bps": self.impact_bps,
            "impact_coef": self.impact_coef,
            "participation_cap": self.participation_cap,
        }

    def trade_cost(
        self, trade: np.ndarray, participation: np.ndarray | None = None, half_spread: np.ndarray | None = None
    ) -> np.ndarray:
        """Cost of trading ``trade`` (signed change in position, fraction of capital).

        ``participation`` (same shape, >= 0): the trade's share of the bar's volume; when
        None, ``|trade|`` stands in for it. ``half_spread`` (same shape, fraction of notional):
        the bar's half-spread, charged instead of ``slippage_bps`` where finite and >= 0 (elsewhere,
        and when None, ``slippage_bps`` is).
        """
        size = np.abs(trade)
        if half_spread is None:
            cost = size * self.one_way
        else:
            hs = np.asarray(half_spread, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                known = np.isfinite(hs) & (hs >= 0)
            # where no spread is known the rate is one_way itself, bit for bit
            rate = np.where(known, (self.fee_bps + self.impact_bps) / 1e4 + np.where(known, hs, 0.0), self.one_way)
            cost = size * rate
        if self.impact_coef:
            part = size if participation is None else np.asarray(participation, dtype=np.float64)
            cost = cost + size * self.impact_coef * np.sqrt(part / self.participation_cap) / 1e4
        return cost


def half_spread_of(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Relative half-spread ``(ask - bid) / (ask + bid)`` (half the spread over the mid), NaN where
    a quote is missing, non-positive or crossed (those bars pay the configured ``slippage_bps``)."""
    bid = np.asarray(bid, dtype=np.float64)
    ask = np.asarray(ask, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid)
        return np.where(ok, (ask - bid) / np.where(ok, ask + bid, 1.0), np.nan)


def panel_half_spread(frame) -> np.ndarray | None:
    """:func:`half_spread_of` a frame's joined ``bid``/``ask`` columns, one per row; None when it
    has no quotes (the cost model then keeps its constant ``slippage_bps``)."""
    if "bid" not in frame.columns or "ask" not in frame.columns:
        return None
    return half_spread_of(
        frame["bid"].to_numpy(dtype=np.float64, na_value=np.nan),
        frame["ask"].to_numpy(dtype=np.float64, na_value=np.nan),
    )


def participation_rate(
    trade: np.ndarray, volume: np.ndarray | None, capital: float, participation_cap: float = 1.0
) -> np.ndarray | None:
    """``|trade| * capital / volume`` (volume = traded notional of the bar the trade is decided on).

    A bar with no usable volume (NaN or <= 0) is charged as trading at ``participation_cap``.
    Returns None when ``volume`` is None (the cost model then uses ``|trade|``).
    """
    if volume is None:
        return None
    volume = np.asarray(volume, dtype=np.float64)
    ok = np.isfinite(volume) & (volume > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = np.abs(trade) * float(capital) / np.where(ok, volume, 1.0)
    return np.where(ok, part, participation_cap)


def execute_bar(
    prev_position: np.ndarray,
    position: np.ndarray,
    ret_next_bar: np.ndarray,
    costs: CostModel,
    volume: np.ndarray | None = None,
    capital: float = 1.0,
    half_spread: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """One bar: returns ``(gross_pnl, cost, turnover)`` for the positions held over the next bar.

    Shapes: every array is ``[N]`` (one entry per asset). ``volume`` is the traded notional
    of the decision bar per asset (optional, for participation-dependent impact);
    ``half_spread`` its relative half-spread (optional; NaN: the constant ``slippage_bps``).
    """
    position = np.nan_to_num(np.asarray(position, dtype=np.float64))
    trade = position - np.nan_to_num(np.asarray(prev_position, dtype=np.float64))
    gross = float(np.nansum(position * np.asarray(ret_next_bar, dtype=np.float64)))
    part = participation_rate(trade, volume, capital, costs.participation_cap)
    cost = float(np.sum(costs.trade_cost(trade, part, half_spread)))
    return gross, cost, float(np.sum(np.abs(trade)))


def execute(
    positions: np.ndarray,
    ret_next_bar: np.ndarray,
    costs: CostModel,
    volume: np.ndarray | None = None,
    capital: float = 1.0,
    half_spread: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Vectorised execution over a ``[T, N]`` position matrix (rows: bars, cols: assets).

    Returns arrays of length ``T``: ``gross``, ``cost``, ``pnl`` (= gross - cost),
    ``turnover`` (sum of |trade|), ``equity`` (cumulative pnl, additive) and ``drawdown``
    (compounded: :func:`~quantml.market.performance.compounded_drawdown` of ``pnl``).
    ``volume`` ([T, N], optional): traded notional per bar, for participation-dependent impact.
    ``half_spread`` ([T, N], optional): the relative half-spread of each decision bar
    (:func:`half_spread_of`), charged instead of ``slippage_bps`` where known.
    """
    positions = np.nan_to_num(np.asarray(positions, dtype=np.float64))
    ret_next_bar = np.asarray(ret_next_bar, dtype=np.float64)
    if positions.ndim == 1:
        positions, ret_next_bar = positions[:, None], ret_next_bar[:, None]
        volume = None if volume is None else np.asarray(volume, dtype=np.float64)[:, None]
        half_spread = None if half_spread is None else np.asarray(half_spread, dtype=np.float64)[:, None]
    if positions.shape != ret_next_bar.shape:
        raise ValueError(f"positions {positions.shape} and returns {ret_next_bar.shape} differ in shape")
    if volume is not None and np.shape(volume) != positions.shape:
        raise ValueError(f"volume {np.shape(volume)} and positions {positions.shape} differ in shape")
    if half_spread is not None and np.shape(half_spread) != positions.shape:
        raise ValueError(f"half_spread {np.shape(half_spread)} and positions {positions.shape} differ in shape")
    trades = np.diff(positions, axis=0, prepend=np.zeros((1, positions.shape[1])))
    gross = np.nansum(positions * ret_next_bar, axis=1)
    part = participation_rate(trades, volume, capital, costs.participation_cap)
    cost = costs.trade_cost(trades, part, half_spread).sum(axis=1)
    pnl = gross - cost
    equity = np.cumsum(pnl)
    return {
        "gross": gross,
        "cost": cost,
        "pnl": pnl,
        "turnover": np.abs(trades).sum(axis=1),
        "equity": equity,
        "drawdown": compounded_drawdown(pnl),
    }
