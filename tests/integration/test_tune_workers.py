"""Several Optuna workers on one study: ``quantml tune study.n_workers=N`` (threshold tuning) and the
``quantml_optuna`` sweeper's heartbeats, stale trials and shared trial budget.

(a) threshold tuning with 2 worker processes on a journal file finishes exactly ``n_trials`` new
trials, no duplicates, and draws the same trials (so the same best value) as two seeded in-memory
studies, one per worker seed; in-memory storage with ``n_workers>1`` is refused.
(b) a real sweeper process (a tiny Hydra app whose trials are MLflow parent runs) is SIGKILLed
mid-trial; after the grace period a new sweeper on the same study fails that trial, ends its
MLflow run FAILED with the reason, leaves it out of the budget and finishes the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.portfolio import AllocatorConfig
from quantml.tuning.hparams import HparamSearch, TrialHeartbeat
from quantml.tuning.run import run_tuning, worker_shares
from quantml.tuning.storage import make_storage
from quantml.tuning.thresholds import ThresholdStudy, TuneSettings, make_sampler
from tests.conftest import POSTGRES_ENV, requires_postgres
from tests.helpers.synthetic_oos import log_synthetic_source_run

REPO = Path(__file__).resolve().parents[2]
ALLOC = AllocatorConfig(cov_window=30, cov_min_periods=10)
optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- (a) threshold tuning: n_workers processes on one study ------------------------------------------
def test_worker_shares_split_the_budget_exactly():
    assert worker_shares(7, 3) == [3, 2, 2]
    assert worker_shares(2, 3) == [1, 1, 0]
    assert sum(worker_shares(50, 4)) == 50


def test_two_tune_workers_finish_the_budget_and_draw_the_seeded_trials(tracking_uri, tmp_path):
    run_id = log_synthetic_source_run(tracking_uri, n_symbols=3, n_bars=300, seed=2)
    storage = f"journal:///{tmp_path / 'tune.log'}"
    kw = dict(settings=TuneSettings(), allocator=ALLOC, study_name="w", log_to_mlflow=False, seed=5)
    # all 6 trials in TPE's random start-up: each worker's draws depend on its seed alone
    out = run_tuning(run_id, tracking_uri, storage=storage, n_trials=6, n_startup_trials=6, n_workers=2, **kw)
    trials = optuna.load_study(study_name="w", storage=make_storage(storage)).trials
    assert out.n_complete == 6 and len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    drawn = sorted(tuple(sorted(t.params.items())) for t in trials)
    assert len(set(drawn)) == 6  # no duplicate: the two workers drew different trials

    # reproducible: worker i is a seed + i sampler running its share (3 each); replay both in memory
    study = ThresholdStudy(out_source(run_id, tracking_uri), TuneSettings(), ALLOC)
    replay = []
    for i in range(2):
        alone = optuna.create_study(direction="maximize", sampler=make_sampler(5 + i, n_startup_trials=6))
        alone.optimize(study.objective, n_trials=3)
        replay += alone.trials
    assert sorted(tuple(sorted(t.params.items())) for t in replay) == drawn
    assert max(t.value for t in replay) == pytest.approx(out.metrics["best_value"], rel=1e-12)

    with pytest.raises(QuantmlInputError, match="study.n_workers=2 with study.storage=memory.*journal"):
        run_tuning(run_id, tracking_uri, storage="memory", n_trials=2, n_workers=2, **kw)
    with pytest.raises(QuantmlInputError, match="study.n_workers=0"):
        run_tuning(run_id, tracking_uri, storage=storage, n_trials=2, n_workers=0, **kw)


def out_source(run_id, tracking_uri):
    from quantml.tuning.source import load_source_run

    return load_source_run(run_id, tracking_uri)


# -- (b) the sweeper: heartbeats, stale trials, a shared budget ------------------------------------------
def test_heartbeat_and_grace_settings_are_checked():
    assert HparamSearch().grace_period == 30  # 3x the default 10 s interval
    assert HparamSearch(heartbeat_interval=None).grace_period is None
    with pytest.raises(QuantmlInputError, match="grace_period=2 must exceed heartbeat_interval=2"):
        HparamSearch(heartbeat_interval=2, grace_period=2)
    with pytest.raises(QuantmlInputError, match="hydra.sweeper.heartbeat_interval=0"):
        HparamSearch(heartbeat_interval=0)


def test_a_stale_trial_fails_leaves_the_budget_and_a_live_one_does_not(tmp_path):
    """In-process, on SQLite: a trial whose heartbeat stopped fails after the grace period; a trial
    whose heartbeat thread runs does not; the stale one is not counted against n_trials."""
    search = HparamSearch(storage=f"sqlite:///{tmp_path / 'o.db'}", n_trials=3, heartbeat_interval=1, grace_period=2)
    storage = search.make_storage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    assert search.heartbeats  # an RDB storage with heartbeat_interval
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    dead, live = search.ask(study, space), search.ask(study, space)
    search._stop_heartbeat(dead)  # its sweeper "died": no more heartbeats
    assert search.trials_counted(study) == 2 and search.running_elsewhere(study) == [dead.number]
    time.sleep(3.5)
    search.fail_stale_trials(study)
    states = {t.number: t.state for t in study.trials}
    assert states == {dead.number: optuna.trial.TrialState.FAIL, live.number: optuna.trial.TrialState.RUNNING}
    why = search.uncounted(study)[dead.number]
    assert why.startswith(L.HEARTBEAT_STALE) and f"trial {dead.number}" in why and "killed?" in why
    assert search.trials_counted(study) == 1  # the live one; the stale one is run again
    assert search._beats[live.number].beats >= 3  # its thread beat all along
    search._stop_heartbeat(live)
    study.tell(live, 1.0)


def test_sweepers_share_the_budget_and_one_asked_over_it_is_dropped(tmp_path):
    """Two sweepers on one study: trials counted are the study's, whichever sweeper asked them; a
    trial asked when the other took the last place is told FAIL and left out of the budget."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    a, b = (HparamSearch(storage=url, n_trials=2, heartbeat_interval=None) for _ in range(2))
    study_a = optuna.create_study(study_name="s", storage=a.make_storage(), direction="maximize")
    study_b = optuna.load_study(study_name="s", storage=b.make_storage())
    assert not a.heartbeats and not b.heartbeats
    first = a.ask(study_a, space)
    assert a.within_budget(study_a, first) and b.trials_counted(study_b) == 1
    # both see one place left and ask at once: the later trial number is over the budget
    t_a, t_b = a.ask(study_a, space), b.ask(study_b, space)
    assert a.within_budget(study_a, t_a) and not b.within_budget(study_b, t_b)
    assert study_b.trials[t_b.number].state == optuna.trial.TrialState.FAIL
    assert "over the trial budget" in b.uncounted(study_b)[t_b.number]
    for t in (first, t_a):
        study_a.tell(t, 0.5)
    assert a.trials_counted(study_a) == b.trials_counted(study_b) == 2 and len(study_a.trials) == 3


APP = """
import time, os, sys
import hydra
from quantml.tracking.writer import RunWriter

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def app(cfg):
    hs = cfg.hparams_search
    writer = RunWriter.for_experiment(cfg.tracking.uri, cfg.tracking.experiment)
    run = writer.start_parent(f"trial-{hs.trial}", seed=1, lease_s=600)  # a lease far longer than the test
    run.log_params({"hparams_search.trial": hs.trial, "hparams_search.study_name": hs.study_name, "x": cfg.x})
    fold = writer.start_fold(run, 0)
    if os.environ.get("HANG_FROM_TRIAL") and int(hs.trial) >= int(os.environ["HANG_FROM_TRIAL"]):
        open(f"hanging-{hs.trial}", "w").close()
        time.sleep(600)  # killed here
    fold.end()
    run.end()
    return -((cfg.x - 0.3) ** 2)

if __name__ == "__main__":
    app()
"""

CONFIG = """
defaults:
  - override hydra/sweeper: quantml_optuna
  - _self_
x: 0.0
tracking:
  uri: {uri}
  experiment: workers
hparams_search:
  objective: value
  prune_metric: null
  trial: null
  study_name: null
  storage: null
hydra:
  sweep:
    dir: {root}/multirun
  sweeper:
    n_trials: 2
    seed: 1
    storage: {storage}
    study_name: killed
    n_startup_trials: 2
    pruner: none
    heartbeat_interval: 1
    grace_period: 2
    params:
      x: interval(0, 1)
"""


def _sweeper(root: Path, env: dict, **kw):
    return subprocess.Popen(
        [sys.executable, str(root / "app.py"), "-m"], cwd=root, env=env, start_new_session=True, text=True, **kw
    )


def _parents(client, experiment="workers"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100) if exp else []
    parents = [r for r in runs if r.data.tags.get(L.TAG_KIND) == "parent" and L.PARAM_HPARAMS_TRIAL in r.data.params]
    return {int(r.data.params[L.PARAM_HPARAMS_TRIAL]): r for r in parents}


def _killed_sweeper_scenario(tmp_path, uri, storage):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "config.yaml").write_text(CONFIG.format(uri=uri, root=tmp_path, storage=storage))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": uri}
    client = mlflow.MlflowClient(uri)

    first = _sweeper(tmp_path, {**env, "HANG_FROM_TRIAL": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None and not (tmp_path / "hanging-1").exists():
            time.sleep(0.2)  # until trial 1's job sleeps in its run and fold run: mid-trial
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, first.stderr.read()[-3000:]
    killed_run = _parents(client)[1]
    assert killed_run.info.status == "RUNNING"  # SIGKILL ended nothing
    study = optuna.load_study(study_name="killed", storage=make_storage(storage))
    assert {t.number: t.state.name for t in study.trials} == {0: "COMPLETE", 1: "RUNNING"}
    assert study.trials[1].user_attrs[L.TRIAL_ATTR_WORKER].endswith(f":{first.pid}")

    time.sleep(3)  # past the grace period (2 s) since the last heartbeat
    second = _sweeper(tmp_path, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-5000:]
    # the same command again: it resumes the study, with the killed trial out of the budget
    assert "1 of 2 trials done or running, 1 left" in out, out[-3000:]

    study = optuna.load_study(study_name="killed", storage=make_storage(storage))
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}  # the study carried on
    reason = study.user_attrs[f"{L.STUDY_ATTR_UNCOUNTED_PREFIX}1"]
    assert reason.startswith(L.HEARTBEAT_STALE) and f":{first.pid}" in reason
    parents = _parents(client)
    failed = client.get_run(killed_run.info.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags[L.TAG_ERROR] == reason
    (fold,) = client.search_runs(
        [failed.info.experiment_id], filter_string=f"tags.`{L.MLFLOW_PARENT_RUN_ID}` = '{failed.info.run_id}'"
    )
    assert fold.info.status == "FAILED" and fold.data.tags[L.TAG_ERROR] == reason
    assert sorted(parents) == [0, 1, 2] and all(parents[n].info.status == "FINISHED" for n in (0, 2))
    every = client.search_runs([failed.info.experiment_id], max_results=100)
    assert not [r.info.run_id for r in every if r.info.status == "RUNNING"]
    # the budget is spent: a third run of the command would ask nothing
    assert HparamSearch(storage=storage, n_trials=2).trials_counted(study) == 2
    return {"states": states, "killed": failed, "reason": reason}


def test_a_sigkilled_sweeper_leaves_its_trial_failed_and_a_new_sweeper_finishes_the_study(tracking_uri, tmp_path):
    outcome = _killed_sweeper_scenario(tmp_path, tracking_uri, f"sqlite:///{tmp_path / 'optuna.db'}")
    assert outcome["states"] == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}  # the study carried on
    assert outcome["killed"].info.status == "FAILED" and outcome["reason"].startswith(L.HEARTBEAT_STALE)


@pytest.mark.slow
@requires_postgres
def test_a_sigkilled_sweeper_on_postgresql(tracking_uri, tmp_path):
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(os.environ[POSTGRES_ENV])
    name = f"quantml_optuna_{uuid.uuid4().hex[:8]}"
    connect = dict(host=dsn.host, port=dsn.port or 5432, user=dsn.username, password=dsn.password)
    with psycopg.connect(dbname=dsn.database, autocommit=True, **connect) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = dsn.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
        outcome = _killed_sweeper_scenario(tmp_path, tracking_uri, url)
        assert outcome["states"] == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}  # the study carried on
        assert outcome["killed"].info.status == "FAILED" and outcome["reason"].startswith(L.HEARTBEAT_STALE)
    finally:
        with psycopg.connect(dbname=dsn.database, autocommit=True, **connect) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_heartbeat_that_cannot_write_logs_and_keeps_going(caplog):
    class Broken:
        def record_heartbeat(self, trial_id):
            raise OSError("database is locked")

    beat = TrialHeartbeat(Broken(), 7, interval=0.05)
    with caplog.at_level("WARNING", logger="quantml.tuning.hparams"):
        beat.start()
        time.sleep(0.2)
        assert beat.alive
        beat.stop()
    assert not beat.alive and beat.beats == 0
    assert "could not record the heartbeat of trial id 7" in caplog.text
