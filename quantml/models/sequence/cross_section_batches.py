"""Training batches made of whole cross-sections (``sharpe_surrogate=cross_section``).

A cross-sectional surrogate of the book weighs the symbols of one timestamp against each other, so
its batches must hold every training row of the timestamps they sample, and the previous bar of
each (its turnover). :class:`TimestampBatchSampler` shuffles blocks of ``block`` consecutive
timestamps and packs whole blocks into batches of about ``batch_size`` rows.
"""

from __future__ import annotations

import numpy as np
import torch

from quantml.models.sequence.windows import ChunkedBatchSampler


class TimestampBatchSampler(ChunkedBatchSampler):
    """Batches of dataset positions grouped by timestamp.

    ``t_codes`` [n]: the timestamp code of each dataset position (any integers; equal = one
    timestamp). Each epoch the timestamps are cut into blocks of ``block`` consecutive ones (at a
    random offset) and the blocks shuffled; a batch is ``max(1, round(batch_size / (rows per
    timestamp * block)))`` blocks. ``set_epoch(e)`` makes the order a function of the generator's
    seed and ``e`` (as :class:`~quantml.models.sequence.windows.ChunkedBatchSampler`); with
    ``world_size > 1`` each rank yields a contiguous share of every batch.
    """

    def __init__(
        self,
        t_codes: np.ndarray,
        batch_size: int,
        block: int,
        generator: torch.Generator,
        drop_last: bool,
        world_size: int = 1,
        rank: int | None = None,
    ) -> None:
        t_codes = np.asarray(t_codes)
        order = np.argsort(t_codes, kind="stable")
        _, starts = np.unique(t_codes[order], return_index=True)
        self.groups = np.split(order, starts[1:]) if len(order) else []
        self.block = max(2, int(block))  # the turnover needs each row's previous bar in the batch
        per_t = len(order) / max(1, len(self.groups))
        self.blocks_per_batch = max(1, int(round(batch_size / (per_t * self.block))))
        # the seed, epoch clock, drop_last and ranks as the parent keeps them (its n and chunk go unused)
        super().__init__(len(order), batch_size, self.block, generator, drop_last, world_size, rank)

    def _n_blocks(self) -> int:
        # an offset cut adds at most one block; len() counts the fewest, so every epoch yields len() batches
        return -(-len(self.groups) // self.block)

    def __len__(self) -> int:
        full, rest = divmod(self._n_blocks(), self.blocks_per_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        generator = self._epoch_generator()
        T = len(self.groups)
        offset = int(torch.randint(self.block, (1,), generator=generator))
        bounds = np.unique(np.r_[0, np.arange(offset, T, self.block), T])
        perm = torch.randperm(len(bounds) - 1, generator=generator).numpy()
        rank = self._rank()
        m = self.blocks_per_batch
        for b in range(len(self)):
            chosen = perm[b * m : (b + 1) * m]
            batch = np.concatenate([np.concatenate(self.groups[bounds[j] : bounds[j + 1]]) for j in chosen])
            if self.world_size > 1:
                batch = np.array_split(batch, self.world_size)[rank]
            yield batch.tolist()
