"""The MLflow model registry as the candidate -> active -> rollback store.

State lives entirely in the registry, so every machine that can reach the tracking
server sees the same thing:

* aliases ``candidate`` and ``active`` on model versions. For one release ``champion`` (the
  0.1 name of ``active``) is set on the same version as ``active`` by every promotion and
  rollback, so ``models:/NAME@champion`` keeps serving (MLflow cannot alias an alias);
* the promotion history as **one registered-model tag per event**
  (``quantml.event.000001`` = a small JSON object). One tag per event keeps every value
  far below the 5000-character column of the SQL stores, however long the history;
* a **lock**: a registered model named ``<NAME>.quantml-lock``, held while a promotion or
  rollback reads the state and writes the new active version and its event.

Why a lock and not an optimistic check-and-retry: MLflow tag writes are blind
overwrites (there is no compare-and-set on a tag), so two writers that both read
"version counter = 4" and both write event 5 cannot detect that one overwrote the other.
Creating a registered model, however, is atomic in every store (the name is the primary
key of the SQL table; the REST server answers RESOURCE_ALREADY_EXISTS to the loser), so it
is a correct mutex across processes and machines. Promotions are rare and short, so
waiting on a lock costs nothing; a holder that dies leaves the lock behind, which the
next writer reports with the holder's user, host, pid and time
(``quantml registry unlock NAME`` breaks it once that process is known to be gone).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L

log = logging.getLogger(__name__)

CANDIDATE = L.ALIAS_CANDIDATE
ACTIVE = L.ALIAS_ACTIVE
CHAMPION = L.ALIAS_CHAMPION  # kept for compatibility: promote/rollback move it with ACTIVE
EVENT_TAG_PREFIX = L.EVENT_TAG_PREFIX
LOCK_SUFFIX = L.LOCK_SUFFIX
LOCK_TAG = L.LOCK_TAG
MAX_REASON_CHARS = 1000


class RegistryError(QuantmlInputError):
    """A registry operation that cannot be done as asked; the message says why and the fix."""


class RegistryLockTimeout(RegistryError):
    """Another promotion/rollback holds the model's lock for longer than we wait."""


def normalise_version(version) -> str:
    """Alias targets come back as int (SQL store) or str (REST): always ``"3"``."""
    if version is None:
        raise RegistryError("model version is missing")
    text = str(version).strip()
    if text.startswith("v") and text[1:].isdigit():
        text = text[1:]
    if not text.isdigit():
        raise RegistryError(f"model version {version!r} is not a version number; pass e.g. 3")
    return str(int(text))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Event:
    """One promotion or rollback, as recorded in the ``quantml.event.<seq>`` tag.

    ``version`` is the active version after the event, ``previous`` the one it replaced
    (None when there was none). Events written by 0.1 (as "champion") read the same.
    """

    seq: int
    action: str  # "promote" | "rollback"
    version: str
    previous: str | None
    time: str
    user: str
    reason: str = ""
    forced: bool = False
    gates: str = ""  # "passed" or "failed: <gate>, <gate>" (forced promotions)
    run_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def tag_key(self) -> str:
        return f"{EVENT_TAG_PREFIX}{self.seq:06d}"

    def to_json(self) -> str:
        payload = {k: v for k, v in asdict(self).items() if k != "seq" and v not in ("", {}, None, False)}
        payload["previous"] = self.previous
        return json.dumps(payload, sort_keys=True)

    @classmethod
    def from_tag(cls, key: str, value: str) -> Event:
        seq = int(key[len(EVENT_TAG_PREFIX) :])
        data = json.loads(value)
        prev = data.get("previous")
        return cls(
            seq=seq,
            action=data["action"],
            version=normalise_version(data["version"]),
            previous=None if prev is None else normalise_version(prev),
            time=data.get("time", ""),
            user=data.get("user", ""),
            reason=data.get("reason", ""),
            forced=bool(data.get("forced", False)),
            gates=data.get("gates", ""),
            run_id=data.get("run_id", ""),
            extra=data.get("extra", {}),
        )


def active_lineage(events: list[Event]) -> list[str]:
    """Replay the history into the stack of active versions; the last item is the current one.

    A promotion pushes its version, a rollback pops the current active version, so repeated
    rollbacks walk further back through the versions that were active.
    """
    stack: list[str] = []
    for event in sorted(events, key=lambda e: e.seq):
        if event.action == "promote":
            stack.append(event.version)
        elif event.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event.version:  # history written by hand: follow it
                stack.append(event.version)
    return stack


champion_lineage = active_lineage  # the 0.1 name


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return os.environ.get("USER", "unknown")


class RegistryStore:
    """Thin, typed access to one MLflow registry (SQLite file or tracking server).

    Parameters
    ----------
    tracking_uri : the tracking/registry URI; None -> ``MLFLOW_TRACKING_URI`` or MLflow's default.
    client : an existing ``MlflowClient`` (wins over ``tracking_uri``).
    """

    def __init__(self, tracking_uri: str | None = None, client: MlflowClient | None = None) -> None:
        self.client = client or MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.tracking_uri = self.client.tracking_uri

    def global_uri(self):
        """Point MLflow's global tracking/registry URI at this store for a ``with`` block.

        MLflow 3's SQL registry resolves ``models:/<model_id>`` sources and
        ``pyfunc.load_model`` resolves ``models:/`` URIs through the *global* client,
        whatever URI our ``MlflowClient`` was built with.
        """
        return mlflow_uri_scope(self.tracking_uri, self.client._registry_uri)

    # -- models and versions -------------------------------------------------------------
    def get_model(self, name: str) -> RegisteredModel:
        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise RegistryError(
                    f"registered model {name!r} does not exist; register a run first with "
                    f"`quantml registry register <run_id> name={name}` (see `quantml registry list`)"
                ) from None
            raise

    def ensure_model(self, name: str) -> None:
        try:
            self.client.create_registered_model(name, description="quantml forecaster (candidate -> active)")
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    def model_names(self) -> list[str]:
        """Registered models, without quantml's lock models."""
        names, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=200, page_token=token)
            names += [m.name for m in page if not m.name.endswith(LOCK_SUFFIX)]
            token = page.token
            if not token:
                return sorted(names)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        self.get_model(name)
        found, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{_quote(name)}'", max_results=200, page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return sorted(found, key=lambda v: int(v.version))

    def get_version(self, name: str, version) -> ModelVersion:
        version = normalise_version(version)
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                self.get_model(name)  # "model does not exist" when that is the problem
                known = [str(v.version) for v in self.versions(name)]
                raise RegistryError(
                    f"model {name!r} has no version {version} (versions: {', '.join(known) or 'none'}); "
                    f"pick one from `quantml registry list {name}`"
                ) from None
            raise

    # -- aliases ------------------------------------------------------------------------------
    def aliases(self, name: str) -> dict[str, str]:
        """``{alias: version}`` with versions normalised to strings."""
        return {alias: normalise_version(v) for alias, v in (self.get_model(name).aliases or {}).items()}

    def alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases(name).get(alias)

    def set_alias(self, name: str, alias: str, version) -> None:
        self.client.set_registered_model_alias(name, alias, normalise_version(version))

    def active_version(self, name: str) -> str | None:
        """The version serving as ``active`` (a 0.1 model with only ``champion``: that one)."""
        aliases = self.aliases(name)
        return aliases.get(ACTIVE) or aliases.get(CHAMPION)

    def set_active(self, name: str, version) -> None:
        """Move ``active`` and, for one release, ``champion`` to ``version``."""
        self.set_alias(name, ACTIVE, version)
        self.set_alias(name, CHAMPION, version)

    # -- history --------------------------------------------------------------------------------
    def events(self, name: str) -> list[Event]:
        """Every recorded promotion/rollback of ``name``, oldest first."""
        tags = self.get_model(name).tags or {}
        events = [Event.from_tag(k, v) for k, v in tags.items() if k.startswith(EVENT_TAG_PREFIX)]
        return sorted(events, key=lambda e: e.seq)

    def append_event(self, name: str, event: Event) -> Event:
        """Write ``event`` with the next sequence number. Call only while holding ``lock(name)``."""
        last = max((e.seq for e in self.events(name)), default=0)
        event.seq = last + 1
        self.client.set_registered_model_tag(name, event.tag_key, event.to_json())
        return event

    # -- lock ------------------------------------------------------------------------------------
    @staticmethod
    def lock_name(name: str) -> str:
        return f"{name}{LOCK_SUFFIX}"

    def lock_holder(self, name: str) -> dict | None:
        try:
            model = self.client.get_registered_model(self.lock_name(name))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise
        try:
            return json.loads((model.tags or {}).get(LOCK_TAG, "{}"))
        except ValueError:
            return {}

    @contextmanager
    def lock(self, name: str, timeout: float = 60.0, poll: float = 0.1) -> Iterator[dict]:
        """Hold the model's promotion lock for the ``with`` block (see the module docstring)."""
        holder = {
            "token": uuid.uuid4().hex,
            "user": current_user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": utc_now(),
        }
        lock_name = self.lock_name(name)
        deadline = time.monotonic() + timeout
        errors = 0
        while True:
            try:
                self.client.create_registered_model(
                    lock_name,
                    tags={LOCK_TAG: json.dumps(holder)},
                    description=f"quantml promotion lock of {name!r}; removed when the operation ends",
                )
                break
            except MlflowException as exc:
                current = self.lock_holder(name)
                if current and current.get("token") == holder["token"]:
                    break  # our create succeeded but its answer was lost
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    errors += 1  # e.g. "database is locked" on SQLite: retry a few times
                    if errors > 5:
                        raise
                if time.monotonic() > deadline:
                    who = current or {}
                    raise RegistryLockTimeout(
                        f"model {name!r} is locked by {who.get('user', '?')}@{who.get('host', '?')} "
                        f"pid {who.get('pid', '?')} since {who.get('since', '?')} (waited {timeout:.0f} s); "
                        f"retry later, or if that process is gone run `quantml registry unlock {name}`"
                    ) from None
                time.sleep(poll * (0.5 + random.random()))
        try:
            yield holder
        finally:
            current = self.lock_holder(name)
            if current is not None and current.get("token") == holder["token"]:
                self.client.delete_registered_model(lock_name)
            else:
                log.warning("lock of %r was broken by someone else while held", name)

    def break_lock(self, name: str) -> dict | None:
        """Remove a stale lock; returns who held it (None when unlocked)."""
        holder = self.lock_holder(name)
        if holder is not None:
            try:
                self.client.delete_registered_model(self.lock_name(name))
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise
        return holder


@contextmanager
def mlflow_uri_scope(tracking_uri: str | None = None, registry_uri: str | None = None) -> Iterator[None]:
    """Set MLflow's global URIs inside the block and put everything back exactly afterwards.

    ``mlflow.set_tracking_uri``/``set_registry_uri`` also export ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI`` to the environment (for subprocesses); a plain "set it back"
    would leave those pointing at this store for every later subprocess and client, so both
    the module globals and the variables are restored.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_globals = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if registry_uri or tracking_uri:
        mlflow.set_registry_uri(registry_uri or tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved_globals
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
