"""``quantml tune``'s Hydra config and CLI errors; two CLI processes on one study (slow).

The in-process CLI run with MLflow logging and attach lives in test_tuning_study.py (it
shares that module's MLflow store)."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from quantml.cli.tune import tune
from tests.helpers.synthetic_oos import log_synthetic_source_run

REPO = Path(__file__).resolve().parents[2]
SMALL = ["study.n_trials=3", "study.n_startup_trials=2", "allocator.cov_window=30", "allocator.cov_min_periods=10"]


def test_tune_config_composes_with_cost_group(compose_cfg):
    cfg = compose_cfg(["run_id=abc"], config_name="tune")
    assert cfg.get("cost") is None and cfg.objective.name == "sharpe" and cfg.study.storage == "sqlite:///optuna.db"
    cfg = compose_cfg(["run_id=abc", "cost=crypto", "objective.name=calmar", "attach=m:2"], config_name="tune")
    assert cfg.cost.fee_bps == 4.0 and cfg.objective.name == "calmar" and cfg.attach == "m:2"


def test_cli_reports_a_missing_run_id_with_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["quantml tune", "study.storage=memory"])
    with pytest.raises(SystemExit) as exc:
        tune()
    assert exc.value.code == 2
    assert "pass run_id=<parent run id" in capsys.readouterr().err


def test_every_subcommand_reads_the_one_tracking_node(compose_cfg, monkeypatch):
    from quantml.cli.common import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("config", "tune", "predict", "registry"):
        cfg = compose_cfg(["tracking.uri=sqlite:///one.db"], config_name=name)
        assert tracking_uri(cfg) == "sqlite:///one.db", name
        assert "tracking_uri" not in cfg, f"{name}.yaml has a second tracking setting"
        assert tracking_uri(compose_cfg([], config_name=name)) == "sqlite:///mlflow.db", name


@pytest.mark.slow
def test_two_cli_processes_share_one_study(tracking_uri, tmp_path):
    run_id = log_synthetic_source_run(tracking_uri, n_symbols=3, n_bars=250, seed=4)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking_uri}
    common = [
        sys.executable,
        "-m",
        "quantml.cli.main",
        "tune",
        f"run_id={run_id}",
        f"study.storage={storage}",
        "study.name=shared",
        *SMALL,
    ]
    procs = [
        subprocess.Popen(
            common + [f"study.worker={i}"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = optuna.load_study(study_name="shared", storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert len(done) == 6
    client = mlflow.MlflowClient(tracking_uri)
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{run_id}' and tags.`quantml.kind` = 'tune'",
    )
    assert len(children) == 2
