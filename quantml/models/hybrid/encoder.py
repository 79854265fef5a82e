"""Stage 1's network: a Transformer over the assets of one timestamp plus a market token.

Token 0 is the market row (the equal-weight mean of the assets' normalised features, or an index
asset's); tokens ``1..N`` are the assets. Each token is its features projected to ``d_model`` plus a
learned identity (index 0 = an asset not seen in training, ``1..S`` the training assets, ``S+1`` the
market). Attention runs only within the timestamp, so whatever it outputs at time ``s`` is a function
of the snapshot at ``s``: causal by construction.
"""

from __future__ import annotations

import torch
from torch import nn


class RelationBlock(nn.Module):
    """Pre-norm self-attention + feed-forward; returns the new tokens and the attention [B, N+1, N+1]
    (mean over heads; rows = queries, columns = keys)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm1(h)
        a, w = self.attn(q, q, q, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        h = h + self.drop(a)
        return h + self.drop(self.ff(self.norm2(h))), w


class CrossSectionalNet(nn.Module):
    """``(x [B, N, F], ids [B, N], present [B, N] bool, market [B, F])`` ->
    ``relation [B, N, relation_dim]``, ``baseline [B, N, H]`` (scaled returns), ``attention [B, N+1, N+1]``
    (the last block's; token 0 = market)."""

    def __init__(
        self,
        n_features: int,
        n_assets: int,
        n_horizons: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        relation_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.market_id = n_assets + 1
        self.inp = nn.Linear(n_features, d_model)
        self.identity = nn.Embedding(n_assets + 2, d_model)
        self.blocks = nn.ModuleList(RelationBlock(d_model, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.relation = nn.Linear(d_model, relation_dim)
        self.head = nn.Linear(d_model, n_horizons)

    def forward(self, x, ids, present, market) -> dict[str, torch.Tensor]:
        B = x.shape[0]
        market_id = torch.full((B, 1), self.market_id, dtype=torch.long, device=x.device)
        tokens = self.inp(torch.cat([market[:, None, :], x], dim=1)) + self.identity(torch.cat([market_id, ids], 1))
        pad = torch.cat([torch.zeros((B, 1), dtype=torch.bool, device=x.device), ~present], dim=1)
        attention = None
        for block in self.blocks:
            tokens, attention = block(tokens, pad)
        h = self.norm(tokens[:, 1:])
        return {"relation": self.relation(h), "baseline": self.head(h), "attention": attention}
