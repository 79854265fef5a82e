"""Hydra callbacks: create the tracking store once, before parallel jobs race to create it."""

from __future__ import annotations

import logging
import os

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from quantml.tracking.store import prepare_store, resolve_tracking_uri

log = logging.getLogger(__name__)

# The keys a multirun sweeps over (``backbone=ridge,lightgbm`` -> ``backbone``), comma-separated,
# for the jobs' run names: the launcher's processes inherit the launching process's environment.
SWEEP_AXES_ENV = "QUANTML_SWEEP_AXES"


def sweep_axes(overrides: list[str]) -> list[str]:
    """The keys of the sweep overrides among ``overrides`` (command-line strings), in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


class PrepareTrackingStore(Callback):
    """Creates the MLflow tables and experiment in the launching process.

    With ``hydra/launcher=joblib`` several jobs start at once; if each created a fresh
    SQLite store the schema migrations would collide. Doing it once here avoids that.
    """

    def _prepare(self, config: DictConfig) -> None:
        tracking = config.get("tracking")
        if tracking is None:
            return
        try:
            prepare_store(resolve_tracking_uri(tracking.get("uri")), tracking.get("experiment", "quantml"))
        except Exception as exc:  # noqa: BLE001 - the job itself reports store errors clearly
            log.warning("could not prepare the tracking store: %s", exc)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._prepare(config)
        try:
            os.environ[SWEEP_AXES_ENV] = ",".join(sweep_axes(list(config.hydra.overrides.task)))
        except Exception as exc:  # noqa: BLE001 - run names fall back to the non-default choices
            log.warning("could not read the sweep's axes: %s", exc)
