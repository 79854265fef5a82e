"""Multi-horizon output heads and the training loss shared by every sequence backbone.

All outputs are in scaled units (return / ``ret_scale``, vol / ``vol_scale``); the
forecaster multiplies back. Quantiles cannot cross: ``q10 = q50 - softplus(a)``,
``q90 = q50 + softplus(b)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

QUANTILES = (0.1, 0.5, 0.9)
_N_OUT = 6  # mean, q50, lower offset, upper offset, direction logit, vol


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class MultiHorizonHead(nn.Module):
    """[B, H, d] (one representation per horizon) -> dict of [B, H] outputs.

    Each horizon has its own weights. Keys: ``mean`` (expected return), ``q10``, ``q50``,
    ``q90``, ``logit`` (direction), ``vol`` (> 0).
    """

    def __init__(self, d: int, n_horizons: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_horizons, d, _N_OUT) / math.sqrt(d))
        bias = torch.zeros(n_horizons, _N_OUT)
        bias[:, 2:4] = _inv_softplus(1.2816)  # offsets of a unit normal's P10/P90
        bias[:, 5] = _inv_softplus(1.0)  # vol at its training median
        self.bias = nn.Parameter(bias)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        o = torch.einsum("bhd,hdk->bhk", h, self.weight) + self.bias
        q50 = o[..., 1]
        return {
            "mean": o[..., 0],
            "q10": q50 - F.softplus(o[..., 2]),
            "q50": q50,
            "q90": q50 + F.softplus(o[..., 3]),
            "logit": o[..., 4],
            "vol": F.softplus(o[..., 5]) + 1e-4,
        }


@dataclass
class LossWeights:
    """Weights of the loss terms (``backbone.w_*`` and ``backbone.spread_penalty``)."""

    quantile: float = 1.0
    ret: float = 1.0
    direction: float = 0.5
    vol: float = 0.5
    spread: float = 0.0


def _masked_mean(v: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, v, torch.zeros_like(v)).sum() / ok.sum().clamp_min(1)


def pinball(q_pred: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    e = y - q_pred
    return torch.maximum(q * e, (q - 1.0) * e)


def spread_shortfall(pred: torch.Tensor, y: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Mean over horizons of ``relu(1 - std(pred) / std(y))`` across the batch.

    Zero when the forecasts spread as much as the realised targets; grows as they collapse
    toward their mean ("hugging the average").
    """
    okf = ok.float()
    n = okf.sum(0).clamp_min(2)

    def _std(v):
        v = torch.where(ok, v, torch.zeros_like(v))
        m = v.sum(0) / n
        return (((v - m) ** 2 * okf).sum(0) / (n - 1)).clamp_min(1e-12).sqrt()

    return F.relu(1.0 - _std(pred) / _std(y).detach()).mean()


def multi_horizon_loss(
    out: dict, batch: dict, w: LossWeights, spread: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pinball(P10/P50/P90) + MSE(expected return) + direction BCE + log-vol MSE [+ spread].

    Targets may be NaN (unlabelled horizon): those entries are left out of every term.
    """
    y, y_dir, y_lv = batch["y_ret"], batch["y_dir"], batch["y_logvol"]
    ok = torch.isfinite(y)
    y0 = torch.nan_to_num(y)
    parts = {}
    parts["pinball"] = sum(_masked_mean(pinball(out[f"q{int(q * 100)}"], y0, q), ok) for q in QUANTILES) / 3
    parts["mse"] = _masked_mean((out["mean"] - y0) ** 2, ok)
    ok_dir = torch.isfinite(y_dir)
    bce = F.binary_cross_entropy_with_logits(out["logit"], torch.nan_to_num(y_dir), reduction="none")
    parts["bce"] = _masked_mean(bce, ok_dir)
    ok_v = torch.isfinite(y_lv)
    parts["vol"] = _masked_mean((torch.log(out["vol"]) - torch.nan_to_num(y_lv)) ** 2, ok_v)
    total = w.quantile * parts["pinball"] + w.ret * parts["mse"] + w.direction * parts["bce"] + w.vol * parts["vol"]
    if spread and w.spread > 0:
        parts["spread"] = 0.5 * (spread_shortfall(out["mean"], y0, ok) + spread_shortfall(out["q50"], y0, ok))
        total = total + w.spread * parts["spread"]
    return total, parts
