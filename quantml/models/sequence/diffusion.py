"""A conditional denoising diffusion head over the vector of horizon returns (``head=diffusion``).

The head models ``p(y | c)``: ``y`` [B, H] the scaled horizon returns of a row (``y_ret / ret_scale``),
``c`` [B, d_c] the backbone's context embedding of the row (what the sequence net hands its output
head) joined with the symbol embedding, or (``condition=scale``) the quantile frame's log scales joined
with the symbol embedding. Training adds the denoising loss (eps-prediction MSE at a
uniformly drawn noise step, NaN targets left out) to the usual multi-horizon loss, so the backbone
learns a context useful to both; at predict, ``n_samples`` draws per row by DDIM over
``sample_steps`` of the ``steps`` noise levels (``eta=1`` and ``sample_steps=steps``: ancestral DDPM)
give the quantiles, ``prob_up`` and (by default) the expected return (:class:`SequenceForecaster`).

Noise schedules: ``linear`` (betas from ``1e-4`` to ``0.02``, scaled by ``1000 / steps`` as in Nichol
and Dhariwal 2021 so a short schedule still ends near pure noise) and ``cosine`` (their
``alpha_bar(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``, ``s = 0.008``, betas capped at 0.999).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from quantml.contracts import QuantmlInputError

HEADS = ("quantile", "diffusion")
SCHEDULES = ("linear", "cosine")
POINTS = ("samples", "head")
TARGETS = ("eps", "x0", "v")  # what the denoiser predicts: the noise, the clean target, or v (DiffusionSpec)
FRAMES = ("returns", "quantile")  # what the head diffuses: the scaled returns, or the quantile head's residual
FITS = ("joint", "after")  # the denoiser trained with the backbone, or after it on its frozen context
CONDITIONS = ("context", "scale")  # the denoiser's condition: the context embedding, or the frame's log scales
Z90 = 1.2815515655446004  # Phi^-1(0.9): (q90 - q10) / (2 Z90) is a normal's sigma
MIN_FRAME_SCALE = 1e-3  # floor of the quantile frame's scale (scaled units), so the residual stays finite
TIME_DIM = 16  # sinusoidal embedding of the noise step
X0_CLIP = 50.0  # predicted clean targets (scaled units) are clipped while sampling, for stability
SAMPLE_CHUNK = 65536  # rows x samples denoised at once when sampling (bounds memory)


@dataclass(frozen=True)
class DiffusionSpec:
    """The ``head=diffusion`` settings (``conf/head/diffusion.yaml``).

    schedule : ``linear`` or ``cosine`` noise schedule; steps : noise levels in training;
    sample_steps : denoising steps at predict (<= steps; a strided subsequence when fewer);
    n_samples : draws per row at predict; hidden, layers : the denoiser MLP's width and depth;
    weight : weight of the denoising loss; eta : DDIM stochasticity (1 = DDPM-like, 0 = deterministic
    given the starting noise); point : ``samples`` (expected return = the samples' mean) or ``head``
    (the mean head's forecast, trained on MSE); train_draws : noise draws per training row and step (the
    denoiser is small beside the backbone: several draws per row sharpen its gradient at little cost);
    target : what the denoiser predicts and its loss is the MSE of: ``eps`` (the noise, Ho et al. 2020),
    ``x0`` (the clean scaled returns) or ``v`` (``sqrt(ab) eps - sqrt(1 - ab) x0``, Salimans and Ho 2022);
    frame : what is diffused: ``returns`` (the scaled returns) or ``quantile`` (the residual of the net's
    own quantile head, ``(y - q50) / ((q90 - q10) / (2 z90))``, location and scale detached: the head learns
    the residual's shape, its draws are mapped back with the same location and scale; as in CARD, Han et
    al. 2022, whose diffusion starts from a learned mean);
    fit : ``joint`` (the denoising loss added to the backbone's, one training) or ``after`` (the backbone
    trained exactly as with the quantile head, then the denoiser alone on its frozen context:
    :func:`quantml.models.sequence.diffusion_fit.fit_head_after`); fit_epochs, fit_lr, fit_patience : that
    second training's epochs, learning rate and early-stopping patience;
    condition : what the denoiser is conditioned on: ``context`` (the backbone's context embedding joined
    with the symbol embedding, ``[B, d_context]``) or ``scale`` (``frame=quantile`` only: the frame's log
    scale per horizon joined with the symbol embedding, ``[B, H + symbol_dim]``; the context reaches the
    denoiser only through the quantile head's spread, so a small denoiser cannot memorise rows by their
    contexts: ``docs/diffusion.md``, "Condition").
    """

    schedule: str = "cosine"
    steps: int = 50
    sample_steps: int = 50
    n_samples: int = 200
    hidden: int = 64
    layers: int = 2
    weight: float = 1.0
    eta: float = 1.0
    point: str = "samples"
    train_draws: int = 8
    target: str = "eps"
    frame: str = "returns"
    fit: str = "joint"
    fit_epochs: int = 100
    fit_lr: float = 2e-3
    fit_patience: int = 10
    condition: str = "context"

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise QuantmlInputError(f"head.condition must be one of {', '.join(CONDITIONS)}, got {self.condition!r}")
        if self.condition == "scale" and self.frame != "quantile":
            raise QuantmlInputError(
                "head.condition=scale conditions on the quantile frame's scale: set head.frame=quantile, "
                "or head.condition=context with head.frame=returns"
            )
        if self.fit not in FITS:
            raise QuantmlInputError(f"head.fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if not self.fit_lr > 0:
            raise QuantmlInputError(f"head.fit_lr must be > 0, got {self.fit_lr}")
        if self.frame not in FRAMES:
            raise QuantmlInputError(f"head.frame must be one of {', '.join(FRAMES)}, got {self.frame!r}")
        if self.target not in TARGETS:
            raise QuantmlInputError(f"head.target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.schedule not in SCHEDULES:
            raise QuantmlInputError(f"head.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.point not in POINTS:
            raise QuantmlInputError(f"head.point must be one of {', '.join(POINTS)}, got {self.point!r}")
        for name in (
            "steps",
            "sample_steps",
            "n_samples",
            "hidden",
            "layers",
            "train_draws",
            "fit_epochs",
            "fit_patience",
        ):
            if int(getattr(self, name)) < 1:
                raise QuantmlInputError(f"head.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.sample_steps) > int(self.steps):
            raise QuantmlInputError(
                f"head.sample_steps={self.sample_steps} exceeds head.steps={self.steps}: sampling walks a subset "
                "of the training noise levels; set sample_steps <= steps"
            )
        if not self.weight >= 0:
            raise QuantmlInputError(f"head.weight must be >= 0, got {self.weight}")
        if not 0 <= self.eta <= 1:
            raise QuantmlInputError(f"head.eta must be in [0, 1], got {self.eta}")


def parse_head(head: Mapping | str | None) -> DiffusionSpec | None:
    """A ``head`` config (mapping with ``name``, or a bare name) -> :class:`DiffusionSpec`, or None for
    the quantile head (the default). Unknown names or keys raise :class:`QuantmlInputError`."""
    if head is None:
        return None
    if isinstance(head, str):
        head = {"name": head}
    if not isinstance(head, Mapping):
        raise QuantmlInputError(f"head must be a mapping with a name (quantile or diffusion), got {head!r}")
    opts = dict(head)
    name = opts.pop("name", "quantile")
    if name not in HEADS:
        raise QuantmlInputError(f"head={name!r} is unknown; choose head=quantile or head=diffusion")
    if name == "quantile":
        return None
    known = {f.name for f in fields(DiffusionSpec)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise QuantmlInputError(f"head=diffusion has no setting(s) {unknown}; its settings are {sorted(known)}")
    try:
        return DiffusionSpec(**opts)
    except (TypeError, ValueError) as exc:
        raise QuantmlInputError(f"head=diffusion: {exc}") from exc


def head_config(spec: DiffusionSpec | None) -> dict:
    """The inverse of :func:`parse_head` (a plain dict with ``name``)."""
    return {"name": "quantile"} if spec is None else {"name": "diffusion", **asdict(spec)}


def alpha_bars(schedule: str, steps: int) -> torch.Tensor:
    """Cumulative signal shares ``alpha_bar_k``, k = 0 .. steps-1 (float64 [steps], decreasing in (0, 1))."""
    if schedule == "linear":
        scale = 1000.0 / steps
        betas = torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), steps, dtype=torch.float64)
    elif schedule == "cosine":
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise QuantmlInputError(f"unknown noise schedule {schedule!r}; use linear or cosine")
    return torch.cumprod(1 - betas, dim=0)


def _time_embedding(k: torch.Tensor, steps: int) -> torch.Tensor:
    """Sinusoidal embedding of noise steps ``k`` [N] -> [N, TIME_DIM]."""
    half = TIME_DIM // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=k.device, dtype=torch.float32) / half)
    arg = (k.float() * (1000.0 / steps)).unsqueeze(-1) * freqs
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class DiffusionHead(nn.Module):
    """The denoiser ``eps(x_k, k, c)`` [N, H] and its training loss and sampler.

    ``x_k`` [N, H] noised scaled returns, ``k`` [N] noise steps, ``c`` [N, d_cond] the condition
    (:meth:`condition`: the context [N, d_context], or with ``condition=scale`` the frame's log scales and
    the symbol embedding, the last ``symbol_dim`` columns of the context). The condition enters
    through one projection (computed once per row when sampling, then shared by its draws), added to
    the projections of ``x_k`` and of the step embedding and again at the input of each of the ``layers - 1``
    residual SiLU blocks that follow.
    """

    def __init__(self, d_context: int, n_horizons: int, spec: DiffusionSpec, symbol_dim: int = 0) -> None:
        super().__init__()
        self.spec, self.H = spec, int(n_horizons)
        self.symbol_dim = int(symbol_dim)
        d = int(spec.hidden)
        scaled = getattr(spec, "condition", "context") == "scale"
        if scaled and not 0 <= self.symbol_dim <= d_context:
            raise ValueError(f"symbol_dim={symbol_dim} must be in [0, d_context={d_context}]")
        self.cond = nn.Linear(self.H + self.symbol_dim if scaled else d_context, d)
        self.inp = nn.Linear(self.H, d)
        self.time = nn.Sequential(nn.Linear(TIME_DIM, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU()) for _ in range(spec.layers - 1)
        )
        self.out = nn.Linear(d, self.H)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("abar", alpha_bars(spec.schedule, int(spec.steps)).float(), persistent=False)

    @property
    def weight(self) -> float:
        return float(self.spec.weight)

    def frame(self, out: Mapping) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(location, scale)`` [B, H] (detached) of the head's frame from the net's outputs ``out``, or
        None for ``frame=returns`` (the scaled returns themselves)."""
        if getattr(self.spec, "frame", "returns") == "returns":  # specs pickled before the key: returns
            return None
        q10, q50, q90 = (out[k].detach().float() for k in ("q10", "q50", "q90"))
        return q50, ((q90 - q10) / (2 * Z90)).clamp_min(MIN_FRAME_SCALE)

    def condition(self, context: torch.Tensor, frame: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The denoiser's condition from the row's ``context`` [B, d_context] and ``frame`` (see
        :meth:`frame`): the context itself, or with ``condition=scale`` ``[log scale [B, H], symbol
        embedding [B, symbol_dim]]``."""
        if getattr(self.spec, "condition", "context") == "context":  # specs pickled before the key
            return context
        if frame is None:
            raise ValueError("condition=scale needs the quantile frame (frame=quantile)")
        symbol = context[:, context.shape[1] - self.symbol_dim :]
        return torch.cat([frame[1].to(context.dtype).log(), symbol], dim=-1)

    def raw(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's output [N, H] (its ``target``: eps, x0 or v) from ``x`` [N, H], steps ``k`` [N]
        (or [1]: one step for every row) and the projected context ``cond`` [N, d]."""
        h = F.silu(self.inp(x) + self.time(_time_embedding(k, int(self.spec.steps))) + cond)
        for block in self.blocks:
            h = h + block(h + cond)
        return self.out(h)

    def eps_x0(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor, ab: torch.Tensor):
        """``(eps, x0)`` [N, H] implied by the denoiser at ``x`` with signal share ``ab`` (of step ``k``)."""
        out = self.raw(x, k, cond)
        target = getattr(self.spec, "target", "eps")  # specs pickled before the key: eps
        if target == "eps":
            return out, (x - (1 - ab).sqrt() * out) / ab.sqrt()
        if target == "x0":
            return (x - ab.sqrt() * out) / (1 - ab).sqrt(), out
        x0 = ab.sqrt() * x - (1 - ab).sqrt() * out  # v
        return (1 - ab).sqrt() * x + ab.sqrt() * out, x0

    def eps(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise [N, H] at ``x`` [N, H], steps ``k`` (see :meth:`raw`)."""
        kk = k.expand(len(x)) if len(k) == 1 else k
        ab = self.abar.to(x.device)[kk].unsqueeze(-1).to(x.dtype)
        return self.eps_x0(x, k, cond, ab)[0]

    def loss(
        self,
        context: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        frame: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """MSE of the denoiser's ``target`` (eps, x0 or v) over the finite entries of ``y`` [B, H] (scaled
        units; in ``frame``, ``(location, scale)`` [B, H] from :meth:`frame`, its residual), ``train_draws``
        noise steps and draws per row."""
        r = int(self.spec.train_draws)
        cond = self.cond(self.condition(context, frame)).repeat(r, 1)
        if frame is not None:
            y = (y.to(frame[0].dtype) - frame[0]) / frame[1]
        y = y.repeat(r, 1)
        ok = torch.isfinite(y)
        x0 = torch.nan_to_num(y).to(cond.dtype)
        B = len(y)
        k = torch.randint(0, int(self.spec.steps), (B,), generator=generator, device=y.device)
        noise = torch.randn(x0.shape, generator=generator, device=y.device, dtype=x0.dtype)
        ab = self.abar.to(y.device)[k].unsqueeze(-1).to(x0.dtype)
        xk = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        target = getattr(self.spec, "target", "eps")
        want = noise if target == "eps" else x0 if target == "x0" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
        err = (self.raw(xk, k, cond) - want) ** 2
        return torch.where(ok, err, torch.zeros_like(err)).sum() / ok.sum().clamp_min(1)

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        n_samples: int,
        generator: torch.Generator,
        frame: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``n_samples`` draws per row from ``p(y | context)``: [B, S, H] in scaled units (with ``frame``
        ``(location, scale)`` [B, H], draws of the residual mapped back: ``location + scale * draw``).

        DDIM over ``sample_steps`` evenly spaced noise levels (always ending at level 0) with
        stochasticity ``eta``; every random number comes from ``generator`` (same generator state ->
        bit-identical draws)."""
        spec, H = self.spec, self.H
        B, S = len(context), int(n_samples)
        abar = self.abar.to(context.device)
        levels = torch.linspace(int(spec.steps) - 1, 0, int(spec.sample_steps)).round().long().unique_consecutive()
        cond = self.cond(self.condition(context.float(), frame))  # [B, d]: once per row
        out = torch.empty(B, S, H, dtype=torch.float32, device=context.device)
        rows_per = max(1, SAMPLE_CHUNK // S)
        for lo in range(0, B, rows_per):
            c = cond[lo : lo + rows_per].repeat_interleave(S, dim=0)
            n = len(c)
            x = torch.randn(n, H, generator=generator, dtype=torch.float32).to(context.device)
            for i, level in enumerate(levels.tolist()):
                ab_t = abar[level]
                ab_prev = abar[int(levels[i + 1])] if i + 1 < len(levels) else torch.ones((), device=abar.device)
                k = torch.full((1,), level, dtype=torch.long, device=context.device)  # broadcast over rows
                e, x0 = self.eps_x0(x, k, c, ab_t)
                x0 = x0.clamp(-X0_CLIP, X0_CLIP)
                sigma = spec.eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp_min(0).sqrt()
                x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * e
                if spec.eta > 0 and i + 1 < len(levels):
                    x = x + sigma * torch.randn(n, H, generator=generator, dtype=torch.float32).to(context.device)
            out[lo : lo + rows_per] = x.view(-1, S, H)
        if frame is not None:
            out = frame[0].float().unsqueeze(1) + frame[1].float().unsqueeze(1) * out
        return out
