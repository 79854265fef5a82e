"""TSMixer (Chen et al., 2023): alternating time-mixing and feature-mixing MLPs."""

from __future__ import annotations

import torch
from torch import nn

from quantml.models.sequence.trainer import SequenceForecaster


class MixerBlock(nn.Module):
    """Time mixing (an MLP across the L steps, shared over channels) then feature mixing
    (an MLP across channels, shared over steps), each residual with layer norm."""

    def __init__(self, lookback: int, d: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(d)
        self.time = nn.Sequential(nn.Linear(lookback, lookback), nn.ReLU(), nn.Dropout(dropout))
        self.norm_f = nn.LayerNorm(d)
        self.feat = nn.Sequential(
            nn.Linear(d, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d]
        x = x + self.time(self.norm_t(x).transpose(1, 2)).transpose(1, 2)
        return x + self.feat(self.norm_f(x))


class TSMixerEncoder(nn.Module):
    """[B, L, C] -> feature projection to d -> mixer blocks -> temporal projection L -> 1 -> [B, d].

    The time-mixing MLP sees the whole window (which ends at row r), so it stays causal.
    """

    def __init__(self, n_inputs: int, lookback: int, d: int, n_blocks: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(n_inputs, d)
        self.blocks = nn.Sequential(*[MixerBlock(lookback, d, ff, dropout) for _ in range(n_blocks)])
        self.temporal = nn.Linear(lookback, 1)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.proj(x) + s.unsqueeze(1))
        return self.norm(self.temporal(h.transpose(1, 2)).squeeze(-1))


class TSMixerForecaster(SequenceForecaster):
    """TSMixer with static (symbol) context added to every step."""

    def __init__(self, horizons: list[str], seed: int = 0, n_blocks: int = 2, ff_size: int = 64, **kwargs) -> None:
        super().__init__(horizons, seed, **kwargs)
        self.n_blocks, self.ff_size = int(n_blocks), int(ff_size)

    def _build_encoder(self, n_inputs: int) -> nn.Module:
        return TSMixerEncoder(n_inputs, self.lookback, self.hidden_size, self.n_blocks, self.ff_size, self.dropout)
