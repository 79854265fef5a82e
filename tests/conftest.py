"""Shared fixtures: an isolated MLflow store per test and Hydra config composition."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
REPO = Path(__file__).resolve().parents[1]

# Overrides that make any experiment a few seconds long.
TINY = [
    "data=synthetic", "data.n_symbols=3", "data.n_bars=700", "data.freq=1h",
    "feature_set=price_volume_regime", "horizon=4h", "validation.n_splits=3",
    "validation.min_train_samples=50", "validation.embargo=4h", "print_report=false",
]


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite store for this test; MLFLOW_TRACKING_URI points at it (subprocesses too)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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


def train_cli() -> str:
    """Path of the installed ``quantml-train`` (next to this interpreter)."""
    import sys

    exe = Path(sys.executable).parent / "quantml-train"
    return str(exe) if exe.exists() else shutil.which("quantml-train") or "quantml-train"
