"""Optuna storages from a URL: ``sqlite:///optuna.db`` (default), any SQLAlchemy DB URL
(``postgresql://...``, ``mysql://...``), ``journal:///path/to/file.log`` (a journal file,
for shared file systems), or ``memory`` / empty (in-process only)."""

from __future__ import annotations

import optuna
from sqlalchemy.engine import make_url


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """The storage behind ``url``; None means in-memory (one process, no resume)."""
    if url is None or str(url).strip().lower() in ("", "memory", "none", "null"):
        return None
    url = str(url)
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal://") :]))
    from quantml.tracking.store import retrying

    # Processes starting together on a fresh database race to create its schema: the loser
    # fails on the schema-version row and succeeds on retry, once the tables exist.
    if url.startswith("sqlite"):
        # several processes share one SQLite file: wait on its lock rather than fail at once
        return retrying(optuna.storages.RDBStorage)(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return retrying(optuna.storages.RDBStorage)(url)


def redact(url: str | None) -> str:
    """``url`` without its password, safe to log."""
    if not url or url.startswith("journal://") or "://" not in url:
        return str(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: keep scheme and host only
        return url.split("@")[-1]
