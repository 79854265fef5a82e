"""Shared fixtures: an isolated MLflow store per test and Hydra config composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR  # importing quantml quiets MLflow (telemetry, progress bars)

REPO = Path(__file__).resolve().parents[1]

# -- requires_postgres: tests that need a real PostgreSQL (the tracking server's backend) ----------
POSTGRES_ENV = "QUANTML_TEST_POSTGRES"  # a DSN, e.g. postgresql+psycopg://quantml:quantml@127.0.0.1:54329/quantml
requires_postgres = pytest.mark.requires_postgres


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f'requires_postgres: needs PostgreSQL at ${POSTGRES_ENV} (export {POSTGRES_ENV}="$(.ci/postgres.sh)"); '
        "skipped without it, a failure in CI (CI=true)",
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_postgres") is None or os.environ.get(POSTGRES_ENV):
        return
    reason = f'needs PostgreSQL: ${POSTGRES_ENV} is not set (export {POSTGRES_ENV}="$(.ci/postgres.sh)" first)'
    if _in_ci():
        pytest.fail(f"{reason}; in CI (CI=true) these tests must run: .ci/run starts PostgreSQL", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite store for this test; MLFLOW_TRACKING_URI points at it (subprocesses too)."""
    from tests.helpers.registry_fakes import sqlite_store

    uri = sqlite_store(tmp_path)  # a copy of a migrated empty store: saves seconds per test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # ./mlruns artifacts land in the tmp dir
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def compose_cfg():
    """``compose_cfg(overrides)`` -> the composed DictConfig, like lightning-hydra-template tests."""

    def _compose(overrides=(), config_name: str = "config"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose(config_name=config_name, overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


# CI runs property tests on a fixed set of examples, so a green run is repeatable;
# locally hypothesis keeps exploring new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _close_pyplot_figures():
    """Backbones' figures() draw with pyplot; close what a test leaves open so the next test (the
    report's pyplot-free check) starts from an empty registry."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
