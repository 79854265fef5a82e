"""End to end: `quantml train -m ...` into a temporary SQLite store, checked through MlflowClient."""

from __future__ import annotations

import os
import subprocess

import mlflow
import pandas as pd
import pytest

from quantml.contracts import PREDICTION_COLUMNS
from quantml.contracts import run_layout as L
from tests.helpers import TINY, quantml_cli, train_cli

FAST_LGBM = ["backbone.n_estimators=40"]


def run_train(args, tmp_path, check=True, timeout=600, alias=False):
    """``quantml train ARGS`` (``alias``: the same through ``quantml-train ARGS``)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [train_cli()] if alias else quantml_cli("train")
    proc = subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"quantml train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def parent_runs(experiment: str):
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get(L.TAG_KIND) == "parent"]
    folds = [r for r in runs if r.data.tags.get(L.TAG_KIND) == "fold"]
    return client, parents, folds


def assert_complete_parent(client, parent, folds):
    mine = [f for f in folds if f.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    n_folds = int(parent.data.tags["quantml.n_folds"])
    assert parent.info.status == "FINISHED"
    assert len(mine) == n_folds >= 2
    assert all(f.info.status == "FINISHED" for f in mine)
    for f in mine:
        assert "test_rank_ic/4h" in f.data.metrics and "val_rmse/4h" in f.data.metrics
        assert {"train_start", "test_end", "n_train"} <= set(f.data.params)
    m = parent.data.metrics
    for name in (
        "oos_ic/4h",
        "oos_rank_icir/4h",
        "oos_sharpe_after_cost/4h",
        "oos_hit_rate/4h",
        "test_ic_mean/4h",
        "test_ic_std/4h",
        "best_monitor",
    ):
        assert name in m, f"{name} missing from parent metrics"
    tags = parent.data.tags
    for tag in (
        "quantml.data_fingerprint",
        "quantml.git_commit",
        "quantml.seed",
        "quantml.sweep_dir",
        "choice.backbone",
        "choice.ablation",
        "quantml.feature_contract_hash",
    ):
        assert tags.get(tag), f"tag {tag} missing"
    assert tags["quantml.leakage_audit"] == "clean"
    assert parent.data.params["seed"] == "42"
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config", "predictions", "report", "figures", "audit"} <= files
    # MLflow 3 keeps logged models beside the run's artifacts; runs:/<id>/model resolves to it
    assert mlflow.artifacts.download_artifacts(f"runs:/{parent.info.run_id}/model/MLmodel")
    reports = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report_by_symbol_horizon.csv" in reports
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/feature_importance.png" in figures


def test_multirun_logs_every_job_and_fold(tracking_uri, tmp_path):
    args = [
        "-m",
        "backbone=ridge,lightgbm",
        "ablation=full,no_macro",
        *TINY,
        *FAST_LGBM,
        "tracking.experiment=e2e",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    args = [a for a in args if a != "backbone.n_estimators=40"]  # ridge has no n_estimators
    proc = run_train(args, tmp_path)
    assert "done in" not in proc.stderr + proc.stdout  # no progress lines in a multirun log
    client, parents, folds = parent_runs("e2e")
    assert len(parents) == 4
    assert {(p.data.tags["choice.backbone"], p.data.tags["choice.ablation"]) for p in parents} == {
        ("ridge", "full"),
        ("ridge", "no_macro"),
        ("lightgbm", "full"),
        ("lightgbm", "no_macro"),
    }
    for parent in parents:
        assert_complete_parent(client, parent, folds)

    # the logged pyfunc turns a raw panel into the prediction contract
    from quantml.data.asof import join_streams
    from quantml.data.synthetic import generate_synthetic

    synth = generate_synthetic(freq="1h", n_symbols=3, n_bars=300, seed=5)
    panel = join_streams(synth.bars, synth.streams)
    model = mlflow.pyfunc.load_model(f"runs:/{parents[0].info.run_id}/model")
    out = model.predict(panel, params={"last_only": True})
    assert list(out.columns) == list(PREDICTION_COLUMNS)
    assert len(out) == 3  # 3 symbols x 1 horizon, latest bar only
    assert out["action"].isin(["long", "flat", "short"]).all()

    # out-of-sample predictions follow the contract
    path = client.download_artifacts(parents[0].info.run_id, "predictions/oos_predictions.parquet")
    oos = pd.read_parquet(path)
    assert {"symbol", "timestamp", "horizon", "expected_return", "q10", "q90", "prob_up", "ret", "fold"} <= set(oos)
    assert not oos.duplicated(["symbol", "timestamp", "horizon", "path"]).any()


def test_a_single_run_through_the_alias_shows_one_progress_line_per_fold(tracking_uri, tmp_path):
    proc = run_train(
        ["backbone=ridge", *TINY, "tracking.experiment=single", "tracking.log_model=false"], tmp_path, alias=True
    )
    _, (parent,), folds = parent_runs("single")
    n_folds = int(parent.data.tags["quantml.n_folds"])
    lines = [line for line in proc.stderr.splitlines() if " done in " in line]
    assert len(lines) == n_folds == len(folds) >= 2, proc.stderr[-3000:]
    assert sorted(lines)[0].startswith(f"fold 1/{n_folds} done in ") and "test_rank_ic/4h=" in lines[0]
    assert parent.data.tags["choice.backbone"] == "ridge"


def test_joblib_launcher_runs_jobs_in_parallel_without_losing_runs(tracking_uri, tmp_path):
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "backbone=ridge",
        "ablation=full,no_text,no_macro",
        *TINY,
        "tracking.experiment=par",
        "tracking.log_model=false",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    run_train(args, tmp_path)
    client, parents, folds = parent_runs("par")
    assert len(parents) == 3
    assert all(p.info.status == "FINISHED" for p in parents)
    assert len(folds) == sum(int(p.data.tags["quantml.n_folds"]) for p in parents)


def test_failed_job_ends_its_run_failed_with_the_error(tracking_uri, tmp_path):
    # 7d labels on 700 hourly bars leave too little data for 3 walk-forward folds of >= 400 samples
    proc = run_train([*TINY, "validation.min_train_samples=100000", "tracking.experiment=fail"], tmp_path, check=False)
    assert proc.returncode != 0
    assert "min_train_samples" in proc.stderr
    _, parents, _ = parent_runs("fail")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert "min_train_samples" in parents[0].data.tags["quantml.error"]
    assert all(r.info.status != "RUNNING" for r in mlflow.search_runs(experiment_names=["fail"], output_format="list"))


@pytest.mark.parametrize(
    "override, message",
    [
        (["data=stocks_daily", "horizon=1h"], "shorter than"),
        (["backbone=nonexistent"], "backbone"),
        (["data=parquet", "data.path=/no/such/file.parquet"], "/no/such/file.parquet"),
    ],
)
def test_bad_input_is_a_clear_error(tracking_uri, tmp_path, override, message):
    proc = run_train([*override, "tracking.experiment=bad", "print_report=false"], tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
