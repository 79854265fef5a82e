"""Temporal convolutional network: causal dilated residual convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantml.contracts import QuantmlInputError
from quantml.models.sequence.trainer import SequenceForecaster


class CausalConvBlock(nn.Module):
    """Two causal dilated convolutions (left padding only: step t sees steps <= t) + residual."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, d, L]
        h = self.drop(F.gelu(self.conv1(F.pad(x, (self.pad, 0)))))
        h = self.drop(F.gelu(self.conv2(F.pad(h, (self.pad, 0)))))
        return x + h


class TCNEncoder(nn.Module):
    """[B, L, C] -> 1x1 projection -> blocks with dilations 1, 2, 4, ... -> last step [B, d].

    Enough blocks are stacked for the receptive field to cover the whole look-back.
    """

    def __init__(self, n_inputs: int, lookback: int, d: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Conv1d(n_inputs, d, 1)
        blocks, receptive, dilation = [], 1, 1
        while receptive < lookback:
            blocks.append(CausalConvBlock(d, kernel_size, dilation, dropout))
            receptive += 2 * (kernel_size - 1) * dilation
            dilation *= 2
        self.blocks = nn.Sequential(*blocks) if blocks else nn.Identity()
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.proj(x.transpose(1, 2)))
        return self.norm(h[:, :, -1])


class TCNForecaster(SequenceForecaster):
    """Causal dilated TCN over the window (+ symbol embedding)."""

    def __init__(self, horizons: list[str], seed: int = 0, kernel_size: int = 3, **kwargs) -> None:
        super().__init__(horizons, seed, **kwargs)
        if int(kernel_size) < 2:
            raise QuantmlInputError(f"backbone.kernel_size must be >= 2, got {kernel_size}")
        self.kernel_size = int(kernel_size)

    def _build_encoder(self, n_inputs: int) -> nn.Module:
        return TCNEncoder(n_inputs, self.lookback, self.hidden_size, self.kernel_size, self.dropout)
