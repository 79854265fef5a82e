"""A differentiable Sharpe (or Sortino) term on a smooth surrogate of the book's positions.

The real book (rank weights, the allocator's caps, thresholds) is not differentiable, so the term
trades a smooth stand-in built from the ``mean`` head (scaled units, about unit spread):

* ``tanh``: ``position_i = tanh(scale * mean_i)`` per row and horizon;
* ``softmax``: ``position_i = B * softmax(scale * mean)_i - 1`` over the batch's ``B`` labelled rows
  (weights that sum to zero across the batch: a long-short book over the rows the batch sampled,
  which come from every symbol and time; not a per-timestamp cross-section);
* ``cross_section``: the real cross-sectional book's stand-in: per timestamp (``batch["t_id"]``), the
  demeaned ``tanh(scale * mean_i)`` over that timestamp's labelled symbols, divided by its gross (sum of
  ``|w|`` = 1: dollar-neutral, gross 1, like the rank book). The batch is then one of whole cross-sections
  (the trainer's :class:`~quantml.models.sequence.cross_section_batches.TimestampBatchSampler`), and the
  Sharpe is over the batch's timestamps: ``pnl_t = sum_i w_i y_i - cost * sum_i |w_i - w_prev_i|``.

``pnl_i = position_i * y_ret_i`` (labelled rows, scaled units) minus, with a cost, ``cost_bps * 1e-4 /
ret_scale_h * |position_i - position_prev_i|`` where the batch also holds the row's previous bar of the
same symbol (``batch_chunk > 1`` makes that the rule; a row without it pays the batch's mean turnover).
The term is ``weight * mean_h(-mean(pnl_h) / (std(pnl_h) + eps))`` (Sortino: the downside deviation
``sqrt(mean(min(pnl, 0)^2))`` in place of the std), over horizons with at least two labelled rows.
"""

from __future__ import annotations

import numpy as np
import torch

from quantml.contracts import QuantmlInputError

SURROGATES = ("tanh", "softmax", "cross_section")
CROSS_SECTION_KEY = "t_id"  # the batch extra holding each row's timestamp code (cross_section)
KINDS = ("sharpe", "sortino")


def check_financial_settings(
    w_sharpe: float, surrogate: str, kind: str, scale: float, cost_bps: float | None
) -> tuple[float, str, str, float, float]:
    """The validated settings ``(weight, surrogate, kind, scale, cost_bps)`` (``cost_bps`` None -> 0),
    or a :class:`QuantmlInputError` naming the bad key and the fix."""
    if isinstance(w_sharpe, bool) or not isinstance(w_sharpe, (int, float)) or not np.isfinite(w_sharpe):
        raise QuantmlInputError(f"backbone.w_sharpe must be a number >= 0, got {w_sharpe!r}; e.g. w_sharpe=0.1")
    if w_sharpe < 0:
        raise QuantmlInputError(f"backbone.w_sharpe must be >= 0, got {w_sharpe}; 0 switches the term off")
    if surrogate not in SURROGATES:
        raise QuantmlInputError(f"backbone.sharpe_surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
    if kind not in KINDS:
        raise QuantmlInputError(f"backbone.sharpe_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise QuantmlInputError(f"backbone.sharpe_scale must be > 0, got {scale!r}; e.g. sharpe_scale=1.0")
    cost = 0.0 if cost_bps is None else cost_bps
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not cost >= 0:
        raise QuantmlInputError(
            f"backbone.sharpe_cost_bps must be >= 0 (bps per unit turnover) or null, got {cost_bps!r}"
        )
    return float(w_sharpe), str(surrogate), str(kind), float(scale), float(cost)


class FinancialLoss:
    """``(out, batch) -> scalar tensor``: ``weight`` times the negative Sharpe (Sortino) of the surrogate book.

    ``ret_scale``: float [H], the target scaler's per-horizon return scale (prices the cost in
    scaled units). Picklable (DDP ranks receive it with the module).
    """

    def __init__(
        self,
        weight: float,
        surrogate: str = "tanh",
        kind: str = "sharpe",
        scale: float = 1.0,
        cost_bps: float | None = None,
        ret_scale=None,
        eps: float = 1e-6,
    ) -> None:
        self.weight, self.surrogate, self.kind, self.scale, self.cost_bps = check_financial_settings(
            weight, surrogate, kind, scale, cost_bps
        )
        self.ret_scale = None if ret_scale is None else np.asarray(ret_scale, dtype=np.float64)
        self.eps = float(eps)

    def positions(self, mean: torch.Tensor, ok: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Surrogate positions [B, H] of the forecasts ``mean`` [B, H] (0 where ``ok`` is False);
        ``groups`` [B] (``cross_section``): each row's timestamp index in 0 .. G-1."""
        z = self.scale * mean
        if self.surrogate == "cross_section":
            okf = ok.to(z.dtype)
            t = torch.tanh(z) * okf
            mean_t = _group_sum(t, groups) / _group_sum(okf, groups).clamp_min(1)
            d = (t - mean_t[groups]) * okf
            gross = _group_sum(d.abs(), groups).clamp_min(1e-6)
            pos = d / gross[groups]
        elif self.surrogate == "tanh":
            pos = torch.tanh(z)
        else:
            logits = z.masked_fill(~ok, -1e4)  # unlabelled rows get no weight (finite: no NaN gradients)
            n = ok.sum(0, keepdim=True).clamp_min(1).to(z.dtype)
            pos = n * torch.softmax(logits, dim=0) - 1.0
        return torch.where(ok, pos, torch.zeros_like(pos))

    def turnover(self, pos: torch.Tensor, batch: dict) -> torch.Tensor:
        """|position - previous bar's position| [B, H] of each row; rows whose previous bar (same
        symbol segment) is not in the batch get the mean over the rows that have it (0 if none)."""
        rows = batch["row"].to(pos.device)
        mask = batch["mask"]
        has_prev_step = mask[:, -2].to(pos.device) if mask.shape[1] >= 2 else torch.zeros_like(rows, dtype=torch.bool)
        order = torch.argsort(rows)
        sorted_rows = rows[order]
        at = torch.searchsorted(sorted_rows, rows - 1).clamp_max(len(rows) - 1)
        found = (sorted_rows[at] == rows - 1) & has_prev_step
        prev = pos[order[at]]
        turn = (pos - prev).abs()
        f = found.unsqueeze(-1).to(pos.dtype)
        mean_turn = (turn * f).sum(0) / f.sum(0).clamp_min(1)
        return torch.where(found.unsqueeze(-1), turn, mean_turn.expand_as(turn))

    def __call__(self, out: dict, batch: dict) -> torch.Tensor:
        mean = out["mean"].float()
        y = batch["y_ret"].to(mean.device).float()
        ok = torch.isfinite(y)
        groups = None
        if self.surrogate == "cross_section":
            if CROSS_SECTION_KEY not in batch:
                raise QuantmlInputError(
                    "sharpe_surrogate=cross_section needs batches of whole timestamps with their t_id; "
                    "train it through a SequenceForecaster (it builds them) or use sharpe_surrogate=tanh"
                )
            groups = torch.unique(batch[CROSS_SECTION_KEY].to(mean.device)[:, 0], return_inverse=True)[1]
        pos = self.positions(mean, ok, groups)
        pnl = pos * torch.nan_to_num(y)
        if self.cost_bps > 0:
            if self.ret_scale is None:
                raise QuantmlInputError("a financial loss with a cost needs the target scaler's ret_scale")
            cost = torch.as_tensor(self.cost_bps * 1e-4 / self.ret_scale, dtype=pnl.dtype, device=pnl.device)
            pnl = pnl - cost * self.turnover(pos, batch)
        okf = ok.to(pnl.dtype)
        pnl = pnl * okf
        if groups is not None:  # one book per timestamp: its pnl is the sum over its symbols
            pnl, okf = _group_sum(pnl, groups), (_group_sum(okf, groups) >= 2).to(pnl.dtype)
            pnl = pnl * okf
        n = okf.sum(0)
        m = pnl.sum(0) / n.clamp_min(1)
        if self.kind == "sharpe":
            dev = (((pnl - m) ** 2 * okf).sum(0) / (n - 1).clamp_min(1)).clamp_min(1e-12).sqrt()
        else:
            dev = ((torch.clamp(pnl, max=0.0) ** 2 * okf).sum(0) / n.clamp_min(1)).clamp_min(1e-12).sqrt()
        use = n >= 2
        if not bool(use.any()):
            return mean.sum() * 0.0
        ratio = -m / (dev + self.eps)
        return self.weight * ratio[use].mean()


def _group_sum(v: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per-group sums [G, H] of ``v`` [B, H] over rows with ``groups`` [B] in 0 .. G-1."""
    G = int(groups.max()) + 1 if len(groups) else 0
    out = torch.zeros(G, v.shape[1], dtype=v.dtype, device=v.device)
    return out.index_add(0, groups, v)


class SumOfTerms:
    """``(out, batch) -> sum of the terms' tensors`` (a term returning None adds nothing); picklable."""

    def __init__(self, terms: list) -> None:
        self.terms = list(terms)

    def __call__(self, out: dict, batch: dict):
        total = None
        for term in self.terms:
            value = term(out, batch)
            if value is not None:
                total = value if total is None else total + value
        return total
