"""Helpers shared by tests (import as `from tests.helpers import ...`)."""

from __future__ import annotations

import shutil
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


def train_cli() -> str:
    """Path of the installed ``quantml-train`` (the alias of ``quantml train``)."""
    return console_script("quantml-train")
