"""Killed sweeps: a parent run's lease, the sweep of expired leases, and ``resume=true``.

In-process: the lease is renewed while the run lives and stops when it ends, a failed renewal
never fails the job, expired leases are ended FAILED (with their RUNNING folds) the next time the
store is prepared, runs without a lease are left alone. In a subprocess: a ``quantml train -m``
of 3 tiny jobs SIGKILLed after its first job FINISHED, then the same command with ``resume=true``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import mlflow
import pytest

from quantml.contracts import run_layout as L
from quantml.tracking.store import LEASE_EXPIRED, parse_lease, prepare_store, sweep_stale_runs, utc_now
from quantml.tracking.writer import RunLease, RunWriter
from tests.helpers import TINY, quantml_cli


def _tags(client, run_id):
    return client.get_run(run_id).data.tags


def _status(client, run_id):
    return client.get_run(run_id).info.status


def _wait_for(predicate, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


# -- the lease, in-process ------------------------------------------------------------------------------
def test_the_lease_is_renewed_while_the_run_lives_and_stops_when_it_ends(tracking_uri):
    writer = RunWriter.for_experiment(tracking_uri, "lease")
    parent = writer.start_parent("p", seed=1, lease_s=0.6)
    client = writer.client
    first = _tags(client, parent.run_id)
    assert first[L.TAG_LEASE_HOST].endswith(f":{os.getpid()}") and ":" in first[L.TAG_LEASE_HOST]
    start = parse_lease(first[L.TAG_LEASE_UNTIL])
    assert start is not None and timedelta(0) < start - utc_now() <= timedelta(seconds=0.6)
    assert parent.lease.alive
    assert _wait_for(lambda: parent.lease.renewals >= 2, timeout=10)  # every lease/3 = 0.2 s
    renewed = parse_lease(_tags(client, parent.run_id)[L.TAG_LEASE_UNTIL])
    assert renewed > start

    parent.end()
    assert not parent.lease.alive  # the thread never outlives the run
    assert _status(client, parent.run_id) == "FINISHED"
    ended_at = _tags(client, parent.run_id)[L.TAG_LEASE_UNTIL]
    renewals = parent.lease.renewals
    time.sleep(0.5)  # more than two renewal intervals
    assert _tags(client, parent.run_id)[L.TAG_LEASE_UNTIL] == ended_at
    assert parent.lease.renewals == renewals and parent.lease.renew() is False


def test_a_run_ending_failed_stops_its_lease_and_ends_its_running_folds(tracking_uri):
    writer = RunWriter.for_experiment(tracking_uri, "lease")
    parent = writer.start_parent("p", seed=1, lease_s=30)
    done = writer.start_fold(parent, 1)
    done.end()
    running = writer.start_fold(parent, 2)
    try:
        raise RuntimeError("out of data")
    except RuntimeError as exc:
        parent.fail(exc)
    client = writer.client
    assert not parent.lease.alive
    assert _status(client, parent.run_id) == "FAILED"
    assert _tags(client, parent.run_id)[L.TAG_ERROR] == "RuntimeError: out of data"
    assert _status(client, running.run_id) == "FAILED"
    assert _status(client, done.run_id) == "FINISHED"


class _BrokenClient:
    """A store that refuses every call (a network outage, a locked file past the retries)."""

    def __getattr__(self, name):
        def refuse(*args, **kwargs):
            raise OSError("connection refused")

        return refuse


def test_a_failed_renewal_logs_a_warning_and_never_fails_the_job(caplog):
    lease = RunLease(_BrokenClient(), "deadbeef", 0.3)
    with caplog.at_level(logging.WARNING, logger="quantml.tracking.writer"):
        lease.start()
        assert _wait_for(lambda: lease.failures >= 2, timeout=10)
        assert lease.alive  # it keeps trying: the next renewal may get through
        lease.stop()
    assert not lease.alive
    assert any("could not renew the lease of run deadbeef" in r.getMessage() for r in caplog.records)


class _SlowFinishedClient:
    """A store whose run reads take ``delay`` seconds and find the run FINISHED (the job ended it)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.tags_written = delay, 0

    def get_run(self, run_id):
        time.sleep(self.delay)
        info = type("Info", (), {"status": "FINISHED"})()
        return type("Run", (), {"info": info, "data": type("Data", (), {"tags": {}})()})()

    def set_tag(self, *args):
        self.tags_written += 1


def test_a_renewal_slower_than_stop_neither_warns_nor_writes(caplog):
    client = _SlowFinishedClient(delay=0.6)
    lease = RunLease(client, "cafef00d", 3.0, interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="quantml.tracking.writer"):
        lease.start()
        time.sleep(0.2)  # a renewal is reading the run
        lease.stop(timeout=0.1)  # gives up waiting for it; the job then ends the run FINISHED
        time.sleep(1.0)  # the read returns
    assert not any("by someone else" in r.getMessage() for r in caplog.records)
    assert client.tags_written == 0 and lease.renewals == 0


def test_a_lease_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        RunLease(_BrokenClient(), "x", 0)


# -- the sweep of expired leases ---------------------------------------------------------------------
def test_preparing_the_store_ends_expired_runs_failed_and_leaves_the_others_alone(tracking_uri):
    writer = RunWriter.for_experiment(tracking_uri, "stale")
    client = writer.client
    an_hour_ago = lambda: utc_now() - timedelta(hours=1)  # noqa: E731 - the dead job's clock
    dead = writer.start_parent("dead", seed=1, lease_s=60, clock=an_hour_ago)
    dead.stop_lease()  # the job "died": nobody renews, nobody ends the run
    dead_fold_done = writer.start_fold(dead, 1)
    dead_fold_done.end()
    dead_fold_running = writer.start_fold(dead, 2)
    live = writer.start_parent("live", seed=1, lease_s=60)
    legacy = writer.start("legacy", {L.TAG_KIND: L.KIND_PARENT})  # quantml 0.1 / another tool: no lease
    other = writer.start("other tool")
    try:
        prepare_store(tracking_uri, "stale")  # what every command does before it uses the store

        tags = _tags(client, dead.run_id)
        assert _status(client, dead.run_id) == "FAILED"
        reason = tags[L.TAG_ERROR]
        assert reason.startswith(f"{LEASE_EXPIRED} {tags[L.TAG_LEASE_UNTIL]} ({tags[L.TAG_LEASE_HOST]})")
        assert reason.endswith("the job died without ending its run (killed?)")
        assert _status(client, dead_fold_running.run_id) == "FAILED"
        assert _tags(client, dead_fold_running.run_id)[L.TAG_ERROR] == reason
        assert _status(client, dead_fold_done.run_id) == "FINISHED"
        for alive in (live, legacy, other):
            assert _status(client, alive.run_id) == "RUNNING"
            assert L.TAG_ERROR not in _tags(client, alive.run_id)
        assert sweep_stale_runs(client, writer.experiment_id) == []  # nothing left to end
    finally:
        for run in (live, legacy, other):
            run.end()


def test_a_live_job_ended_by_a_skewed_clock_marks_its_run_running_again(tracking_uri, caplog):
    writer = RunWriter.for_experiment(tracking_uri, "skew")
    client = writer.client
    parent = writer.start_parent("p", seed=1, lease_s=60)
    fold = writer.start_fold(parent, 1)
    # another host whose clock runs two hours ahead takes the lease for expired
    ended = sweep_stale_runs(client, writer.experiment_id, now=utc_now() + timedelta(hours=2))
    assert [run_id for run_id, _ in ended] == [parent.run_id]
    assert _status(client, parent.run_id) == "FAILED" and _status(client, fold.run_id) == "FAILED"
    with caplog.at_level(logging.WARNING, logger="quantml.tracking.writer"):
        assert parent.lease.renew()
    assert "marked RUNNING again" in caplog.text
    for run in (parent, fold):
        assert _status(client, run.run_id) == "RUNNING"
        assert L.TAG_ERROR not in _tags(client, run.run_id)
    fold.end()
    parent.end()
    assert _status(client, parent.run_id) == "FINISHED" and not parent.lease.alive


# -- resume=true, in-process ---------------------------------------------------------------------------
def test_resume_skips_a_job_whose_identity_finished_and_reruns_failed_ones(tracking_uri, compose_cfg, capsys):
    from quantml.experiment.resume import run_identity, skip_if_finished

    cfg = compose_cfg([*TINY, "backbone=ridge", "tracking.experiment=resume", "resume=true"])
    identity = run_identity(cfg)
    writer = RunWriter.for_experiment(tracking_uri, "resume")
    assert skip_if_finished(cfg, "backbone=ridge") is None  # nothing ran yet
    failed = writer.start_parent("failed", tags={L.TAG_RUN_IDENTITY: identity})
    failed.end("FAILED")
    killed = writer.start_parent("pruned", tags={L.TAG_RUN_IDENTITY: identity})
    killed.end("KILLED")
    other = writer.start_parent("other", tags={L.TAG_RUN_IDENTITY: "0" * 16})
    other.end()
    assert skip_if_finished(cfg, "backbone=ridge") is None  # FAILED / KILLED identities run again
    assert "skipped" not in capsys.readouterr().out
    done = writer.start_parent("done", tags={L.TAG_RUN_IDENTITY: identity})
    done.end()
    assert skip_if_finished(cfg, "backbone=ridge") == done.run_id
    assert capsys.readouterr().out == f"skipped: backbone=ridge already FINISHED as run {done.run_id}\n"
    cfg.resume = False
    assert skip_if_finished(cfg, "backbone=ridge") is None  # resume=false (the default) always runs


# -- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        (["hparams_search=lightgbm", "resume=true"], "resume=true does not apply to hparams_search"),
        (["resume=maybe"], "resume=maybe is not true or false"),
        (["tracking.lease_s=0"], "tracking.lease_s=0 must be a positive number of seconds"),
        (["tracking.lease_s=soon"], "tracking.lease_s=soon is not a number"),
    ],
)
def test_bad_resume_settings_are_refused_before_any_run(tracking_uri, capsys, override, message):
    from quantml.cli.train import main

    assert main(["-m", *override, "tracking.experiment=refused"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert mlflow.MlflowClient().get_experiment_by_name("refused") is None  # nothing started


# -- a real killed sweep -------------------------------------------------------------------------------
def _parents(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=500)
    return [r for r in runs if r.data.tags.get(L.TAG_KIND) == L.KIND_PARENT]


def _children(client, parent):
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{L.MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
    )
    return list(runs)


def _assert_intact(client, run):
    assert run.info.status == "FINISHED"
    assert {"oos_ic/4h", "oos_sharpe_after_cost/4h", "best_monitor"} <= set(run.data.metrics)
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "predictions", "report", "audit", "folds"} <= files
    folds = _children(client, run)
    assert len(folds) == int(run.data.tags[L.TAG_N_FOLDS]) >= 2
    assert all(f.info.status == "FINISHED" for f in folds)


@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow)])
def test_a_killed_sweep_fails_its_running_job_once_the_lease_expires_and_resumes(tracking_uri, tmp_path, launcher):
    experiment = f"killed-{launcher}"
    args = [
        "-m",
        "backbone=ridge",
        "ablation=full,no_text,no_macro",
        *TINY,
        "tracking.log_model=false",
        f"tracking.experiment={experiment}",
        "tracking.lease_s=3",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    client = mlflow.MlflowClient()
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [*quantml_cli("train"), *args],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: joblib's workers die with it
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                parents = _parents(client, experiment)
                ends = [p.info.end_time for p in parents if p.info.status == "FINISHED"]
                # a job launched after one FINISHED (joblib: the two first jobs end nearly together)
                if ends and any(p.info.status == "RUNNING" and p.info.start_time >= min(ends) for p in parents):
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the sweep ended before it was killed:\n{log_path.read_text()[-3000:]}"

    parents = _parents(client, experiment)
    finished = [p for p in parents if p.info.status == "FINISHED"]
    killed = [p for p in parents if p.info.status == "RUNNING"]
    assert finished and killed and len(finished) + len(killed) == len(parents) <= 3  # joblib: 2 may run
    for run in finished:  # what the killed sweep finished is intact
        _assert_intact(client, run)
    if launcher == "basic":  # the jobs ran in the command's own process
        assert all(k.data.tags[L.TAG_LEASE_HOST].endswith(f":{proc.pid}") for k in killed)

    # before its lease expires a killed job is not taken for dead
    prepare_store(tracking_uri, experiment)
    assert all(_status(client, k.info.run_id) == "RUNNING" for k in killed)
    expiry = max(parse_lease(_tags(client, k.info.run_id)[L.TAG_LEASE_UNTIL]) for k in killed)
    time.sleep(max(0.0, (expiry - utc_now()).total_seconds()) + 0.3)

    second = subprocess.run(
        [*quantml_cli("train"), *args, "resume=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-5000:]
    skipped = [line for line in second.stdout.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == len(finished), output[-3000:]
    for run in finished:
        assert any(line.endswith(f"already FINISHED as run {run.info.run_id}") for line in skipped)
    assert all(line.startswith("skipped: #") and " ablation=" in line for line in skipped)  # job number, swept value
    assert f"resume=true: skipped {len(finished)} job(s) already FINISHED" in second.stdout

    for run in killed:  # ended FAILED, with the reason, fold runs too
        fresh = client.get_run(run.info.run_id)
        assert fresh.info.status == "FAILED"
        reason = fresh.data.tags[L.TAG_ERROR]
        assert reason.startswith(LEASE_EXPIRED) and fresh.data.tags[L.TAG_LEASE_HOST] in reason
        assert reason.endswith("(killed?)")
        assert all(f.info.status in ("FINISHED", "FAILED") for f in _children(client, fresh))

    after = _parents(client, experiment)
    new = [p for p in after if p.info.run_id not in {r.info.run_id for r in parents}]
    assert len(new) == 3 - len(finished)  # the killed job and the ones never started
    for run in new:
        _assert_intact(client, run)
    identity = {p.data.tags[L.TAG_RUN_IDENTITY] for p in finished}
    assert len(identity) == len(finished) and not identity & {p.data.tags[L.TAG_RUN_IDENTITY] for p in new}
    assert {p.data.tags[L.TAG_RUN_IDENTITY] for p in killed} <= {p.data.tags[L.TAG_RUN_IDENTITY] for p in new}
    everything = client.search_runs([after[0].info.experiment_id], max_results=1000)
    assert not [r.info.run_id for r in everything if r.info.status == "RUNNING"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
