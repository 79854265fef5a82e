"""Parent run per Hydra job, nested run per fold; every run ends FINISHED or FAILED.

All writes go through :class:`mlflow.MlflowClient` with retries, so parallel jobs on one
SQLite store survive lock contention, and nothing depends on the fluent active-run stack
except model logging.
"""
from __future__ import annotations

import math
import traceback
from collections.abc import Mapping
from contextlib import contextmanager

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from quantml.tracking.store import retrying

_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


class TrackedRun:
    """One MLflow run written through the client; use as a context manager."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            retrying(self.client.log_batch)(self.run_id, params=items[i:i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = int(pd.Timestamp.now().timestamp() * 1000)
        items = [Metric(k, float(v), stamp, step) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for i in range(0, len(items), 1000):
            retrying(self.client.log_batch)(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        items = [RunTag(str(k), str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            retrying(self.client.log_batch)(self.run_id, tags=items[i:i + _BATCH])

    def log_text(self, text: str, artifact_file: str) -> None:
        retrying(self.client.log_text)(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        retrying(self.client.log_dict)(self.run_id, data, artifact_file)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        retrying(self.client.log_artifacts)(self.run_id, local_dir, artifact_path)

    def end(self, status: str) -> None:
        retrying(self.client.set_terminated)(self.run_id, status)

    def fail(self, exc: BaseException) -> None:
        """Attach the error and end FAILED; never raises (the original error matters more).

        A hyper-parameter trial stopped by Optuna's pruner is not a failure: it ends KILLED
        with ``quantml.pruned=true``.
        """
        if type(exc).__name__ == "TrialPruned":
            try:
                self.set_tags({"quantml.pruned": "true"})
            finally:
                self.end("KILLED")
            return
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.set_tags({"quantml.error": f"{type(exc).__name__}: {exc}"})
            self.log_text(text, "error.txt")
        except Exception:  # noqa: BLE001
            pass
        finally:
            try:
                self.end("FAILED")
            except Exception:  # noqa: BLE001
                pass


class ExperimentTracker:
    """Creates the parent run of a job and its nested fold runs."""

    def __init__(self, experiment_id: str) -> None:
        self.client = mlflow.MlflowClient()
        self.experiment_id = experiment_id

    def _create(self, run_name: str, tags: Mapping[str, object]) -> TrackedRun:
        all_tags = {MLFLOW_RUN_NAME: run_name, **{k: str(v)[:5000] for k, v in tags.items()}}
        run = retrying(self.client.create_run)(self.experiment_id, run_name=run_name, tags=all_tags)
        return TrackedRun(self.client, run.info.run_id)

    def start(self, run_name: str, tags: Mapping[str, object] | None = None,
              parent: TrackedRun | None = None) -> TrackedRun:
        """A run the caller ends with ``end``/``fail`` (for runs finished on another thread)."""
        tags = dict(tags or {})
        if parent is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
        return self._create(run_name, tags)

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, object] | None = None,
            parent: TrackedRun | None = None):
        """A run that ends FINISHED on success and FAILED (with ``error.txt``) on any error."""
        tracked = self.start(run_name, tags, parent)
        try:
            yield tracked
        except BaseException as exc:
            tracked.fail(exc)
            raise
        else:
            tracked.end("FINISHED")
