"""Tracking store set-up, retries for SQLite contention, and small MLflow helpers."""

from __future__ import annotations

import functools
import logging
import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

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
    than the GenAI overview. Touches no MLflow global; creation races are retried."""

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

    return retrying(get_or_create)()


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
