"""Hydra callbacks: create the tracking store once, before parallel jobs race to create it."""
from __future__ import annotations

import logging

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from quantml.tracking.store import prepare_store, resolve_tracking_uri

log = logging.getLogger(__name__)


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
