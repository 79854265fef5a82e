"""Helpers shared by tests (import as `from tests.helpers import ...`)."""
from __future__ import annotations

import shutil
from pathlib import Path

# Overrides that make any experiment a few seconds long.
TINY = [
    "data=synthetic", "data.n_symbols=3", "data.n_bars=700", "data.freq=1h",
    "feature_set=price_volume_regime", "horizon=4h", "validation.n_splits=3",
    "validation.min_train_samples=50", "validation.embargo=4h", "print_report=false",
]



def train_cli() -> str:
    """Path of the installed ``quantml-train`` (next to this interpreter)."""
    import sys

    exe = Path(sys.executable).parent / "quantml-train"
    return str(exe) if exe.exists() else shutil.which("quantml-train") or "quantml-train"
