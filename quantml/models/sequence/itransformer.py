"""iTransformer (Liu et al., 2024): each variate's whole window is one token; attention runs
across variates (and a static symbol token) instead of across time."""

from __future__ import annotations

import torch
from torch import nn

from quantml.contracts import QuantmlInputError
from quantml.models.sequence.trainer import SequenceForecaster


class ITransformerEncoder(nn.Module):
    """[B, L, C] -> tokens [B, C, d] (Linear over the L steps of each variate) + a learned
    variate embedding, plus the static context as one more token -> Transformer -> [B, d]
    read from the static token and the mean of the variate tokens."""

    def __init__(self, n_inputs: int, lookback: int, d: int, n_heads: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Linear(lookback, d)
        self.variate = nn.Parameter(torch.randn(n_inputs, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, n_heads, 2 * d, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.ELU())

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.transpose(1, 2)) + self.variate  # [B, C, d]
        h = self.transformer(torch.cat([s.unsqueeze(1), tokens], dim=1))  # [B, 1 + C, d]
        return self.out(torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1))


class ITransformerForecaster(SequenceForecaster):
    """iTransformer over variate tokens with a static symbol token."""

    def __init__(self, horizons: list[str], seed: int = 0, n_heads: int = 4, n_layers: int = 2, **kwargs) -> None:
        super().__init__(horizons, seed, **kwargs)
        if self.hidden_size % int(n_heads):
            raise QuantmlInputError(f"backbone.hidden_size={self.hidden_size} must be a multiple of n_heads={n_heads}")
        self.n_heads, self.n_layers = int(n_heads), int(n_layers)

    def _build_encoder(self, n_inputs: int) -> nn.Module:
        return ITransformerEncoder(n_inputs, self.lookback, self.hidden_size, self.n_heads, self.n_layers, self.dropout)
