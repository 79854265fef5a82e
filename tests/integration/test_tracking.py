"""Tracking: run lifecycle (FINISHED / FAILED with the error attached), retries, params."""

from __future__ import annotations

import mlflow
import pytest
from omegaconf import OmegaConf

from quantml.contracts import run_layout as L
from quantml.tracking import ExperimentTracker, flatten_config, prepare_store, retrying
from quantml.tracking.store import is_transient, resolve_tracking_uri


def test_parent_and_child_runs_finish(tracking_uri):
    tracker = ExperimentTracker(prepare_store(tracking_uri, "t"))
    with tracker.run("parent", {L.TAG_KIND: "parent"}) as parent:
        with tracker.run("fold-0", {L.TAG_KIND: "fold"}, parent=parent) as child:
            child.log_metrics({"test_ic/1d": 0.1, "test_ap/1d": float("nan")})
        parent.log_params({"a.b": 1})
    client = mlflow.MlflowClient()
    p, c = client.get_run(parent.run_id), client.get_run(child.run_id)
    assert p.info.status == c.info.status == "FINISHED"
    assert c.data.tags["mlflow.parentRunId"] == parent.run_id
    assert c.data.metrics == {"test_ic/1d": 0.1}  # NaN metrics are not logged
    assert p.data.params == {"a.b": "1"}


def test_error_ends_every_open_run_failed_with_traceback(tracking_uri):
    tracker = ExperimentTracker(prepare_store(tracking_uri, "t"))
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.run("parent") as parent:
            with tracker.run("fold-0", parent=parent) as child:
                raise RuntimeError("boom")
    client = mlflow.MlflowClient()
    for run_id in (parent.run_id, child.run_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert "RuntimeError: boom" in run.data.tags["quantml.error"]
        local = client.download_artifacts(run_id, "error.txt")
        assert "boom" in open(local).read()


def test_retrying_retries_transient_errors_only():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retrying(flaky, base_delay=0.001)() == "ok"
    assert calls["n"] == 3

    def broken():
        calls["n"] += 1
        raise ValueError("bad value")

    calls["n"] = 0
    with pytest.raises(ValueError):
        retrying(broken, base_delay=0.001)()
    assert calls["n"] == 1
    assert is_transient(RuntimeError("database is locked")) and not is_transient(KeyError("x"))


def test_flatten_config_and_uri_resolution(monkeypatch):
    cfg = OmegaConf.create({"data": {"freq": "1h", "n": 3}, "seed": 7, "h": {"list": [1, 2]}})
    assert flatten_config(cfg) == {"data.freq": "1h", "data.n": "3", "seed": "7", "h.list": "[1, 2]"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert resolve_tracking_uri("sqlite:///y.db") == "sqlite:///y.db"  # an explicit tracking.uri= wins
    assert resolve_tracking_uri(None) == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("sqlite:///y.db") == "sqlite:///y.db"
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"


def test_deleted_experiment_is_a_clear_error(tracking_uri):
    exp_id = prepare_store(tracking_uri, "gone")
    mlflow.MlflowClient().delete_experiment(exp_id)
    with pytest.raises(Exception, match="restore it"):
        prepare_store(tracking_uri, "gone")


def test_pruned_trial_ends_killed_not_failed(tracking_uri):
    import optuna

    tracker = ExperimentTracker(prepare_store(tracking_uri, "t"))
    with pytest.raises(optuna.TrialPruned):
        with tracker.run("trial") as run:
            raise optuna.TrialPruned("fold 1 below the median")
    got = mlflow.MlflowClient().get_run(run.run_id)
    assert got.info.status == "KILLED"
    assert got.data.tags["quantml.pruned"] == "true"


def test_logging_the_model_leaves_its_run_running_and_its_lease_renewed(tracking_uri, tmp_path, caplog):
    """The model is logged while the job still runs (the report comes after it): the run stays
    RUNNING, with its lease renewed, until the job ends it. It is logged by ``name`` (MLflow 3), never
    by the deprecated artifact path."""
    from quantml.bundle import FeatureContract, ModelBundle
    from quantml.tracking.pyfunc import load_bundle, log_bundle
    from quantml.tracking.writer import RunWriter

    writer = RunWriter.prepare(tracking_uri, "t")
    parent = writer.start_parent("job", horizons=["1h"], validation="walk_forward", lease_s=3.0)
    columns = ["timestamp", "symbol", "close"]
    contract = FeatureContract(columns, feature_names=[], feature_set={}, drop_modalities=[], horizons=["1h"])
    with caplog.at_level("WARNING", logger="mlflow"):
        uri = log_bundle(ModelBundle(None, None, contract, {"threshold": {"default": 0.0}}, "fp"), parent.run_id)
    assert not [r for r in caplog.records if "artifact_path" in r.getMessage()]
    logged = writer.client.search_logged_models([writer.client.get_run(parent.run_id).info.experiment_id])
    assert [m.name for m in logged if m.source_run_id == parent.run_id] == ["model"]
    assert writer.client.get_run(parent.run_id).info.status == "RUNNING"
    renewed = parent.lease.renewals
    assert parent.lease.renew() and parent.lease.renewals == renewed + 1 and parent.lease.alive
    parent.end("FINISHED")
    assert writer.client.get_run(parent.run_id).info.status == "FINISHED"
    assert load_bundle(uri, tmp_path).data_fingerprint == "fp"
