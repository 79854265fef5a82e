"""The same register -> promote -> rollback story on the embedded SQLite store and on a real
``mlflow server`` (loopback, SQLite backend, served artifacts): identical outcomes."""

from __future__ import annotations

import pytest

from quantml.registry import (
    ACTIVE,
    CHAMPION,
    GateRefused,
    RegistryError,
    RegistryLockTimeout,
    RegistryStore,
    promote,
    register,
    rollback,
)
from tests.helpers.registry_fakes import log_fake_run, mlflow_tracking_server, sqlite_store


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    with mlflow_tracking_server(tmp_path_factory.mktemp("server"), timeout=90) as uri:
        yield uri


# The server variant costs ~30 s (server start-up + REST round trips): run it with -m slow.
@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store_uri(request, tmp_path):
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    return request.getfixturevalue("server_uri")


def story(uri: str, artifact_location: str | None, capsys) -> list:
    """Register three runs, promote, get refused, force, roll back twice; return what was seen."""
    kw = dict(tracking_uri=uri, artifact_location=artifact_location)
    runs = [
        log_fake_run("stores", fold_sharpe={"1d": s}, seed=i, **kw)
        for i, s in enumerate(([0.1, 0.2, 0.3], [0.2, 0.1, 0.4], [0.3, 0.0, 0.1]))
    ]
    store = RegistryStore(uri)
    seen = []

    def call(action, fn, *args, **kwargs):
        """The library call with the CLI's exit codes: 0 done, 1 refused by a gate, 2 bad input."""
        message = ""
        try:
            fn(store, *args, **kwargs)
            code = 0
        except GateRefused as exc:
            code, message = 1, str(exc)
        except RegistryError as exc:
            code, message = 2, str(exc)
        seen.append((action, code, store.aliases("story") if code != 2 or action != "register" else None))
        return message

    for run in runs:
        call("register", register, run, "story")
    call("promote", promote, "story", "1")
    call("promote", promote, "story", "2")
    refused = call("promote", promote, "story", "3")
    assert "1/3 windows (needs 2, 1 short)" in refused
    call("promote", promote, "story", "3", force=True, reason="desk request")
    call("rollback", rollback, "story")
    call("rollback", rollback, "story")
    call("rollback", rollback, "story")
    hist = [(e.seq, e.action, e.version, e.previous, e.forced, e.gates, e.reason) for e in store.events("story")]
    return [seen, hist]


def _aliases(candidate: str, active: str) -> dict:
    # promote/rollback move `active` and, for one release, the 0.1 alias `champion` with it
    return {"candidate": candidate, "active": active, "champion": active}


EXPECTED_SEEN = [
    ("register", 0, {"candidate": "1"}),
    ("register", 0, {"candidate": "2"}),
    ("register", 0, {"candidate": "3"}),
    ("promote", 0, _aliases("3", "1")),
    ("promote", 0, _aliases("3", "2")),
    ("promote", 1, _aliases("3", "2")),
    ("promote", 0, _aliases("3", "3")),
    ("rollback", 0, _aliases("3", "2")),
    ("rollback", 0, _aliases("3", "1")),
    ("rollback", 2, _aliases("3", "1")),
]
EXPECTED_HISTORY = [
    (1, "promote", "1", None, False, "passed", ""),
    (2, "promote", "2", "1", False, "passed", ""),
    (3, "promote", "3", "2", True, "failed: sharpe", "desk request"),
    (4, "rollback", "2", "3", False, "", ""),
    (5, "rollback", "1", "2", False, "", ""),
]


def test_same_story_on_both_stores(store_uri, tmp_path, capsys):
    location = (tmp_path / "artifacts").as_uri() if store_uri.startswith("sqlite") else None
    seen, hist = story(store_uri, location, capsys)
    assert seen == EXPECTED_SEEN
    assert hist == EXPECTED_HISTORY
    assert RegistryStore(store_uri).alias_version("story", ACTIVE) == "1"
    assert RegistryStore(store_uri).alias_version("story", CHAMPION) == "1"


def test_lock_is_exclusive_on_both_stores(store_uri):
    first, second = RegistryStore(store_uri), RegistryStore(store_uri)
    first.ensure_model("locked")
    with first.lock("locked"):
        with pytest.raises(RegistryLockTimeout, match="is locked by"):
            with second.lock("locked", timeout=0.5):
                pass
    with second.lock("locked"):
        assert first.lock_holder("locked") is not None
    assert first.lock_holder("locked") is None
