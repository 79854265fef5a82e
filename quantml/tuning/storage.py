"""Optuna storages from a URL: ``sqlite:///optuna.db`` (default), any SQLAlchemy DB URL
(``postgresql://...``, ``mysql://...``), ``journal:///path/to/file.log`` (a journal file,
for shared file systems), or ``memory`` / empty (in-process only).

Heartbeats (``heartbeat_interval``) need an RDB storage (SQLite, PostgreSQL, MySQL): Optuna 5's
journal storage has none, so a trial of a killed process stays RUNNING there."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
from sqlalchemy.engine import make_url

MEMORY_URLS = ("", "memory", "none", "null")


def is_memory(url: str | None) -> bool:
    """True for the URLs that mean an in-memory study (one process, no resume)."""
    return url is None or str(url).strip().lower() in MEMORY_URLS


def make_storage(
    url: str | None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage | None:
    """The storage behind ``url``; None means in-memory (one process, no resume).

    ``heartbeat_interval`` (s): an RDB storage records each running trial's heartbeat that often
    (for :func:`optuna.storages.fail_stale_trials`), ``grace_period`` (s, default 2x the interval,
    Optuna's) without one fails a trial, and ``stale_trial_callback(study, trial)`` runs for each
    trial failed so. Ignored by the journal storage (see :func:`supports_heartbeat`)."""
    if is_memory(url):
        return None
    url = str(url)
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal://") :]))
    from quantml.tracking.store import retrying

    beat = {}
    if heartbeat_interval:
        beat = dict(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(grace_period) if grace_period else None,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )
    # Processes starting together on a fresh database race to create its schema: the loser
    # fails on the schema-version row and succeeds on retry, once the tables exist.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        if url.startswith("sqlite"):
            # several processes share one SQLite file: wait on its lock rather than fail at once
            return retrying(optuna.storages.RDBStorage)(url, engine_kwargs={"connect_args": {"timeout": 60}}, **beat)
        return retrying(optuna.storages.RDBStorage)(url, **beat)


def supports_heartbeat(url: str | None) -> bool:
    """Whether ``url``'s storage records heartbeats (RDB storages; not the journal, not memory)."""
    return not is_memory(url) and not str(url).startswith("journal://")


def redact(url: str | None) -> str:
    """``url`` without its password, safe to log."""
    if not url or url.startswith("journal://") or "://" not in url:
        return str(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: keep scheme and host only
        return url.split("@")[-1]
