"""Two processes promoting the same model at once leave one consistent champion and history."""

from __future__ import annotations

import multiprocessing as mp

from quantml.registry import CHAMPION, RegistryStore, champion_lineage, promote, register
from tests.helpers.registry_fakes import log_fake_run, promote_in_subprocess, sqlite_store


def test_racing_promotions_serialise_into_one_history(tmp_path):
    uri = sqlite_store(tmp_path)
    kw = dict(tracking_uri=uri, artifact_location=(tmp_path / "artifacts").as_uri())
    store = RegistryStore(uri)
    for seed in (1, 2, 3):
        register(store, log_fake_run("race", seed=seed, **kw), "racer")
    promote(store, "racer", 1)

    ctx = mp.get_context("spawn")  # a clean interpreter per worker, like two users' shells
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=promote_in_subprocess, args=(uri, "racer", v, f"race {v}", barrier, results))
        for v in ("2", "3")
    ]
    for w in workers:
        w.start()
    try:
        outcomes = sorted(results.get(timeout=120) for _ in workers)
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert [o[:2] for o in outcomes] == [("2", "ok"), ("3", "ok")], outcomes

    events = store.events("racer")
    assert [e.seq for e in events] == [1, 2, 3]  # no event overwrote another
    # each promotion replaced exactly the champion the one before it installed
    assert events[1].previous == events[0].version == "1"
    assert events[2].previous == events[1].version
    assert {events[1].version, events[2].version} == {"2", "3"}
    assert store.alias_version("racer", CHAMPION) == events[2].version
    assert champion_lineage(events) == ["1", events[1].version, events[2].version]
    assert store.lock_holder("racer") is None
