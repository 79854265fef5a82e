"""Lazy look-back windows over a :class:`PanelData`, with per-symbol normalisation.

Nothing ``[n, L, F]`` is ever built: a :class:`WindowDataset` holds the panel, the row
positions and a few small statistics, and gathers one batch ``[B, L, F]`` at a time from
index arrays. The window of row ``r`` is ``X[max(segment_start[r], r - L + 1) : r + 1]``
(it ends at ``r``: causal), left-padded with zeros and a ``mask`` of real steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from quantml.contracts import QuantmlInputError
from quantml.models.base import PanelData

_STD_FLOOR = 1e-8
_VOL_FLOOR = 1e-8
_CHUNK = 1 << 18  # rows per chunk when accumulating statistics (bounds transient memory)
UNSEEN = 0  # embedding / statistics index of a symbol not seen in training


class SymbolNormalizer:
    """Mean/std of every feature per symbol, fitted on training rows only.

    Index 0 of ``mean_``/``std_`` [S + 1, F] holds the global statistics (used for a symbol
    unseen at fit time), index ``1 + k`` the statistics of ``symbols_[k]``. Symbols are
    matched by name, so a predict panel may carry other symbols or other codes.
    """

    def __init__(self, clip: float = 10.0) -> None:
        if not clip > 0:
            raise QuantmlInputError(f"backbone.clip_features must be > 0, got {clip}; use e.g. 10")
        self.clip = float(clip)

    def fit(self, data: PanelData, rows: np.ndarray) -> SymbolNormalizer:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        codes = data.symbol_codes[rows]
        present = np.unique(codes)
        F = data.X.shape[1]
        s1 = np.zeros((len(present), F))
        s2 = np.zeros((len(present), F))
        cnt = np.zeros((len(present), F))
        for k, code in enumerate(present):
            sym_rows = rows[codes == code]
            for lo in range(0, len(sym_rows), _CHUNK):
                x = data.X[sym_rows[lo : lo + _CHUNK]].astype(np.float64)
                ok = np.isfinite(x)
                x = np.where(ok, x, 0.0)
                s1[k] += x.sum(0)
                s2[k] += (x * x).sum(0)
                cnt[k] += ok.sum(0)
        g_cnt = cnt.sum(0)
        g_mean = _safe_div(s1.sum(0), g_cnt, 0.0)
        g_std = _std(s2.sum(0), g_mean, g_cnt)
        mean = np.where(cnt > 0, _safe_div(s1, cnt, 0.0), g_mean)
        std = np.where(cnt > 1, _std(s2, mean, cnt), g_std)
        self.symbols_ = [str(data.symbols[c]) for c in present]
        self.mean_ = np.vstack([g_mean, mean]).astype(np.float32)
        self.std_ = np.vstack([g_std, std]).astype(np.float32)
        self.n_features_ = F
        return self

    def index_of(self, symbols) -> np.ndarray:
        """Statistics/embedding index of each symbol name (``UNSEEN`` = 0 when not fitted on)."""
        lookup = {s: i + 1 for i, s in enumerate(self.symbols_)}
        return np.array([lookup.get(str(s), UNSEEN) for s in symbols], dtype=np.int64)

    def transform(self, x: np.ndarray, sym: np.ndarray) -> np.ndarray:
        """``x`` [B, L, F] raw, ``sym`` [B] indices -> normalised, clipped, NaN imputed by 0 (the mean)."""
        out = (x - self.mean_[sym][:, None, :]) / self.std_[sym][:, None, :]
        np.clip(out, -self.clip, self.clip, out=out)
        out[~np.isfinite(out)] = 0.0
        return out


class TargetScaler:
    """Per-horizon scale of the return target and level of the volatility target (train rows).

    The network learns ``y_ret / ret_scale_`` and ``y_vol / vol_scale_``; per-symbol log
    ratios of both (``symbol_stats_`` [S + 1, 2], 0 for an unseen symbol) are static inputs.
    """

    def fit(self, data: PanelData, rows: np.ndarray, normalizer: SymbolNormalizer) -> TargetScaler:
        y_ret, y_vol = data.y_ret[rows], data.y_vol[rows]
        self.ret_scale_ = _finite_stat(y_ret, np.nanstd, floor=_STD_FLOOR)
        self.vol_scale_ = _finite_stat(np.where(y_vol > 0, y_vol, np.nan), np.nanmedian, floor=_VOL_FLOOR)
        sym = normalizer.index_of(data.symbols)[data.symbol_codes[rows]]
        stats = np.zeros((len(normalizer.symbols_) + 1, 2), dtype=np.float32)
        for idx in np.unique(sym):
            if idx == UNSEEN:
                continue
            sel = sym == idx
            r_std = _finite_stat(y_ret[sel, :1], np.nanstd, floor=_STD_FLOOR)[0]
            v_med = _finite_stat(np.where(y_vol[sel, :1] > 0, y_vol[sel, :1], np.nan), np.nanmedian, floor=_VOL_FLOOR)[
                0
            ]
            stats[idx] = (np.log(r_std / self.ret_scale_[0]), np.log(v_med / self.vol_scale_[0]))
        self.symbol_stats_ = stats
        return self


class WindowDataset(Dataset):
    """Batches of windows for ``rows`` of ``data``, gathered lazily (``__getitems__``).

    A batch is a dict of tensors: ``x`` [B, L, F] normalised features (0 at padding),
    ``mask`` [B, L] (True = a real step), ``sym`` [B] symbol index, ``static`` [B, 2]
    per-symbol target statistics, ``row`` [B] panel positions; the same windows as unique
    steps: ``xu`` [U, F] one row per distinct (panel row, symbol index) of the batch (padding
    = a zero row per symbol index), ``inv`` [B, L] positions in ``xu`` (``x == xu[inv]``),
    ``sym_u`` [U], and ``static_table`` [S + 1, 2]. Overlapping windows share their steps,
    which lets per-step blocks (the TFT's variable selection) run once per step, not per window.
    With ``targets``: ``y_ret``, ``y_dir``, ``y_logvol`` [B, H] scaled (NaN where unlabelled).

    ``symbol_dropout`` (training only): each window is shown as an unseen symbol with this
    probability, drawn from ``rng`` (deterministic for a seeded generator).

    ``extras``: ``{name: float array [n_panel_rows, k]}`` gathered per batch as ``batch[name]``
    [B, k] (float32, as given: a teacher's scaled forecasts, for instance). A subclass of
    :class:`~quantml.models.sequence.trainer.SequenceForecaster` supplies them through
    ``_batch_extras`` and reads them in ``_extra_loss``.
    """

    def __init__(
        self,
        data: PanelData,
        rows: np.ndarray,
        lookback: int,
        normalizer: SymbolNormalizer,
        scaler: TargetScaler,
        targets: bool = True,
        symbol_dropout: float = 0.0,
        rng: np.random.Generator | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        if data.X.shape[1] != normalizer.n_features_:
            raise QuantmlInputError(
                f"the panel has {data.X.shape[1]} features, the model was fitted on "
                f"{normalizer.n_features_}; build features with the same feature_set/ablation as at fit"
            )
        self.data = data
        self.rows = np.asarray(rows, dtype=np.int64)
        self.lookback = int(lookback)
        self.normalizer, self.scaler, self.targets = normalizer, scaler, targets
        self.symbol_dropout = float(symbol_dropout)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._sym_of_code = normalizer.index_of(data.symbols)
        self._n_sym = len(normalizer.symbols_) + 1
        self._offsets = np.arange(-self.lookback + 1, 1, dtype=np.int64)
        self.extras = {}
        for name, arr in (extras or {}).items():
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim != 2 or len(arr) != data.n_rows:
                raise ValueError(f"extras[{name!r}] has shape {arr.shape}, expected [{data.n_rows}, k]")
            self.extras[name] = arr

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def window_positions(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Panel positions [B, L] of the windows ending at rows ``r`` and their real-step mask."""
        pos = r[:, None] + self._offsets[None, :]
        mask = pos >= self.data.segment_start[r][:, None]
        return np.where(mask, pos, r[:, None]), mask

    def __getitems__(self, idx) -> dict:
        r = self.rows[np.asarray(idx, dtype=np.int64)]
        pos, mask = self.window_positions(r)
        sym = self._sym_of_code[self.data.symbol_codes[r]]
        static = self.scaler.symbol_stats_[sym]
        if self.symbol_dropout > 0:
            drop = self.rng.random(len(r)) < self.symbol_dropout
            sym = np.where(drop, UNSEEN, sym)
            static = np.where(drop[:, None], 0.0, static).astype(np.float32)
        # one entry per distinct (row, symbol index); padding -> a virtual row n (all zeros)
        n = self.data.n_rows
        key = np.where(mask, pos, n) * self._n_sym + sym[:, None]
        uniq, inv = np.unique(key, return_inverse=True)
        u_pos, u_sym = uniq // self._n_sym, uniq % self._n_sym
        real = u_pos < n
        xu = np.zeros((len(uniq), self.data.X.shape[1]), dtype=np.float32)
        xu[real] = self.normalizer.transform(self.data.X[u_pos[real]][:, None, :], u_sym[real])[:, 0]
        inv = inv.reshape(pos.shape)
        batch = {
            "x": torch.from_numpy(xu[inv]),
            "mask": torch.from_numpy(mask),
            "sym": torch.from_numpy(sym),
            "static": torch.from_numpy(np.ascontiguousarray(static, dtype=np.float32)),
            "row": torch.from_numpy(r),
            "xu": torch.from_numpy(xu),
            "inv": torch.from_numpy(inv.astype(np.int64)),
            "sym_u": torch.from_numpy(u_sym.astype(np.int64)),
            "static_table": torch.from_numpy(self.scaler.symbol_stats_),
        }
        if self.targets:
            s = self.scaler
            y_vol = self.data.y_vol[r]
            with np.errstate(divide="ignore", invalid="ignore"):
                logvol = np.log(np.where(y_vol > 0, y_vol, np.nan) / s.vol_scale_)
            batch["y_ret"] = torch.from_numpy((self.data.y_ret[r] / s.ret_scale_).astype(np.float32))
            batch["y_dir"] = torch.from_numpy(self.data.y_dir[r].astype(np.float32))
            batch["y_logvol"] = torch.from_numpy(logvol.astype(np.float32))
        for name, arr in self.extras.items():
            batch[name] = torch.from_numpy(np.ascontiguousarray(arr[r]))
        return batch


class ChunkedBatchSampler(Sampler):
    """Shuffled batches made of ``chunk`` consecutive positions each (``chunk=1``: plain
    shuffling). Neighbouring rows have overlapping windows, so a chunked batch has far fewer
    distinct steps (``xu``) than ``batch_size * lookback``. Chunk boundaries move by a random
    offset each epoch; ``generator`` makes the order repeatable.

    ``set_epoch(e)`` (Lightning calls it through :attr:`sampler` at every epoch start) makes the
    order a function of the generator's seed and ``e`` alone, so training resumed from a
    checkpoint at epoch ``e`` sees the batches an uninterrupted run would; before any
    ``set_epoch`` each pass draws on from ``generator``.

    ``world_size > 1`` (DDP): every rank draws the same global batches of ``batch_size`` and
    yields its own contiguous share (``batch_size / world_size`` rows; the process group's rank,
    else ``rank``), so the global batch, and the order, equal one process's. A last partial batch
    smaller than ``world_size`` is dropped so that every rank yields the same number of batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        chunk: int,
        generator: torch.Generator,
        drop_last: bool,
        world_size: int = 1,
        rank: int | None = None,
    ) -> None:
        self.n, self.batch_size, self.chunk = n, batch_size, max(1, min(int(chunk), batch_size))
        self.generator, self.drop_last = generator, drop_last
        self.world_size, self.rank = max(1, int(world_size)), rank
        self.epoch: int | None = None
        self.sampler = EpochClock(self)  # what Lightning's per-epoch ``set_epoch`` call reaches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # a torch.Generator does not cross torch.multiprocessing's shared-memory pickling (DDP spawn)
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        g = state.pop("generator")
        state["generator_state"] = (g.initial_seed(), g.get_state().numpy().copy())
        return state

    def __setstate__(self, state: dict) -> None:
        seed, rng_state = state.pop("generator_state")
        self.__dict__.update(state)
        self.generator = torch.Generator().manual_seed(seed)
        self.generator.set_state(torch.from_numpy(rng_state))

    def _n_global(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        if rest and not self.drop_last and rest >= self.world_size:
            return full + 1
        return full

    def __len__(self) -> int:
        return self._n_global()

    def _rank(self) -> int:
        if self.world_size == 1:
            return 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return int(torch.distributed.get_rank())
        return int(self.rank or 0)

    def _epoch_generator(self) -> torch.Generator:
        """The generator of this epoch's order: a function of the seed and ``set_epoch``'s epoch."""
        if self.epoch is None:
            return self.generator
        seed = np.random.SeedSequence([self.generator.initial_seed(), self.epoch]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def __iter__(self):
        # a generator: the order is drawn at the first batch, after Lightning's set_epoch
        generator = self._epoch_generator()
        if self.chunk == 1:
            order = torch.randperm(self.n, generator=generator).numpy()
        else:
            offset = int(torch.randint(self.chunk, (1,), generator=generator))
            bounds = np.unique(np.r_[0, np.arange(offset, self.n, self.chunk), self.n])
            perm = torch.randperm(len(bounds) - 1, generator=generator).numpy()
            lengths = np.diff(bounds)[perm]
            starts = bounds[:-1][perm]
            order = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
        rank = self._rank()
        for b in range(len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                batch = np.array_split(batch, self.world_size)[rank]
            yield batch.tolist()


class EpochClock:
    """``batch_sampler.sampler`` of a loader over a :class:`ChunkedBatchSampler`: Lightning calls
    ``set_epoch`` on it at each epoch start (``lightning.fabric.utilities.data._set_sampler_epoch``)."""

    def __init__(self, owner: ChunkedBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


def identity_collate(batch: dict) -> dict:
    """The dataset already returns whole batches (``__getitems__``)."""
    return batch


def _safe_div(a: np.ndarray, b: np.ndarray, fill: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), fill)


def _std(s2: np.ndarray, mean: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    var = _safe_div(s2, cnt, 0.0) - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    return np.where(std > _STD_FLOOR, std, 1.0)


def _finite_stat(y: np.ndarray, fn, floor: float) -> np.ndarray:
    """Column statistic over finite values, 1.0 for an empty column, floored."""
    y = np.where(np.isfinite(y), y, np.nan)
    out = np.ones(y.shape[1])
    for j in range(y.shape[1]):
        col = y[:, j]
        if np.isfinite(col).any():
            out[j] = max(float(fn(col)), floor)
    return out
