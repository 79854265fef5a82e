"""MLP over the flattened window: the simplest sequence backbone."""

from __future__ import annotations

import torch
from torch import nn

from quantml.models.sequence.trainer import SequenceForecaster


class MLPEncoder(nn.Module):
    """[B, L, C] -> flatten [B, L*C] -> ``n_layers`` x (Linear, ELU, Dropout) -> [B, d]."""

    def __init__(self, n_inputs: int, lookback: int, d: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        layers, width = [], n_inputs * lookback
        for _ in range(n_layers):
            layers += [nn.Linear(width, d), nn.ELU(), nn.Dropout(dropout)]
            width = d
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class MLPForecaster(SequenceForecaster):
    """Multi-layer perceptron on the whole look-back window (+ symbol embedding)."""

    def __init__(self, horizons: list[str], seed: int = 0, n_layers: int = 2, **kwargs) -> None:
        super().__init__(horizons, seed, **kwargs)
        self.n_layers = int(n_layers)

    def _build_encoder(self, n_inputs: int) -> nn.Module:
        return MLPEncoder(n_inputs, self.lookback, self.hidden_size, self.n_layers, self.dropout)
