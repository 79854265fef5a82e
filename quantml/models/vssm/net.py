"""The VSSM network: a regime chain with a learned transition, a Gaussian observation model for the
filter, and per-horizon emission heads (return and realised volatility per regime) from a feature encoder.

Shapes: ``B`` stretches, ``L`` steps, ``R`` rows on them, ``D`` observed features, ``M`` counted rows,
``F`` encoder inputs, ``H`` horizons, ``K`` regimes. Returns and vols are in scaled units (``y / ret_scale``,
``log(vol / vol_scale)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from quantml.models.vssm.hmm import forward_filter, sticky_logits, transition_log_probs

_LOG_2PI = math.log(2.0 * math.pi)


class VSSMNet(nn.Module):
    """``filter(obs, finite, b, l, shape)`` -> filtered log posteriors; ``emissions(x)`` -> per-regime heads."""

    def __init__(
        self, n_inputs: int, n_obs: int, n_horizons: int, n_regimes: int, hidden: int, dropout: float, stay: float
    ) -> None:
        super().__init__()
        K, H = n_regimes, n_horizons
        self.K, self.H = K, H
        self.encoder = nn.Sequential(
            nn.Linear(n_inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, H * K * 4)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        spread = torch.linspace(-0.5, 0.5, K) if K > 1 else torch.zeros(1)
        # per-regime levels, ordered calm -> turbulent at the start (the states are re-ordered after fit)
        self.ret_log_scale = nn.Parameter(spread.repeat(H, 1).clone())  # [H, K]
        self.vol_level = nn.Parameter(spread.repeat(H, 1).clone())  # [H, K]
        self.vol_log_scale = nn.Parameter(torch.full((H, K), -0.5))  # [H, K]
        self.obs_mean = nn.Parameter(torch.zeros(K, n_obs))  # [K, D]
        self.obs_log_scale = nn.Parameter(spread[:, None].repeat(1, n_obs).clone())  # [K, D]
        self.trans_logits = nn.Parameter(sticky_logits(K, stay))  # [K, K]
        self.init_logits = nn.Parameter(torch.zeros(K))  # [K]

    def log_obs(self, obs: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """[R, D] observations of R rows (and where they are finite) -> [R, K] log p(o_r | z = k)."""
        z = (obs.unsqueeze(-2) - self.obs_mean) / torch.exp(self.obs_log_scale)  # [R, K, D]
        lp = -0.5 * (z * z + _LOG_2PI) - self.obs_log_scale
        return (lp * finite.unsqueeze(-2)).sum(-1)

    def filter(
        self,
        obs: torch.Tensor,
        finite: torch.Tensor,
        b: torch.Tensor,
        l: torch.Tensor,  # noqa: E741
        shape: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_post [B, L, K], log_evidence [B, L])`` of the exact forward algorithm over a [B, L] grid of
        steps; row r's observation enters step ``(b[r], l[r])`` (rows sharing a step: a joint observation)."""
        grid = torch.zeros(*shape, self.K, dtype=obs.dtype)
        grid = grid.index_put((b, l), self.log_obs(obs, finite), accumulate=True)
        return forward_filter(grid, transition_log_probs(self.trans_logits), torch.log_softmax(self.init_logits, 0))

    def emissions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """[M, F] encoder inputs -> ``mu``, ``log_sigma`` (scaled return), ``nu``, ``log_tau`` (log scaled
        vol), each [M, H, K]."""
        out = self.head(self.encoder(x)).view(-1, self.H, self.K, 4)
        return {
            "mu": out[..., 0],
            "log_sigma": self.ret_log_scale + out[..., 1],
            "nu": self.vol_level + out[..., 2],
            "log_tau": self.vol_log_scale + out[..., 3],
        }

    def transition(self) -> torch.Tensor:
        """[K, K] transition probabilities."""
        return torch.exp(transition_log_probs(self.trans_logits))


def label_log_lik(em: dict[str, torch.Tensor], y_ret: torch.Tensor, y_logvol: torch.Tensor, w_vol: float):
    """[M, K] log p(y_t | z_t = k, x_t): the product over horizons of the return density and (weighted
    by ``w_vol``) the log-vol density; ``y_ret``/``y_logvol`` [M, H] scaled, NaN-free (masked before)."""
    zr = (y_ret.unsqueeze(-1) - em["mu"]) / torch.exp(em["log_sigma"])
    lp = -0.5 * (zr * zr + _LOG_2PI) - em["log_sigma"]
    zv = (y_logvol.unsqueeze(-1) - em["nu"]) / torch.exp(em["log_tau"])
    lv = -0.5 * (zv * zv + _LOG_2PI) - em["log_tau"]
    return (lp + w_vol * lv).sum(1)
