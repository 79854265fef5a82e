"""``head.fit=after``: the diffusion head trained alone on a fitted backbone's frozen context.

Trained jointly, the denoising loss changes the backbone (and early stopping on the summed loss changes
when it stops), so the diffusion-headed net's own quantile head, the frame of ``frame=quantile``, is a
worse one than the quantile-only net's. Here the backbone is the quantile-only net, bit for bit (the head is
built after it, so no random draw moves), and the denoiser learns ``p(y | context)`` on its contexts, which
are computed once: each epoch is a pass of a small MLP over ``[n, d]`` tensors.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from quantml.models.sequence.diffusion import DiffusionHead

FIT_BATCH = 256


def fit_head_after(
    head: DiffusionHead,
    train: dict[str, np.ndarray],
    valid: dict[str, np.ndarray] | None,
    seed: int,
    epochs: int | None = None,
) -> list[float]:
    """Train ``head`` in place on ``train`` (``context`` [n, d], ``y`` [n, H] scaled returns, NaN where
    unlabelled, and for ``frame=quantile`` ``loc``/``scale`` [n, H]) with AdamW for ``epochs`` (default
    ``head.spec.fit_epochs``) epochs, keeping the state of the lowest denoising loss on ``valid`` (fixed
    noise; ``fit_patience`` epochs without a new low stop it); without ``valid``, every epoch runs and
    the last state stays. Returns the per-epoch validation losses (empty without ``valid``)."""
    spec = head.spec
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=float(spec.fit_lr))
    tensors = _tensors(train)
    n = len(tensors[0])
    history: list[float] = []
    best, best_state, waited = np.inf, None, 0
    for _ in range(int(spec.fit_epochs if epochs is None else epochs)):
        head.train()
        order = torch.randperm(n, generator=gen)
        for a in range(0, n, FIT_BATCH):
            idx = order[a : a + FIT_BATCH]
            context, y, frame = _batch(tensors, idx)
            loss = head.loss(context, y, gen, frame)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if valid is None:
            continue
        history.append(_valid_loss(head, valid, seed))
        if history[-1] < best:
            best, best_state, waited = history[-1], copy.deepcopy(head.state_dict()), 0
        else:
            waited += 1
            if waited >= int(spec.fit_patience):
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return history


def _tensors(part: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    keys = ("context", "y", "loc", "scale") if "loc" in part else ("context", "y")
    return tuple(torch.as_tensor(np.asarray(part[k], dtype=np.float32)) for k in keys)


def _batch(tensors: tuple[torch.Tensor, ...], idx) -> tuple:
    parts = [t[idx] for t in tensors]
    return parts[0], parts[1], (parts[2], parts[3]) if len(parts) == 4 else None


@torch.no_grad()
def _valid_loss(head: DiffusionHead, valid: dict[str, np.ndarray], seed: int) -> float:
    """The denoising loss on ``valid`` with the same noise every epoch (a generator reseeded here)."""
    head.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    tensors = _tensors(valid)
    total, count = 0.0, 0
    for a in range(0, len(tensors[0]), 4 * FIT_BATCH):
        idx = torch.arange(a, min(a + 4 * FIT_BATCH, len(tensors[0])))
        context, y, frame = _batch(tensors, idx)
        total += float(head.loss(context, y, gen, frame)) * len(idx)
        count += len(idx)
    return total / max(1, count)
