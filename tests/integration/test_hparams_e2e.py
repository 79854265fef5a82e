"""``quantml train -m hparams_search=lightgbm`` on tiny synthetic data (slow: real training jobs)."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from omegaconf import OmegaConf

from quantml.contracts import run_layout as L
from tests.helpers import TINY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_hparams_search_lightgbm_runs_trials_as_parent_runs(tracking_uri, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [
        sys.executable,
        "-m",
        "quantml.cli.main",
        "train",
        "-m",
        "hparams_search=lightgbm",
        *TINY,
        "backbone.n_estimators=40",
        "tracking.experiment=hparams",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_startup_trials=2",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    # PYTHONPATH: Hydra discovers hydra_plugins/quantml_optuna_sweeper from the repository
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    study = optuna.load_study(study_name="hparams-lightgbm", storage=storage)
    assert len(study.trials) == 3
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("hparams")
    parents = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(L.TAG_KIND) == "parent"]
    by_trial = {int(r.data.params["hparams_search.trial"]): r for r in parents}
    assert sorted(by_trial) == [0, 1, 2]
    objective = "test_rank_ic_mean/4h"
    for t in study.trials:
        run = by_trial[t.number]
        assert run.data.tags["choice.hparams_search"] == "lightgbm"
        assert float(run.data.params["backbone.num_leaves"]) == t.params["backbone.num_leaves"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(run.data.metrics[objective])
            # one report per fold (a fold whose validation IC is undefined reports nothing)
            assert t.intermediate_values and set(t.intermediate_values) <= {0, 1, 2}
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert results.study_name == "hparams-lightgbm" and results.trials.COMPLETE >= 1
    # the sweep ends with the best trial's selection figure beside its parent's lockbox (a counted read)
    assert f"selection_{objective} = " in proc.stdout and "holdout (lockbox of run" in proc.stdout
    best = by_trial[study.best_trial.number]
    assert results.best_run_id == best.info.run_id
    lockbox = {k: v for k, v in best.data.metrics.items() if k.startswith("holdout_")}
    reads = client.get_run(best.info.run_id).data.tags.get("quantml.lockbox_reads", "0")
    assert (int(reads) >= 1) if lockbox else ("no lockbox" in proc.stdout)
