"""Registry on the embedded SQLite store: register, gates, promote, rollback, history, lock, CLI."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from mlflow.entities.model_registry import RegisteredModel, RegisteredModelAlias

from quantml.cli.registry import main as registry_main
from quantml.registry import (
    ACTIVE,
    CANDIDATE,
    CHAMPION,
    Event,
    GateRefused,
    RegistryError,
    RegistryLockTimeout,
    RegistryStore,
    champion_lineage,
    check_gates,
    evaluate_gates,
    history,
    list_models,
    list_versions,
    load_gates_config,
    promote,
    register,
    rollback,
)
from quantml.registry.gates import Baseline
from quantml.registry.store import normalise_version
from tests.helpers.registry_fakes import log_fake_run, sqlite_store

EXP = "registry-test"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One SQLite store with fake parent runs (contract layout) shared by the module's tests."""
    root = tmp_path_factory.mktemp("registry")
    uri = sqlite_store(root)
    kw = dict(tracking_uri=uri, artifact_location=(root / "artifacts").as_uri())
    runs = {
        # fold test_sharpe_after_cost/1d, three monthly windows
        "a": log_fake_run(EXP, fold_sharpe={"1d": [0.1, 0.2, 0.3]}, seed=1, **kw),
        "b": log_fake_run(EXP, fold_sharpe={"1d": [0.2, 0.1, 0.4]}, seed=2, **kw),  # beats a in 2/3
        "c": log_fake_run(EXP, fold_sharpe={"1d": [0.3, 0.0, 0.1]}, seed=3, **kw),  # beats b in 1/3
        "leaky": log_fake_run(EXP, leakage="violations", log_model=False, **kw),
        "badcal": log_fake_run(EXP, oos_ece={"1d": 0.25}, log_model=False, **kw),
        "two_folds": log_fake_run(EXP, fold_sharpe={"1d": [0.5, 0.6]}, log_model=False, **kw),
        "artifact_only": log_fake_run(EXP, leakage=None, audit_artifact=False, log_model=False, **kw),
        "shifted": log_fake_run(
            EXP,
            windows=[("2023-01-01", "2023-01-31"), ("2023-02-01", "2023-02-28"), ("2023-03-01", "2023-03-31")],
            log_model=False,
            **kw,
        ),
        "failed": log_fake_run(EXP, status="FAILED", log_model=False, **kw),
        "negative": log_fake_run(EXP, fold_sharpe={"1d": [-0.1, 0.2, -0.3]}, log_model=False, **kw),
        "two_h": log_fake_run(EXP, fold_sharpe={"1d": [0.3, 0.3, 0.5], "7d": [0.1, 0.1, -0.1]}, log_model=False, **kw),
    }
    # tag says nothing, the artifact says clean: the gate falls back to the artifact
    store = RegistryStore(uri)
    runs["audit_clean_artifact"] = log_fake_run(EXP, leakage="clean", log_model=False, **kw)
    store.client.delete_tag(runs["audit_clean_artifact"], "quantml.leakage_audit")
    return uri, store, runs


def fresh_name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def summary(store, run_id):
    from quantml.registry.gates import load_run_summary

    return load_run_summary(store.client, run_id)


# -- register -------------------------------------------------------------------------------------
def test_register_sets_candidate_and_copies_provenance(world):
    uri, store, runs = world
    name = fresh_name()
    v1 = register(store, runs["a"], name)
    assert (str(v1.version), v1.run_id) == ("1", runs["a"])
    assert store.aliases(name) == {CANDIDATE: "1"}
    tags = v1.tags
    assert tags["quantml.data_fingerprint"] == "fp1"
    assert tags["quantml.git_commit"] == "0" * 40
    assert tags["quantml.run_id"] == runs["a"]
    assert tags["quantml.layout_version"] == "2" and tags["quantml.horizons"] == "1d"
    assert float(tags["quantml.metric.oos_sharpe_after_cost/1d"]) == pytest.approx(0.2)
    assert float(tags["quantml.metric.oos_rank_ic/1d"]) == pytest.approx(0.05)
    # a handful of headline tags; the rest (seed, ECE, ...) stays on the run
    assert "quantml.seed" not in tags and "quantml.metric.oos_ece/1d" not in tags
    assert len(tags) <= 10, sorted(tags)
    register(store, runs["b"], name)
    assert store.aliases(name) == {CANDIDATE: "2"}  # candidate moves, nothing becomes champion
    table = list_versions(store, name)
    assert table["version"].tolist() == [1, 2]
    assert table["aliases"].tolist() == ["", CANDIDATE]
    assert table["sharpe_after_cost/1d"].round(4).tolist() == [0.2, round((0.2 + 0.1 + 0.4) / 3, 4)]


def test_register_default_name_is_the_experiment(world):
    uri, store, runs = world
    mv = register(store, runs["c"])
    assert mv.name == EXP
    assert EXP in list_models(store)["name"].tolist()


def test_register_refuses_fold_runs_unknown_runs_and_runs_without_model(world):
    uri, store, runs = world
    fold = store.client.search_runs(
        [store.client.get_run(runs["a"]).info.experiment_id], f"tags.mlflow.parentRunId = '{runs['a']}'"
    )[0]
    with pytest.raises(RegistryError, match=f"fold run; register its parent run {runs['a']}"):
        register(store, fold.info.run_id, fresh_name())
    with pytest.raises(RegistryError, match="not found"):
        register(store, "0" * 32, fresh_name())
    with pytest.raises(RegistryError, match="has no logged model 'model'"):
        register(store, runs["leaky"], fresh_name())


# -- gates --------------------------------------------------------------------------------------------
def test_gates_report_passes_against_zero_and_changes_nothing(world):
    uri, store, runs = world
    name = fresh_name()
    register(store, runs["a"], name)
    before = (store.aliases(name), store.get_model(name).tags)
    report = check_gates(store, name, "1")
    assert report.passed, report.to_text()
    assert [r.name for r in report.results] == ["leakage_audit", "sharpe", "calibration", "folds", "run_status"]
    assert report.baseline == "0 (no active version yet)"
    assert "better than 0 in 3/3 windows (needs 2)" in report.to_text()
    assert (store.aliases(name), store.get_model(name).tags) == before


@pytest.mark.parametrize(
    "run, gate, text",
    [
        ("leaky", "leakage_audit", "quantml.leakage_audit='violations'; failed checks: purging"),
        ("badcal", "calibration", "oos_ece/1d=0.2500 > 0.1 by 0.1500"),
        ("two_folds", "folds", "2 fold runs < 3 (short by 1)"),
        ("artifact_only", "leakage_audit", "records no leakage audit"),
        ("failed", "run_status", "parent run status FAILED"),
        ("negative", "sharpe", "better than 0 in 1/3 windows (needs 2, 1 short); delta per fold 0:-0.100, 1:+0.200"),
    ],
)
def test_each_gate_fails_alone_and_says_by_how_much(world, run, gate, text):
    uri, store, runs = world
    report = evaluate_gates(store.client, runs[run], load_gates_config(), Baseline("0 (no champion yet)"))
    assert report.failed == [gate], report.to_text()
    assert text in report.to_text()


def test_leakage_gate_falls_back_to_the_audit_artifact(world):
    uri, store, runs = world
    report = evaluate_gates(store.client, runs["audit_clean_artifact"], load_gates_config(), Baseline("0"))
    assert report.passed
    assert "artifact audit/leakage_audit.json: clean=True" in report.to_text()


def test_sharpe_gate_matches_windows_by_time_range_or_fold_id(world):
    uri, store, runs = world
    cfg = load_gates_config()
    base = Baseline("run a", summary(store, runs["a"]))
    report = evaluate_gates(store.client, runs["shifted"], cfg, base)
    assert report.failed == ["sharpe"]
    assert "no walk-forward window in common with run a (matched on time_range)" in report.to_text()
    by_id = load_gates_config(overrides=["sharpe.match_on=fold_id"])
    report = evaluate_gates(store.client, runs["shifted"], by_id, base)
    # shifted has 0.5, 0.6, 0.7 against a's 0.1, 0.2, 0.3 fold by fold
    assert report.passed and "in 3/3 windows" in report.to_text()


def test_sharpe_gate_checks_every_horizon_and_margin(world):
    uri, store, runs = world
    cfg = load_gates_config()
    report = evaluate_gates(store.client, runs["two_h"], cfg, Baseline("run a", summary(store, runs["a"])))
    text = report.to_text()
    assert "1d: test_sharpe_after_cost/1d better than run a in 3/3 windows" in text
    # a has no 7d: compared with 0, 2 of 3 windows positive
    assert "7d: test_sharpe_after_cost/7d better than 0 (run a has no test_sharpe_after_cost/7d) in 2/3" in text
    assert report.passed
    strict = load_gates_config(overrides=["sharpe.margin=0.15"])
    report = evaluate_gates(store.client, runs["two_h"], strict, Baseline("run a", summary(store, runs["a"])))
    assert report.failed == ["sharpe"] and "in 0/3 windows (needs 2, 2 short)" in report.to_text()


# -- promote and rollback ---------------------------------------------------------------------------------
def test_promote_gates_against_the_active_version_and_records_history(world):
    uri, store, runs = world
    name = fresh_name()
    for key in ("a", "b", "c"):
        register(store, runs[key], name)
    first = promote(store, name, 1, reason="first")
    assert (first.event.previous, first.event.version, first.event.seq) == (None, "1", 1)
    second = promote(store, name, "2")
    assert second.report.baseline.startswith("active v1")
    assert (second.event.previous, second.event.version) == ("1", "2")
    with pytest.raises(GateRefused) as refused:
        promote(store, name, 3)
    message = str(refused.value)
    assert "gate(s) sharpe failed" in message
    assert "better than active v2 in 1/3 windows (needs 2, 1 short)" in message
    assert store.alias_version(name, ACTIVE) == "2"
    assert store.alias_version(name, CHAMPION) == "2"  # the 0.1 alias moves with it for one release
    rows = history(store, name)
    assert rows[["action", "version", "previous", "gates"]].values.tolist() == [
        ["promote", "1", "-", "passed"],
        ["promote", "2", "1", "passed"],
    ]
    assert rows["reason"].tolist() == ["first", ""]
    assert set(rows["user"]) == {store.events(name)[0].user} and rows["user"].iloc[0]


def test_promote_refuses_the_active_version_itself_and_force_without_reason(world):
    uri, store, runs = world
    name = fresh_name()
    register(store, runs["a"], name)
    promote(store, name, 1)
    with pytest.raises(RegistryError, match="already the active version"):
        promote(store, name, 1)
    register(store, runs["c"], name)
    with pytest.raises(RegistryError, match="force=true needs reason="):
        promote(store, name, 2, force=True)
    with pytest.raises(RegistryError, match="no version 9"):
        promote(store, name, 9)


def test_forced_promotion_is_recorded_as_forced(world):
    uri, store, runs = world
    name = fresh_name()
    register(store, runs["b"], name)
    register(store, runs["c"], name)
    promote(store, name, 1)
    result = promote(store, name, 2, force=True, reason="hotfix for the open")
    assert not result.report.passed
    event = store.events(name)[-1]
    assert (event.forced, event.gates, event.reason, event.previous) == (
        True,
        "failed: sharpe",
        "hotfix for the open",
        "1",
    )
    assert store.alias_version(name, ACTIVE) == "2"


def test_rollback_walks_back_through_active_versions_then_refuses(world):
    uri, store, runs = world
    name = fresh_name()
    for key in ("a", "b", "c"):
        register(store, runs[key], name)
    with pytest.raises(RegistryError, match="nothing to roll back to .* no version was ever promoted"):
        rollback(store, name)
    promote(store, name, 1)
    promote(store, name, 2)
    promote(store, name, 3, force=True, reason="try c")
    assert rollback(store, name, reason="c misbehaves").version == "2"
    assert store.aliases(name)[ACTIVE] == store.aliases(name)[CHAMPION] == "2"
    assert rollback(store, name).version == "1"
    with pytest.raises(RegistryError, match="nothing to roll back to .* only v1 was ever active"):
        rollback(store, name)
    assert store.alias_version(name, ACTIVE) == "1"
    promote(store, name, 3, force=True, reason="retry c")
    assert rollback(store, name).version == "1"
    rows = history(store, name)
    assert rows[["action", "version", "previous"]].values.tolist() == [
        ["promote", "1", "-"],
        ["promote", "2", "1"],
        ["promote (forced)", "3", "2"],
        ["rollback", "2", "3"],
        ["rollback", "1", "2"],
        ["promote (forced)", "3", "1"],
        ["rollback", "1", "3"],
    ]
    assert rows["seq"].tolist() == list(range(1, 8))


def test_rollback_refuses_when_the_alias_was_moved_outside_quantml(world):
    uri, store, runs = world
    name = fresh_name()
    register(store, runs["a"], name)
    register(store, runs["b"], name)
    promote(store, name, 1)
    promote(store, name, 2)
    store.client.set_registered_model_alias(name, CHAMPION, "1")  # by hand, e.g. in the MLflow UI
    with pytest.raises(RegistryError, match="moved outside quantml"):
        rollback(store, name)


def test_a_0_1_model_with_only_champion_rolls_back_and_gains_active(world):
    uri, store, runs = world
    name = fresh_name()
    register(store, runs["a"], name)
    register(store, runs["b"], name)
    promote(store, name, 1)
    promote(store, name, 2)
    store.client.delete_registered_model_alias(name, ACTIVE)  # as 0.1 left it: champion only
    assert store.active_version(name) == "2"
    assert rollback(store, name).version == "1"
    assert store.aliases(name) == {CANDIDATE: "2", ACTIVE: "1", CHAMPION: "1"}


# -- history, lineage, aliases, lock (units) ------------------------------------------------------------
def ev(seq, action, version, previous=None):
    return Event(seq=seq, action=action, version=version, previous=previous, time="", user="u")


def test_champion_lineage_replays_promotions_and_rollbacks():
    assert champion_lineage([]) == []
    events = [
        ev(1, "promote", "1"),
        ev(2, "promote", "2", "1"),
        ev(3, "promote", "5", "2"),
        ev(4, "rollback", "2", "5"),
        ev(5, "promote", "3", "2"),
    ]
    assert champion_lineage(events) == ["1", "2", "3"]
    assert champion_lineage(list(reversed(events))) == ["1", "2", "3"]  # order by seq, not by list
    assert champion_lineage(events[:4]) == ["1", "2"]


def test_event_round_trips_through_its_tag():
    e = Event(
        seq=12,
        action="promote",
        version="3",
        previous="2",
        time="2024-01-01T00:00:00+00:00",
        user="ana",
        reason="better 1d",
        forced=True,
        gates="failed: sharpe",
        run_id="abc",
    )
    assert e.tag_key == "quantml.event.000012"
    assert len(e.to_json()) < 5000
    assert Event.from_tag(e.tag_key, e.to_json()) == e
    first = Event(seq=1, action="promote", version="1", previous=None, time="t", user="u")
    assert json.loads(first.to_json())["previous"] is None
    assert Event.from_tag(first.tag_key, first.to_json()) == first


def test_alias_versions_are_normalised_from_int_or_str():
    assert [normalise_version(v) for v in (3, "3", "v3", " 03 ")] == ["3"] * 4
    with pytest.raises(RegistryError, match="not a version number"):
        normalise_version("three")

    class Client:
        tracking_uri = "sqlite://"

        def get_registered_model(self, name):
            return RegisteredModel(
                name, aliases=[RegisteredModelAlias(CHAMPION, 3), RegisteredModelAlias(CANDIDATE, "4")]
            )

    assert RegistryStore(client=Client()).aliases("x") == {CHAMPION: "3", CANDIDATE: "4"}


def test_lock_excludes_a_second_holder_and_can_be_broken(world):
    uri, store, runs = world
    name = fresh_name()
    register(store, runs["a"], name)
    other = RegistryStore(uri)
    with store.lock(name) as holder:
        assert other.lock_holder(name)["token"] == holder["token"]
        with pytest.raises(RegistryLockTimeout, match=rf"locked by .* pid {os.getpid()} .* unlock {name}"):
            with other.lock(name, timeout=0.3):
                pass
        assert store.lock_name(name) not in list_models(store)["name"].tolist()
    assert other.lock_holder(name) is None  # released
    with other.lock(name):
        pass
    # a holder that died: its lock stays until broken by hand
    store.client.create_registered_model(store.lock_name(name), tags={"quantml.lock": json.dumps({"pid": 1})})
    with pytest.raises(RegistryLockTimeout):
        promote(store, name, 1, lock_timeout=0.2)
    assert store.break_lock(name) == {"pid": 1}
    assert promote(store, name, 1).event.version == "1"


# -- CLI ---------------------------------------------------------------------------------------------------
def cli(uri, *args):
    return registry_main([*map(str, args), f"tracking.uri={uri}"])


def test_cli_register_gates_promote_rollback_history(world, capsys):
    uri, store, runs = world
    name = fresh_name()
    assert cli(uri, "register", runs["a"], f"name={name}") == 0
    assert f"registered {name} v1" in capsys.readouterr().out
    assert cli(uri, "register", runs["c"], f"name={name}") == 0
    assert cli(uri, "list", name) == 0
    out = capsys.readouterr().out
    assert "candidate" in out and "sharpe_after_cost/1d" in out
    assert cli(uri, "gates", name, 1) == 0
    assert "result: PASSED" in capsys.readouterr().out
    assert cli(uri, "promote", name, 1, "reason=first active version") == 0
    assert "active v- -> v1" in capsys.readouterr().out
    # c against the active a: 0.3 vs 0.1, 0.0 vs 0.2, 0.1 vs 0.3 -> 1 window of 3
    assert cli(uri, "gates", name, 2) == 1
    assert "in 1/3 windows (needs 2, 1 short)" in capsys.readouterr().out
    assert cli(uri, "promote", name, 2) == 1
    err = capsys.readouterr().err
    assert "promotion refused: gate(s) sharpe failed" in err and "1 short" in err
    assert store.alias_version(name, ACTIVE) == "1"
    assert cli(uri, "promote", name, 2, "force=true") == 2
    assert "force=true needs reason=" in capsys.readouterr().err
    assert cli(uri, "promote", name, 2, "force=true", "reason=desk request") == 0
    assert "FORCED" in capsys.readouterr().out
    assert cli(uri, "rollback", name) == 0
    assert "v2 -> v1" in capsys.readouterr().out
    assert cli(uri, "rollback", name) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert cli(uri, "history", name) == 0
    out = capsys.readouterr().out
    assert "promote (forced)" in out and "desk request" in out and "rollback" in out
    assert out.strip().endswith("active: v1")
    assert cli(uri, "gates", name, 1, "gates.calibration.max_ece=0.01") == 1
    assert "oos_ece/1d=0.0300 > 0.01 by 0.0200" in capsys.readouterr().out
    assert cli(uri, "list", "no-such-model") == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(uri, "unlock", name) == 0
    assert "was not locked" in capsys.readouterr().out


def test_global_uri_scope_restores_mlflow_globals_and_environment(world, monkeypatch):
    import mlflow

    uri, store, runs = world
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    before = mlflow.get_tracking_uri()
    with store.global_uri():
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
        assert os.environ["MLFLOW_REGISTRY_URI"] == uri  # what MLflow exports for subprocesses
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    assert mlflow.get_tracking_uri() == before
