"""Shared by the entrypoints: where the config tree is, the tracking URI, and turning input errors into messages."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

from quantml.contracts import QuantmlInputError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("quantml")


def tracking_uri(cfg) -> str:
    """The tracking/registry URI of a composed config: its ``tracking.uri`` node (conf/tracking/*.yaml),
    resolved the one way every subcommand resolves it."""
    from quantml.tracking.store import resolve_tracking_uri

    tracking = cfg.get("tracking") if cfg is not None else None
    return resolve_tracking_uri(tracking.get("uri") if tracking is not None else None)


def compose(config_name: str, overrides: list[str]):
    """The packaged config ``config_name`` composed with Hydra ``key=value`` overrides (no job is run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf error message on one line (they span several: key, full_key, object_type ...)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key:", "object_type=", "    "))]
    return "; ".join(keep or lines) or type(exc).__name__


def error_exit(exc: BaseException, settings: str) -> int:
    """The one-line message and exit code 2 of a bad-input error of a subcommand; any other
    error is re-raised. ``settings``: the subcommand's keys, shown after a config error."""
    from hydra.errors import HydraException
    from mlflow.exceptions import MlflowException
    from omegaconf.errors import OmegaConfBaseException

    from quantml.contracts import QuantmlInputError

    if isinstance(exc, QuantmlInputError):
        message = str(exc)
    elif isinstance(exc, MlflowException):  # e.g. an unreachable server or an invalid model name
        message = f"MLflow: {exc.message}"
    elif isinstance(exc, (HydraException, OmegaConfBaseException)):
        message = f"{one_line(exc)} (settings: {settings})"
    else:
        raise exc
    print(f"error: {message}", file=sys.stderr)
    return 2


def flag_hint(argv: list[str], usage: str) -> str | None:
    """The message for a ``--flag`` given where the grammar is ``key=value`` (None when there is none)."""
    for arg in argv:
        if arg.startswith("--") and arg not in ("--help",):
            key, _, value = arg[2:].partition("=")
            suggestion = f"{key.replace('-', '_')}={value or ('true' if key == 'force' else '...')}"
            return f"{arg} is not an option: settings are key=value (e.g. {suggestion}); usage: {usage}"
    return None


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
