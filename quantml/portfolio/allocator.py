"""Portfolio allocator: per-(symbol, horizon) signals -> target positions with attribution.

Horizons are strategy buckets. For each bar (shapes: ``N`` symbols, ``H`` horizons):

1. raw weight ``w[n, h] = score * confidence / vol`` on active signals (``action != flat``),
   a Kelly-like size: ``score = edge / vol`` so ``w`` is proportional to ``edge / vol**2``;
2. correlation de-duplication inside each bucket: among symbols whose return correlation
   (from the trailing covariance) is ``>= corr_threshold`` in absolute value, greedily by
   ``|w|``, the strongest keeps its weight and the others are dropped (``dedup="keep"``) or
   the cluster shares the strongest one's gross weight pro rata to ``|w|`` (``"share"``);
3. each bucket is scaled to an ex-ante volatility ``risk_budget[h] * target_vol``, the sum
   of the buckets is then scaled to ``target_vol`` (annualised, ``w' C w * periods_per_year``);
4. caps, each of which only scales down: per bucket gross ``sum_n |w[n, h]| <= bucket_cap``,
   per symbol ``|sum_h w[n, h]| <= symbol_cap``, total gross ``<= max_gross``; a final
   scale-down keeps ex-ante volatility ``<= target_vol`` (equal when no cap binds).

Positions are fractions of capital; ``attribution[n, h]`` sums over ``h`` to ``position[n]``.
A bar whose covariance is not available yet (NaN) gets no positions. On a panel of mixed
calendars (``is_open``), a symbol whose market is closed at a bar keeps the weights of its last
open bar; only the open symbols are solved for (:func:`carry_closed`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, require_columns

DEDUP_MODES = ("keep", "share")


@dataclass
class AllocatorConfig:
    """Risk settings of the allocator; ``target_vol`` is annualised."""

    target_vol: float = 0.10
    risk_budget: dict[str, float] = field(default_factory=dict)  # per horizon; missing -> 1
    symbol_cap: float = 0.5
    bucket_cap: float = 1.0
    max_gross: float = 2.0
    corr_threshold: float | None = 0.95
    dedup: str = "keep"
    cov_window: int = 60
    cov_min_periods: int = 20
    eps: float = 1e-12

    def __post_init__(self) -> None:
        for name in ("target_vol", "symbol_cap", "bucket_cap", "max_gross"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise QuantmlInputError(
                    f"allocator.{name} = {v} must be a positive number; set it, e.g. allocator.{name}=0.5"
                )
        for h, b in self.risk_budget.items():
            if not (np.isfinite(b) and b >= 0):
                raise QuantmlInputError(f"allocator.risk_budget.{h} = {b} must be >= 0")
        if self.corr_threshold is not None and not 0 < self.corr_threshold <= 1:
            raise QuantmlInputError(
                f"allocator.corr_threshold = {self.corr_threshold} must be in (0, 1] or null to disable de-duplication"
            )
        if self.dedup not in DEDUP_MODES:
            raise QuantmlInputError(f"allocator.dedup = {self.dedup!r}; use one of {DEDUP_MODES}")
        if not 2 <= self.cov_min_periods <= self.cov_window:
            raise QuantmlInputError(
                f"allocator.cov_min_periods = {self.cov_min_periods} must be in [2, cov_window={self.cov_window}]"
            )

    @classmethod
    def from_dict(cls, d) -> AllocatorConfig:
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise QuantmlInputError(f"unknown allocator setting(s) {sorted(unknown)}; known: {sorted(known)}")
        if "risk_budget" in d:
            d["risk_budget"] = {str(k): float(v) for k, v in dict(d["risk_budget"] or {}).items()}
        for k in ("target_vol", "symbol_cap", "bucket_cap", "max_gross", "eps"):
            if k in d:
                d[k] = float(d[k])
        for k in ("cov_window", "cov_min_periods"):
            if k in d:
                d[k] = int(d[k])
        if d.get("corr_threshold") is not None:
            d["corr_threshold"] = float(d["corr_threshold"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def budgets(self, horizons: list[str]) -> np.ndarray:
        """Risk budget per horizon, normalised to sum to 1 ``[H]``."""
        b = np.array([self.risk_budget.get(h, 1.0) for h in horizons], dtype=np.float64)
        total = b.sum()
        if total <= 0:
            raise QuantmlInputError(
                f"allocator.risk_budget gives every horizon of {horizons} a zero budget; "
                "give at least one horizon a positive budget"
            )
        return b / total


def _quad(w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``w' C w`` per bar for ``w [T, N]``, ``cov [T, N, N]`` -> ``[T]``."""
    return np.einsum("tn,tnm,tm->t", w, cov, w)


def _safe_ratio(num: np.ndarray | float, den: np.ndarray, eps: float) -> np.ndarray:
    """``num / den``, 0 where ``den <= eps``."""
    den = np.asarray(den, dtype=np.float64)
    return np.where(den > eps, num / np.where(den > eps, den, 1.0), 0.0)


def _shrink(cap: float, value: np.ndarray) -> np.ndarray:
    """Factor <= 1 that brings ``value`` down to ``cap`` (1 when already within)."""
    return np.where(value > cap, cap / np.where(value > cap, value, 1.0), 1.0)


def deduplicate(raw: np.ndarray, corr: np.ndarray, threshold: float, mode: str = "keep") -> np.ndarray:
    """Correlation de-duplication of one bucket: ``raw [T, N]``, ``corr [T, N, N]`` -> ``[T, N]``.

    Greedy by ``|raw|`` (ties: lower symbol index first): a symbol is a leader unless it is
    correlated (``|corr| >= threshold``) with a stronger leader, in which case it joins the
    first such leader's cluster. ``keep``: non-leaders get 0. ``share``: every member of a
    cluster gets ``raw * |raw_leader| / sum_cluster |raw|`` (the cluster's gross equals
    the leader's alone). Zero weights take no part.
    """
    T, N = raw.shape
    strength = np.abs(raw)
    order = np.argsort(-strength, axis=1, kind="stable")  # [T, N]
    rows = np.arange(T)
    leader_of = np.full((T, N), -1)
    is_leader = np.zeros((T, N), dtype=bool)
    close = np.abs(np.nan_to_num(corr)) >= threshold  # [T, N, N]
    for k in range(N):
        i = order[:, k]
        active = strength[rows, i] > 0
        # first (strongest) leader correlated with i; leaders so far were stronger than i
        linked = close[rows, i, :] & is_leader  # [T, N]
        linked_rank = np.where(linked[rows[:, None], order], np.arange(N)[None, :], N)
        first = linked_rank.min(axis=1)
        has_leader = active & (first < N)
        new_leader = active & ~has_leader
        is_leader[rows[new_leader], i[new_leader]] = True
        leader_of[rows[new_leader], i[new_leader]] = i[new_leader]
        leader_of[rows[has_leader], i[has_leader]] = order[rows[has_leader], first[has_leader]]
    if mode == "keep":
        return np.where(is_leader, raw, 0.0)
    # share: cluster gross = |leader|, split pro rata to |raw|
    t_idx, n_idx = np.nonzero(leader_of >= 0)
    lead = leader_of[t_idx, n_idx]
    cluster_gross = np.zeros((T, N))
    np.add.at(cluster_gross, (t_idx, lead), strength[t_idx, n_idx])
    out = np.zeros_like(raw)
    out[t_idx, n_idx] = raw[t_idx, n_idx] * strength[t_idx, lead] / cluster_gross[t_idx, lead]
    return out


def allocate_panel(
    score: np.ndarray,
    confidence: np.ndarray,
    vol: np.ndarray,
    active: np.ndarray,
    cov: np.ndarray,
    horizons: list[str],
    config: AllocatorConfig,
    periods_per_year: float,
    is_open: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Allocate every bar at once.

    Shapes: ``score, confidence, vol, active`` ``[T, N, H]`` (``active`` bool or the action
    sign), ``cov`` ``[T, N, N]`` per-bar return covariance (NaN rows = not available).
    Returns ``positions [T, N]`` and ``attribution [T, N, H]`` (sums over H to positions).
    ``is_open [T, N]`` (optional, bool): whether each symbol has a bar at each bar of the book (a
    panel of mixed calendars on their union); a closed symbol's weights are carried from its last
    open bar, never re-targeted (:func:`carry_closed`). None: every symbol is open (as before).
    """
    score = np.asarray(score, dtype=np.float64)
    T, N, H = score.shape
    if len(horizons) != H:
        raise ValueError(f"{len(horizons)} horizon names for {H} horizon columns")
    cov = np.asarray(cov, dtype=np.float64)
    ready = np.isfinite(cov).all(axis=(1, 2))
    cov = np.where(ready[:, None, None], cov, 0.0)
    eps = config.eps
    vol = np.maximum(np.asarray(vol, dtype=np.float64), eps)
    raw = np.where(np.asarray(active) != 0, score * np.asarray(confidence, dtype=np.float64) / vol, 0.0)
    raw = np.where(np.isfinite(raw) & ready[:, None, None], raw, 0.0)

    if config.corr_threshold is not None and N > 1:
        sd = np.sqrt(np.maximum(np.einsum("tnn->tn", cov), 0.0))
        corr = cov / np.maximum(sd[:, :, None] * sd[:, None, :], eps)
        raw = np.stack([deduplicate(raw[:, :, h], corr, config.corr_threshold, config.dedup) for h in range(H)], axis=2)

    ppy = float(periods_per_year)
    budgets = config.budgets(list(horizons))
    w = np.empty_like(raw)
    for h in range(H):
        bucket_vol = np.sqrt(np.maximum(_quad(raw[:, :, h], cov), 0.0) * ppy)
        w[:, :, h] = raw[:, :, h] * _safe_ratio(budgets[h] * config.target_vol, bucket_vol, eps)[:, None]

    def total_vol(weights: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(_quad(weights.sum(axis=2), cov), 0.0) * ppy)

    w = w * _safe_ratio(config.target_vol, total_vol(w), eps)[:, None, None]
    w = w * _shrink(config.bucket_cap, np.abs(w).sum(axis=1, keepdims=True))  # per bucket gross
    w = w * _shrink(config.symbol_cap, np.abs(w.sum(axis=2, keepdims=True)))  # per symbol net
    w = w * _shrink(config.max_gross, np.abs(w.sum(axis=2)).sum(axis=1)[:, None, None])  # total gross
    w = w * _shrink(config.target_vol, total_vol(w))[:, None, None]  # vol after caps
    if is_open is not None:
        is_open = np.asarray(is_open, dtype=bool)
        if is_open.shape != (T, N):
            raise ValueError(f"is_open {is_open.shape} must be [T, N] = {(T, N)}")
        if not is_open.all():
            w = carry_closed(w, is_open, cov, config, ppy)
    return w.sum(axis=2), w


def carry_closed(
    w: np.ndarray, is_open: np.ndarray, cov: np.ndarray, config: AllocatorConfig, ppy: float
) -> np.ndarray:
    """The allocator never trades a closed market: at a bar where symbol ``n`` has no bar
    (``is_open[t, n]`` False: its exchange is closed), its weights (every bucket) are the ones it
    held at its last open bar, and the open symbols' weights (solved over the open symbols) are
    scaled down, if need be, so that the book with the carried weights stays within ``max_gross``
    and the ex-ante ``target_vol``. ``w [T, N, H]`` -> ``[T, N, H]``."""
    out = np.array(w, dtype=np.float64, copy=True)
    tv2 = config.target_vol**2 / ppy
    for t in np.flatnonzero(~is_open.all(axis=1)):
        shut = ~is_open[t]
        out[t, shut, :] = out[t - 1, shut, :] if t > 0 else 0.0
        if not np.any(out[t, shut, :]):
            continue  # nothing carried: the open symbols' weights stand as solved
        a = np.where(shut[:, None], 0.0, out[t])
        b = np.where(shut[:, None], out[t], 0.0)
        pa, pb = a.sum(axis=1), b.sum(axis=1)
        scale = 1.0
        gross_a, gross_b = np.abs(pa).sum(), np.abs(pb).sum()
        if gross_a > config.eps and gross_a + gross_b > config.max_gross:
            scale = max(0.0, (config.max_gross - gross_b) / gross_a)
        c = cov[t]
        qa, qab, qb = pa @ c @ pa, pa @ c @ pb, pb @ c @ pb
        if qa > config.eps * config.eps and scale * scale * qa + 2 * scale * qab + qb > tv2:
            root = 0.0 if qb >= tv2 else (-qab + np.sqrt(max(qab * qab - qa * (qb - tv2), 0.0))) / qa
            scale = min(scale, max(root, 0.0))
        out[t] = a * scale + b
    return out


@dataclass
class Allocation:
    """One bar's allocation: ``positions`` [symbol], ``attribution`` [symbol x horizon]."""

    positions: pd.Series
    attribution: pd.DataFrame
    ex_ante_vol: float


def allocate(signals: pd.DataFrame, cov: pd.DataFrame, config: AllocatorConfig, periods_per_year: float) -> Allocation:
    """Allocate one bar.

    ``signals``: one row per (symbol, horizon) with ``score, confidence, vol`` (or
    ``vol_forecast``) and optionally ``action`` (rows with ``action == "flat"`` are inactive;
    without ``action`` every non-zero score is active). ``cov``: per-bar return covariance,
    indexed and columned by symbol (annualised with ``periods_per_year``).
    """
    vol_col = "vol" if "vol" in signals.columns else "vol_forecast"
    require_columns(
        signals,
        ("symbol", "horizon", "score", "confidence", vol_col),
        "allocate: signals",
        "pass one row per (symbol, horizon) with score, confidence, vol",
    )
    symbols = list(cov.index)
    unknown = sorted(set(signals["symbol"]) - set(symbols))
    if unknown:
        raise QuantmlInputError(
            f"allocate: symbol(s) {unknown} have signals but no covariance row; "
            "estimate the covariance over every traded symbol"
        )
    horizons = list(dict.fromkeys(signals["horizon"]))
    frame = signals.set_index(["symbol", "horizon"])
    if frame.index.duplicated().any():
        dup = frame.index[frame.index.duplicated()][0]
        raise QuantmlInputError(f"allocate: duplicate signal for symbol {dup[0]!r} horizon {dup[1]!r}")
    full = pd.MultiIndex.from_product([symbols, horizons])

    def cube(col: str, fill: float) -> np.ndarray:
        return frame[col].reindex(full).fillna(fill).to_numpy(dtype=np.float64).reshape(1, len(symbols), len(horizons))

    if "action" in frame.columns:
        act = frame["action"].reindex(full).fillna("flat").map({"long": 1.0, "short": -1.0, "flat": 0.0})
        active = act.to_numpy(dtype=np.float64).reshape(1, len(symbols), len(horizons))
    else:
        active = (cube("score", 0.0) != 0).astype(np.float64)
    c = cov.loc[symbols, symbols].to_numpy(dtype=np.float64)[None]
    pos, attr = allocate_panel(
        cube("score", 0.0), cube("confidence", 0.0), cube(vol_col, 1.0), active, c, horizons, config, periods_per_year
    )
    vol = float(np.sqrt(max(pos[0] @ c[0] @ pos[0], 0.0) * periods_per_year))
    return Allocation(
        pd.Series(pos[0], index=pd.Index(symbols, name="symbol"), name="position"),
        pd.DataFrame(attr[0], index=pd.Index(symbols, name="symbol"), columns=pd.Index(horizons, name="horizon")),
        vol,
    )
