"""The book a model version would trade, fold by fold: one computation for tune and the gates.

A version's book is the source run's configured strategy (``strategy`` of its logged
``config/config.yaml``) with the version's signal thresholds and allocator settings (its bundle's:
a version made by ``quantml tune attach=`` carries the tuned ones), executed by the one engine
(:func:`quantml.backtest.run_backtest`) on each fold's out-of-sample predictions of each horizon,
with the run's costs, ``periods_per_year`` and IC mode, and the run's market calendar
(``predictions/market.parquet``: the PnL runs over every development bar). For the run's own
(untuned) signal this is exactly the backtest training logs on each fold run as
``test_sharpe_after_cost/<h>``.

Runs whose config names no ``strategy`` (before the strategy group) trade the thresholds ->
allocator book (:class:`AllocatorStrategy`), as tuning always did; runs without the market
artifact run the book on the forecast bars only (the 0.1 calendar).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.backtest import BacktestResult, run_backtest
from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.market import CostModel
from quantml.portfolio.allocator import AllocatorConfig
from quantml.portfolio.strategy import AllocatorStrategy, RankLongShort, SignalPanel, build_strategy
from quantml.signals.core import SignalConfig
from quantml.tracking.reader import ParentRun

SHARPE = "sharpe"  # the engine's stats key of the after-cost Sharpe (logged as sharpe_after_cost)


def run_strategy_config(cfg: DictConfig | dict | None):
    """The ``strategy`` node of a run's resolved config, or None when it names none."""
    node = (cfg or {}).get("strategy") if cfg is not None else None
    return node if node else None


def book_strategy(strategy_cfg, signal: SignalConfig, allocator: AllocatorConfig | None = None):
    """The strategy object of a book: ``strategy_cfg`` (a run's ``strategy`` node) built with
    ``signal`` bound, its allocator replaced by ``allocator`` when given; without a strategy config,
    :class:`AllocatorStrategy` (``allocator`` or the defaults) over ``signal``."""
    if strategy_cfg is None:
        return AllocatorStrategy(allocator or AllocatorConfig(), signal)
    node = strategy_cfg
    if isinstance(node, DictConfig):
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    strategy = build_strategy(node, signal)
    if hasattr(strategy, "signal"):
        strategy = replace(strategy, signal=signal)
    if allocator is not None and hasattr(strategy, "allocator"):
        strategy = replace(strategy, allocator=allocator)
    return strategy


def strategy_allocator(strategy) -> AllocatorConfig | None:
    """The allocator settings a strategy trades with, or None when it has none (rank book)."""
    alloc = getattr(strategy, "allocator", None)
    return alloc if isinstance(alloc, AllocatorConfig) else None


def reads_settings(strategy) -> bool:
    """Whether the signal thresholds / allocator settings change this strategy's book."""
    return hasattr(strategy, "signal") or hasattr(strategy, "allocator")


def describe(strategy) -> str:
    return type(strategy).__name__


def _accepts_market(strategy) -> bool:
    try:
        return "market" in inspect.signature(strategy.book).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class FoldBooks:
    """A run's out-of-sample predictions cut per (fold, horizon, path), ready to be backtested by
    any strategy; the market calendar is pre-cut per part (the same bars the engine would keep)."""

    frame: pd.DataFrame
    market: pd.DataFrame | None
    costs: CostModel
    periods_per_year: float
    ic_mode: str
    horizons: list[str]
    parts: dict[tuple[int, str, int], pd.DataFrame] = field(default_factory=dict, repr=False)
    _markets: dict = field(default_factory=dict, repr=False)
    _panels: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if "fold" not in self.frame.columns:
            raise QuantmlInputError(
                "the out-of-sample predictions have no `fold` column, so per-fold books cannot be cut; "
                "re-run `quantml train` with this quantml version"
            )
        frame = self.frame
        paths = frame["path"].to_numpy() if "path" in frame.columns else np.zeros(len(frame), dtype=np.int64)
        keys = pd.DataFrame(
            {"fold": frame["fold"].astype(int).to_numpy(), "h": frame["horizon"].astype(str), "p": paths}
        )
        for (f, h, p), idx in keys.groupby(["fold", "h", "p"], sort=True).groups.items():
            if h in self.horizons:
                self.parts[(int(f), str(h), int(p))] = frame.loc[idx]
        if self.market is not None:
            mts = pd.DatetimeIndex(self.market[TIMESTAMP])
            for key, part in self.parts.items():
                ts = pd.DatetimeIndex(part[TIMESTAMP])
                stop = ts.max()
                if "t1" in part.columns and part["t1"].notna().any():
                    stop = max(stop, pd.DatetimeIndex(pd.to_datetime(part["t1"], utc=True)).max())
                keep = (mts >= ts.min()) & (mts <= stop) & self.market[SYMBOL].isin(set(part[SYMBOL])).to_numpy()
                self._markets[key] = self.market.loc[keep]

    @property
    def folds(self) -> list[int]:
        return sorted({k[0] for k in self.parts})

    def results(self, strategy, folds=None, horizons=None) -> dict[tuple[int, str, int], BacktestResult]:
        """The engine's backtest of ``strategy`` on each (fold, horizon, path) part."""
        strategy = strategy.bind(ic_mode=self.ic_mode) if hasattr(strategy, "bind") else strategy
        market_ok = self.market is not None and _accepts_market(strategy)
        wanted_f = None if folds is None else {int(f) for f in folds}
        wanted_h = None if horizons is None else {str(h) for h in horizons}
        out = {}
        for key, part in self.parts.items():
            f, h, _ = key
            if (wanted_f is not None and f not in wanted_f) or (wanted_h is not None and h not in wanted_h):
                continue
            data, market = part, None
            if market_ok:
                # the rank book keeps only the market bars of its own calendar (verified equal to the
                # full frame to 1e-12); any other strategy gets every bar, exactly as training passed it
                market = self._markets.get(key) if isinstance(strategy, RankLongShort) else self.market
            elif isinstance(strategy, AllocatorStrategy):  # the panel (and its covariance) once per part
                pkey = (key, strategy.volume_column)
                if pkey not in self._panels:
                    self._panels[pkey] = SignalPanel.from_frame(part, volume_column=strategy.volume_column)
                data = self._panels[pkey]
            out[key] = run_backtest(strategy, data, self.costs, self.periods_per_year, market=market)
        return out

    def fold_sharpe(self, strategy, folds=None, horizons=None) -> dict[str, dict[int, float]]:
        """``{horizon: {fold: after-cost Sharpe}}`` (NaN-aware mean over paths, as evaluation does)."""
        return per_fold(self.results(strategy, folds, horizons), SHARPE)


def per_fold(results: dict[tuple[int, str, int], BacktestResult], stat: str = SHARPE) -> dict[str, dict[int, float]]:
    grouped: dict[str, dict[int, list[float]]] = {}
    for (f, h, _), res in results.items():
        grouped.setdefault(h, {}).setdefault(f, []).append(float(res.stats[stat]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {h: {f: float(np.nanmean(v)) for f, v in sorted(by.items())} for h, by in grouped.items()}


# -- a run's books, as the gates read them ----------------------------------------------------------
@dataclass
class RunBooks:
    """What a parent run's books need: predictions per fold, market calendar, strategy config,
    costs, periods per year, IC mode, the run's own signal."""

    run: ParentRun
    books: FoldBooks
    strategy_cfg: object
    signal: SignalConfig
    has_market: bool

    def strategy(self, signal: SignalConfig | None = None, allocator: AllocatorConfig | None = None):
        return book_strategy(self.strategy_cfg, signal or self.signal, allocator)


def run_books(run: ParentRun) -> RunBooks | None:
    """The run's books, or None when it has no out-of-sample predictions (e.g. layout 1 fakes)."""
    if not run.has_oos_predictions():
        return None
    frame = run.oos_predictions()
    if "fold" not in frame.columns:
        return None
    cfg = run.config()
    cost = cfg.get("cost")
    costs = CostModel.from_config(cost) if cost else CostModel(fee_bps=0.0, slippage_bps=0.0)
    signal = SignalConfig.from_config(cfg.get("signal") or {}, cost=costs.round_trip)
    ppy = run.periods_per_year()
    if ppy is None:
        from quantml.contracts import periods_per_year

        ppy = periods_per_year(frame[TIMESTAMP], frame[SYMBOL])
    ic_mode = run.tags.get(L.TAG_IC_MODE)
    if not ic_mode:
        from quantml.evaluation import ic_mode_for

        ic_mode = ic_mode_for(int(frame[SYMBOL].nunique()))
    horizons = run.horizons or list(dict.fromkeys(frame["horizon"].astype(str)))
    market = run.market()
    books = FoldBooks(frame, market, costs, float(ppy), str(ic_mode), horizons)
    return RunBooks(run, books, run_strategy_config(cfg), signal, market is not None)
