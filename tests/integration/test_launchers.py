"""Sweeps past one process: Hydra's submitit launcher runs `quantml train -m` jobs as separate
processes (`hydra/launcher=submitit_local`, run here) or as a SLURM job array (`hydra/launcher=slurm`,
composed here: no cluster on this machine)."""

from __future__ import annotations

import os
import subprocess

import mlflow
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR
from tests.helpers import TINY, quantml_cli


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path, tracking_uri):
    args = [*TINY, "backbone=ridge", "tracking.log_model=false", "tracking.experiment=submitit"]
    proc = subprocess.run(
        [*quantml_cli("train"), "-m", "hydra/launcher=submitit_local", "seed=1,2", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("submitit")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`quantml.kind` = 'parent'")
    assert sorted(r.data.tags["quantml.seed"] for r in parents) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and "oos_rank_ic/4h" in r.data.metrics for r in parents)
    # one process per job: submitit wrote each job's own log folder
    assert len(list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))) == 2


def test_slurm_launcher_config_composes_with_cluster_settings():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.mem_gb=4"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.mem_gb, launcher.cpus_per_task, launcher.timeout_min) == ("cpu", 4, 2, 120)
