"""Hydra callbacks: create the tracking store once, before parallel jobs race to create it."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from quantml.tracking.store import prepare_store, resolve_tracking_uri

log = logging.getLogger(__name__)

# The keys a multirun sweeps over (``backbone=ridge,lightgbm`` -> ``backbone``), comma-separated,
# for the jobs' run names: the launcher's processes inherit the launching process's environment.
SWEEP_AXES_ENV = "QUANTML_SWEEP_AXES"
# ``resume=true``: a multirun's jobs append ``<job overrides>\t<run id>`` of each job they skip
# (already FINISHED) to the file this names; the sweep prints the summary at its end.
SKIPPED_JOBS_ENV = "QUANTML_SKIPPED_JOBS"


def sweep_axes(overrides: list[str]) -> list[str]:
    """The keys of the sweep overrides among ``overrides`` (command-line strings), in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


class PrepareTrackingStore(Callback):
    """Creates the MLflow tables and experiment in the launching process.

    With ``hydra/launcher=joblib`` several jobs start at once; if each created a fresh
    SQLite store the schema migrations would collide. Doing it once here avoids that.
    Preparing the store also ends FAILED the runs of earlier jobs that died (expired leases:
    :func:`~quantml.tracking.store.sweep_stale_runs`). At the end of a sweep, prints the jobs
    ``resume=true`` skipped.
    """

    _skipped: str | None = None
    _saved_skipped_env: str | None = None

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
        fd, self._skipped = tempfile.mkstemp(prefix="quantml-skipped-", suffix=".tsv")
        os.close(fd)
        self._saved_skipped_env = os.environ.get(SKIPPED_JOBS_ENV)
        os.environ[SKIPPED_JOBS_ENV] = self._skipped  # the launcher's workers inherit it

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self._skipped is None:
            return
        path, self._skipped = Path(self._skipped), None
        if self._saved_skipped_env is None:
            os.environ.pop(SKIPPED_JOBS_ENV, None)
        else:
            os.environ[SKIPPED_JOBS_ENV] = self._saved_skipped_env
        try:
            rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError:
            rows = []
        finally:
            path.unlink(missing_ok=True)
        if rows:
            print(skipped_summary(rows), flush=True)


def skipped_summary(rows: list[list[str]]) -> str:
    """The sweep's lines about the jobs ``resume=true`` skipped (``rows``: ``[job overrides, run id]``)."""
    lines = [f"resume=true: skipped {len(rows)} job(s) already FINISHED (tag quantml.run_identity):"]
    lines += [f"  {row[0]}  ->  run {row[1] if len(row) > 1 else '?'}" for row in rows]
    return "\n".join(lines)
