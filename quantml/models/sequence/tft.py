"""Temporal Fusion Transformer (Lim et al., 2021) for multi-horizon forecasts.

Inputs, per row ``r`` of the panel:

- static: the learned symbol embedding and two per-symbol real statistics fitted on the
  training rows (log ratio of the symbol's return scale and volatility level to the panel's);
- past-observed (encoder, steps ``r-L+1 .. r``): every feature, calendar ones included;
- known-future (decoder, one step per horizon): the known-future (calendar) features of the
  *current* row ``r`` — not values recomputed at future timestamps — plus a learned
  embedding of the decoder step (which horizon it is).

Blocks, as in the paper: per-variable embeddings -> variable selection networks (static,
encoder, decoder; the last two conditioned on the static selection context) -> static
covariate encoders (selection, enrichment, LSTM initial hidden and cell states) -> LSTM
encoder-decoder with a gated skip -> static enrichment GRN -> interpretable multi-head
attention (shared values, heads averaged; decoder steps query the encoder and earlier
decoder steps) -> gated skip -> position-wise GRN -> gated skip -> per-horizon heads
(P10/P50/P90 non-crossing, expected return, direction, volatility).

The per-variable networks are evaluated for all variables at once (batched weights), not
in a Python loop over variables, and the encoder's variable selection — a per-step block
that depends only on the step's features and the symbol — runs once per distinct panel row
of a batch (``xu``) and is gathered into the windows, instead of once per window step. That
selection is fused (:meth:`VariableSelectionNetwork.select_reals`): the embeddings of the real
inputs are folded into the linear maps that read them, the per-variable GRNs run variable-major on
cache-sized row slices (recomputed in the backward pass when the batch's windows share their steps,
or when their activations would exceed ``VAR_GRN_KEEP_BYTES``), and the final LayerNorm and weighted sum
over variables is one hand-differentiated step. Same function and parameters as the plain path
(``forward(embedding(x))``), which ``tests/unit/test_tft_fused.py`` checks, gradients included.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from quantml.contracts import QuantmlInputError
from quantml.models.sequence.heads import MultiHorizonHead
from quantml.models.sequence.module import N_STATIC_REAL
from quantml.models.sequence.trainer import SequenceForecaster

STATIC_NAMES = ["symbol", "symbol_ret_scale", "symbol_vol_level"]
STEP_NAME = "horizon_step"
INFERENCE_SLICE = 4096  # distinct steps per variable-selection call when predicting
VAR_GRN_ELEMENTS = 16384  # (row, variable) pairs per slice of the per-variable GRNs: a cache-sized working set
VAR_GRN_KEEP_BYTES = 512 << 20  # above this, the per-variable GRNs' activations are recomputed in the backward pass
# recomputed too when the batch's windows share their steps at least this many times over (chunked batches):
# the per-step selection is then a small part of the step, so recomputing it costs little
VAR_GRN_RECOMPUTE_SHARING = 2.0


def dropout_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout multiplier: 0 with probability ``p``, else ``1 / (1 - p)`` (uniform draws compared
    with ``p``: cheaper on CPU than ``bernoulli_``)."""
    return torch.rand(shape, dtype=like.dtype, device=like.device).ge_(p).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same module, same state) drawing its mask with :func:`dropout_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(x.shape, self.p, x)


class GatedLinearUnit(nn.Module):
    """Dropout -> Linear(d_in, 2 d_out) -> GLU."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.drop = Dropout(dropout)
        self.fc = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.fc(self.drop(x)), dim=-1)


class GateAddNorm(nn.Module):
    """``LayerNorm(skip + GLU(x))``: the gated skip connection of the paper."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.glu = GatedLinearUnit(d_in, d_out, dropout)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(skip + self.glu(x))


class GatedResidualNetwork(nn.Module):
    """``LayerNorm(skip(a) + GLU(W1 ELU(W2 a + W3 c + b2) + b1))``; ``c`` is optional context
    (broadcast over the time axis when given as [B, 1, d_c])."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float, d_context: int | None = None) -> None:
        super().__init__()
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else None
        self.fc2 = nn.Linear(d_in, d_hidden)
        self.ctx = nn.Linear(d_context, d_hidden, bias=False) if d_context else None
        self.fc1 = nn.Linear(d_hidden, d_hidden)
        self.gate = GateAddNorm(d_hidden, d_out, dropout)

    def forward(self, a: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_linear(self.fc2(a), a if self.skip is None else self.skip(a), c)

    def from_linear(self, h: torch.Tensor, skip: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The GRN given ``h = fc2(a)`` and ``skip = skip(a)`` (or ``a``) computed elsewhere."""
        if c is not None and self.ctx is not None:
            h = h + self.ctx(c)
        return self.gate(self.fc1(F.elu(h)), skip)


class VarLinear(nn.Module):
    """V independent linear maps applied at once: [..., V, d_in] -> [..., V, d_out]."""

    def __init__(self, n_vars: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_vars, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_vars, d_out))
        nn.init.uniform_(self.weight, -1 / math.sqrt(d_in), 1 / math.sqrt(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        V, d_in = x.shape[-2:]
        y = torch.bmm(x.reshape(-1, V, d_in).transpose(0, 1), self.weight)  # [V, N, d_out]
        return (y.transpose(0, 1) + self.bias).reshape(*lead, V, -1)


class VarGRN(nn.Module):
    """One GRN per variable (no context), all variables evaluated together."""

    def __init__(self, n_vars: int, d_in: int, d_hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.skip = VarLinear(n_vars, d_in, d_out) if d_in != d_out else None
        self.fc2 = VarLinear(n_vars, d_in, d_hidden)
        self.fc1 = VarLinear(n_vars, d_hidden, d_hidden)
        self.drop = Dropout(dropout)
        self.glu = VarLinear(n_vars, d_hidden, 2 * d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(F.elu(self.fc2(x)))
        g = F.glu(self.glu(self.drop(h)), dim=-1)
        return self.norm((x if self.skip is None else self.skip(x)) + g)

    def folded(self, we: torch.Tensor, be: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The weights :meth:`weighted_sum_of_normed` takes, for inputs embedded as ``x_v we[v] + be[v]``
        ([V, d_in] each): ``fc2`` and the skip folded into the embedding ([V, d] weights and biases), then
        ``fc1``'s weight and bias and the two halves (value, gate) of the GLU's weight and bias."""
        d_out = self.norm.normalized_shape[0]
        skip = _fold_var(self.skip, we, be) if self.skip is not None else (we, be)
        glu_w, glu_b = self.glu.weight, self.glu.bias
        return (
            *_fold_var(self.fc2, we, be),
            *skip,
            self.fc1.weight,
            self.fc1.bias,
            glu_w[..., :d_out],
            glu_b[:, :d_out],
            glu_w[..., d_out:],
            glu_b[:, d_out:],
        )

    def weighted_sum_of_normed(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        keep: torch.Tensor | None,
        fc2_w: torch.Tensor,
        fc2_b: torch.Tensor,
        skip_w: torch.Tensor,
        skip_b: torch.Tensor,
        fc1_w: torch.Tensor,
        fc1_b: torch.Tensor,
        value_w: torch.Tensor,
        value_b: torch.Tensor,
        gate_w: torch.Tensor,
        gate_b: torch.Tensor,
    ) -> torch.Tensor:
        """``sum_v w[n, v] z^[n, v]`` [n, d_out]: ``z^`` is this GRN's LayerNorm output before its affine
        map, for scalar inputs ``x`` [n, V] embedded as in :meth:`folded` (which gives the weights).
        ``keep``: the dropout mask, already scaled by ``1 / (1 - p)`` [V, n, d_hidden], or None (no
        dropout). Evaluated variable-major ([V, n, .] batched matrix products)."""
        xv = x.t().unsqueeze(-1)  # [V, n, 1]
        h = F.elu(torch.addcmul(fc2_b.unsqueeze(1), xv, fc2_w.unsqueeze(1)))
        h = torch.baddbmm(fc1_b.unsqueeze(1), h, fc1_w)
        if keep is not None:
            h = h * keep
        gate = torch.sigmoid(torch.baddbmm(gate_b.unsqueeze(1), h, gate_w))
        skip = torch.addcmul(skip_b.unsqueeze(1), xv, skip_w.unsqueeze(1))
        z = torch.addcmul(skip, torch.baddbmm(value_b.unsqueeze(1), h, value_w), gate)  # skip + GLU
        return NormedWeightedSum.apply(z, w.t(), self.norm.eps)


class NormedWeightedSum(torch.autograd.Function):
    """``sum_v w[v, n] LayerNorm(z[v, n])`` without the LayerNorm's affine map: ``z`` [V, n, d], ``w`` [V, n]
    -> [n, d], with a hand-written backward. Written with means and products: on CPU, for rows of a few
    dozen values, these measured faster than the fused LayerNorm kernel (and ``var_mean``)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        centred = z - z.mean(-1, keepdim=True)
        rstd = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)  # [V, n, 1]
        coef = w.unsqueeze(-1) * rstd
        ctx.save_for_backward(centred, w, rstd)
        return (centred * coef).sum(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        centred, w, rstd = ctx.saved_tensors
        z_hat = centred * rstd
        grad_w = (z_hat * grad).sum(-1)  # [V, n]
        grad_centred = grad - grad.mean(-1, keepdim=True)  # [n, d]
        grad_z = torch.addcmul(grad_centred, z_hat, grad_w.unsqueeze(-1), value=-1.0 / z_hat.shape[-1])
        return grad_z * (w.unsqueeze(-1) * rstd), grad_w, None


class RealEmbedding(nn.Module):
    """Each real variable -> its own ``d`` vector: [..., V] -> [..., V, d]."""

    def __init__(self, n_vars: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_vars, d) * 0.5)
        self.bias = nn.Parameter(torch.zeros(n_vars, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias


class VariableSelectionNetwork(nn.Module):
    """Softmax weights over V variables from a GRN of their flattened embeddings (and the
    context), times each variable's own GRN output: [..., V, d_var] -> [..., d], [..., V]."""

    def __init__(self, n_vars: int, d_var: int, d: int, dropout: float, d_context: int | None = None) -> None:
        super().__init__()
        self.n_vars = n_vars
        if n_vars > 1:
            self.flat = GatedResidualNetwork(n_vars * d_var, min(d, n_vars), n_vars, dropout, d_context)
        self.var_grn = VarGRN(n_vars, d_var, min(d_var, d), d, dropout)

    def forward(self, e: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_vars > 1:
            w = torch.softmax(self.flat(e.flatten(-2), c), dim=-1)
        else:
            w = torch.ones(e.shape[:-1], dtype=e.dtype, device=e.device)
        return (self.var_grn(e) * w.unsqueeze(-1)).sum(-2), w

    def select_reals(
        self, x: torch.Tensor, embedding: RealEmbedding, c: torch.Tensor | None = None, recompute: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(embedding(x), c)`` for real inputs ``x`` [N, V] (and ``c`` [N, d_c]) -> [N, d], [N, V],
        computed without the embeddings [N, V, d_var].

        Every linear map of an embedding ``x_v w_v + b_v`` is affine in the scalar ``x_v``, so it is folded
        into the embedding's weights; the per-variable GRNs run variable-major ([V, n, .] batched matrix
        products) on row slices of ``VAR_GRN_ELEMENTS`` (row, variable) pairs, so each slice's working set
        stays in cache instead of a dozen [N, V, d] tensors going through memory. With autograd, the
        slices are recomputed in the backward pass (activation checkpointing) when ``recompute`` is set
        (the caller's batch shares its steps between windows, so the selection is a small part of the
        step) or when their saved activations would take more than ``VAR_GRN_KEEP_BYTES`` (i.i.d. windows
        of many features); otherwise keeping them measured faster. Same function, same parameters.
        """
        we, be = embedding.weight, embedding.bias  # [V, d_var]
        if self.n_vars > 1:
            fc2_w, fc2_b = _fold_flat(self.flat.fc2, we, be)
            if self.flat.skip is None:  # d_var == 1: the flattened embedding is its own skip
                skip = torch.addcmul(be[:, 0], x, we[:, 0])
            else:
                skip_w, skip_b = _fold_flat(self.flat.skip, we, be)
                skip = torch.addmm(skip_b, x, skip_w)
            w = torch.softmax(self.flat.from_linear(torch.addmm(fc2_b, x, fc2_w), skip, c), dim=-1)
        else:
            w = torch.ones_like(x)
        g = self.var_grn
        folded = g.folded(we, be)
        keep = None
        if g.drop.training and g.drop.p > 0:  # drawn once, outside the recomputed slices
            keep = dropout_mask((self.n_vars, len(x), g.fc1.weight.shape[-1]), g.drop.p, x)
        step = max(1, VAR_GRN_ELEMENTS // self.n_vars)
        # autograd keeps about 3 [V, n, d] and 4 [V, n, d_hidden] tensors per slice: recompute them in the
        # backward pass instead only when they would take more than VAR_GRN_KEEP_BYTES
        kept = len(x) * self.n_vars * (3 * g.norm.normalized_shape[0] + 4 * g.fc1.weight.shape[-1]) * x.element_size()
        recompute = torch.is_grad_enabled() and (recompute or kept > VAR_GRN_KEEP_BYTES)
        parts = []
        for i in range(0, len(x), step):
            args = (x[i : i + step], w[i : i + step], None if keep is None else keep[:, i : i + step], *folded)
            if recompute:
                parts.append(checkpoint(g.weighted_sum_of_normed, *args, use_reentrant=False, preserve_rng_state=False))
            else:
                parts.append(g.weighted_sum_of_normed(*args))
        s = parts[0] if len(parts) == 1 else torch.cat(parts)
        # sum_v w_v LayerNorm(z_v) = gamma * sum_v w_v z^_v + beta * sum_v w_v (z^: normalised, no affine)
        return torch.addcmul(w.sum(-1, keepdim=True) * g.norm.bias, s, g.norm.weight), w


def _fold_flat(linear: nn.Linear, we: torch.Tensor, be: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear`` applied to flattened embeddings ``(x_v we[v] + be[v])_v`` as ``x @ W + b``: W [V, out], b [out]."""
    weight = linear.weight.view(linear.out_features, *we.shape)  # [out, V, d_var]
    return torch.einsum("vk,ovk->vo", we, weight), linear.bias + torch.einsum("vk,ovk->o", be, weight)


def _fold_var(linear: VarLinear, we: torch.Tensor, be: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-variable ``linear`` applied to ``x_v we[v] + be[v]`` as ``x_v W[v] + b[v]``: W, b [V, out]."""
    return torch.einsum("vk,vko->vo", we, linear.weight), torch.baddbmm(
        linear.bias.unsqueeze(1), be.unsqueeze(1), linear.weight
    ).squeeze(1)


class InterpretableMultiHeadAttention(nn.Module):
    """Per-head queries and keys, one value projection shared by all heads, heads averaged
    (so the averaged attention weights explain the output)."""

    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d // n_heads
        self.q = nn.Linear(d, n_heads * self.d_head)
        self.k = nn.Linear(d, n_heads * self.d_head)
        self.v = nn.Linear(d, self.d_head)
        self.out = nn.Linear(self.d_head, d)
        self.drop = Dropout(dropout)

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [B, Q, d], ``memory`` [B, T, d], ``allowed`` [B, Q, T] -> [B, Q, d], [B, heads, Q, T].

        The key and value maps are moved to the query side, so neither runs over the T memory steps
        (the TFT queries only its H decoder steps): head h's score ``q_h . (K_h m_t + b_h)`` is
        ``(q_h K_h) . m_t + q_h . b_h``, and the heads' mean of ``drop(A_h) V(m)`` is
        ``V_w (D m) + rowsum(D) V_b`` with ``D`` the heads' mean of ``drop(A_h)``. Same function as
        :func:`reference_attention`, dropout draws included (``tests/unit/test_tft_fused.py``)."""
        B, Q, _ = query.shape
        scale = 1.0 / math.sqrt(self.d_head)
        q = self.q(query).view(B, Q, self.n_heads, self.d_head) * scale
        q_k = torch.einsum("bqhe,hed->bhqd", q, self.k.weight.view(self.n_heads, self.d_head, -1))  # [B, heads, Q, d]
        q_b = torch.einsum("bqhe,he->bhq", q, self.k.bias.view(self.n_heads, self.d_head))
        scores = torch.baddbmm(
            q_b.reshape(B, -1, 1), q_k.reshape(B, self.n_heads * Q, -1), memory.transpose(1, 2)
        ).view(B, self.n_heads, Q, -1)
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        dropped = self.drop(attn).mean(1)  # [B, Q, T]
        heads = torch.addcmul(F.linear(dropped @ memory, self.v.weight), dropped.sum(-1, keepdim=True), self.v.bias)
        return self.out(heads), attn


def reference_attention(
    att: InterpretableMultiHeadAttention, query: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook evaluation of ``att`` (keys and values of every memory step): what
    :meth:`InterpretableMultiHeadAttention.forward` computes, for tests."""
    B, Q, _ = query.shape
    T = memory.shape[1]
    q = att.q(query).view(B, Q, att.n_heads, att.d_head).transpose(1, 2)
    k = att.k(memory).view(B, T, att.n_heads, att.d_head).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(att.d_head)
    scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    attn = torch.softmax(scores, dim=-1)
    heads = att.drop(attn) @ att.v(memory).unsqueeze(1)  # [B, heads, Q, d_head]
    return att.out(heads.mean(1)), attn


class TemporalFusionNet(nn.Module):
    """The TFT; ``forward(batch)`` returns the head outputs plus ``static_weights`` [B, 3],
    ``encoder_weights`` [B, L, F], ``decoder_weights`` [B, H, K+1] and ``attention``
    [B, heads, H, L+H] for interpretation."""

    def __init__(
        self,
        n_features: int,
        n_symbols: int,
        n_horizons: int,
        known_idx: list[int],
        d: int,
        d_var: int,
        symbol_dim: int,
        n_heads: int,
        lstm_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.H, self.known_idx = n_horizons, list(known_idx)
        self.lstm_layers = lstm_layers
        # static covariates
        self.symbol_embedding = nn.Embedding(n_symbols + 1, symbol_dim)
        self.symbol_proj = nn.Linear(symbol_dim, d_var)
        self.static_real = RealEmbedding(N_STATIC_REAL, d_var)
        self.static_vsn = VariableSelectionNetwork(1 + N_STATIC_REAL, d_var, d, dropout)
        self.static_context = nn.ModuleDict(
            {name: GatedResidualNetwork(d, d, d, dropout) for name in ("selection", "enrichment", "h", "c")}
        )
        # time-varying inputs
        self.encoder_embedding = RealEmbedding(n_features, d_var)
        self.encoder_vsn = VariableSelectionNetwork(n_features, d_var, d, dropout, d_context=d)
        self.known_embedding = RealEmbedding(len(self.known_idx), d_var) if self.known_idx else None
        self.step_embedding = nn.Parameter(torch.randn(n_horizons, d_var) * 0.5)
        self.decoder_vsn = VariableSelectionNetwork(len(self.known_idx) + 1, d_var, d, dropout, d_context=d)
        # sequence to sequence
        self.lstm_encoder = nn.LSTM(
            d, d, num_layers=lstm_layers, batch_first=True, dropout=dropout if lstm_layers > 1 else 0.0
        )
        self.lstm_decoder = nn.LSTM(
            d, d, num_layers=lstm_layers, batch_first=True, dropout=dropout if lstm_layers > 1 else 0.0
        )
        self.post_lstm = GateAddNorm(d, d, dropout)
        self.enrichment = GatedResidualNetwork(d, d, d, dropout, d_context=d)
        self.attention = InterpretableMultiHeadAttention(d, n_heads, dropout)
        self.post_attention = GateAddNorm(d, d, dropout)
        self.positionwise = GatedResidualNetwork(d, d, d, dropout)
        self.pre_output = GateAddNorm(d, d, 0.0)
        self.head = MultiHorizonHead(d, n_horizons)
        self.context_dim = n_horizons * d + symbol_dim  # ``context``: what a diffusion head conditions on

    def static_contexts(self, sym: torch.Tensor, table: torch.Tensor):
        """Static selection weights and the four context vectors for symbol indices ``sym``."""
        static_vars = torch.cat(
            [self.symbol_proj(self.symbol_embedding(sym)).unsqueeze(1), self.static_real(table[sym])], dim=1
        )  # [S', 3, d_var]
        s, static_w = self.static_vsn(static_vars)
        return {k: grn(s) for k, grn in self.static_context.items()}, static_w

    def _select_steps(
        self, xu: torch.Tensor, context: torch.Tensor, window_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder variable selection of the distinct steps ``xu`` of ``window_steps`` (batch x lookback)
        window steps; without autograd (predict) in slices of ``INFERENCE_SLICE`` steps, so scattered
        rows (no shared steps) stay bounded. Shared steps (``VAR_GRN_RECOMPUTE_SHARING``) train with
        the per-variable GRNs recomputed in the backward pass: about 3% slower, 10% less memory on the
        benchmark's chunked batches (i.i.d. batches keep them: recomputing there cost 20-25%)."""
        if torch.is_grad_enabled() or len(xu) <= INFERENCE_SLICE:
            shared = window_steps >= VAR_GRN_RECOMPUTE_SHARING * len(xu)
            return self.encoder_vsn.select_reals(xu, self.encoder_embedding, context, recompute=shared)
        parts = [
            self.encoder_vsn.select_reals(
                xu[i : i + INFERENCE_SLICE], self.encoder_embedding, context[i : i + INFERENCE_SLICE]
            )
            for i in range(0, len(xu), INFERENCE_SLICE)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def forward(self, batch: dict) -> dict:
        x, mask, inv = batch["x"], batch["mask"], batch["inv"]
        B, L, _ = x.shape
        # static inputs are a function of the symbol index: encode each distinct index once
        syms, sym_inv = torch.unique(torch.cat([batch["sym"], batch["sym_u"]]), return_inverse=True)
        ctx_s, static_w_s = self.static_contexts(syms, batch["static_table"])
        ctx = {k: v[sym_inv[:B]] for k, v in ctx_s.items()}
        sel_u = ctx_s["selection"][sym_inv[B:]]

        # encoder variable selection runs once per distinct step, then is gathered into windows
        enc_u, enc_w_u = self._select_steps(batch["xu"], sel_u, B * L)  # [U, d], [U, F]
        enc, enc_w = enc_u[inv], enc_w_u[inv]  # [B, L, d], [B, L, F]
        step = self.step_embedding.unsqueeze(0).expand(B, -1, -1).unsqueeze(2)  # [B, H, 1, d_var]
        if self.known_idx:
            known = x[:, -1, self.known_idx]  # current row's values
            known = self.known_embedding(known).unsqueeze(1).expand(-1, self.H, -1, -1)
            step = torch.cat([known, step], dim=2)
        dec, dec_w = self.decoder_vsn(step, ctx["selection"].unsqueeze(1))

        state = tuple(c.unsqueeze(0).expand(self.lstm_layers, -1, -1).contiguous() for c in (ctx["h"], ctx["c"]))
        enc_out, state = self.lstm_encoder(enc, state)
        dec_out, _ = self.lstm_decoder(dec, state)
        vsn_seq = torch.cat([enc, dec], dim=1)
        temporal = self.post_lstm(torch.cat([enc_out, dec_out], dim=1), vsn_seq)  # [B, L+H, d]
        enriched = self.enrichment(temporal, ctx["enrichment"].unsqueeze(1))

        allowed = torch.cat(
            [
                mask.unsqueeze(1).expand(-1, self.H, -1),
                torch.ones(self.H, self.H, dtype=torch.bool, device=x.device).tril().unsqueeze(0).expand(B, -1, -1),
            ],
            dim=2,
        )  # [B, H, L+H]
        att, attn_w = self.attention(enriched[:, L:], enriched, allowed)
        h = self.post_attention(att, enriched[:, L:])
        h = self.pre_output(self.positionwise(h), temporal[:, L:])
        out = self.head(h)
        out.update(
            static_weights=static_w_s[sym_inv[:B]], encoder_weights=enc_w, decoder_weights=dec_w, attention=attn_w
        )
        # [B, H * d + symbol_dim]: every horizon's representation and the symbol embedding (diffusion head)
        out["context"] = torch.cat([h.flatten(1), self.symbol_embedding(batch["sym"])], dim=-1)
        return out


class TFTForecaster(SequenceForecaster):
    """Temporal Fusion Transformer behind the shared training wrapper.

    Extra parameters: ``hidden_continuous_size`` (width of each variable's embedding and of
    the per-variable GRNs), ``n_heads`` (attention heads), ``lstm_layers``,
    ``interpret_rows`` (rows of the validation slice summarised for the figures).
    """

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        hidden_continuous_size: int = 8,
        n_heads: int = 4,
        lstm_layers: int = 1,
        interpret_rows: int = 2048,
        **kwargs,
    ) -> None:
        super().__init__(horizons, seed, **kwargs)
        if self.hidden_size % int(n_heads):
            raise QuantmlInputError(f"backbone.hidden_size={self.hidden_size} must be a multiple of n_heads={n_heads}")
        if int(hidden_continuous_size) < 1 or int(lstm_layers) < 1:
            raise QuantmlInputError("backbone.hidden_continuous_size and lstm_layers must be >= 1")
        self.hidden_continuous_size, self.n_heads = int(hidden_continuous_size), int(n_heads)
        self.lstm_layers, self.interpret_rows = int(lstm_layers), int(interpret_rows)

    def _build_net(self, spec: dict) -> nn.Module:
        return TemporalFusionNet(
            spec["n_features"],
            spec["n_symbols"],
            spec["n_horizons"],
            spec["known_idx"],
            self.hidden_size,
            self.hidden_continuous_size,
            self.symbol_dim,
            self.n_heads,
            self.lstm_layers,
            self.dropout,
        )

    def _after_fit(self, data, rows: np.ndarray) -> None:
        """Average variable-selection and attention weights over (up to) ``interpret_rows`` rows,
        taken as 8 evenly spaced runs of consecutive rows (their windows share steps: cheap)."""
        rows = np.sort(rows)
        if len(rows) > self.interpret_rows:
            run = max(1, self.interpret_rows // 8)
            starts = np.linspace(0, len(rows) - run, 8).astype(np.int64)
            rows = rows[np.unique((starts[:, None] + np.arange(run)).ravel())]
        acc = {"static": 0.0, "encoder": 0.0, "decoder": 0.0, "attention": 0.0, "n": 0, "steps": 0.0}

        def collect(out, batch):
            m = batch["mask"].unsqueeze(-1).to(out["encoder_weights"].dtype)
            acc["static"] = acc["static"] + out["static_weights"].sum(0).double().numpy()
            acc["encoder"] = acc["encoder"] + (out["encoder_weights"] * m).sum((0, 1)).double().numpy()
            acc["steps"] += float(m.sum())
            acc["decoder"] = acc["decoder"] + out["decoder_weights"].sum(0).double().numpy()
            acc["attention"] = acc["attention"] + out["attention"].mean(1).sum(0).double().numpy()
            acc["n"] += len(batch["sym"])

        self._run(data, rows, collect=collect)
        n = max(acc["n"], 1)
        known = [self.feature_names_[i] for i in self.net_spec_["known_idx"]]
        self.interpretation_ = {
            "static": pd.Series(acc["static"] / n, index=STATIC_NAMES),
            "encoder": pd.Series(acc["encoder"] / max(acc["steps"], 1.0), index=self.feature_names_),
            "decoder": pd.DataFrame(acc["decoder"] / n, index=self.horizons, columns=known + [STEP_NAME]),
            "attention": acc["attention"] / n,  # [H, L + H]
        }

    def feature_importance(self) -> pd.Series | None:
        """Mean encoder variable-selection weight of each feature (sums to 1)."""
        interp = getattr(self, "interpretation_", None)
        return None if interp is None else interp["encoder"].sort_values(ascending=False)

    def figures(self) -> dict:
        figs = super().figures()
        interp = getattr(self, "interpretation_", None)
        if interp is None:
            return figs
        import matplotlib.pyplot as plt

        enc = interp["encoder"].sort_values()
        top = enc.iloc[-25:]
        fig, axes = plt.subplots(
            1, 3, figsize=(14, max(3.5, 0.25 * len(top) + 1)), gridspec_kw={"width_ratios": [1, 2, 1]}
        )
        interp["static"].sort_values().plot.barh(ax=axes[0], color="tab:green")
        axes[0].set_title("static")
        top.plot.barh(ax=axes[1], color="tab:blue")
        axes[1].set_title(f"past-observed (encoder), top {len(top)} of {len(enc)}")
        interp["decoder"].mean(0).sort_values().plot.barh(ax=axes[2], color="tab:orange")
        axes[2].set_title("known-future (decoder)")
        for ax in axes:
            ax.set_xlabel("mean selection weight")
        fig.suptitle("TFT variable importance")
        fig.tight_layout()
        figs["tft_variable_importance.png"] = fig

        att = interp["attention"]
        L = att.shape[1] - len(self.horizons)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        lags = np.arange(-(L - 1), 1)
        for j, h in enumerate(self.horizons):
            ax.plot(lags, att[j, :L], label=f"{h}")
        ax.set_xlabel("encoder step relative to the forecast row (0 = current bar)")
        ax.set_ylabel("mean attention weight")
        ax.set_title("TFT attention over the look-back, per horizon (decoder query)")
        ax.legend(title="horizon")
        fig.tight_layout()
        figs["tft_attention.png"] = fig
        return figs
