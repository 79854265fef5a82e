"""Shared by the entrypoints: where the config tree is, and turning input errors into messages."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

from quantml.contracts import QuantmlInputError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("quantml")


@contextmanager
def fail_cleanly():
    """Bad input ends the job with its message (no traceback noise); other errors propagate."""
    try:
        yield
    except QuantmlInputError as exc:
        log.error("%s", exc)
        if _in_multirun():  # let Hydra record this job as failed and report it
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False
