"""A sequence backbone's fit, interrupted mid-way, resumes from its last Lightning checkpoint.

In-process: a fit killed after 2 of 5 epochs resumes from ``last.ckpt`` and ends bit-identical to
an uninterrupted fit (weights, history, forecasts: the checkpoint carries the optimiser, the loops,
the callbacks and the random streams, and the batch order is a function of seed and epoch); the
folder goes when the fit finishes; a left-over or unreadable checkpoint is never resumed from
without ``resume`` and a readable one. In a subprocess: a real ``quantml train -m`` SIGKILLed once
its first checkpoint is written, then rerun with ``resume=true``.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import time

import mlflow
import numpy as np
import pytest
import torch

from quantml.contracts import run_layout as L
from quantml.models.sequence import BACKBONES
from quantml.models.sequence import module as seq_module
from quantml.models.sequence.trainer import CHECKPOINT_FILE
from quantml.tracking.store import parse_lease, utc_now
from tests.helpers import TINY, quantml_cli
from tests.integration.test_sequence_ddp import HORIZONS, split_rows, tiny_panel

# dropout and symbol dropout on: a resumed fit must draw what the uninterrupted one drew
FIT = dict(
    lookback=8,
    hidden_size=8,
    symbol_dim=4,
    batch_size=64,
    max_epochs=5,
    limit_train_batches=3,
    patience=10,
    num_threads=1,
    predict_batch_size=256,
    dropout=0.1,
    symbol_dropout=0.2,
)
KILL_AT_EPOCH = 2  # the fit dies at the end of its 3rd epoch, before that epoch's checkpoint
LOGGER = "quantml.models.sequence.trainer"


class _Killed(RuntimeError):
    pass


def _kill_at_epoch_end(monkeypatch, epoch: int) -> None:
    """Make the next fits die at the end of ``epoch`` (after the callbacks before the checkpoint)."""

    def die(self, trainer, module):
        if trainer.current_epoch == epoch:
            raise _Killed(f"killed at the end of epoch {epoch}")

    monkeypatch.setattr(seq_module.RandomState, "on_train_epoch_end", die, raising=False)


def _lstm(**kw):
    return BACKBONES["lstm"](HORIZONS, seed=5, **{**FIT, **kw})


def _assert_same_fit(a, b, panel, rows) -> None:
    sa, sb = a.net_.state_dict(), b.net_.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history_ == b.history_ and a.n_steps_ == b.n_steps_ and a.capacity_ == b.capacity_
    np.testing.assert_array_equal(a.predict(panel.subset(rows)).q90, b.predict(panel.subset(rows)).q90)


@pytest.fixture(scope="module")
def uninterrupted():
    panel = tiny_panel()
    tr, va, _ = split_rows()
    return _lstm().fit(panel.subset(tr), panel.subset(va))


def test_an_interrupted_fit_resumes_from_its_checkpoint_bit_identically(uninterrupted, tmp_path, monkeypatch, caplog):
    panel = tiny_panel()
    tr, va, te = split_rows()
    job = tmp_path / "job"
    with monkeypatch.context() as patch:
        _kill_at_epoch_end(patch, KILL_AT_EPOCH)
        with pytest.raises(_Killed):
            _lstm().checkpoint_in(job, resume=True).fit(panel.subset(tr), panel.subset(va))
    left = list(job.glob(f"fit-*/{CHECKPOINT_FILE}"))
    assert len(left) == 1  # one folder per fit, holding its last checkpoint
    assert torch.load(left[0], map_location="cpu", weights_only=True)["epoch"] == KILL_AT_EPOCH - 1

    with caplog.at_level(logging.INFO, logger=LOGGER):
        resumed = _lstm().checkpoint_in(job, resume=True).fit(panel.subset(tr), panel.subset(va))
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines == [f"LSTMForecaster: resuming training from checkpoint {left[0]} (after epoch {KILL_AT_EPOCH})"]
    _assert_same_fit(resumed, uninterrupted, panel, te)
    assert len(resumed.history_) == FIT["max_epochs"]
    assert not job.exists()  # the finished fit removed its folder, and the job's folder with it
    assert "checkpoint_root" not in pickle.loads(pickle.dumps(resumed)).__dict__  # not part of the model


def test_a_left_over_checkpoint_is_resumed_only_with_resume_and_when_readable(
    uninterrupted, tmp_path, monkeypatch, caplog
):
    panel = tiny_panel()
    tr, va, te = split_rows()
    job = tmp_path / "job"
    with monkeypatch.context() as patch:
        _kill_at_epoch_end(patch, 1)
        with pytest.raises(_Killed):
            _lstm().checkpoint_in(job, resume=False).fit(panel.subset(tr), panel.subset(va))
    (left,) = job.glob(f"fit-*/{CHECKPOINT_FILE}")
    with caplog.at_level(logging.INFO, logger=LOGGER):  # resume=false: removed, the fit starts over
        fresh = _lstm().checkpoint_in(job, resume=False).fit(panel.subset(tr), panel.subset(va))
    assert not [r for r in caplog.records if r.name == LOGGER] and not job.exists()
    _assert_same_fit(fresh, uninterrupted, panel, te)

    left.parent.mkdir(parents=True)
    left.write_bytes(b"cut short by the kill")  # a checkpoint written half-way
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = _lstm().checkpoint_in(job, resume=True).fit(panel.subset(tr), panel.subset(va))
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING and "is unreadable" in record.getMessage()
    assert record.getMessage().endswith("training starts over")
    _assert_same_fit(again, uninterrupted, panel, te)
    assert not job.exists()


def test_a_job_checkpoints_under_its_run_identity(compose_cfg, monkeypatch, tmp_path):
    from quantml.experiment.fitting import CHECKPOINT_DIR_ENV, build_model, job_checkpoint_dir
    from quantml.experiment.resume import run_identity

    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path / "ckpt"))
    cfg = compose_cfg(["backbone=tsmixer"])
    where = job_checkpoint_dir(cfg)
    assert where == tmp_path / "ckpt" / run_identity(cfg)
    rerun = compose_cfg(["backbone=tsmixer", "resume=true"])
    assert job_checkpoint_dir(rerun) == where  # a rerun of the same job finds the same folder
    assert job_checkpoint_dir(compose_cfg(["backbone=tsmixer", "backbone.hidden_size=16"])) != where
    model = build_model(rerun, ["1d"])
    assert model.checkpoint_root == str(where) and model.resume_checkpoints is True
    assert build_model(cfg, ["1d"]).resume_checkpoints is False
    assert model.with_capacity({"epochs": 2}).checkpoint_root == str(where)  # the final model's fits too
    assert not hasattr(build_model(compose_cfg(["backbone=ridge"]), ["1d"]), "checkpoint_root")
    monkeypatch.delenv(CHECKPOINT_DIR_ENV)
    assert job_checkpoint_dir(cfg).parent.name == "quantml-checkpoints"


# -- a real killed multirun -----------------------------------------------------------------------------
SEQ = [
    "backbone=lstm",
    "backbone.max_epochs=40",
    "backbone.limit_train_batches=2",
    "backbone.patience=40",
    "backbone.lookback=8",
    "backbone.hidden_size=8",
    "backbone.batch_size=64",
]


def _parents(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=200) if exp is not None else []
    return [r for r in runs if r.data.tags.get(L.TAG_KIND) == L.KIND_PARENT]


@pytest.mark.slow  # two tiny LSTM train jobs, 40 epochs per fit: 47-61 s measured on 2 shared cores
def test_a_killed_multirun_resumes_its_fit_from_the_last_checkpoint(tracking_uri, tmp_path):
    experiment = "seq-resume"
    ckpt_root = tmp_path / "checkpoints"
    args = [
        "-m",
        *TINY,
        *SEQ,
        "tracking.log_model=false",
        f"tracking.experiment={experiment}",
        "tracking.lease_s=3",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "QUANTML_CHECKPOINT_DIR": str(ckpt_root)}
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [*quantml_cli("train"), *args],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                if list(ckpt_root.glob(f"*/fit-*/{CHECKPOINT_FILE}")):
                    time.sleep(0.5)  # let the first checkpoint be written in full
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the job ended before it was killed:\n{log_path.read_text()[-3000:]}"
    (job_dir,) = list(ckpt_root.iterdir())  # <run identity>/fit-<hash>/last.ckpt
    assert list(job_dir.glob(f"fit-*/{CHECKPOINT_FILE}"))
    client = mlflow.MlflowClient()
    (killed,) = _parents(client, experiment)
    assert killed.info.status == "RUNNING" and killed.data.tags[L.TAG_RUN_IDENTITY] == job_dir.name
    expiry = parse_lease(killed.data.tags[L.TAG_LEASE_UNTIL])
    time.sleep(max(0.0, (expiry - utc_now()).total_seconds()) + 0.3)

    second = subprocess.run(
        [*quantml_cli("train"), *args, "resume=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-5000:]
    resumed = [line for line in output.splitlines() if "resuming training from checkpoint" in line]
    assert len(resumed) == 1, output[-3000:]
    assert str(job_dir) in resumed[0] and f"{CHECKPOINT_FILE} (after epoch " in resumed[0]
    assert not job_dir.exists() and not list(ckpt_root.iterdir())  # every fit finished: nothing left

    parents = _parents(client, experiment)
    (done,) = [p for p in parents if p.info.run_id != killed.info.run_id]
    assert done.info.status == "FINISHED" and done.data.tags[L.TAG_RUN_IDENTITY] == job_dir.name
    assert np.isfinite(done.data.metrics["oos_rank_ic/4h"])
    assert client.get_run(killed.info.run_id).info.status == "FAILED"  # its lease expired
    everything = client.search_runs([done.info.experiment_id], max_results=500)
    assert not [r.info.run_id for r in everything if r.info.status == "RUNNING"]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-v"]))
