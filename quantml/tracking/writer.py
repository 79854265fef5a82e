"""The one writer of the MLflow run layout (``quantml.contracts.run_layout``).

Every command that writes runs (train's parent and fold runs, tune's study run, the test
fakes) goes through :class:`RunWriter`: it stamps the standard tags (kind, layout version,
and on parent runs metrics version, seed, git commit, schema version), nests children
under their parent, and ends every run FINISHED, FAILED (error tag + ``error.txt``) or,
for a pruned hyper-parameter trial, KILLED with ``quantml.pruned=true``.

All writes go through :class:`mlflow.MlflowClient` with retries, so parallel jobs on one
SQLite store survive lock contention, and nothing depends on the fluent active-run stack
except model logging.

A train job's parent run holds a lease (:class:`RunLease`: ``quantml.lease_until``, renewed by a
daemon thread while the job lives, stopped when the run ends), so a job killed without ending
its run leaves a run the next command ends FAILED (:func:`~quantml.tracking.store.sweep_stale_runs`).
"""

from __future__ import annotations

import logging
import math
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import SCHEMA_VERSION
from quantml.contracts import run_layout as L
from quantml.contracts.metrics import METRICS_VERSION
from quantml.tracking.store import (
    LEASE_EXPIRED,
    ensure_experiment,
    git_commit,
    lease_holder,
    lease_stamp,
    prepare_store,
    retrying,
    utc_now,
)

log = logging.getLogger(__name__)
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call
MAX_TAG_CHARS = 5000
MAX_DESCRIPTION_CHARS = 8000  # MLflow's limit for a run tag value


_RENEW_ATTEMPTS = 4  # a renewal retries briefly: the next one comes a third of a lease later


class RunLease:
    """The lease of a RUNNING run: ``quantml.lease_until`` (ISO UTC, now + ``lease_s``), renewed by a
    daemon thread every ``lease_s / 3`` through the MLflow client, so any host that reads the store
    can tell a live job from a dead one. ``quantml.lease_host`` (``host:pid``) says who holds it.

    A failed renewal logs a warning and never fails the job (the next one tries again). :meth:`stop`
    (called by :meth:`TrackedRun.end` before the run ends) returns only once no renewal can be
    written any more. Should another command have ended the run FAILED as expired while this job
    still lives (clocks of two hosts apart by more than the lease, a job stalled past it), the next
    renewal marks it, and its fold runs ended with it, RUNNING again, with a warning.
    """

    def __init__(
        self,
        client: mlflow.MlflowClient,
        run_id: str,
        lease_s: float,
        *,
        holder: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        interval_s: float | None = None,
    ) -> None:
        if not lease_s or lease_s <= 0:
            raise ValueError(f"a lease must last a positive number of seconds, not {lease_s!r}")
        self.client = client
        self.run_id = run_id
        self.lease_s = float(lease_s)
        self.interval_s = float(interval_s) if interval_s else self.lease_s / 3
        self.holder = holder or lease_holder()
        self.clock = clock
        self.renewals = 0
        self.failures = 0
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # held while a renewal writes: stop() waits for it
        self._thread: threading.Thread | None = None

    def tags(self) -> dict[str, str]:
        """The lease tags as of now (what the run is created with)."""
        return {L.TAG_LEASE_UNTIL: self.until(), L.TAG_LEASE_HOST: self.holder}

    def until(self) -> str:
        return lease_stamp(self.clock() + timedelta(seconds=self.lease_s))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> RunLease:
        if self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._loop, name=f"quantml-lease-{self.run_id[:8]}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a renewal must never fail the job
                self.failures += 1
                log.warning(
                    "could not renew the lease of run %s (the job goes on; the run is taken for dead "
                    "%.0f s after the last renewal): %s",
                    self.run_id,
                    self.lease_s,
                    exc,
                )

    def renew(self) -> bool:
        """Push ``quantml.lease_until`` to now + the lease; False once stopped (nothing written)."""
        with self._lock:
            if self._stopped.is_set():
                return False
            run = retrying(self.client.get_run, attempts=_RENEW_ATTEMPTS)(self.run_id)
            if self._stopped.is_set():  # stop() gave up waiting for this slow read and the job ended the run
                return False
            if run.info.status != "RUNNING":
                if not str(run.data.tags.get(L.TAG_ERROR, "")).startswith(LEASE_EXPIRED):
                    log.warning(
                        "run %s was ended %s by someone else: its lease is no longer renewed",
                        self.run_id,
                        run.info.status,
                    )
                    self._stopped.set()
                    return False
                self._revive(run)
            retrying(self.client.set_tag, attempts=_RENEW_ATTEMPTS)(self.run_id, L.TAG_LEASE_UNTIL, self.until())
            self.renewals += 1
            return True

    def _revive(self, run) -> None:
        log.warning(
            "run %s was ended FAILED as expired (%s) while its job still runs (clocks of two hosts apart "
            "by more than tracking.lease_s=%g, or a job stalled past its lease?): marked RUNNING again",
            self.run_id,
            run.data.tags.get(L.TAG_ERROR),
            self.lease_s,
        )
        children = retrying(self.client.search_runs, attempts=_RENEW_ATTEMPTS)(
            [run.info.experiment_id], filter_string=f"tags.`{L.MLFLOW_PARENT_RUN_ID}` = '{self.run_id}'"
        )
        for child in [*children, run]:
            if str(child.data.tags.get(L.TAG_ERROR, "")).startswith(LEASE_EXPIRED):
                retrying(self.client.delete_tag, attempts=_RENEW_ATTEMPTS)(child.info.run_id, L.TAG_ERROR)
                if child.info.status == "FAILED":
                    retrying(self.client.update_run, attempts=_RENEW_ATTEMPTS)(child.info.run_id, status="RUNNING")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop renewing: once this returns no renewal is being or will be written (a renewal stuck
        longer than ``timeout`` on the store is abandoned: the thread is a daemon)."""
        acquired = self._lock.acquire(timeout=timeout)
        try:
            self._stopped.set()
        finally:
            if acquired:
                self._lock.release()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class TrackedRun:
    """One MLflow run written through the client; end it with ``end``/``fail``.

    A parent run (``kind``) ends its RUNNING fold runs with it when it ends FAILED or KILLED; a run
    holding a :class:`RunLease` stops renewing it before it ends."""

    def __init__(
        self,
        client: mlflow.MlflowClient,
        run_id: str,
        experiment_id: str | None = None,
        kind: str | None = None,
        lease: RunLease | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.kind = kind
        self.lease = lease

    # -- values ------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            retrying(self.client.log_batch)(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = int(pd.Timestamp.now().timestamp() * 1000)
        items = [
            Metric(k, float(v), stamp, step)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for i in range(0, len(items), 1000):
            retrying(self.client.log_batch)(self.run_id, metrics=items[i : i + 1000])

    def log_metric_steps(self, series: Mapping[str, Iterable[float]]) -> None:
        """Stepped metrics (step = position), e.g. an equity curve for the UI's charts."""
        rows = [Metric(name, float(v), 0, step) for name, values in series.items() for step, v in enumerate(values)]
        for i in range(0, len(rows), 1000):
            retrying(self.client.log_batch)(self.run_id, metrics=rows[i : i + 1000])

    def log_batch(
        self, params: Mapping[str, object] | None = None, metrics: Mapping[str, float] | None = None, step: int = 0
    ) -> None:
        """Params and metrics in one write (one SQLite commit) when they fit one batch."""
        stamp = int(pd.Timestamp.now().timestamp() * 1000)
        p = [Param(str(k), str(v)[:6000]) for k, v in (params or {}).items()]
        m = [
            Metric(k, float(v), stamp, step)
            for k, v in (metrics or {}).items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        if len(p) > _BATCH or len(m) > 1000:
            self.log_params(params or {})
            self.log_metrics(metrics or {}, step)
        elif p or m:
            retrying(self.client.log_batch)(self.run_id, params=p, metrics=m)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        items = [RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            retrying(self.client.log_batch)(self.run_id, tags=items[i : i + _BATCH])

    def set_description(self, text: str) -> None:
        """The run's description in the MLflow UI (``mlflow.note.content``, at most 8000 characters)."""
        retrying(self.client.log_batch)(self.run_id, tags=[RunTag(L.MLFLOW_NOTE, text[:MAX_DESCRIPTION_CHARS])])

    # -- artifacts ---------------------------------------------------------------------------------
    def log_text(self, text: str, artifact_file: str) -> None:
        retrying(self.client.log_text)(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        retrying(self.client.log_dict)(self.run_id, data, artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        retrying(self.client.log_artifact)(self.run_id, local_path, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        retrying(self.client.log_artifacts)(self.run_id, local_dir, artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        retrying(self.client.log_figure)(self.run_id, figure, artifact_file)

    def log_resolved_config(self, cfg: DictConfig | Mapping) -> None:
        """The resolved config at ``config/config.yaml``: what readers rebuild configuration from."""
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        self.log_text(OmegaConf.to_yaml(node, resolve=True), L.CONFIG_ARTIFACT)

    def log_derived(self, derived: Mapping[str, object]) -> None:
        """Values derived from the data (``periods_per_year``, ...) in ``config/derived.json``;
        ``periods_per_year`` also as the tag ``quantml.periods_per_year``."""
        self.log_dict(dict(derived), L.DERIVED_ARTIFACT)
        if derived.get("periods_per_year") is not None:
            self.set_tags({L.TAG_PERIODS_PER_YEAR: f"{float(derived['periods_per_year']):.12g}"})

    # -- ending ------------------------------------------------------------------------------------
    def stop_lease(self) -> None:
        """Stop renewing the run's lease (if it holds one); the run itself goes on. Idempotent."""
        if self.lease is not None:
            self.lease.stop()

    def end(self, status: str = "FINISHED") -> None:
        self.stop_lease()  # no renewal after the run has ended
        if status != "FINISHED" and self.kind == L.KIND_PARENT:
            self._end_running_folds(status)
        retrying(self.client.set_terminated)(self.run_id, status)

    def _end_running_folds(self, status: str) -> None:
        """A parent ending FAILED/KILLED ends its fold runs still RUNNING with the same status."""
        try:
            children = retrying(self.client.search_runs)(
                [self.experiment_id],
                filter_string=f"tags.`{L.MLFLOW_PARENT_RUN_ID}` = '{self.run_id}' and attributes.status = 'RUNNING'",
            )
            for child in children:
                if child.data.tags.get(L.TAG_KIND, L.KIND_FOLD) == L.KIND_FOLD:
                    retrying(self.client.set_terminated)(child.info.run_id, status)
        except Exception as exc:  # noqa: BLE001 - the parent's own end matters more
            log.warning("could not end the fold runs of run %s %s: %s", self.run_id, status, exc)

    def fail(self, exc: BaseException) -> None:
        """Attach the error and end FAILED; never raises (the original error matters more).

        A hyper-parameter trial stopped by Optuna's pruner is not a failure: it ends KILLED
        with ``quantml.pruned=true``.
        """
        if type(exc).__name__ == "TrialPruned":
            try:
                self.set_tags({L.TAG_PRUNED: "true"})
            except Exception:  # noqa: BLE001
                pass
            finally:
                try:
                    self.end("KILLED")
                except Exception:  # noqa: BLE001
                    pass
            return
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.set_tags({L.TAG_ERROR: f"{type(exc).__name__}: {exc}"})
            self.log_text(text, L.ERROR_ARTIFACT)
        except Exception:  # noqa: BLE001
            pass
        finally:
            try:
                self.end("FAILED")
            except Exception:  # noqa: BLE001
                pass

    @contextmanager
    def ending(self):
        """``with run.ending():`` ends the run FINISHED on success, FAILED/KILLED on any error."""
        try:
            yield self
        except BaseException as exc:
            self.fail(exc)
            raise
        else:
            self.end("FINISHED")


def _parent_id(parent: TrackedRun | str | None) -> str | None:
    return parent.run_id if isinstance(parent, TrackedRun) else parent


class RunWriter:
    """Creates the runs of one experiment in the quantml run layout.

    ``start_*`` return a :class:`TrackedRun` the caller ends (``end``/``fail``, or
    ``with run.ending():``); ``run`` is the context-manager form of ``start``.
    """

    def __init__(self, experiment_id: str, client: mlflow.MlflowClient | None = None) -> None:
        self.client = client or mlflow.MlflowClient()
        self.experiment_id = str(experiment_id)

    @classmethod
    def prepare(cls, tracking_uri: str, experiment: str) -> RunWriter:
        """Like :meth:`for_experiment`, and point MLflow's global URI at the store (as
        :func:`~quantml.tracking.store.prepare_store`): model logging goes through it."""
        return cls(prepare_store(tracking_uri, experiment), mlflow.MlflowClient(tracking_uri))

    @classmethod
    def for_experiment(cls, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> RunWriter:
        """Write to ``experiment`` of ``tracking_uri`` (created if needed); sets no MLflow global."""
        client = mlflow.MlflowClient(tracking_uri)
        return cls(ensure_experiment(client, experiment, artifact_location), client)

    # -- generic ----------------------------------------------------------------------------------
    def start(
        self,
        run_name: str,
        tags: Mapping[str, object] | None = None,
        parent: TrackedRun | str | None = None,
        lease: RunLease | None = None,
    ) -> TrackedRun:
        """A run with ``tags`` (plus the layout version), nested under ``parent`` if given; with
        ``lease`` (made for run id ``""``), created with its tags and renewed from then on."""
        all_tags = {
            L.MLFLOW_RUN_NAME: run_name,
            L.TAG_LAYOUT_VERSION: L.LAYOUT_VERSION,
            **{k: str(v)[:MAX_TAG_CHARS] for k, v in (tags or {}).items()},
        }
        parent_id = _parent_id(parent)
        if parent_id is not None:
            all_tags[L.MLFLOW_PARENT_RUN_ID] = parent_id
        if lease is not None:
            all_tags.update(lease.tags())  # alive from the first write: no window without a lease
        run = retrying(self.client.create_run)(self.experiment_id, run_name=run_name, tags=all_tags)
        kind = all_tags.get(L.TAG_KIND)
        if lease is not None:
            lease.run_id = run.info.run_id
            lease.start()
        return TrackedRun(self.client, run.info.run_id, self.experiment_id, kind=kind, lease=lease)

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, object] | None = None, parent: TrackedRun | str | None = None):
        """A run that ends FINISHED on success and FAILED (with ``error.txt``) on any error."""
        tracked = self.start(run_name, tags, parent)
        with tracked.ending():
            yield tracked

    # -- the layout's run kinds ------------------------------------------------------------------
    def start_parent(
        self,
        run_name: str,
        *,
        seed: int | None = None,
        horizons: Iterable[str] = (),
        validation: str | None = None,
        choices: Mapping[str, str] | None = None,
        tags: Mapping[str, object] | None = None,
        commit: str | None = None,
        description: str | None = None,
        lease_s: float | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> TrackedRun:
        """The parent run of a train job: kind, layout/metrics/schema versions, seed, git commit,
        horizons, validation method and the config-group choices (``choice.<group>``). With
        ``lease_s``, the run holds a :class:`RunLease` of that length until it ends."""
        std: dict[str, object] = {
            L.TAG_KIND: L.KIND_PARENT,
            L.TAG_METRICS_VERSION: METRICS_VERSION,
            L.TAG_SCHEMA_VERSION: SCHEMA_VERSION,
            L.TAG_GIT_COMMIT: commit if commit is not None else git_commit(),
        }
        if seed is not None:
            std[L.TAG_SEED] = int(seed)
        horizons = list(horizons)
        if horizons:
            std[L.TAG_HORIZONS] = ",".join(map(str, horizons))
        if validation is not None:
            std[L.TAG_VALIDATION] = validation
        std.update({L.choice_tag(k): v for k, v in (choices or {}).items()})
        if description:
            std[L.MLFLOW_NOTE] = description
        std.update(tags or {})
        lease = RunLease(self.client, "", lease_s, clock=clock) if lease_s is not None else None
        return self.start(run_name, std, lease=lease)

    def recorded_lockbox(self, fingerprint: str) -> tuple[str, str] | None:
        """``(lockbox start, run id)`` first recorded for data ``fingerprint`` anywhere in the
        store (the oldest parent run tagged with both), or None: the lockbox date every later
        run on the same data reuses."""
        experiments = [e.experiment_id for e in retrying(self.client.search_experiments)()]
        if not experiments:
            return None
        runs = retrying(self.client.search_runs)(
            experiments,
            filter_string=(
                f"tags.`{L.TAG_DATA_FINGERPRINT}` = '{fingerprint}' and tags.`{L.TAG_KIND}` = '{L.KIND_PARENT}'"
            ),
            order_by=["attributes.start_time ASC"],
            max_results=200,
        )
        for run in runs:
            start = run.data.tags.get(L.TAG_LOCKBOX_START)
            if start and start != "none":
                return start, run.info.run_id
        return None

    def start_fold(
        self,
        parent: TrackedRun | str,
        fold_id: int | str,
        path_ids: Iterable[int] = (),
        tags: Mapping[str, object] | None = None,
    ) -> TrackedRun:
        """A fold run nested under ``parent``, named ``fold-<id>``."""
        std = {
            L.TAG_KIND: L.KIND_FOLD,
            L.TAG_FOLD_ID: fold_id,
            L.TAG_PATH_IDS: ",".join(map(str, sorted(set(int(p) for p in path_ids)))),
            **(tags or {}),
        }
        return self.start(f"fold-{fold_id}", std, parent=parent)

    def start_tune(
        self, source_run: str, objective: str, *, run_name: str | None = None, tags: Mapping[str, object] | None = None
    ) -> TrackedRun:
        """A threshold-study run nested under its source parent run."""
        std = {L.TAG_KIND: L.KIND_TUNE, L.TAG_SOURCE_RUN: source_run, L.TAG_OBJECTIVE: objective, **(tags or {})}
        return self.start(run_name or f"tune-{objective}", std, parent=source_run)


class ExperimentTracker(RunWriter):
    """The 0.1 name of :class:`RunWriter` (``start``/``run`` with explicit tags)."""
