"""PatchTST (Nie et al., 2023): channel-independent patches through a Transformer encoder."""

from __future__ import annotations

import torch
from torch import nn

from quantml.contracts import QuantmlInputError
from quantml.models.sequence.trainer import SequenceForecaster


class PatchTSTEncoder(nn.Module):
    """[B, L, C] -> per channel: patches [P, patch_len] -> Linear -> + position -> Transformer
    (weights shared across channels) -> flatten per channel -> across channels -> [B, d].

    Each channel's series is a window ending at row r, so patches never see later rows.
    """

    def __init__(
        self,
        n_inputs: int,
        lookback: int,
        d: int,
        patch_len: int,
        stride: int,
        n_heads: int,
        n_layers: int,
        dropout: float,
        d_patch: int,
    ) -> None:
        super().__init__()
        self.patch_len, self.stride = patch_len, stride
        self.n_patches = (lookback - patch_len) // stride + 1
        # patches are aligned to end at the last step (the current row)
        self.start = lookback - ((self.n_patches - 1) * stride + patch_len)
        self.embed = nn.Linear(patch_len, d_patch)
        self.pos = nn.Parameter(torch.randn(self.n_patches, d_patch) * 0.02)
        layer = nn.TransformerEncoderLayer(d_patch, n_heads, 2 * d_patch, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.channel_head = nn.Linear(self.n_patches * d_patch, d_patch)
        self.out = nn.Sequential(nn.Linear(n_inputs * d_patch, d), nn.ELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        series = x[:, self.start :].transpose(1, 2).reshape(B * C, -1)
        patches = series.unfold(1, self.patch_len, self.stride)  # [B*C, P, patch_len]
        h = self.transformer(self.embed(patches) + self.pos)  # [B*C, P, d_patch]
        h = self.channel_head(h.flatten(1)).view(B, C, -1)  # [B, C, d_patch]
        return self.out(h.flatten(1))


class PatchTSTForecaster(SequenceForecaster):
    """PatchTST with a cross-channel read-out and a symbol embedding."""

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        patch_len: int = 8,
        stride: int = 4,
        n_heads: int = 4,
        n_layers: int = 2,
        d_patch: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(horizons, seed, **kwargs)
        if not 1 <= int(patch_len) <= self.lookback or int(stride) < 1:
            raise QuantmlInputError(
                f"backbone.patch_len={patch_len} / stride={stride} do not fit lookback={self.lookback}; "
                f"use 1 <= patch_len <= lookback and stride >= 1"
            )
        if int(d_patch) % int(n_heads):
            raise QuantmlInputError(f"backbone.d_patch={d_patch} must be a multiple of n_heads={n_heads}")
        self.patch_len, self.stride = int(patch_len), int(stride)
        self.n_heads, self.n_layers, self.d_patch = int(n_heads), int(n_layers), int(d_patch)

    def _build_encoder(self, n_inputs: int) -> nn.Module:
        return PatchTSTEncoder(
            n_inputs,
            self.lookback,
            self.hidden_size,
            self.patch_len,
            self.stride,
            self.n_heads,
            self.n_layers,
            self.dropout,
            self.d_patch,
        )
