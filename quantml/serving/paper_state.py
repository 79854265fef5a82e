"""The persisted state of a ``quantml paper`` session (``<log_dir>/paper_state.json``): written
atomically after the logs (the commit point), checked against the session on a restart."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from quantml.contracts import QuantmlInputError
from quantml.contracts.logs import LOGS, PAPER_STATE_FILE
from quantml.market.execution import CostModel
from quantml.market.fills import ExecutionConfig

STATE_VERSION = 1  # paper_state.json layout


@dataclass
class PaperState:
    """What survives a restart (``<log_dir>/paper_state.json``)."""

    model_uri: str
    model_name: str
    model_version: str
    run_id: str
    settings_hash: str
    symbols: list[str]
    horizons: list[str]
    start: str  # ISO UTC: the first bar the session may act on
    last_bar: str | None = None  # ISO UTC: the last bar acted on
    executor: dict | None = None
    targets: list[list[float]] | None = None  # the last targets [N][H] (kept where a bar has no row)
    bars_acted: int = 0
    rows_logged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOGS, 0))
    version: int = STATE_VERSION
    updated_at: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> PaperState:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def state_path(log_dir: str | Path) -> Path:
    return Path(log_dir) / PAPER_STATE_FILE


def load_state(log_dir: str | Path) -> PaperState | None:
    path = state_path(log_dir)
    if not path.exists():
        return None
    try:
        return PaperState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise QuantmlInputError(
            f"{path} is not a paper state ({exc}); reset=true moves the log dir aside and starts over"
        ) from None


def save_state(log_dir: str | Path, state: PaperState) -> Path:
    """Write the state atomically (a temporary file in the same folder, then ``os.replace``)."""
    path = state_path(log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state.updated_at = datetime.now(UTC).isoformat()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state.to_dict(), fh, indent=1, sort_keys=True, allow_nan=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def settings_hash(execution: ExecutionConfig, costs: CostModel, weights: np.ndarray, horizons, symbols) -> str:
    """A hash of what decides the session's fills and PnL (not start/end/follow/poll settings)."""
    payload = {
        "execution": execution.to_dict(),
        "cost": costs.to_dict(),
        "horizon_weights": [float(w) for w in weights],
        "horizons": list(horizons),
        "symbols": list(symbols),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def move_aside(log_dir: Path) -> Path | None:
    """``reset=true``: rename ``log_dir`` to ``<log_dir>.reset-<utc stamp>`` (nothing is deleted)."""
    if not log_dir.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = log_dir.with_name(f"{log_dir.name}.reset-{stamp}")
    os.replace(log_dir, target)
    return target
