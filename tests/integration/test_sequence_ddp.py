"""Lightning DDP for sequence backbones on CPU: two processes (process group gloo) at the same
global batch as one process.

Tolerance (measured: LSTM, 3 epochs x 4 steps, global batch 64, no dropout): the per-epoch
validation losses agree to 1.1e-7 relative, the training losses to 1.9e-7 and the forecasts to
4.3e-7 of their largest value, for both start methods; the tests allow rtol 1e-5 on the losses
and 1e-5 of the largest forecast.
What differs is only the order of float sums (two half-batch gradients averaged by all-reduce
instead of one full-batch gradient). Dropout and symbol dropout draw per rank, so with them DDP is
equivalent in distribution, not in numbers: the comparison turns both off.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from quantml.contracts import QuantmlInputError
from quantml.models.base import PanelData
from quantml.models.sequence import BACKBONES
from quantml.models.sequence.windows import ChunkedBatchSampler

HORIZONS = ["1d", "5d"]
N_BARS = 160
TINY = dict(
    lookback=8,
    hidden_size=8,
    symbol_dim=4,
    batch_size=64,
    max_epochs=3,
    limit_train_batches=4,
    patience=10,
    num_threads=1,
    predict_batch_size=256,
    dropout=0.0,
    symbol_dropout=0.0,
    checkpoint_every_n_epochs=0,
)
LOSS_RTOL = 1e-5
FORECAST_RTOL = 1e-5  # of the largest absolute forecast


def tiny_panel(n_symbols: int = 3, seed: int = 0) -> PanelData:
    """Random features with a planted signal; the last feature a calendar one."""
    rng = np.random.default_rng(seed)
    n = n_symbols * N_BARS
    X = rng.standard_normal((n, 4)).astype(np.float32)
    codes = np.repeat(np.arange(n_symbols), N_BARS)
    X[:, -1] = np.tile((np.arange(N_BARS) % 7) / 6.0, n_symbols)
    y = np.stack([(j + 1) * 0.01 * (0.6 * X[:, 0] + 0.5 * rng.standard_normal(n)) for j in range(2)], 1)
    for s in range(n_symbols):
        y[(s + 1) * N_BARS - 5 : (s + 1) * N_BARS] = np.nan  # labels running past the data
    symbols = [f"S{i}" for i in range(n_symbols)]
    ts = pd.date_range("2020-01-01", periods=N_BARS, freq="D", tz="UTC")
    keys = pd.DataFrame({"symbol": np.asarray(symbols)[codes], "timestamp": np.tile(ts, n_symbols)})
    names = ["f0", "f1", "f2", "calendar_dow"]
    t0 = keys["timestamp"].to_numpy(dtype="datetime64[ns]")
    return PanelData(
        keys=keys,
        X=X,
        feature_names=names,
        feature_modalities={**{f: "price" for f in names}, "calendar_dow": "calendar"},
        horizons=HORIZONS,
        y_ret=y,
        y_dir=np.where(np.isfinite(y), (y > 0) * 1.0, np.nan),
        y_vol=np.abs(y) + 0.005,
        t0=t0,
        t1=t0,
        symbol_codes=codes.astype(np.int64),
        symbols=symbols,
        known_future=["calendar_dow"],
    )


def split_rows(n_symbols: int = 3):
    """Per symbol: the first 100 bars train, the next 30 validation, the last 30 test."""
    base = np.arange(n_symbols)[:, None] * N_BARS
    return tuple((base + np.arange(a, b)).ravel() for a, b in ((0, 100), (100, 130), (130, 160)))


def _fit_and_compare(start_method: str, tmp_path, capfd) -> dict:
    panel = tiny_panel()
    tr, va, te = split_rows()
    one = BACKBONES["lstm"](HORIZONS, seed=3, **TINY).fit(panel.subset(tr), panel.subset(va))
    capfd.readouterr()
    two = BACKBONES["lstm"](HORIZONS, seed=3, devices=2, strategy="ddp", ddp_start_method=start_method, **TINY)
    two.fit(panel.subset(tr), panel.subset(va))
    out, err = capfd.readouterr()

    # the same optimiser steps at the same global batch, the same epochs and restored epoch
    assert two.n_steps_ == one.n_steps_ == TINY["max_epochs"] * TINY["limit_train_batches"]
    assert len(two.history_) == len(one.history_) == TINY["max_epochs"]
    assert two.best_epoch_ == one.best_epoch_ and two.capacity_ == one.capacity_
    np.testing.assert_allclose(
        [h["val_loss"] for h in two.history_], [h["val_loss"] for h in one.history_], rtol=LOSS_RTOL
    )
    np.testing.assert_allclose(  # train_loss: the mean over both ranks' shares
        [h["train_loss"] for h in two.history_], [h["train_loss"] for h in one.history_], rtol=LOSS_RTOL
    )
    a, b = one.predict(panel.subset(te)), two.predict(panel.subset(te))
    for field in ("expected_return", "q10", "q90", "prob_up", "vol_forecast"):
        x, y = getattr(a, field), getattr(b, field)
        assert np.abs(x - y).max() <= FORECAST_RTOL * np.abs(x).max(), field
    # rank 0 only, and quietly: no rank's banner, nothing written where the fit ran
    assert "GLOBAL_RANK" not in out + err and "MEMBER: 2/2" not in out + err
    assert out == ""
    assert not (tmp_path / "lightning_logs").exists() and not list(tmp_path.glob("*.ckpt"))
    return {"one": one, "two": two}


def test_ddp_two_forked_cpu_processes_match_one_process(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    fits = _fit_and_compare("fork", tmp_path, capfd)
    assert fits["two"].devices == 2 and torch.get_num_threads() >= 1


@pytest.mark.slow  # each spawned rank imports torch and Lightning first: 12-36 s measured on 2 shared cores
def test_ddp_two_spawned_cpu_processes_match_one_process(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    fits = _fit_and_compare("spawn", tmp_path, capfd)
    assert fits["two"].devices == 2 and fits["one"].devices == 1
    assert fits["two"].best_epoch_ == fits["one"].best_epoch_


def test_ddp_settings_are_checked():
    with pytest.raises(QuantmlInputError, match=r"batch_size=100 does not divide by backbone.devices=3"):
        BACKBONES["lstm"](HORIZONS, batch_size=100, devices=3, strategy="ddp")
    with pytest.raises(QuantmlInputError, match="backbone.strategy must be one of auto, ddp"):
        BACKBONES["gru"](HORIZONS, strategy="deepspeed")
    with pytest.raises(QuantmlInputError, match="backbone.devices must be >= 1"):
        BACKBONES["tcn"](HORIZONS, devices=0)
    with pytest.raises(QuantmlInputError, match="ddp_start_method must be spawn or fork"):
        BACKBONES["mlp"](HORIZONS, devices=2, ddp_start_method="forkserver")


def test_a_ddp_fit_resumes_from_rank_0s_checkpoint(tmp_path, monkeypatch, caplog):
    """Rank 0 writes the checkpoint; the resumed DDP fit ends where an uninterrupted one does
    (bit for bit here: no dropout, so no per-rank random stream is involved)."""
    from quantml.models.sequence import module as seq_module

    panel = tiny_panel()
    tr, va, te = split_rows()
    kw = dict(TINY, max_epochs=4, checkpoint_every_n_epochs=1, devices=2, strategy="ddp", ddp_start_method="fork")
    whole = BACKBONES["lstm"](HORIZONS, seed=2, **kw).fit(panel.subset(tr), panel.subset(va))
    job = tmp_path / "job"

    def die(self, trainer, module):
        if trainer.current_epoch == 1:
            raise RuntimeError("killed")

    with monkeypatch.context() as patch:  # the forked ranks inherit the patch
        patch.setattr(seq_module.RandomState, "on_train_epoch_end", die, raising=False)
        with pytest.raises(Exception, match="killed"):
            BACKBONES["lstm"](HORIZONS, seed=2, **kw).checkpoint_in(job, resume=True).fit(
                panel.subset(tr), panel.subset(va)
            )
    assert len(list(job.glob("fit-*/last.ckpt"))) == 1
    with caplog.at_level("INFO", logger="quantml.models.sequence.trainer"):
        resumed = BACKBONES["lstm"](HORIZONS, seed=2, **kw).checkpoint_in(job, resume=True)
        resumed.fit(panel.subset(tr), panel.subset(va))
    assert "resuming training from checkpoint" in caplog.text and "(after epoch 1)" in caplog.text
    assert resumed.history_ == whole.history_ and resumed.n_steps_ == whole.n_steps_
    np.testing.assert_array_equal(resumed.predict(panel.subset(te)).q90, whole.predict(panel.subset(te)).q90)
    assert not job.exists()


@pytest.mark.parametrize("chunk", [1, 5])
def test_ranks_split_each_global_batch_of_one_process(chunk):
    """Every rank draws the same global batches and yields its share: together they are one
    process's batches, in its order; a last batch too small to split is dropped everywhere."""

    def batches(world_size, rank, epoch, n=203):
        s = ChunkedBatchSampler(n, 20, chunk, torch.Generator().manual_seed(7), False, world_size, rank)
        s.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
        return list(s)

    single = batches(1, 0, epoch=2)
    r0, r1 = batches(2, 0, epoch=2), batches(2, 1, epoch=2)
    assert len(r0) == len(r1) == len(single)  # 203 = 10 x 20 + 3: the 3 rows still split
    assert [a + b for a, b in zip(r0, r1)] == single
    assert all(len(a) == len(b) == 10 for a, b in zip(r0[:-1], r1[:-1]))
    assert len(batches(4, 3, epoch=2)) == len(single) - 1  # 3 rows cannot feed 4 ranks
    # the order is a function of (seed, epoch): what a fit resumed at that epoch needs
    assert batches(1, 0, epoch=2) == single and batches(1, 0, epoch=3) != single


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-v"]))
