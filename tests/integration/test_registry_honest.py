"""The Sharpe gate refuses what it cannot honestly compare: purged K-fold / CPCV runs (their fold
backtests are not tradable) and a baseline computed under another metrics version."""

from __future__ import annotations

import pytest

from quantml.cli.registry import main as registry_main
from quantml.contracts.metrics import METRICS_VERSION
from quantml.registry import RegistryStore, check_gates, evaluate_gates, load_gates_config, register
from quantml.registry.gates import Baseline, load_run_summary
from tests.helpers.registry_fakes import log_fake_run, sqlite_store

EXP = "registry-honest"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry_honest")
    uri = sqlite_store(root)
    kw = dict(tracking_uri=uri, artifact_location=(root / "artifacts").as_uri(), log_model=False)
    runs = {
        "wf": log_fake_run(EXP, seed=1, **kw),
        "kfold": log_fake_run(
            EXP, seed=2, validation="purged_kfold", log_model=True, **{k: v for k, v in kw.items() if k != "log_model"}
        ),
        "cpcv": log_fake_run(EXP, seed=3, validation="cpcv", **kw),
        "old_metrics": log_fake_run(EXP, seed=4, metrics_version="0", **kw),
    }
    return uri, RegistryStore(uri), runs


@pytest.mark.parametrize("key, method", [("kfold", "purged_kfold"), ("cpcv", "cpcv")])
def test_sharpe_gate_refuses_purged_kfold_and_cpcv_candidates(world, key, method):
    uri, store, runs = world
    report = evaluate_gates(store.client, runs[key], load_gates_config(), Baseline("0"))
    assert report.failed == ["sharpe"], report.to_text()
    text = report.to_text()
    assert f"validated with {method}" in text and "not tradable" in text and "validation=walk_forward" in text


def test_sharpe_gate_refuses_a_baseline_of_another_metrics_version(world):
    uri, store, runs = world
    base = Baseline("run old", load_run_summary(store.client, runs["old_metrics"]))
    report = evaluate_gates(store.client, runs["wf"], load_gates_config(), base)
    assert report.failed == ["sharpe"], report.to_text()
    text = report.to_text()
    assert "metrics version differs" in text and f"quantml.metrics_version={METRICS_VERSION}" in text
    assert "re-run `quantml train`" in text
    same = Baseline("run wf", load_run_summary(store.client, runs["wf"]))
    assert evaluate_gates(store.client, runs["wf"], load_gates_config(), same).passed is False  # no margin over itself
    assert "metrics version" not in evaluate_gates(store.client, runs["wf"], load_gates_config(), same).to_text()


def test_registry_gates_cli_prints_the_refusal(world, capsys):
    uri, store, runs = world
    register(store, runs["kfold"], "kfold-model")
    assert not check_gates(store, "kfold-model", "1").passed
    code = registry_main(["gates", "kfold-model", "1", f"tracking.uri={uri}"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  sharpe" in out and "validated with purged_kfold" in out
