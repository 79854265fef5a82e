"""Optuna study over signal thresholds and allocator risk settings, time-respecting.

The source run's OOS predictions are cut at a fold boundary (:func:`time_split`): trials are
scored on the earlier (tuning) folds only; the best trial is then judged on the later
(selection) folds, which no trial has seen. (``holdout`` is reserved for the lockbox: data no
study of the development folds ever reads.) The book scored is the run's own: its configured
strategy (``cfg.strategy``) with the trial's settings, backtested fold by fold and horizon by
horizon by the one engine (:func:`quantml.backtest.run_backtest`) on the run's market calendar
(:mod:`quantml.registry.book`, shared with the promotion gate), so the untuned signal scores
exactly the fold runs' logged ``test_sharpe_after_cost/<h>``.

Parameters searched (names in the Optuna study):
- ``threshold/<h>`` in ``[0, q(|score|)]`` per horizon, ``q`` = ``threshold_quantile`` of the
  non-zero ``|score|`` on the tuning bars;
- ``min_confidence/<h>`` in ``[0, q(confidence)]`` (``confidence_quantile``; None: not tuned);
- ``target_vol`` in ``target_vol`` (log scale; None: not tuned);
- ``risk_budget/<h>`` in ``[0.05, 1]`` per horizon when there are several (normalised by
  the allocator).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import pandas as pd

from quantml.backtest import BacktestResult
from quantml.contracts import QuantmlInputError
from quantml.market import CostModel
from quantml.portfolio.allocator import AllocatorConfig
from quantml.portfolio.strategy import SignalPanel
from quantml.registry.book import FoldBooks, book_strategy, describe, per_fold, reads_settings, strategy_allocator
from quantml.signals.core import SignalConfig
from quantml.tuning.objectives import check_objective, objective_value
from quantml.tuning.source import SourceRun
from quantml.tuning.split import TimeSplit, time_split

log = logging.getLogger(__name__)
BUDGET_RANGE = (0.05, 1.0)


@dataclass
class TuneSettings:
    """What the study searches and maximises (``conf/tune.yaml``: ``objective``, ``split``, ``search``)."""

    objective: str = "sharpe"
    dd_penalty: float = 1.0
    tune_fraction: float = 0.6
    threshold_quantile: float = 0.99
    confidence_quantile: float | None = 0.9
    target_vol: tuple[float, float] | None = (0.05, 0.30)
    tune_risk_budget: bool = True
    min_active_fraction: float = 0.05

    def __post_init__(self) -> None:
        check_objective(self.objective)
        if not 0 < self.threshold_quantile <= 1:
            raise QuantmlInputError(f"search.threshold_quantile={self.threshold_quantile} must be in (0, 1]")
        if self.target_vol is not None:
            lo, hi = (float(x) for x in self.target_vol)
            if not 0 < lo <= hi:
                raise QuantmlInputError(
                    f"search.target_vol={list(self.target_vol)} must be [low, high] with "
                    "0 < low <= high (annualised), e.g. [0.05, 0.3], or null"
                )
            self.target_vol = (lo, hi)


@dataclass
class SearchSpace:
    """Ranges of the study's parameters, fixed from the tuning bars (see module doc)."""

    horizons: list[str]
    threshold_high: dict[str, float]
    confidence_high: dict[str, float] | None
    target_vol: tuple[float, float] | None
    risk_budget: bool

    @classmethod
    def from_panels(cls, panels: list[SignalPanel], horizons: list[str], settings: TuneSettings) -> SearchSpace:
        def high(attr: str, j: int, q: float) -> float:
            vals = np.concatenate([np.abs(getattr(p, attr)[:, :, j]).ravel() for p in panels])
            vals = vals[np.isfinite(vals) & (vals > 0)]
            return float(np.quantile(vals, q)) if len(vals) else 1e-9

        thr = {h: max(high("score", j, settings.threshold_quantile), 1e-9) for j, h in enumerate(horizons)}
        conf = None
        if settings.confidence_quantile is not None:
            conf = {
                h: min(max(high("confidence", j, settings.confidence_quantile), 1e-9), 1.0)
                for j, h in enumerate(horizons)
            }
        return cls(list(horizons), thr, conf, settings.target_vol, settings.tune_risk_budget and len(horizons) > 1)

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """Draw every parameter of one trial; returns ``trial.params``."""
        for h in self.horizons:
            trial.suggest_float(f"threshold/{h}", 0.0, self.threshold_high[h])
            if self.confidence_high is not None:
                trial.suggest_float(f"min_confidence/{h}", 0.0, self.confidence_high[h])
        if self.target_vol is not None:
            trial.suggest_float("target_vol", *self.target_vol, log=True)
        if self.risk_budget:
            for h in self.horizons:
                trial.suggest_float(f"risk_budget/{h}", *BUDGET_RANGE)
        return dict(trial.params)

    @staticmethod
    def configs(
        params: dict[str, float], signal: SignalConfig, allocator: AllocatorConfig
    ) -> tuple[SignalConfig, AllocatorConfig]:
        """Apply a study's params (``study.best_params``) to base configs."""
        thr = {k.split("/", 1)[1]: float(v) for k, v in params.items() if k.startswith("threshold/")}
        conf = {k.split("/", 1)[1]: float(v) for k, v in params.items() if k.startswith("min_confidence/")}
        budget = {k.split("/", 1)[1]: float(v) for k, v in params.items() if k.startswith("risk_budget/")}
        sig = replace(signal, threshold={**signal.threshold, **thr}, min_confidence={**signal.min_confidence, **conf})
        alloc = replace(
            allocator,
            risk_budget={**allocator.risk_budget, **budget},
            target_vol=float(params.get("target_vol", allocator.target_vol)),
        )
        return sig, alloc


@dataclass
class Evaluation:
    """One book (signal + allocator) scored fold by fold: mean stats and objective over the tuning
    folds and over the selection folds; per (fold, horizon, path) backtests in ``results`` and the
    per-fold after-cost Sharpe in ``fold_sharpe`` (``{horizon: {fold: sharpe}}``)."""

    tune: dict[str, float]
    selection: dict[str, float]
    tune_objective: float
    selection_objective: float
    results: dict[tuple[int, str, int], BacktestResult] = field(default_factory=dict)
    fold_sharpe: dict[str, dict[int, float]] = field(default_factory=dict)


class ThresholdStudy:
    """Scores books on a source run's OOS predictions, fold by fold, tuning folds before selection folds.

    The book is the run's own (``cfg.strategy``, through :mod:`quantml.registry.book`): each trial's
    signal and allocator settings go into the run's configured strategy, which the one engine
    backtests on every (fold, horizon) of the tuning folds with the run's costs, periods per year,
    IC mode and market calendar, so the untuned signal scores exactly each fold run's logged
    ``test_sharpe_after_cost/<h>``. ``costs`` and ``periods_per_year`` default to the source run's;
    ``allocator`` is the allocator the study starts from when the run's strategy carries none of
    its own (runs without a strategy config trade the allocator book).
    """

    def __init__(
        self,
        source: SourceRun,
        settings: TuneSettings,
        allocator: AllocatorConfig | None = None,
        costs: CostModel | None = None,
        periods_per_year: float | None = None,
        base_signal: SignalConfig | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.costs = costs or source.costs()
        self.periods_per_year = float(periods_per_year or source.periods_per_year())
        self.base_signal = base_signal or source.signal_config(self.costs)
        self.strategy_cfg = source.strategy_config()
        own = strategy_allocator(book_strategy(self.strategy_cfg, self.base_signal)) if self.strategy_cfg else None
        self.allocator = own or allocator or AllocatorConfig()
        self.split: TimeSplit = time_split(source.frame, settings.tune_fraction)
        if self.split.method != "folds" or not self.split.tune_folds or not self.split.selection_folds:
            raise QuantmlInputError(
                f"run {source.run_id}: its folds' test blocks are not disjoint in time, so no fold-by-fold "
                f"tuning/selection split exists; tune a walk-forward run (quantml train validation=walk_forward)"
            )
        self.horizons = source.horizons
        self.books = FoldBooks(
            source.frame, source.market, self.costs, self.periods_per_year, source.ic_mode(), self.horizons
        )
        self.book_name = describe(self.strategy(self.base_signal, self.allocator))
        self.reads_settings = reads_settings(self.strategy(self.base_signal, self.allocator))
        self.tune_panels: dict[int, SignalPanel] = {}
        tune_rows = source.frame["fold"].astype(int).isin(self.split.tune_folds)
        for path in source.paths():
            rows = tune_rows if "path" not in source.frame.columns else tune_rows & (source.frame["path"] == path)
            self.tune_panels[path] = SignalPanel.from_frame(source.frame[rows], self.horizons)
        self.space = SearchSpace.from_panels(list(self.tune_panels.values()), self.horizons, settings)
        if not self.reads_settings:
            log.warning(
                "run %s trades %s, whose book reads neither signal thresholds nor allocator settings: every "
                "trial scores the same book (the tuned thresholds only change the served `action`); train "
                "with strategy=allocator to tune the book itself",
                source.run_id,
                self.book_name,
            )

    def strategy(self, signal: SignalConfig, allocator: AllocatorConfig):
        """The run's book with these settings (the one :mod:`quantml.registry.book` builds)."""
        return book_strategy(self.strategy_cfg, signal, allocator)

    # -- scoring ---------------------------------------------------------------------------
    def _value(self, result: BacktestResult) -> float:
        active = float((result.positions.abs().sum(axis=1) > 0).mean()) if len(result.positions) else 0.0
        if active < self.settings.min_active_fraction:
            return 0.0  # a strategy that (almost) never trades scores like not trading at all
        return objective_value(result.stats, self.settings.objective, self.settings.dd_penalty)

    def _score(self, results: dict) -> tuple[float, dict[str, float]]:
        value = float(np.nanmean([self._value(r) for r in results.values()]))
        stats = _mean_stats([r.stats for r in results.values()])
        for h in self.horizons:
            mine = [r.stats for (_, hh, _), r in results.items() if hh == h]
            if mine:
                for k, v in _mean_stats(mine).items():
                    if k in ("sharpe", "ann_return", "max_drawdown"):
                        stats[f"{k}/{h}"] = v
        stats["active_fraction"] = float(
            np.mean([(r.positions.abs().sum(axis=1) > 0).mean() if len(r.positions) else 0.0 for r in results.values()])
        )
        return value, stats

    def score_tuning(self, signal: SignalConfig, allocator: AllocatorConfig) -> tuple[float, dict[str, float]]:
        """Objective on the tuning folds (mean over their (fold, horizon) books) and the mean stats."""
        return self._score(self.books.results(self.strategy(signal, allocator), self.split.tune_folds))

    def objective(self, trial: optuna.Trial) -> float:
        signal, allocator = self.space.configs(self.space.suggest(trial), self.base_signal, self.allocator)
        value, stats = self.score_tuning(signal, allocator)
        for k, v in stats.items():
            trial.set_user_attr(k, float(v))
        return value

    def evaluate(self, signal: SignalConfig, allocator: AllocatorConfig) -> Evaluation:
        """Backtest every fold's book once; report the tuning folds and the selection folds."""
        results = self.books.results(self.strategy(signal, allocator))
        tune = {k: r for k, r in results.items() if k[0] in self.split.tune_folds}
        sel = {k: r for k, r in results.items() if k[0] in self.split.selection_folds}
        tv, ts = self._score(tune)
        sv, ss = self._score(sel)
        return Evaluation(ts, ss, tv, sv, results, per_fold(results))


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = stats[0].keys()
    return {
        k: float(np.nanmean([s[k] for s in stats])) if any(np.isfinite(s[k]) for s in stats) else float("nan")
        for k in keys
    }


def make_sampler(seed: int, n_startup_trials: int = 10) -> optuna.samplers.TPESampler:
    """Seeded TPE; ``multivariate`` models the thresholds' interplay."""
    return optuna.samplers.TPESampler(seed=int(seed), n_startup_trials=int(n_startup_trials), multivariate=True)


def study_attrs(study: ThresholdStudy) -> dict[str, object]:
    """What a study's results depend on; a resumed study must match them."""
    return {
        "source_run_id": study.source.run_id,
        "objective": study.settings.objective,
        "dd_penalty": study.settings.dd_penalty,
        "tune_fraction": study.settings.tune_fraction,
        "cutoff": str(study.split.cutoff),
        "horizons": ",".join(study.horizons),
        "costs": str(study.costs.to_dict()),
        "periods_per_year": study.periods_per_year,
    }


def check_or_set_attrs(optuna_study: optuna.Study, attrs: dict[str, object]) -> None:
    """Record ``attrs`` on a new study; on a resumed one, refuse a mismatch."""
    existing = optuna_study.user_attrs
    for k, v in attrs.items():
        if k in existing and str(existing[k]) != str(v):
            raise QuantmlInputError(
                f"study {optuna_study.study_name!r} was created with {k}={existing[k]!r}, this run has {v!r}; "
                "resume it with the same settings or start a new study with study.name=<new name>"
            )
    for k, v in attrs.items():
        if k not in existing:
            optuna_study.set_user_attr(k, v)


def trials_frame(optuna_study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, params, user attrs (tuning-bar stats)."""
    return optuna_study.trials_dataframe(
        attrs=("number", "value", "state", "params", "user_attrs", "datetime_start", "duration")
    )
