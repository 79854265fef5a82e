"""Hyper-parameter search with Optuna 5 behind Hydra's ``-m``: the ``quantml_optuna`` sweeper.

``quantml train -m hparams_search=lightgbm`` selects the sweeper (``hydra_plugins/
quantml_optuna_sweeper``) and a search space. For each batch of ``n_jobs`` trials the
sweeper asks Optuna (seeded TPE) for parameters, turns them into Hydra overrides,
launches the jobs with the configured launcher (basic, joblib, submitit...) and tells
Optuna each job's return value (``quantml train`` returns
``ExperimentResult.metrics[hparams_search.objective]``). Each job is one MLflow parent run
(with ``hparams_search.trial`` among its params). Jobs report per-fold metrics through
:mod:`quantml.tuning.pruning`; a pruned job raises ``optuna.TrialPruned`` and is recorded
PRUNED; a failed job is recorded FAIL and the sweep goes on.

Search space syntax (``hydra.sweeper.params`` and command-line sweeps), Hydra's own:
``interval(a, b)`` float, ``tag(log, interval(a, b))`` log-uniform, ``int(interval(a, b))``
integer, ``range(a, b[, step])`` integers ``a..b-step`` (floats: stepped), ``choice(...)`` or
``a,b,c`` categorical. A plain value fixes the key.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.metrics import format_lockbox
from quantml.tuning import pruning
from quantml.tuning.storage import make_storage, redact

log = logging.getLogger(__name__)
PRUNERS = ("median", "percentile", "hyperband", "none")


def distribution_from_override(override: Override) -> BaseDistribution | Any:
    """The Optuna distribution of a sweep override, or the plain value of a fixed one."""
    if not override.is_sweep_override():
        return override.value()
    sweep = override.value()
    key = override.get_key_element()
    log_scale = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step if sweep.step is not None else 1
        if all(isinstance(x, int) for x in (start, stop, step)):
            last = start + ((stop - start - 1) // step) * step
            if last < start:
                raise QuantmlInputError(f"{key}: {override.input_line} is an empty range")
            return IntDistribution(start, last, step=step, log=log_scale and step == 1)
        n = math.floor((stop - start) / step - 1e-9)
        return FloatDistribution(float(start), float(start + n * step), step=float(step))
    raise QuantmlInputError(
        f"{key}: sweep {override.input_line!r} is not supported; use interval(), "
        "tag(log, interval()), int(interval()), range() or choice()"
    )


_PLAIN = re.compile(r"^[A-Za-z0-9_.\-+/]+$")


def format_value(value: Any) -> str:
    """A value as a Hydra override right-hand side."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_pruner(name: str, startup_trials: int, warmup_steps: int, percentile: float) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=startup_trials, n_warmup_steps=warmup_steps)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise QuantmlInputError(f"hydra.sweeper.pruner={name!r}; use one of {PRUNERS}")


class HparamSearch:
    """The sweeper's logic (kept out of the plugin module so it is importable and testable)."""

    def __init__(
        self,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: str | None = "sqlite:///optuna.db",
        n_trials: int = 20,
        n_jobs: int = 1,
        seed: int | None = None,
        n_startup_trials: int = 5,
        pruner: str = "median",
        pruner_startup_trials: int = 2,
        pruner_warmup_steps: int = 1,
        percentile: float = 25.0,
        params: dict | None = None,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise QuantmlInputError(f"hydra.sweeper.direction={direction!r}; use maximize or minimize")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise QuantmlInputError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        self.direction, self.study_name, self.storage_url = direction, study_name or "quantml-hparams", storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(n_startup_trials))
        self.pruner = make_pruner(pruner, int(pruner_startup_trials), int(pruner_warmup_steps), float(percentile))
        self.params = {
            str(k): str(v) if not isinstance(v, str) else v
            for k, v in (
                OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})
            ).items()
        }
        self.job_idx = 0

    def setup(
        self,
        *,
        hydra_context,
        task_function,
        config: DictConfig,
        validate: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.validate = validate
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def search_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
        """Distributions per key and the fixed overrides, from ``params`` then the command line."""
        parser = OverridesParser.create()
        from_config = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        from_cli = parser.parse_overrides(arguments)
        space: dict[str, BaseDistribution] = {}
        fixed: dict[str, str] = {}
        for override in [*from_config, *from_cli]:  # the command line wins over the preset
            key = override.get_key_element()
            space.pop(key, None)
            fixed.pop(key, None)
            if override.is_sweep_override():
                space[key] = distribution_from_override(override)
            else:
                fixed[key] = override.input_line
        return space, list(fixed.values())

    def sweep(self, arguments: list[str]) -> optuna.Study:
        space, fixed = self.search_space(arguments)
        if not space:
            raise QuantmlInputError(
                "nothing to search: give hydra.sweeper.params (an hparams_search preset) "
                "or a sweep such as backbone.num_leaves='int(interval(7, 63))'"
            )
        storage = make_storage(self.storage_url) or optuna.storages.InMemoryStorage()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        pruning.register_study(study, storage)
        log.info(
            "Optuna study %s (%s), %d trials, space: %s",
            study.study_name,
            redact(self.storage_url),
            self.n_trials,
            {k: str(v) for k, v in space.items()},
        )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        done = 0
        while done < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - done)
            trials = [study.ask(space) for _ in range(batch)]
            overrides = [
                tuple(fixed + [f"{k}={format_value(v)}" for k, v in t.params.items()] + self._trial_overrides(t))
                for t in trials
            ]
            if self.validate is not None and done == 0:
                self.validate(overrides)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                self._tell(study, trial, ret)
            done += batch
        self._write_results(study)
        return study

    def _trial_overrides(self, trial: optuna.Trial) -> list[str]:
        out = [f"hparams_search.trial={trial.number}", f"hparams_search.study_name={format_value(self.study_name)}"]
        if self.storage_url:
            out.append(f"hparams_search.storage={format_value(self.storage_url)}")
        return out

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> None:
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
            if value is None or not math.isfinite(float(value)):
                log.warning(
                    "trial %d returned %r (set hparams_search.objective to a finite metric): FAIL", trial.number, value
                )
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, float(value))
            return
        err = ret._return_value  # noqa: SLF001 - reading return_value would re-raise the job's error
        if isinstance(err, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, err)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _best_parent_run(self, study: optuna.Study):
        """The MLflow parent run of the best trial (params ``hparams_search.trial`` / ``.study_name``), or None."""
        from quantml.tracking.reader import RunReader
        from quantml.tracking.store import resolve_tracking_uri

        tracking = (getattr(self, "config", None) or {}).get("tracking")
        if not tracking:  # not a quantml train sweep: no MLflow runs to look up
            return None, None
        reader = RunReader(resolve_tracking_uri(tracking.get("uri")))
        trial = study.best_trial.number
        query = (
            f"params.`hparams_search.trial` = '{trial}' and params.`hparams_search.study_name` = '{study.study_name}'"
        )
        try:
            experiments = [e.experiment_id for e in reader.client.search_experiments()]
            found = reader.client.search_runs(experiments, filter_string=query, max_results=5)
        except Exception as exc:  # noqa: BLE001 - a report, not the sweep: say why and go on
            log.warning("could not find the best trial's MLflow run: %s", exc)
            return None, reader
        parents = [r for r in found if L.run_kind(r.data.tags, L.KIND_PARENT) == L.KIND_PARENT]
        return (parents[0].info.run_id if parents else None), reader

    def _selection_beside_holdout(self, study: optuna.Study) -> dict[str, Any]:
        """Print the best trial's selection figure (its objective: development folds' test blocks)
        beside its parent run's lockbox (``holdout_*``, a counted read); return both for the results file."""
        objective = str(
            ((getattr(self, "config", None) or {}).get("hparams_search") or {}).get("objective") or "objective"
        )
        run_id, reader = self._best_parent_run(study)
        lockbox: dict[str, float] = {}
        if run_id is not None:
            lockbox = reader.parent(run_id, action="report").lockbox_metrics()
        shown = format_lockbox(lockbox)
        line = (
            f"best trial {study.best_trial.number}: selection_{objective} = {study.best_value:.6g} "
            f"(development folds) | holdout (lockbox of run {run_id or '?'}, read counted): {shown}"
        )
        print(line)
        return {
            "best_run_id": run_id,
            f"selection_{objective}": float(study.best_value),
            "holdout": {k: float(v) for k, v in lockbox.items()},
        }

    def _write_results(self, study: optuna.Study) -> None:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        states = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
        result: dict[str, Any] = {
            "study_name": study.study_name,
            "direction": self.direction,
            "storage": redact(self.storage_url),
            "trials": states,
        }
        if complete:
            result.update(
                best_value=study.best_value, best_params=study.best_params, best_trial=study.best_trial.number
            )
            log.info(
                "best trial %d: %s = %.6g with %s",
                study.best_trial.number,
                "objective",
                study.best_value,
                study.best_params,
            )
            result.update(self._selection_beside_holdout(study))
        else:
            log.warning("no trial of study %s completed", study.study_name)
        OmegaConf.save(OmegaConf.create(result), self.sweep_dir / "optimization_results.yaml")
