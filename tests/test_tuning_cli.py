"""``quantml-tune`` end to end: two processes share one Optuna storage; Hydra config composition."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from quantml.signals import SignalConfig
from quantml.tuning.synthetic import log_synthetic_source_run

REPO = Path(__file__).resolve().parents[1]


def test_tune_config_composes_with_cost_group(compose_cfg):
    cfg = compose_cfg(["run_id=abc"], config_name="tune")
    assert cfg.get("cost") is None and cfg.objective.name == "sharpe" and cfg.study.storage == "sqlite:///optuna.db"
    cfg = compose_cfg(["run_id=abc", "cost=crypto", "objective.name=calmar", "attach=m:2"], config_name="tune")
    assert cfg.cost.fee_bps == 4.0 and cfg.objective.name == "calmar" and cfg.attach == "m:2"


def test_two_processes_share_one_study_and_log_child_runs(tracking_uri, tmp_path):
    run_id = log_synthetic_source_run(tracking_uri, n_symbols=3, n_bars=250, seed=4)
    client = mlflow.MlflowClient(tracking_uri)
    client.create_registered_model("syn")
    client.create_model_version("syn", f"runs:/{run_id}/model", run_id=run_id)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="shared", direction="maximize")  # schema created once
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking_uri}
    common = [sys.executable, "-m", "quantml.cli.tune", f"run_id={run_id}", f"study.storage={storage}",
              "study.name=shared", "study.n_trials=3", "study.n_startup_trials=2",
              "allocator.cov_window=30", "allocator.cov_min_periods=10"]
    # worker 0 logs its report and attaches; worker 1 only adds trials (logging is tested elsewhere)
    procs = [subprocess.Popen(common + [f"study.worker={i}"] + (["attach=syn:1"] if i == 0 else
                                                                ["log_to_mlflow=false"]), env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6  # workers drew different trials
    assert "logged as MLflow run" in outs[0] and "hold-out sharpe" in outs[1]
    children = client.search_runs([client.get_run(run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run_id}' and tags.`quantml.kind` = 'tune'")
    assert len(children) == 1
    assert all("holdout_sharpe_after_cost" in c.data.metrics for c in children)
    tag = client.get_model_version("syn", "1").tags["quantml.signal"]
    assert set(SignalConfig.from_json(tag).threshold) == {"1d", "5d"}


def test_cli_reports_a_missing_run_id_with_the_fix(tracking_uri, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-m", "quantml.cli.tune"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "pass run_id=<parent run id" in out.stderr
