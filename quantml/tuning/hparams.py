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

``n_trials`` is the study's trial budget, shared by every sweeper on it: a sweeper runs the
trials left (COMPLETE, PRUNED, FAIL and RUNNING ones of live sweepers count), so rerunning the
command continues the study and several sweepers on one storage split the budget. On an RDB
storage each running trial has a heartbeat thread (``storage.record_heartbeat`` every
``heartbeat_interval`` s); before each ask a sweeper fails the trials whose heartbeat is older
than ``grace_period`` (``optuna.storages.fail_stale_trials``: their sweeper died), ends their
MLflow parent runs FAILED (``quantml.error`` = ``optuna heartbeat stale: ...``) and leaves them out
of the budget (study user attr ``quantml.uncounted_trial.<number>``), so their trials are run again.

Search space syntax (``hydra.sweeper.params`` and command-line sweeps), Hydra's own:
``interval(a, b)`` float, ``tag(log, interval(a, b))`` log-uniform, ``int(interval(a, b))``
integer, ``range(a, b[, step])`` integers ``a..b-step`` (floats: stepped), ``choice(...)`` or
``a,b,c`` categorical. A plain value fixes the key.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
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
from quantml.tuning.storage import make_storage, redact, supports_heartbeat

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


class TrialHeartbeat:
    """A running trial's heartbeat: ``storage.record_heartbeat(trial_id)`` now and every
    ``interval`` seconds in a daemon thread until :meth:`stop`. A failed record is logged, never
    raised (the next one may get through; a trial without heartbeats for the grace period is failed)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, int(trial_id), float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
            self.beats += 1
        except Exception as exc:  # noqa: BLE001 - a missed beat must not fail the trial
            log.warning("could not record the heartbeat of trial id %d: %s", self.trial_id, exc)

    def start(self) -> TrialHeartbeat:
        self.beat()  # recorded before the trial is launched: a trial without any heartbeat never goes stale
        self._thread = threading.Thread(target=self._loop, name=f"optuna-heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _end_failed(client, run_id: str, reason: str) -> None:
    from mlflow.entities import RunTag

    from quantml.tracking.store import retrying

    retrying(client.log_batch)(run_id, tags=[RunTag(L.TAG_ERROR, reason)])
    retrying(client.set_terminated)(run_id, "FAILED")


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
        heartbeat_interval: int | None = 10,
        grace_period: int | None = None,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise QuantmlInputError(f"hydra.sweeper.direction={direction!r}; use maximize or minimize")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise QuantmlInputError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        for key, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise QuantmlInputError(
                    f"hydra.sweeper.{key}={value!r}: give whole seconds >= 1 (or null: "
                    + ("no heartbeats)" if key == "heartbeat_interval" else "3x heartbeat_interval)")
                )
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or (3 * heartbeat_interval if heartbeat_interval else None)
        self.storage: optuna.storages.BaseStorage | None = None
        self.heartbeats = False  # set by make_storage: whether the storage records heartbeats
        self._beats: dict[int, TrialHeartbeat] = {}  # this sweeper's running trials, by number
        if heartbeat_interval and self.grace_period <= heartbeat_interval:
            raise QuantmlInputError(
                f"hydra.sweeper.grace_period={grace_period} must exceed heartbeat_interval={heartbeat_interval} "
                "(a live trial beats once per interval), e.g. 3x the interval"
            )
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

    def make_storage(self) -> optuna.storages.BaseStorage:
        """The study's storage: with heartbeats (and :meth:`on_stale_trial`) on an RDB storage."""
        if self.heartbeat_interval and not supports_heartbeat(self.storage_url):
            if self.storage_url and str(self.storage_url).startswith("journal://"):
                log.warning(
                    "storage %s: Optuna's journal storage records no heartbeats, so a trial of a killed sweeper "
                    "stays RUNNING (and counted); use an RDB storage (sqlite:///..., postgresql://...) for that",
                    redact(self.storage_url),
                )
        storage = make_storage(
            self.storage_url,
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            stale_trial_callback=self.on_stale_trial,
        )
        self.storage = storage or optuna.storages.InMemoryStorage()
        self.heartbeats = isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval is not None
        return self.storage

    def sweep(self, arguments: list[str]) -> optuna.Study:
        space, fixed = self.search_space(arguments)
        if not space:
            raise QuantmlInputError(
                "nothing to search: give hydra.sweeper.params (an hparams_search preset) "
                "or a sweep such as backbone.num_leaves='int(interval(7, 63))'"
            )
        storage = self.make_storage()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        pruning.register_study(study, storage)
        self.fail_stale_trials(study)
        counted = self.trials_counted(study)
        log.info(
            "Optuna study %s (%s): %d of %d trials done or running, %d left; space: %s",
            study.study_name,
            redact(self.storage_url),
            min(counted, self.n_trials),
            self.n_trials,
            max(0, self.n_trials - counted),
            {k: str(v) for k, v in space.items()},
        )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        launched, waited_on = 0, None
        while True:
            self.fail_stale_trials(study)
            left = self.n_trials - self.trials_counted(study)
            if left <= 0:
                others = self.running_elsewhere(study)
                if not (others and self.heartbeats):
                    break
                # the budget is taken, but trials of other sweepers still run: one may die and be run again
                if others != waited_on:
                    log.info("budget taken; waiting for trials %s, running in other sweepers", others)
                    waited_on = others
                time.sleep(float(self.heartbeat_interval))
                continue
            trials = [self.ask(study, space) for _ in range(min(self.n_jobs, left))]
            trials = [t for t in trials if self.within_budget(study, t)]
            if not trials:
                continue
            overrides = [
                tuple(fixed + [f"{k}={format_value(v)}" for k, v in t.params.items()] + self._trial_overrides(t))
                for t in trials
            ]
            told: set[int] = set()
            try:
                if self.validate is not None and launched == 0:
                    self.validate(overrides)
                # job numbers (and their folders under the sweep dir) follow the trial numbers
                returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
                self.job_idx += len(returns)
                for trial, ret in zip(trials, returns):
                    self._tell(study, trial, ret)
                    told.add(trial.number)
            finally:
                for trial in trials:
                    if trial.number not in told:  # not launched (bad input, a launcher error): out of the budget
                        self._drop(study, trial, "not launched: the sweeper stopped before the job ran")
                    self._stop_heartbeat(trial)
            launched += len(trials)
        self._write_results(study)
        return study

    # -- the trial budget, heartbeats and stale trials ------------------------------------------------
    def ask(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> optuna.Trial:
        """A new trial, its heartbeat started (RDB storages) and its sweeper recorded
        (trial user attr ``quantml.worker`` = ``host:pid``)."""
        from quantml.tracking.store import lease_holder

        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for Study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask(space)
        if self.heartbeats:
            trial_id = trial._trial_id  # noqa: SLF001 - Optuna's Trial has no public id; the heartbeat needs it
            self._beats[trial.number] = TrialHeartbeat(self.storage, trial_id, self.heartbeat_interval).start()
        trial.set_user_attr(L.TRIAL_ATTR_WORKER, lease_holder())
        return trial

    def _stop_heartbeat(self, trial: optuna.Trial) -> None:
        beat = self._beats.pop(trial.number, None)
        if beat is not None:
            beat.stop()

    @staticmethod
    def uncounted(study: optuna.Study) -> dict[int, str]:
        """Trials left out of the budget (study user attrs ``quantml.uncounted_trial.<number>``)."""
        prefix = L.STUDY_ATTR_UNCOUNTED_PREFIX
        return {int(k[len(prefix) :]): str(v) for k, v in study.user_attrs.items() if k.startswith(prefix)}

    def _counts(self, trial: optuna.trial.FrozenTrial, now: datetime) -> bool:
        if trial.state.is_finished():
            return True
        if trial.state != optuna.trial.TrialState.RUNNING:
            return False  # WAITING: enqueued, counted once asked
        if L.TRIAL_ATTR_WORKER in trial.user_attrs:
            return True  # a sweeper runs it (if it died, its trial goes stale and leaves the budget)
        # just asked by another sweeper (its worker attr follows), or left RUNNING by an old sweep
        start = trial.datetime_start
        return start is not None and now - start < timedelta(seconds=self.grace_period or 60)

    def trials_counted(self, study: optuna.Study, before: int | None = None) -> int:
        """Trials of ``study`` that count against ``n_trials`` (with a number below ``before``)."""
        out, now = self.uncounted(study), datetime.now()
        trials = study.get_trials(deepcopy=False)
        return sum(
            1 for t in trials if (before is None or t.number < before) and t.number not in out and self._counts(t, now)
        )

    def running_elsewhere(self, study: optuna.Study) -> list[int]:
        """Numbers of counted RUNNING trials this sweeper is not running."""
        out, now = self.uncounted(study), datetime.now()
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        mine = self._beats
        return [t.number for t in running if t.number not in out and t.number not in mine and self._counts(t, now)]

    def within_budget(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Whether ``trial`` is within the budget: fewer than ``n_trials`` counted trials before it.
        A trial asked over it (two sweepers took the last place at once) is dropped (FAIL, uncounted)."""
        if self.trials_counted(study, before=trial.number) < self.n_trials:
            return True
        self._drop(study, trial, "asked over the trial budget (another sweeper took the last trials)")
        self._stop_heartbeat(trial)
        return False

    def _drop(self, study: optuna.Study, trial: optuna.Trial, why: str) -> None:
        """End ``trial`` FAIL, left out of the budget with the reason ``why``."""
        study.set_user_attr(f"{L.STUDY_ATTR_UNCOUNTED_PREFIX}{trial.number}", why)
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)  # finished: failed stale

    def fail_stale_trials(self, study: optuna.Study) -> None:
        """Fail the RUNNING trials whose heartbeat is older than the grace period (Optuna's
        ``fail_stale_trials``; each runs :meth:`on_stale_trial`). A no-op without heartbeats."""
        if not self.heartbeats:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def stale_reason(self, trial: optuna.trial.FrozenTrial) -> str:
        worker = trial.user_attrs.get(L.TRIAL_ATTR_WORKER, "unknown host")
        return (
            f"{L.HEARTBEAT_STALE}: Optuna trial {trial.number} had no heartbeat for {self.grace_period} s "
            f"({worker}): its sweeper died without ending it (killed?)"
        )

    def on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """``trial`` was failed stale (by this process): leave it out of the budget and end its MLflow
        parent run (and that run's RUNNING fold runs) FAILED with ``quantml.error`` = the reason."""
        reason = self.stale_reason(trial)
        try:
            study.set_user_attr(f"{L.STUDY_ATTR_UNCOUNTED_PREFIX}{trial.number}", reason)
        except Exception as exc:  # noqa: BLE001 - a report, not the sweep
            log.warning("trial %d: could not record it as uncounted: %s", trial.number, exc)
        log.warning("trial %d of study %s failed: %s", trial.number, study.study_name, reason)
        try:
            self.fail_trial_runs(study.study_name, trial.number, reason)
        except Exception as exc:  # noqa: BLE001 - the next sweep of expired leases ends it anyway
            log.warning("trial %d: could not end its MLflow run FAILED: %s", trial.number, exc)

    def fail_trial_runs(self, study_name: str, number: int, reason: str) -> list[str]:
        """End FAILED the RUNNING MLflow parent runs of trial ``number`` of ``study_name`` (params
        ``hparams_search.trial`` / ``.study_name``) in the sweep's experiment, with their RUNNING fold
        runs; returns their ids. Nothing without a tracking config (not a quantml train sweep)."""
        import mlflow

        from quantml.tracking.store import resolve_tracking_uri, retrying

        cfg = getattr(self, "config", None) or {}
        tracking = cfg.get("tracking")
        if not tracking:
            return []
        client = mlflow.MlflowClient(resolve_tracking_uri(tracking.get("uri")))
        name = tracking.get("experiment")
        experiments = [client.get_experiment_by_name(name)] if name else client.search_experiments()
        ids = [e.experiment_id for e in experiments if e is not None]
        if not ids:
            return []
        query = (
            f"params.`{L.PARAM_HPARAMS_TRIAL}` = '{int(number)}' and params.`{L.PARAM_HPARAMS_STUDY}` = "
            f"'{study_name}' and attributes.status = 'RUNNING'"
        )
        ended = []
        for run in retrying(client.search_runs)(ids, filter_string=query, max_results=100):
            if L.run_kind(run.data.tags, L.KIND_PARENT) != L.KIND_PARENT:
                continue
            children = f"tags.`{L.MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}' and attributes.status = 'RUNNING'"
            folds = retrying(client.search_runs)([run.info.experiment_id], filter_string=children, max_results=1000)
            for fold in folds:
                _end_failed(client, fold.info.run_id, reason)
            _end_failed(client, run.info.run_id, reason)
            log.warning("run %s of trial %d ended FAILED: %s", run.info.run_id, number, reason)
            ended.append(run.info.run_id)
        return ended

    def _trial_overrides(self, trial: optuna.Trial) -> list[str]:
        out = [f"hparams_search.trial={trial.number}", f"hparams_search.study_name={format_value(self.study_name)}"]
        if self.storage_url:
            out.append(f"hparams_search.storage={format_value(self.storage_url)}")
        return out

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> None:
        # skip_if_finished: a trial failed stale by another sweeper meanwhile (this one stalled past
        # the grace period) keeps its FAIL; Optuna logs the result it skipped
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
            if value is None or not math.isfinite(float(value)):
                log.warning(
                    "trial %d returned %r (set hparams_search.objective to a finite metric): FAIL", trial.number, value
                )
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            else:
                study.tell(trial, float(value), skip_if_finished=True)
            return
        err = ret._return_value  # noqa: SLF001 - reading return_value would re-raise the job's error
        if isinstance(err, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, err)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        else:
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

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
            f"params.`{L.PARAM_HPARAMS_TRIAL}` = '{trial}' and params.`{L.PARAM_HPARAMS_STUDY}` = '{study.study_name}'"
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
            "n_trials": self.n_trials,  # the budget
            "trials_counted": self.trials_counted(study),
            "uncounted": {str(k): v for k, v in sorted(self.uncounted(study).items())},
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
