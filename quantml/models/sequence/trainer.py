"""The one training wrapper behind every sequence backbone: a :class:`Forecaster` on Lightning.

A subclass only says how to build its network (:meth:`SequenceForecaster._build_net`);
windowing, normalisation, target scaling, the loss, early stopping, best-state restore,
seeding, devices, prediction and pickling are shared here, so every feature set,
ablation, horizon and validation method works unchanged for every backbone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from quantml.contracts import QuantmlInputError
from quantml.models.base import Forecast, Forecaster, SampleSet
from quantml.models.heap import keep_freed_memory
from quantml.models.sequence.cross_section_batches import TimestampBatchSampler
from quantml.models.sequence.diffusion import DiffusionHead, parse_head
from quantml.models.sequence.diffusion_fit import fit_head_after
from quantml.models.sequence.financial_loss import (
    CROSS_SECTION_KEY,
    FinancialLoss,
    SumOfTerms,
    check_financial_settings,
)
from quantml.models.sequence.heads import LossWeights
from quantml.models.sequence.module import KeepBestState, RandomState, SequenceModule, SequenceNet
from quantml.models.sequence.windows import (
    ChunkedBatchSampler,
    SymbolNormalizer,
    TargetScaler,
    WindowDataset,
    identity_collate,
)
from quantml.models.threads import torch_threads

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")
STRATEGIES = ("auto", "ddp")
START_METHODS = ("spawn", "fork")
CHECKPOINT_FILE = "last.ckpt"  # the one checkpoint a fit keeps (overwritten every checkpoint_every_n_epochs)
_QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*number of training batches.*",
    ".*GPU available but not used.*",
    ".*LeafSpec.*",
    ".*have no `val_dataloader`.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*sync_dist=True.*",
    ".*is smaller than the logging interval.*",
    ".*Grad strides do not match bucket view strides.*",  # DDP: a performance note on small nets
)

log = logging.getLogger(__name__)


class SequenceForecaster(Forecaster):
    """Shared hyper-parameters (every ``backbone/*.yaml`` may set them).

    Parameters
    ----------
    lookback : window length ``L`` in bars (the window of row r ends at r).
    hidden_size, dropout, symbol_dim, symbol_dropout : network width, dropout, size of the
        learned symbol embedding and the probability a training row is shown as an unseen
        symbol (trains the embedding used for symbols absent at fit time).
    batch_size, lr, weight_decay, grad_clip : AdamW training.
    batch_chunk : training batches are shuffled chunks of this many consecutive rows (1 = plain
        shuffling). Neighbouring rows share most of their window, so the TFT's per-step blocks
        run on far fewer distinct steps: faster and lighter, at the cost of less varied batches.
    max_epochs, max_steps, limit_train_batches, limit_val_batches : Lightning budget
        (``None`` = no limit); early stopping on the validation loss after ``patience`` epochs.
    w_quantile, w_return, w_direction, w_vol, spread_penalty : loss weights (pinball, MSE of
        the expected return, direction BCE, log-vol MSE, batch-spread penalty).
    clip_features : normalised features are clipped to +-clip.
    num_threads : torch CPU threads during fit/predict (``None`` = min(torch default, cores)).
    accelerator : ``auto`` (GPU with bf16 autocast when CUDA is available, else CPU fp32),
        ``cpu`` or ``gpu``.
    devices, strategy : processes that train together. ``devices=1`` (default): one process.
        ``devices=N`` with ``strategy=ddp`` (``auto`` means ddp when ``devices > 1``): Lightning
        DDP over N processes (CPU: process group ``gloo``; GPU: ``nccl``), each on a
        ``batch_size / N`` share of the same global batch (``batch_size`` must divide by N); only
        rank 0 logs or writes; the fitted weights are rank 0's (identical on every rank).
    ddp_start_method : how the DDP ranks start: ``spawn`` (default: fresh interpreters, nothing
        inherited from this process's threads; each imports torch and Lightning, seconds to
        tens of seconds) or ``fork`` (starts at once; CPU only; it inherits the state of the
        job's other threads, e.g. the MLflow lease, at the moment of the fork).
    checkpoint_every_n_epochs : with a checkpoint folder (:meth:`checkpoint_in`), a Lightning
        checkpoint of the fit every this many epochs (0 = none); see :meth:`checkpoint_in`.
    head : the output head (``conf/head``): ``None``/``quantile`` (the learned P10/P50/P90 head) or a
        ``{name: diffusion, ...}`` mapping: a conditional diffusion head over the horizon returns whose
        samples give the quantiles, ``prob_up`` and the expected return (docs/diffusion.md; :meth:`sample`).
    mc_dropout : Monte Carlo dropout passes at predict (0 = off, bit-identical to no MC). With N > 0
        the quantile head's P10/P90 widen by the spread of N seeded passes with dropout on; a diffusion
        head draws its samples from the N passes instead (docs/diffusion.md).
    """

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        *,
        lookback: int = 32,
        hidden_size: int = 32,
        dropout: float = 0.1,
        symbol_dim: int = 8,
        symbol_dropout: float = 0.1,
        batch_size: int = 256,
        batch_chunk: int = 1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        grad_clip: float | None = 1.0,
        max_epochs: int = 20,
        max_steps: int | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        patience: int = 3,
        w_quantile: float = 1.0,
        w_return: float = 1.0,
        w_direction: float = 0.5,
        w_vol: float = 0.5,
        spread_penalty: float = 0.0,
        clip_features: float = 10.0,
        num_threads: int | None = None,
        accelerator: str = "auto",
        predict_batch_size: int = 2048,
        devices: int = 1,
        strategy: str = "auto",
        ddp_start_method: str = "spawn",
        checkpoint_every_n_epochs: int = 1,
        head: Mapping | str | None = None,
        mc_dropout: int = 0,
        w_sharpe: float = 0.0,
        sharpe_surrogate: str = "tanh",
        sharpe_kind: str = "sharpe",
        sharpe_scale: float = 1.0,
        sharpe_cost_bps: float | None = None,
    ) -> None:
        super().__init__(horizons, seed)
        for name, value in (
            ("lookback", lookback),
            ("hidden_size", hidden_size),
            ("batch_size", batch_size),
            ("batch_chunk", batch_chunk),
            ("max_epochs", max_epochs),
            ("symbol_dim", symbol_dim),
            ("predict_batch_size", predict_batch_size),
        ):
            if int(value) < 1:
                raise QuantmlInputError(f"backbone.{name} must be >= 1, got {value}; set a positive integer")
        for name, value in (("dropout", dropout), ("symbol_dropout", symbol_dropout)):
            if not 0 <= value < 1:
                raise QuantmlInputError(f"backbone.{name} must be in [0, 1), got {value}")
        for name, value in (
            ("w_quantile", w_quantile),
            ("w_return", w_return),
            ("w_direction", w_direction),
            ("w_vol", w_vol),
            ("spread_penalty", spread_penalty),
            ("weight_decay", weight_decay),
        ):
            if value < 0:
                raise QuantmlInputError(f"backbone.{name} must be >= 0, got {value}")
        if not lr > 0:
            raise QuantmlInputError(f"backbone.lr must be > 0, got {lr}; use e.g. 1e-3")
        if accelerator not in ("auto", "cpu", "gpu"):
            raise QuantmlInputError(f"backbone.accelerator must be auto, cpu or gpu, got {accelerator!r}")
        if int(devices) < 1:
            raise QuantmlInputError(f"backbone.devices must be >= 1, got {devices}; 1 = one process, 2+ = DDP")
        if strategy not in STRATEGIES:
            raise QuantmlInputError(
                f"backbone.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}; "
                "use strategy=ddp with devices=2 or more"
            )
        if ddp_start_method not in START_METHODS:
            raise QuantmlInputError(
                f"backbone.ddp_start_method must be spawn or fork, got {ddp_start_method!r}; spawn is the safe default"
            )
        if int(batch_size) % int(devices):
            raise QuantmlInputError(
                f"backbone.batch_size={batch_size} does not divide by backbone.devices={devices}: each process "
                f"trains on batch_size / devices rows of the global batch; set batch_size to a multiple of {devices}"
            )
        if int(checkpoint_every_n_epochs) < 0:
            raise QuantmlInputError(
                f"backbone.checkpoint_every_n_epochs must be >= 0, got {checkpoint_every_n_epochs}; 0 = no checkpoints"
            )
        self.lookback, self.hidden_size, self.dropout = int(lookback), int(hidden_size), float(dropout)
        self.symbol_dim, self.symbol_dropout = int(symbol_dim), float(symbol_dropout)
        self.batch_size, self.lr, self.weight_decay = int(batch_size), float(lr), float(weight_decay)
        self.batch_chunk = int(batch_chunk)
        self.grad_clip = grad_clip
        self.max_epochs, self.max_steps = int(max_epochs), max_steps
        self.limit_train_batches, self.limit_val_batches = limit_train_batches, limit_val_batches
        self.patience = int(patience)
        self.loss_weights = LossWeights(
            float(w_quantile), float(w_return), float(w_direction), float(w_vol), float(spread_penalty)
        )
        self.clip_features, self.num_threads = float(clip_features), num_threads
        self.accelerator, self.predict_batch_size = accelerator, int(predict_batch_size)
        self.devices, self.strategy, self.ddp_start_method = int(devices), str(strategy), str(ddp_start_method)
        self.checkpoint_every_n_epochs = int(checkpoint_every_n_epochs)
        if isinstance(mc_dropout, bool) or int(mc_dropout) < 0:
            raise QuantmlInputError(f"backbone.mc_dropout must be an integer >= 0 (0 = off), got {mc_dropout!r}")
        self.mc_dropout = int(mc_dropout)
        self.head_spec = parse_head(head)  # None: the quantile head; a DiffusionSpec: head=diffusion
        # the financial loss term (quantml.models.sequence.financial_loss; 0 = off: the loss of before)
        self.w_sharpe, self.sharpe_surrogate, self.sharpe_kind, self.sharpe_scale, self.sharpe_cost_bps = (
            check_financial_settings(w_sharpe, sharpe_surrogate, sharpe_kind, sharpe_scale, sharpe_cost_bps)
        )
        self.checkpoint_root: str | None = None  # set by checkpoint_in()
        self.resume_checkpoints = False

    def checkpoint_in(self, directory: str | os.PathLike | None, resume: bool = False) -> SequenceForecaster:
        """Checkpoint every later :meth:`fit` under ``directory`` (``None``: no checkpoints).

        Each fit gets its own folder, ``<directory>/fit-<hash>`` (a hash of its training and
        early-stopping rows and hyper-parameters, so the same fit of a rerun finds it again),
        holding ``last.ckpt``: Lightning's checkpoint (weights, optimiser, loop and callback
        state, random streams) every ``checkpoint_every_n_epochs`` epochs. The folder is removed
        when the fit finishes. ``resume=True``: a fit whose folder holds a readable ``last.ckpt``
        resumes from it (logged: ``resuming ... from checkpoint ...``); otherwise a left-over folder
        is removed and the fit starts over. Copies (:meth:`with_capacity`) keep this setting.
        Returns ``self``."""
        self.checkpoint_root = None if directory is None else str(directory)
        self.resume_checkpoints = bool(resume)
        return self

    # ---- what a backbone supplies -------------------------------------------------------
    def _build_encoder(self, n_inputs: int) -> torch.nn.Module:
        """Encoder ``(x [B, L, n_inputs], s [B, hidden]) -> [B, hidden]``."""
        raise NotImplementedError

    def _build_net(self, spec: dict) -> torch.nn.Module:
        """The whole net from ``spec`` (n_features, n_symbols, n_horizons, known_idx)."""
        return SequenceNet(
            self._build_encoder(spec["n_features"] + 1),
            spec["n_symbols"],
            self.hidden_size,
            spec["n_horizons"],
            self.symbol_dim,
            self.dropout,
        )

    # ---- Forecaster ---------------------------------------------------------------------
    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> SequenceForecaster:
        """Train with early stopping on ``valid`` (best state restored); ``capacity_`` is
        ``{"epochs": best epoch + 1}``. With a fixed capacity (:meth:`with_capacity`) it trains
        ``capacity["epochs"]`` epochs (``max_steps`` still caps it) and ignores ``valid``."""
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        data = train.data
        self._check_panel(data)
        rows = train.rows[np.isfinite(data.y_ret[train.rows]).any(axis=1)]
        if len(rows) == 0:
            raise QuantmlInputError(
                "the training fold has no labelled rows; use a longer data range or a shorter horizon"
            )
        fixed = getattr(self, "fixed_capacity", None)
        max_epochs = int(fixed.get("epochs", self.max_epochs)) if fixed is not None else self.max_epochs
        valid_rows = None
        if fixed is None and valid is not None and len(valid):  # a fixed capacity: no early stopping
            valid_rows = valid.rows[np.isfinite(valid.data.y_ret[valid.rows]).any(axis=1)]
            valid_rows = valid_rows if len(valid_rows) else None

        with self._torch_threads(), _quiet_lightning(), keep_freed_memory():
            pl.seed_everything(self.seed, workers=True, verbose=False)
            self.normalizer_ = SymbolNormalizer(self.clip_features).fit(data, rows)
            self.scaler_ = TargetScaler().fit(data, rows, self.normalizer_)
            self.feature_names_ = list(data.feature_names)
            known = [data.feature_names.index(f) for f in data.known_future if f in data.feature_names]
            self.net_spec_ = {
                "n_features": data.X.shape[1],
                "n_symbols": len(self.normalizer_.symbols_),
                "n_horizons": len(self.horizons),
                "known_idx": known,
            }
            torch.manual_seed(self.seed)
            net = self._build_net(self.net_spec_)
            if not self._head_after():  # head.fit=after: the head is built once the backbone is trained
                net = self._attach_head(net)
            module = SequenceModule(net, self.loss_weights, self.lr, self.weight_decay, self._extra_loss_fn())

            train_ds = WindowDataset(
                data,
                np.sort(rows),
                self.lookback,
                self.normalizer_,
                self.scaler_,
                symbol_dropout=self.symbol_dropout,
                rng=np.random.default_rng(self.seed),
                extras={**self._batch_extras(data, self.scaler_), **self._cross_section_extras(data)},
            )
            sampler = (TimestampBatchSampler if self._cross_section_batches() else ChunkedBatchSampler)(
                # whole timestamps (cross_section): each dataset position's timestamp code; else the count
                train_ds.extras[CROSS_SECTION_KEY][train_ds.rows, 0] if self._cross_section_batches() else len(rows),
                self.batch_size,  # the global batch: under DDP each rank yields its share of it
                self.batch_chunk,  # cross_section: consecutive timestamps per block (at least 2)
                torch.Generator().manual_seed(self.seed),
                drop_last=len(rows) >= 2 * self.batch_size,
                world_size=self.devices,
            )
            train_dl = DataLoader(train_ds, batch_sampler=sampler, collate_fn=identity_collate, num_workers=0)
            keeper = KeepBestState()
            callbacks = [keeper, RandomState(train_ds, self.seed)]
            val_dl = None
            if valid_rows is not None:
                val_ds = WindowDataset(valid.data, valid_rows, self.lookback, self.normalizer_, self.scaler_)
                val_dl = DataLoader(
                    val_ds,
                    batch_size=self.predict_batch_size,
                    shuffle=False,
                    collate_fn=identity_collate,
                    num_workers=0,
                )
                callbacks.append(EarlyStopping(monitor="val_loss", patience=self.patience, mode="min"))
            gpu = self.accelerator == "gpu" or (self.accelerator == "auto" and torch.cuda.is_available())
            ckpt_dir = self._checkpoint_dir(rows, valid_rows, max_epochs)
            resume_from = self._resume_point(ckpt_dir)
            if ckpt_dir is not None:
                callbacks.append(
                    ModelCheckpoint(
                        dirpath=str(ckpt_dir),
                        filename=Path(CHECKPOINT_FILE).stem,
                        monitor=None,
                        save_top_k=1,
                        every_n_epochs=self.checkpoint_every_n_epochs,
                        save_on_train_epoch_end=True,
                        enable_version_counter=False,
                    )
                )
            distributed = self.devices > 1 or self.strategy == "ddp"
            with tempfile.TemporaryDirectory(prefix="quantml-seq-") as root:
                if distributed:  # the spawned ranks' copy of the keeper trained, not this one
                    keeper.export_path = os.path.join(root, "keeper.pt")
                trainer = pl.Trainer(
                    accelerator="gpu" if gpu else "cpu",
                    devices=self.devices,
                    strategy=self._lightning_strategy(gpu) if distributed else "auto",
                    use_distributed_sampler=False,  # ChunkedBatchSampler shards the global batch itself
                    precision="bf16-mixed" if gpu else "32-true",
                    max_epochs=max_epochs,
                    max_steps=-1 if self.max_steps is None else int(self.max_steps),
                    limit_train_batches=1.0 if self.limit_train_batches is None else self.limit_train_batches,
                    limit_val_batches=1.0 if self.limit_val_batches is None else self.limit_val_batches,
                    gradient_clip_val=self.grad_clip,
                    logger=False,
                    enable_checkpointing=ckpt_dir is not None,
                    enable_progress_bar=_show_progress(),
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    callbacks=callbacks,
                    default_root_dir=root,
                    deterministic=False,
                )
                # weights_only: a checkpoint holds tensors and plain values, never code to unpickle
                trainer.fit(module, train_dl, val_dl, ckpt_path=resume_from, weights_only=True)
                if distributed:
                    keeper.load_state_dict(torch.load(keeper.export_path, map_location="cpu", weights_only=True))
            if ckpt_dir is not None:  # the fit finished: its checkpoints go
                _remove_checkpoints(ckpt_dir)
            net = module.net.cpu().float()
            if keeper.best_state is not None:
                net.load_state_dict(keeper.best_state)
            net.eval()
            self.net_ = net
            self.history_ = keeper.history
            self.n_steps_ = int(keeper.global_step)
            self.best_epoch_ = keeper.best_epoch
            # epochs to the restored best state; without validation, every epoch that ran
            epochs = keeper.best_epoch + 1 if keeper.best_state is not None else len(keeper.history)
            self.capacity_ = {"epochs": max(1, int(epochs))}
            if self._head_after():
                self._fit_head_after(data, rows, valid.data if valid_rows is not None else None, valid_rows, fixed)
            self._after_fit(
                valid.data if valid_rows is not None else data, valid_rows if valid_rows is not None else rows
            )
        return self

    def predict(self, data: SampleSet) -> Forecast:
        self._check_fitted()
        H = len(self.horizons)
        if len(data) == 0:
            empty = np.zeros((0, H))
            return Forecast(self.horizons, empty, empty, empty, empty, empty, empty)
        self._check_panel(data.data)
        out = self._run(data.data, data.rows)
        s = self.scaler_
        spec = getattr(self, "head_spec", None)
        prob_up = 1.0 / (1.0 + np.exp(-out["logit"]))
        if spec is not None:  # head=diffusion: quantiles, P(up) (and the mean) from the samples
            draws = self._draw(data.data, data.rows).astype(np.float64)  # [n, S, H] scaled
            out["q10"], out["q50"], out["q90"] = np.quantile(draws, [0.1, 0.5, 0.9], axis=1)
            prob_up = ((draws > 0).sum(axis=1) + 0.5) / (draws.shape[1] + 1.0)  # never exactly 0 or 1
            if spec.point == "samples":
                out["mean"] = draws.mean(axis=1)
        elif getattr(self, "mc_dropout", 0) > 0:
            out = self._mc_widen(data.data, data.rows, out)
        return Forecast(
            self.horizons,
            expected_return=out["mean"] * s.ret_scale_,
            q10=out["q10"] * s.ret_scale_,
            q50=out["q50"] * s.ret_scale_,
            q90=out["q90"] * s.ret_scale_,
            prob_up=prob_up,
            vol_forecast=out["vol"] * s.vol_scale_,
        )

    def sample(self, data: SampleSet) -> np.ndarray:
        """``head=diffusion``: the head's draws for every row of ``data``, float64 [n, S, H] in return
        units (S = ``head.n_samples``, or ``mc_dropout * (n_samples // mc_dropout)`` with MC dropout).
        Seeded: the same fitted model and rows give bit-identical draws."""
        self._check_fitted()
        if getattr(self, "head_spec", None) is None:
            raise QuantmlInputError(f"{self._name()} has the quantile head: sample() needs head=diffusion")
        self._check_panel(data.data)
        return self._draw(data.data, data.rows).astype(np.float64) * self.scaler_.ret_scale_

    def use_head(self, head: Mapping | str | None) -> SequenceForecaster:
        """Set the output head (``head=`` config: quantile or diffusion) before :meth:`fit`; returns ``self``."""
        self.head_spec = parse_head(head)
        return self

    def figures(self) -> dict:
        if not getattr(self, "history_", None):
            return {}
        import matplotlib.pyplot as plt

        hist = pd.DataFrame(self.history_)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(hist["epoch"], hist["train_loss"], marker="o", label="train")
        if hist["val_loss"].notna().any():
            ax.plot(hist["epoch"], hist["val_loss"], marker="o", label="validation")
            ax.axvline(self.best_epoch_, color="grey", ls="--", lw=1, label="restored")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(f"{type(self).__name__}: training curve")
        ax.legend()
        fig.tight_layout()
        return {f"{self._figure_prefix()}_loss_curve.png": fig}

    # ---- helpers ------------------------------------------------------------------------
    def _lightning_strategy(self, gpu: bool):
        """DDP over ``devices`` processes started by ``ddp_start_method`` (Lightning's plain
        ``strategy="ddp"`` re-runs the script for each rank, which cannot work under Hydra or pytest)."""
        return QuietDDPStrategy(
            num_threads=self.num_threads,
            process_group_backend="nccl" if gpu else "gloo",
            start_method=self.ddp_start_method,
        )

    def _checkpoint_dir(self, rows: np.ndarray, valid_rows: np.ndarray | None, max_epochs: int) -> Path | None:
        """This fit's checkpoint folder (:meth:`checkpoint_in`), or None without checkpoints."""
        root = getattr(self, "checkpoint_root", None)
        if root is None or self.checkpoint_every_n_epochs < 1:
            return None
        skip = {"checkpoint_root", "resume_checkpoints", "num_threads", "predict_batch_size"}
        params = sorted((k, repr(v)) for k, v in self.__dict__.items() if not k.endswith("_") and k not in skip)
        digest = hashlib.sha256(repr((type(self).__name__, params, max_epochs)).encode())
        digest.update(np.sort(np.asarray(rows, dtype=np.int64)).tobytes())
        digest.update(b"|" + (b"-" if valid_rows is None else np.asarray(valid_rows, dtype=np.int64).tobytes()))
        return Path(root) / f"fit-{digest.hexdigest()[:16]}"

    def _resume_point(self, ckpt_dir: Path | None) -> str | None:
        """The checkpoint to resume from (``resume`` and a readable one), else None; a left-over
        folder that is not resumed from is removed, so the fit starts over."""
        if ckpt_dir is None:
            return None
        last = ckpt_dir / CHECKPOINT_FILE
        if getattr(self, "resume_checkpoints", False) and last.is_file():
            try:
                epoch = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
            except Exception as exc:  # noqa: BLE001 - e.g. cut short by the kill that interrupted the fit
                log.warning("%s: checkpoint %s is unreadable (%s): training starts over", self._name(), last, exc)
            else:
                log.info("%s: resuming training from checkpoint %s (after epoch %d)", self._name(), last, epoch + 1)
                return str(last)
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None

    def _name(self) -> str:
        return type(self).__name__

    def _figure_prefix(self) -> str:
        return type(self).__name__.replace("Forecaster", "").lower()

    def _batch_extras(self, data, scaler) -> dict[str, np.ndarray]:
        """Hook: ``{name: float array [data.n_rows, k]}`` every training batch carries as ``batch[name]``
        (a teacher's forecasts in scaled units, ``/ scaler.ret_scale_``); none by default."""
        return {}

    def _extra_loss(self, out: dict, batch: dict):
        """Hook: a scalar tensor added to the training loss (never to ``val_loss``), or None.
        ``out``: the net's outputs ([B, H] each, scaled units); ``batch``: the training batch.

        The default is the financial term (``w_sharpe > 0``, :class:`FinancialLoss`), else None. A
        subclass that overrides it returns only its own term: :meth:`_extra_loss_fn` adds the
        financial term to it (do not call ``super()._extra_loss``)."""
        term = self._financial_loss()
        return None if term is None else term(out, batch)

    def _financial_loss(self) -> FinancialLoss | None:
        """The configured financial term (priced with the fitted target scaler), or None when off."""
        if not getattr(self, "w_sharpe", 0.0) > 0:  # a model pickled before the term existed: off
            return None
        scaler = getattr(self, "scaler_", None)
        return FinancialLoss(
            self.w_sharpe,
            self.sharpe_surrogate,
            self.sharpe_kind,
            self.sharpe_scale,
            self.sharpe_cost_bps,
            ret_scale=None if scaler is None else scaler.ret_scale_,
        )

    def _extra_loss_fn(self):
        """The module's extra-loss callable: a subclass's :meth:`_extra_loss` plus the financial term
        (``w_sharpe > 0``), either alone, or None when there is neither (the loss of before, to the bit)."""
        terms = []
        if type(self)._extra_loss is not SequenceForecaster._extra_loss:
            terms.append(self._extra_loss)
        financial = self._financial_loss()
        if financial is not None:
            terms.append(financial)
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else SumOfTerms(terms)

    def _cross_section_batches(self) -> bool:
        """True when the financial term trades per-timestamp cross-sections (batches of whole timestamps)."""
        return getattr(self, "w_sharpe", 0.0) > 0 and getattr(self, "sharpe_surrogate", "tanh") == "cross_section"

    def _cross_section_extras(self, data) -> dict[str, np.ndarray]:
        """``{t_id: [n_rows, 1]}``, each panel row's timestamp code, for ``sharpe_surrogate=cross_section``."""
        if not self._cross_section_batches():
            return {}
        return {CROSS_SECTION_KEY: np.unique(data.t0, return_inverse=True)[1].reshape(-1, 1).astype(np.float32)}

    def _attach_head(self, net: torch.nn.Module) -> torch.nn.Module:
        """Give ``net`` its diffusion head (``net.diffusion``) when ``head=diffusion``; the net must expose
        ``context_dim`` and a ``context`` output [B, context_dim]. The quantile head: ``net`` unchanged."""
        spec = getattr(self, "head_spec", None)
        if spec is None:
            return net
        d_context = getattr(net, "context_dim", None)
        if d_context is None:
            raise QuantmlInputError(
                f"{self._name()}'s network exposes no context embedding (context_dim) for head=diffusion; "
                "use head=quantile with this backbone"
            )
        net.diffusion = DiffusionHead(int(d_context), len(self.horizons), spec, symbol_dim=self.symbol_dim)
        return net

    def _head_after(self) -> bool:
        spec = getattr(self, "head_spec", None)
        return spec is not None and getattr(spec, "fit", "joint") == "after"

    def _fit_head_after(self, data, rows: np.ndarray, valid_data, valid_rows, fixed: dict | None) -> None:
        """``head.fit=after``: attach the diffusion head to the trained ``net_`` and fit it alone on the
        frozen net's contexts (:func:`~quantml.models.sequence.diffusion_fit.fit_head_after`); with a
        fixed capacity, for its ``head_epochs``. ``capacity_["head_epochs"]``: the epochs to its best state."""
        torch.manual_seed(self.seed)
        head = self._attach_head(self.net_).diffusion
        epochs = int(fixed["head_epochs"]) if fixed is not None and "head_epochs" in fixed else None
        train = self._head_inputs(data, rows)
        valid = self._head_inputs(valid_data, valid_rows) if valid_rows is not None and epochs is None else None
        with self._torch_threads():
            history = fit_head_after(head, train, valid, self.seed, epochs)
        self.head_history_ = history
        self.capacity_["head_epochs"] = int(np.argmin(history)) + 1 if history else int(epochs or head.spec.fit_epochs)

    def _head_inputs(self, data, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The frozen net's ``context`` [n, d] (and the frame's ``loc``/``scale`` [n, H]) and the scaled
        returns ``y`` [n, H] of ``rows``: what :func:`fit_head_after` trains the head on."""
        head = self.net_.diffusion
        parts: dict[str, list] = {"context": [], "loc": [], "scale": []}

        def collect(out, batch):
            parts["context"].append(out["context"].float().numpy())
            frame = head.frame(out)
            if frame is not None:
                parts["loc"].append(frame[0].numpy())
                parts["scale"].append(frame[1].numpy())

        self._run(data, rows, collect=collect)
        inputs = {k: np.concatenate(v) for k, v in parts.items() if v}
        inputs["y"] = (data.y_ret[rows] / self.scaler_.ret_scale_).astype(np.float32)
        return inputs

    def _draw(self, data, rows: np.ndarray) -> np.ndarray:
        """The diffusion head's draws for ``rows``, float32 [n, S, H] in scaled units. One generator seeded
        with ``seed`` per call; with ``mc_dropout = N``, N passes with dropout on (torch's stream seeded with
        ``seed`` too), ``n_samples // N`` (at least 1) draws from each pass's context, pooled."""
        spec = self.head_spec
        gen = torch.Generator().manual_seed(self.seed)
        n_pass = int(getattr(self, "mc_dropout", 0))
        per = spec.n_samples if n_pass == 0 else max(1, spec.n_samples // n_pass)
        passes = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for _ in range(max(1, n_pass)):
                parts = []

                def collect(out, batch, parts=parts):
                    head = self.net_.diffusion
                    parts.append(head.sample(out["context"], per, gen, head.frame(out)).numpy())

                self._run(data, rows, collect=collect, stochastic=n_pass > 0)
                passes.append(np.concatenate(parts) if parts else np.zeros((0, per, len(self.horizons)), np.float32))
        return np.concatenate(passes, axis=1)

    def _mc_widen(self, data, rows: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Monte Carlo dropout on the quantile head: ``mc_dropout`` passes with dropout on (seeded); ``s`` =
        root mean square deviation of the passes' P50 from the deterministic P50, and each side of the
        deterministic interval becomes ``sqrt(half_width^2 + (z s)^2)`` (z = 1.2816, the P90 of a normal:
        the head's spread and the model's spread added as variances). The centre and every other output stay
        the deterministic pass's, so intervals only widen and the point forecasts do not move."""
        z = 1.2815515655446004
        dev2 = np.zeros_like(out["q50"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for _ in range(self.mc_dropout):
                dev2 += (self._run(data, rows, stochastic=True)["q50"] - out["q50"]) ** 2
        spread = z * np.sqrt(dev2 / self.mc_dropout)
        widened = dict(out)
        widened["q10"] = out["q50"] - np.sqrt((out["q50"] - out["q10"]) ** 2 + spread**2)
        widened["q90"] = out["q50"] + np.sqrt((out["q90"] - out["q50"]) ** 2 + spread**2)
        return widened

    def _after_fit(self, data, rows: np.ndarray) -> None:
        """Hook for interpretation summaries (TFT) on the validation (else training) rows."""

    def _run(self, data, rows: np.ndarray, collect=None, stochastic: bool = False) -> dict[str, np.ndarray]:
        """Net outputs (scaled units) for ``rows`` in order, [n, H] numpy arrays each; ``stochastic``: with
        the net in training mode (dropout on: a Monte Carlo dropout pass; the nets hold no batch norm)."""
        ds = WindowDataset(data, rows, self.lookback, self.normalizer_, self.scaler_, targets=False)
        dl = DataLoader(ds, batch_size=self.predict_batch_size, shuffle=False, collate_fn=identity_collate)
        keys = ("mean", "q10", "q50", "q90", "logit", "vol")
        parts = {k: [] for k in keys}
        self.net_.train(stochastic)
        try:
            with self._torch_threads(), torch.inference_mode(), keep_freed_memory():
                for batch in dl:
                    out = self.net_(batch)
                    for k in keys:
                        parts[k].append(out[k].double().numpy())
                    if collect is not None:
                        collect(out, batch)
        finally:
            self.net_.eval()
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise QuantmlInputError(f"{type(self).__name__} is not fitted: call fit(train, valid) first")

    def _check_panel(self, data) -> None:
        if len(data.horizons) != len(self.horizons):
            raise QuantmlInputError(
                f"the panel has horizons {data.horizons}, the backbone was built for {self.horizons}; "
                f"build the labels with the same horizon config"
            )
        if hasattr(self, "feature_names_") and list(data.feature_names) != self.feature_names_:
            raise QuantmlInputError(
                f"the panel's features differ from the {len(self.feature_names_)} the model was fitted on "
                f"(first fitted: {self.feature_names_[:3]}); use the same feature_set and ablation"
            )

    def _torch_threads(self):
        return torch_threads(self.num_threads)

    # ---- pickling: weights + hyper-parameters, never the Lightning objects ------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("checkpoint_root", None)  # where this host checkpointed its fits: not part of the model
        state.pop("resume_checkpoints", None)
        net = state.pop("net_", None)
        if net is not None:
            state["net_state_"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return state

    def __setstate__(self, state: dict) -> None:
        net_state = state.pop("net_state_", None)
        self.__dict__.update(state)
        if net_state is not None:
            net = self._attach_head(self._build_net(self.net_spec_))
            net.load_state_dict(net_state)
            self.net_ = net.eval()


def _show_progress() -> bool:
    """A progress bar only on an interactive terminal and never inside a Hydra multirun."""
    if not sys.stdout.isatty():
        return False
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode != RunMode.MULTIRUN
    except Exception:  # Hydra not running
        return True


@contextmanager
def _quiet_lightning():
    """Silence Lightning's device banners and data-loader advice during fit."""
    loggers = [logging.getLogger(n) for n in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            _filter_warnings()
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _filter_warnings() -> None:
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def _quiet_process() -> None:
    """In a DDP rank (for its whole life): Lightning's loggers at WARNING, its advice filtered."""
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _filter_warnings()


def _remove_checkpoints(ckpt_dir: Path) -> None:
    """Remove a finished fit's checkpoint folder, and its parent when nothing else is left there."""
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    try:
        ckpt_dir.parent.rmdir()  # only when empty: another fit of the job may still checkpoint there
    except OSError:
        pass


class QuietDDPStrategy(DDPStrategy):
    """Lightning DDP whose spawned ranks run on ``num_threads`` torch threads with Lightning's
    banners silenced; every rank but 0 prints and logs nothing."""

    def __init__(self, num_threads: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.quantml_threads = num_threads

    def __setstate__(self, state: dict) -> None:  # a spawned rank unpickles this first: quiet from the start
        super().__setstate__(state)
        _quiet_process()

    def setup_environment(self) -> None:  # runs in each rank, before the process group
        _quiet_process()
        if self.global_rank > 0:
            logging.disable(logging.CRITICAL)
            warnings.simplefilter("ignore")
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the rank
        # a forked rank never runs more than one torch thread unless told (OpenMP after fork)
        threads = self.quantml_threads or (1 if self._start_method == "fork" else None)
        if threads:
            torch.set_num_threads(int(threads))
        super().setup_environment()
