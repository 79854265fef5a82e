"""Tracking store set-up, retries for SQLite contention, and small MLflow helpers."""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import run_layout as L
from quantml.contracts.run_layout import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "unable to open database",
    "already exists",
    "UNIQUE constraint failed",
    "disk I/O error",
)


def is_transient(exc: BaseException) -> bool:
    """True for errors that parallel writers to one SQLite file raise and a retry cures."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _TRANSIENT)


def retrying(fn: Callable[..., T], attempts: int = 12, base_delay: float = 0.2) -> Callable[..., T]:
    """Wrap ``fn`` so that transient store errors are retried with jittered backoff."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - filtered by is_transient
                if attempt == attempts - 1 or not is_transient(exc):
                    raise
                time.sleep(base_delay * (1.5**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    return wrapper


def resolve_tracking_uri(uri: str | None) -> str:
    """The one resolution of the tracking URI: the configured one (``tracking.uri``, whose
    packaged default is ``${oc.env:MLFLOW_TRACKING_URI,...}``), else ``MLFLOW_TRACKING_URI``,
    else the embedded ``sqlite:///mlflow.db``. An explicit ``tracking.uri=`` override wins."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def ensure_experiment(client: mlflow.MlflowClient, experiment: str, artifact_location: str | None = None) -> str:
    """Id of ``experiment`` (created if needed), tagged ``mlflow.experimentKind=custom_model_development``
    (also when it exists without the tag), so the MLflow 3 UI opens it on its training runs rather
    than the GenAI overview. Touches no MLflow global; creation races are retried.

    Every command that prepares the store passes here (:func:`prepare_store`, ``RunWriter.prepare``
    and ``for_experiment``, the multirun callback), so this is where the RUNNING runs of jobs that
    died are ended FAILED (:func:`sweep_stale_runs`: one search of the experiment's RUNNING runs)."""

    def get_or_create() -> str:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise MlflowException(
                    f"MLflow experiment {experiment!r} is deleted: restore it in the MLflow UI or "
                    f"choose another name with tracking.experiment=NAME"
                )
            if (found.tags or {}).get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        return client.create_experiment(experiment, artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    experiment_id = retrying(get_or_create)()
    try:  # every command that prepares the store passes here: end the runs of jobs that died
        sweep_stale_runs(client, experiment_id)
    except Exception as exc:  # noqa: BLE001 - a failed sweep must not stop the command; the next one retries
        log.warning("could not check experiment %s for runs whose job died: %s", experiment, exc)
    return experiment_id


# -- leases: RUNNING runs whose job died ---------------------------------------------------------
DEFAULT_LEASE_S = 120.0  # tracking.lease_s: a job renews its parent run's lease every third of it
LEASE_EXPIRED = "lease expired at"  # how quantml.error of a run ended by the sweep below starts


def utc_now() -> datetime:
    return datetime.now(UTC)


def lease_stamp(when: datetime) -> str:
    """``quantml.lease_until`` as written: ISO UTC, milliseconds (``2026-01-02T03:04:05.678+00:00``)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_lease(text: str | None) -> datetime | None:
    """The time of a ``quantml.lease_until`` tag (naive stamps read as UTC), or None when absent or unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def lease_holder() -> str:
    """``quantml.lease_host``: ``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_expired_reason(until: str, holder: str) -> str:
    """``quantml.error`` of a RUNNING run whose lease expired (and of its RUNNING fold runs)."""
    return f"{LEASE_EXPIRED} {until} ({holder}): the job died without ending its run (killed?)"


def _running_runs(client: mlflow.MlflowClient, experiment_id: str) -> list:
    out, token = [], None
    while True:
        page = retrying(client.search_runs)(
            [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000, page_token=token
        )
        out += list(page)
        token = page.token
        if not token:
            return out


def _end_failed(client: mlflow.MlflowClient, run_id: str, reason: str) -> None:
    from mlflow.entities import RunTag

    retrying(client.log_batch)(run_id, tags=[RunTag(L.TAG_ERROR, reason)])
    retrying(client.set_terminated)(run_id, "FAILED")


def sweep_stale_runs(
    client: mlflow.MlflowClient, experiment_id: str, now: datetime | None = None
) -> list[tuple[str, str]]:
    """End FAILED every RUNNING quantml parent run of ``experiment_id`` whose lease
    (``quantml.lease_until``) is older than ``now``: its job died without ending it (SIGKILL,
    out of memory, a lost host). Its RUNNING fold runs end FAILED too; each gets ``quantml.error``
    ``lease expired at <time> (host:pid): ...``. Runs without a lease tag (quantml 0.1, other
    tools) are left alone. One search of the experiment's RUNNING runs; each stale parent is read
    again just before it is ended, in case its job renewed the lease meanwhile.
    Returns ``[(run id, reason)]`` of the parents it ended."""
    now = now or utc_now()
    running = _running_runs(client, experiment_id)
    expired = []
    for run in running:
        tags = run.data.tags
        until = parse_lease(tags.get(L.TAG_LEASE_UNTIL))
        if tags.get(L.TAG_KIND) == L.KIND_PARENT and until is not None and until < now:
            expired.append(run.info.run_id)
    ended = []
    for run_id in expired:
        fresh = retrying(client.get_run)(run_id)
        tags = fresh.data.tags
        until = parse_lease(tags.get(L.TAG_LEASE_UNTIL))
        if fresh.info.status != "RUNNING" or until is None or until >= now:
            continue  # ended or renewed since the search
        reason = lease_expired_reason(tags[L.TAG_LEASE_UNTIL], tags.get(L.TAG_LEASE_HOST, "unknown host"))
        for child in running:
            child_tags = child.data.tags
            if (
                child_tags.get(L.MLFLOW_PARENT_RUN_ID) == run_id
                and child_tags.get(L.TAG_KIND, L.KIND_FOLD) == L.KIND_FOLD
            ):
                _end_failed(client, child.info.run_id, reason)
        _end_failed(client, run_id, reason)
        log.warning("run %s ended FAILED: %s", run_id, reason)
        ended.append((run_id, reason))
    return ended


def prepare_store(uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at ``uri``, create the store and the experiment if needed; return its id.

    See :func:`ensure_experiment`. Safe to call from several processes at once: creation
    races are retried.
    """
    mlflow.set_tracking_uri(uri)
    return ensure_experiment(mlflow.MlflowClient(uri), experiment, artifact_location)


def flatten_config(cfg: DictConfig | Mapping, prefix: str = "") -> dict[str, str]:
    """Resolved config as ``{"data.freq": "1h", ...}``, values as strings (MLflow params)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        else:
            out[path] = str(node)[:6000]

    walk(container, prefix)
    return out


def git_commit(path: str | Path | None = None) -> str:
    """The commit of the working tree (``+dirty`` when it has changes), or ``unknown``."""
    cwd = str(path or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}+dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"
