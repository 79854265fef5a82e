"""Optuna study over signal thresholds and allocator risk settings, time-respecting.

The source run's OOS predictions are cut in time (:func:`time_split`): trials are scored
on the earlier (tuning) bars only; the best trial is then judged on the later (selection)
bars, which no trial has seen. (``holdout`` is reserved for the lockbox: data no study of
the development folds ever reads.) The strategy scored is the whole chain thresholds ->
allocator -> after-cost backtest: an :class:`AllocatorStrategy` run by the one engine
(:func:`quantml.backtest.run_backtest`).

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

from quantml.backtest import BacktestResult, run_backtest
from quantml.contracts import QuantmlInputError
from quantml.market import CostModel
from quantml.portfolio.allocator import AllocatorConfig
from quantml.portfolio.strategy import AllocatorStrategy, SignalPanel
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
    """Stats of one strategy on tuning and selection bars (averaged over CPCV paths)."""

    tune: dict[str, float]
    selection: dict[str, float]
    tune_objective: float
    selection_objective: float
    results: dict[int, BacktestResult] = field(default_factory=dict)  # full-period backtest per path


class ThresholdStudy:
    """Scores strategies on a source run's OOS predictions, tuning bars before selection bars.

    ``costs`` and ``periods_per_year`` default to the source run's; ``allocator`` gives the
    fixed allocator settings the study starts from.
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
        self.allocator = allocator or AllocatorConfig()
        self.costs = costs or source.costs()
        self.periods_per_year = float(periods_per_year or source.periods_per_year())
        self.base_signal = base_signal or source.signal_config(self.costs)
        self.split: TimeSplit = time_split(source.frame, settings.tune_fraction)
        self.horizons = source.horizons
        self.full: dict[int, SignalPanel] = {}
        self.tune_panels: dict[int, SignalPanel] = {}
        for path in source.paths():
            part = source.frame if "path" not in source.frame.columns else source.frame[source.frame["path"] == path]
            panel = SignalPanel.from_frame(part, self.horizons)
            panel.covariance(self.allocator.cov_window, self.allocator.cov_min_periods)  # before slicing
            cut = int(np.searchsorted(panel.timestamps, self.split.cutoff))
            if cut < 2 or cut > len(panel) - 2:
                raise QuantmlInputError(
                    f"path {path}: the tuning/selection cut at {self.split.cutoff} leaves {cut} tuning and "
                    f"{len(panel) - cut} selection bars; change split.tune_fraction or use more folds"
                )
            self.full[path] = panel
            self.tune_panels[path] = panel.slice(0, cut)
        self.space = SearchSpace.from_panels(list(self.tune_panels.values()), self.horizons, settings)

    # -- scoring ---------------------------------------------------------------------------
    def _value(self, result: BacktestResult) -> float:
        active = float((result.positions.abs().sum(axis=1) > 0).mean()) if len(result.positions) else 0.0
        if active < self.settings.min_active_fraction:
            return 0.0  # a strategy that (almost) never trades scores like not trading at all
        return objective_value(result.stats, self.settings.objective, self.settings.dd_penalty)

    def score_tuning(self, signal: SignalConfig, allocator: AllocatorConfig) -> tuple[float, dict[str, float]]:
        """Objective on the tuning bars (mean over paths) and the mean stats."""
        strategy = AllocatorStrategy(allocator, signal)
        results = [run_backtest(strategy, p, self.costs, self.periods_per_year) for p in self.tune_panels.values()]
        value = float(np.mean([self._value(r) for r in results]))
        stats = _mean_stats([r.stats for r in results])
        stats["active_fraction"] = float(np.mean([(r.positions.abs().sum(axis=1) > 0).mean() for r in results]))
        return value, stats

    def objective(self, trial: optuna.Trial) -> float:
        signal, allocator = self.space.configs(self.space.suggest(trial), self.base_signal, self.allocator)
        value, stats = self.score_tuning(signal, allocator)
        for k, v in stats.items():
            trial.set_user_attr(k, float(v))
        return value

    def evaluate(self, signal: SignalConfig, allocator: AllocatorConfig) -> Evaluation:
        """Backtest the full OOS period once per path; report the tuning and selection slices."""
        results, tune, hold, tv, hv = {}, [], [], [], []
        strategy = AllocatorStrategy(allocator, signal)
        for path, panel in self.full.items():
            res = run_backtest(strategy, panel, self.costs, self.periods_per_year)
            results[path] = res
            t, h = res.slice(stop=self.split.cutoff), res.slice(start=self.split.cutoff)
            tune.append(_with_horizons(t))
            hold.append(_with_horizons(h))
            tv.append(self._value(t))
            hv.append(self._value(h))
        return Evaluation(_mean_stats(tune), _mean_stats(hold), float(np.mean(tv)), float(np.mean(hv)), results)


def _with_horizons(result: BacktestResult) -> dict[str, float]:
    out = dict(result.stats)
    for h, s in result.horizon_stats().items():
        for k in ("sharpe", "ann_return", "max_drawdown"):
            out[f"{k}/{h}"] = s[k]
    return out


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
