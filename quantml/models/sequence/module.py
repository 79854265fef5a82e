"""The shared network scaffold and the LightningModule that trains every sequence backbone.

A backbone supplies an *encoder* ``(x [B, L, C], s [B, d]) -> [B, d]`` over the window
(``C = F + 1``: the features and the real-step mask) and the static context ``s`` built
from the symbol embedding and the per-symbol target statistics; :class:`SequenceNet` adds
the static encoder, a fusion layer and the multi-horizon head. The TFT has its own net
(same inputs and outputs) because its static context enters everywhere.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from quantml.models.sequence.heads import LossWeights, MultiHorizonHead, multi_horizon_loss

N_STATIC_REAL = 2  # per-symbol log ret-std ratio and log vol-level ratio (TargetScaler)
VALIDATION_NOISE_SEED = 7919  # + batch index: the validation batches' fixed diffusion noise


class StaticEncoder(nn.Module):
    """Learned symbol embedding (index ``UNSEEN`` = 0 for a symbol absent at fit; training
    windows are shown as unseen with probability ``symbol_dropout`` by the data set, so it
    learns the average symbol) + static reals -> static context [B, d]."""

    def __init__(self, n_symbols: int, symbol_dim: int, d: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_symbols + 1, symbol_dim)
        self.proj = nn.Sequential(nn.Linear(symbol_dim + N_STATIC_REAL, d), nn.ELU())

    def forward(self, sym: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([self.embedding(sym), static], dim=-1))


class SequenceNet(nn.Module):
    """Static encoder + window encoder + fusion + :class:`MultiHorizonHead`."""

    def __init__(
        self, encoder: nn.Module, n_symbols: int, d: int, n_horizons: int, symbol_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.static = StaticEncoder(n_symbols, symbol_dim, d)
        self.encoder = encoder
        self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.ELU(), nn.Dropout(dropout), nn.LayerNorm(d))
        self.head = MultiHorizonHead(d, n_horizons)
        self.n_horizons = n_horizons
        self.context_dim = d + symbol_dim  # ``context``: what a diffusion head conditions on

    def forward(self, batch: dict) -> dict:
        s = self.static(batch["sym"], batch["static"])
        x = torch.cat([batch["x"], batch["mask"].unsqueeze(-1).to(batch["x"].dtype)], dim=-1)
        h = self.fuse(torch.cat([self.encoder(x, s), s], dim=-1))
        out = self.head(h.unsqueeze(1).expand(-1, self.n_horizons, -1))
        # [B, d + symbol_dim]: the fused context and the symbol embedding (a diffusion head's condition)
        out["context"] = torch.cat([h, self.static.embedding(batch["sym"])], dim=-1)
        return out


class SequenceModule(pl.LightningModule):
    """Trains a net with :func:`multi_horizon_loss`; logs ``train_loss`` and ``val_loss``.

    ``val_loss`` leaves out the spread penalty: early stopping selects on forecast quality.
    A net with a diffusion head (``net.diffusion``, :mod:`quantml.models.sequence.diffusion`) adds
    ``weight *`` its denoising loss to both (on fixed noise per batch in ``val_loss``).
    ``extra_loss``: ``(out, batch) -> scalar tensor`` added to the training loss (a distillation or
    financial term; :meth:`SequenceForecaster._extra_loss`), or None. ``val_loss`` leaves it out too.
    """

    def __init__(self, net: nn.Module, weights: LossWeights, lr: float, weight_decay: float, extra_loss=None) -> None:
        super().__init__()
        self.net, self.weights, self.lr, self.weight_decay = net, weights, lr, weight_decay
        self.extra_loss = extra_loss

    def forward(self, batch: dict) -> dict:
        return self.net(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.net(batch)
        loss, _ = multi_horizon_loss(out, batch, self.weights, spread=True)
        loss = loss + self._diffusion_loss(out, batch)
        extra = self.extra_loss(out, batch) if self.extra_loss is not None else None
        if extra is not None:  # a hook may have nothing to add for this net (a fusion model without text)
            loss = loss + extra
        # DDP: the epoch mean over every rank's share (a no-op on one device)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["sym"]), sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.net(batch)
        loss, _ = multi_horizon_loss(out, batch, self.weights, spread=False)
        # the denoising loss on fixed noise per validation batch: early stopping compares epochs fairly
        gen = torch.Generator(device=batch["y_ret"].device).manual_seed(VALIDATION_NOISE_SEED + batch_idx)
        loss = loss + self._diffusion_loss(out, batch, gen)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["sym"]))

    def _diffusion_loss(self, out: dict, batch: dict, generator=None):
        """``weight * denoising loss`` of the net's diffusion head (``net.diffusion``), else 0."""
        head = getattr(self.net, "diffusion", None)
        if head is None:
            return 0.0
        return head.weight * head.loss(out["context"], batch["y_ret"], generator, head.frame(out))

    def configure_optimizers(self):
        # fused on CPU (32-bit there): one kernel over every parameter tensor instead of a dozen small ops
        # each; not under the GPU's bf16-mixed precision, whose gradient clipping refuses fused optimizers
        fused = True if all(p.device.type == "cpu" for p in self.net.parameters()) else None  # None: torch's default
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=fused)


class KeepBestState(pl.Callback):
    """Keeps an in-memory copy of the net's weights at the best ``val_loss`` (no files),
    and the per-epoch loss history for the loss-curve figure.

    Its state travels in Lightning checkpoints (``state_dict``), so a resumed fit restores the
    best weights and the history of the epochs before the interruption. ``export_path``: rank 0
    writes that state (and the step count) there when the fit ends, for the launching process
    of a DDP fit, whose own copy of this callback never trained.
    """

    def __init__(self, export_path: str | None = None) -> None:
        self.best_score = float("inf")
        self.best_state: dict | None = None
        self.best_epoch = -1
        self.history: list[dict] = []
        self.global_step = 0
        self.export_path = export_path

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: SequenceModule) -> None:
        if trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("val_loss")
        if val is None:
            return
        val = float(val)
        if val < self.best_score:
            self.best_score, self.best_epoch = val, trainer.current_epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.net.state_dict().items()})

    def on_train_epoch_end(self, trainer: pl.Trainer, module: SequenceModule) -> None:
        m = trainer.callback_metrics
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "train_loss": float(m["train_loss"]) if "train_loss" in m else float("nan"),
                "val_loss": float(m["val_loss"]) if "val_loss" in m else float("nan"),
            }
        )

    def on_fit_end(self, trainer: pl.Trainer, module: SequenceModule) -> None:
        self.global_step = int(trainer.global_step)
        if self.export_path is not None and trainer.global_rank == 0:
            torch.save(self.state_dict(), self.export_path)

    def state_dict(self) -> dict:
        return {
            "best_score": self.best_score,
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            "global_step": self.global_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_state = float(state["best_score"]), state["best_state"]
        self.best_epoch, self.history = int(state["best_epoch"]), list(state["history"])
        self.global_step = int(state.get("global_step", 0))


class RandomState(pl.Callback):
    """Saves the random streams training draws on (torch's, for dropout; the data set's numpy
    generator, for symbol dropout) in each checkpoint and restores them on resume, so a fit
    resumed from a checkpoint draws what an uninterrupted fit would have drawn.

    Under DDP each rank draws its symbol dropout from its own stream (``seed``, rank)."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            self.dataset.rng = np.random.default_rng([self.seed, trainer.global_rank])

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": self.dataset.rng.bit_generator.state}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.dataset.rng.bit_generator.state = state["numpy"]
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
