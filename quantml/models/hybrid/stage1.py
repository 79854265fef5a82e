"""Stage 1 of the hybrid: the cross-sectional encoder, fitted and applied per timestamp.

Trained on the training rows only: a baseline forecast of every horizon's return (MSE on returns
scaled per horizon, a missing label masked), early-stopped on the validation rows. Applied to any
timestamps, it gives per asset and timestamp (:class:`StageOutput`): the relationship embedding, the
attention to the market row, the mean attention to the asset's sector and the baseline forecast.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from quantml.contracts import QuantmlInputError
from quantml.models.base import PanelData
from quantml.models.hybrid.encoder import CrossSectionalNet
from quantml.models.hybrid.grid import Grid, gather, grid_of
from quantml.models.sequence.windows import SymbolNormalizer
from quantml.models.threads import torch_threads


@dataclass
class StageOutput:
    """Stage 1 on a grid: ``relation`` [T, N, r], ``market_attention`` [T, N], ``sector_attention`` [T, N]
    (0 without a sector map or same-sector peer), ``baseline`` [T, N, H] (return units), ``attention``
    [T, N, N+1] (each asset's attention row; column 0 = the market), all NaN where an asset is absent."""

    grid: Grid
    relation: np.ndarray
    market_attention: np.ndarray
    sector_attention: np.ndarray
    baseline: np.ndarray
    attention: np.ndarray


class CrossSectionalStage:
    """The fitted stage-1 model. ``assets_``: the training symbols (sorted); ``epochs_``: epochs trained
    to the restored best state; ``ret_scale_`` [H]: the return scale of the baseline target."""

    def __init__(
        self,
        n_horizons: int,
        seed: int = 0,
        *,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 1,
        relation_dim: int = 16,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 40,
        patience: int = 5,
        clip_features: float = 10.0,
        index_symbol: str | None = None,
        sectors: dict | None = None,
        num_threads: int | None = 1,
    ) -> None:
        if int(d_model) % int(n_heads):
            raise QuantmlInputError(
                f"backbone.d_model={d_model} must divide by backbone.n_heads={n_heads}; e.g. d_model=32, n_heads=2"
            )
        self.n_horizons, self.seed = int(n_horizons), int(seed)
        self.d_model, self.n_heads, self.n_layers = int(d_model), int(n_heads), int(n_layers)
        self.relation_dim, self.dropout = int(relation_dim), float(dropout)
        self.lr, self.weight_decay, self.batch_size = float(lr), float(weight_decay), int(batch_size)
        self.max_epochs, self.patience, self.clip_features = int(max_epochs), int(patience), float(clip_features)
        self.index_symbol = None if index_symbol is None else str(index_symbol)
        self.sectors = {str(k): str(v) for k, v in dict(sectors or {}).items()}
        self.num_threads = num_threads

    # ---- fit ------------------------------------------------------------------------------
    def fit(
        self,
        data: PanelData,
        rows: np.ndarray,
        valid_data: PanelData | None = None,
        valid_rows: np.ndarray | None = None,
        epochs: int | None = None,
    ) -> CrossSectionalStage:
        """Fit on ``rows`` (labelled rows of ``data``); early stopping on ``valid_rows`` unless ``epochs``
        (then exactly that many epochs, ``valid`` ignored)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.assets_ = sorted({str(data.symbols[c]) for c in np.unique(data.symbol_codes[rows])})
        if self.index_symbol is not None and self.index_symbol not in self.assets_:
            raise QuantmlInputError(
                f"backbone.index_symbol={self.index_symbol!r} is not a symbol of the training data "
                f"({self.assets_}); name one of them or set index_symbol=null (the equal-weight market row)"
            )
        self.normalizer_ = SymbolNormalizer(self.clip_features).fit(data, rows)
        y = data.y_ret[rows]
        scale = np.nanstd(np.where(np.isfinite(y), y, np.nan), axis=0)
        self.ret_scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        self.net_spec_ = dict(n_features=data.X.shape[1], n_assets=len(self.assets_), n_horizons=self.n_horizons)
        train = self._tensors(data, rows, labels=True)
        valid = None
        if epochs is None and valid_data is not None and valid_rows is not None and len(valid_rows):
            valid = self._tensors(valid_data, np.asarray(valid_rows, dtype=np.int64), labels=True)
        with self._threads(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self._build()
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed)
            best, best_loss, best_epoch, bad = None, np.inf, -1, 0
            n_epochs = int(epochs) if epochs is not None else self.max_epochs
            self.history_ = []
            for epoch in range(n_epochs):
                net.train()
                order = torch.randperm(len(train["x"]), generator=gen)
                losses = []
                for lo in range(0, len(order), self.batch_size):
                    idx = order[lo : lo + self.batch_size]
                    loss = _loss(net, {k: v[idx] for k, v in train.items()})
                    if loss is None:
                        continue
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    losses.append(float(loss.detach()))
                val = _eval_loss(net, valid) if valid is not None else np.nan
                self.history_.append(
                    {"epoch": epoch, "train_loss": float(np.mean(losses or [np.nan])), "val_loss": val}
                )
                if valid is None:
                    continue
                if val < best_loss - 1e-9:
                    best, best_loss, best_epoch, bad = copy.deepcopy(net.state_dict()), val, epoch, 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            if best is not None:
                net.load_state_dict(best)
            self.epochs_ = best_epoch + 1 if best is not None else n_epochs
        self.net_ = net.eval()
        return self

    # ---- apply ----------------------------------------------------------------------------
    def transform(self, data: PanelData, rows: np.ndarray) -> StageOutput:
        """Stage 1 at every timestamp of ``rows`` (the whole cross-section of each): see :class:`StageOutput`."""
        t = self._tensors(data, np.asarray(rows, dtype=np.int64), labels=False)
        grid = t.pop("grid")
        parts = {"relation": [], "baseline": [], "attention": []}
        with self._threads(), torch.inference_mode():
            for lo in range(0, len(t["x"]), 1024):
                out = self.net_(*(t[k][lo : lo + 1024] for k in ("x", "ids", "present", "market")))
                for k in parts:
                    parts[k].append(out[k].double().numpy())
        T, N, H = len(grid.times), len(grid.assets), self.n_horizons
        relation = np.concatenate(parts["relation"]) if T else np.zeros((0, N, self.relation_dim))
        baseline = np.concatenate(parts["baseline"]) if T else np.zeros((0, N, H))
        att_full = np.concatenate(parts["attention"]) if T else np.zeros((0, N + 1, N + 1))
        attention = att_full[:, 1:, :]  # each asset's row over [market, assets]
        present = grid.present
        absent = ~present
        baseline = baseline * self.ret_scale_[None, None, :]
        sector = self._sector_attention(grid, attention, present)
        market = attention[:, :, 0].copy()
        for arr in (relation, baseline, attention):
            arr[absent] = np.nan
        market[absent] = np.nan
        sector[absent] = np.nan
        return StageOutput(grid, relation, market, sector, baseline, attention)

    def asset_ids(self, assets: list[str]) -> np.ndarray:
        """Identity index of each asset (1..S for training assets, 0 for one unseen in training)."""
        lookup = {s: i + 1 for i, s in enumerate(self.assets_)}
        return np.array([lookup.get(str(s), 0) for s in assets], dtype=np.int64)

    # ---- helpers --------------------------------------------------------------------------
    def _assets_for(self, data: PanelData) -> list[str]:
        extra = sorted({str(s) for s in data.symbols} - set(self.assets_))
        return list(self.assets_) + extra

    def _tensors(self, data: PanelData, rows: np.ndarray, labels: bool) -> dict:
        """The grid over the timestamps of ``rows`` as tensors: ``x`` [T, N, F] normalised (0 where
        absent), ``ids`` [T, N], ``present`` [T, N], ``market`` [T, F]; with ``labels`` also ``y``
        [T, N, H] scaled returns of ``rows`` only (NaN elsewhere); without, the ``grid`` itself."""
        grid = grid_of(data, rows, self._assets_for(data))
        T, N = grid.pos.shape
        F = data.X.shape[1]
        present = grid.present
        x = np.zeros((T, N, F), dtype=np.float32)
        if present.any():
            r = grid.pos[present]
            sym = self.normalizer_.index_of(data.symbols)[data.symbol_codes[r]]
            x[present] = self.normalizer_.transform(data.X[r][:, None, :].astype(np.float32), sym)[:, 0]
        counts = present.sum(1, keepdims=True)
        market = x.sum(1) / np.maximum(counts, 1)
        if self.index_symbol is not None:
            k = grid.assets.index(self.index_symbol) if self.index_symbol in grid.assets else None
            if k is not None:
                market = np.where(present[:, k : k + 1], x[:, k], market)
        out = {
            "x": torch.from_numpy(x),
            "ids": torch.from_numpy(np.broadcast_to(self.asset_ids(grid.assets), (T, N)).copy()),
            "present": torch.from_numpy(present.copy()),
            "market": torch.from_numpy(market.astype(np.float32)),
        }
        if labels:
            keep = np.zeros(data.n_rows, dtype=bool)
            keep[rows] = True
            pos = np.where((grid.pos >= 0) & keep[np.maximum(grid.pos, 0)], grid.pos, -1)
            y = gather(data.y_ret, pos) / self.ret_scale_[None, None, :]
            out["y"] = torch.from_numpy(y.astype(np.float32))
            has = np.isfinite(y).any(axis=2).any(axis=1)  # timestamps with at least one label
            out = {k: v[torch.from_numpy(has)] for k, v in out.items()}
        else:
            out["grid"] = grid
        return out

    def _sector_attention(self, grid: Grid, attention: np.ndarray, present: np.ndarray) -> np.ndarray:
        """[T, N]: mean attention of each asset to the other present assets of its sector (0 when none)."""
        T, N = present.shape
        out = np.zeros((T, N))
        if not self.sectors:
            return out
        sector = [self.sectors.get(a) for a in grid.assets]
        for i in range(N):
            peers = [j for j in range(N) if j != i and sector[i] is not None and sector[j] == sector[i]]
            if not peers:
                continue
            w = attention[:, i, 1:][:, peers]
            ok = present[:, peers]
            out[:, i] = np.where(ok, w, 0.0).sum(1) / np.maximum(ok.sum(1), 1)
        return out

    def _build(self) -> CrossSectionalNet:
        s = self.net_spec_
        return CrossSectionalNet(
            s["n_features"],
            s["n_assets"],
            s["n_horizons"],
            self.d_model,
            self.n_heads,
            self.n_layers,
            self.relation_dim,
            self.dropout,
        )

    def _threads(self):
        return torch_threads(self.num_threads)

    # ---- pickling: weights, never the module object ----------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        net = state.pop("net_", None)
        if net is not None:
            state["net_state_"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return state

    def __setstate__(self, state: dict) -> None:
        net_state = state.pop("net_state_", None)
        self.__dict__.update(state)
        if net_state is not None:
            net = self._build()
            net.load_state_dict(net_state)
            self.net_ = net.eval()


def _loss(net: CrossSectionalNet, batch: dict):
    """Masked MSE of the baseline on the scaled returns, or None for a batch without a label."""
    out = net(batch["x"], batch["ids"], batch["present"], batch["market"])
    y = batch["y"]
    ok = torch.isfinite(y) & batch["present"][:, :, None]
    if not bool(ok.any()):
        return None
    diff = torch.where(ok, out["baseline"] - torch.nan_to_num(y), torch.zeros_like(y))
    return (diff**2).sum() / ok.sum()


def _eval_loss(net: CrossSectionalNet, data: dict) -> float:
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(data["x"]), 1024):
            batch = {k: v[lo : lo + 1024] for k, v in data.items()}
            out = net(batch["x"], batch["ids"], batch["present"], batch["market"])
            ok = torch.isfinite(batch["y"]) & batch["present"][:, :, None]
            diff = torch.where(ok, out["baseline"] - torch.nan_to_num(batch["y"]), torch.zeros_like(batch["y"]))
            total += float((diff**2).sum())
            count += int(ok.sum())
    return total / count if count else np.nan
