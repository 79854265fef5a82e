"""LSTM and GRU backbones: a recurrent encoder over the window, last hidden state out."""

from __future__ import annotations

import torch
from torch import nn

from quantml.models.sequence.trainer import SequenceForecaster


class RNNEncoder(nn.Module):
    """[B, L, C] -> input projection -> LSTM/GRU (initial state from the static context) -> [B, d].

    Windows are left-padded, so the last step is always the real row ``r``.
    """

    def __init__(self, cell: str, n_inputs: int, d: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.cell, self.n_layers = cell, n_layers
        self.proj = nn.Linear(n_inputs, d)
        self.rnn = rnn(d, d, num_layers=n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0)
        self.init_h = nn.Linear(d, d * n_layers)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h0 = torch.tanh(self.init_h(s)).view(B, self.n_layers, -1).transpose(0, 1).contiguous()
        state = (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0
        out, _ = self.rnn(self.proj(x), state)
        return self.drop(out[:, -1])


class _RNNForecaster(SequenceForecaster):
    cell = "lstm"

    def __init__(self, horizons: list[str], seed: int = 0, num_layers: int = 1, **kwargs) -> None:
        super().__init__(horizons, seed, **kwargs)
        self.num_layers = int(num_layers)

    def _build_encoder(self, n_inputs: int) -> nn.Module:
        return RNNEncoder(self.cell, n_inputs, self.hidden_size, self.num_layers, self.dropout)


class LSTMForecaster(_RNNForecaster):
    """LSTM over the window (+ symbol embedding as the initial hidden state)."""

    cell = "lstm"


class GRUForecaster(_RNNForecaster):
    """GRU over the window (+ symbol embedding as the initial hidden state)."""

    cell = "gru"
