"""Helpers shared by tests (import as `from tests.helpers import ...`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Overrides that make any experiment a few seconds long.
TINY = [
    "data=synthetic",
    "data.n_symbols=3",
    "data.n_bars=700",
    "data.freq=1h",
    "feature_set=price_volume_regime",
    "horizon=4h",
    "validation.n_splits=3",
    "validation.min_train_samples=50",
    "validation.embargo=4h",
    "print_report=false",
]


def console_script(name: str) -> str:
    """Path of an installed console script (next to this interpreter, else on PATH)."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else shutil.which(name) or name


def quantml_cli(*command: str) -> list[str]:
    """``["<venv>/bin/quantml", *command]``, e.g. ``quantml_cli("train")``: the one command line."""
    return [console_script("quantml"), *command]


def run_train(args: list[str], cwd, timeout: float) -> subprocess.CompletedProcess:
    """``quantml train *args`` in ``cwd`` as a subprocess (warnings off), its output captured."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*quantml_cli("train"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def failed_train(proc: subprocess.CompletedProcess) -> str:
    """The assertion message of a ``quantml train`` subprocess that did not exit 0: both output tails."""
    return f"quantml train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def train_cli() -> str:
    """Path of the installed ``quantml-train`` (the alias of ``quantml train``)."""
    return console_script("quantml-train")
