"""Train a real (tiny) quantml run in-process against a temporary store: for the tests that need a
registered model to serve, route, paper-trade or monitor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR
from quantml.registry import RegistryStore, promote, register
from quantml.registry.store import mlflow_uri_scope
from tests.helpers.registry_fakes import sqlite_store


def temp_store(root: str | Path, experiments: Sequence[str] = ()) -> tuple[str, RegistryStore]:
    """``(uri, store)`` of a fresh SQLite store under ``root``, with ``experiments`` created (their
    artifacts under ``root/<name>-artifacts``)."""
    uri = sqlite_store(root)
    store = RegistryStore(uri)
    for name in experiments:
        store.client.create_experiment(name, (Path(root) / f"{name}-artifacts").as_uri())
    return uri, store


def train_run(uri: str, overrides: Sequence[str]):
    """``quantml train`` with ``overrides`` into the store ``uri``: the ``ExperimentResult``. The
    environment's ``MLFLOW_TRACKING_URI`` (which the pipeline lets win) and MLflow's global URI are
    restored afterwards."""
    from quantml.experiment import run_experiment

    with pytest.MonkeyPatch.context() as mp, mlflow_uri_scope():
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(config_name="config", overrides=[*overrides, f"tracking.uri={uri}"])
        GlobalHydra.instance().clear()
        return run_experiment(cfg)


def register_active(store: RegistryStore, run_id: str, name: str, why: str) -> str:
    """Register ``run_id`` as a new version of ``name`` and make it active without gates (tests whose
    point is not the gates); returns the version."""
    version = register(store, run_id, name).version
    promote(store, name, version, force=True, reason=f"{why}: tiny model, gates not the point")
    return str(version)
