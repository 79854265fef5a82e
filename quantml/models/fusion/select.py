"""The tabular fusion's held-out check: the gated text residual is kept only when it predicts a LATER slice
of the base's out-of-fold residuals better than no text at all, and the check picks what it reads.

Why (measured on the synthetic raw text stream, docs/fusion.md): ``g * d`` is scale-free, so a ridge
alpha on the delta weights alone does not stop it fitting noise (a larger alpha shrinks ``d`` and the gate
opens wider); with the dozens of content features of a raw stream (statistics plus per-fold latents) that
overfit cost out-of-sample error. And a realistic text effect (a few % of the return variance, in bursts)
earns less than ``gate_penalty * mean(g)`` at the configured penalty, so it was never taken. The check:

1. the residual rows are cut in time: the last ``holdout_share`` of their label starts is held out, and the
   fit part keeps only rows whose label ends at or before the held-out start (purged);
2. a gated residual is fitted on the fit part for each candidate -- each content group (all content
   features; without the latents ``*_lat_*`` when there are both) times each gate penalty
   (``gate_penalty * f``, ``f`` in ``penalty_factors``) -- and scored on the held-out part by the fit's
   own data loss per row (:func:`row_losses`: return error in units of its std, squared, + ``w_dir`` BCE
   + ``w_vol`` squared log-vol error, no penalty), beside the closed gate (the base alone);
3. the closed gate wins unless a candidate's mean per-row gain over it exceeds ``MIN_Z`` standard errors
   (paired, over the held-out rows); the best such candidate is refitted on all rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantml.models.fusion.gate import GatedResidual, column_std, fit_gated_residual

PENALTY_FACTORS = (1.0, 0.1)
HOLDOUT_SHARE = 0.3
_MIN_ROWS = 50  # rows with text per part: fewer, and the check keeps the gate closed
MIN_Z = 2.0  # standard errors of the mean per-row gain a candidate must beat the closed gate by


@dataclass(frozen=True)
class Selection:
    """What the check chose: ``choice`` (``"closed"`` or ``"<group>, gate_penalty=<p>"``), the held-out
    loss of each candidate, and the rows with text of the two parts."""

    choice: str
    losses: dict
    n_fit: int
    n_holdout: int
    z: dict | None = None  # each candidate's mean per-row gain over the closed gate, in standard errors

    @property
    def closed(self) -> bool:
        return self.choice == "closed"


def row_losses(model: GatedResidual, A, C, avail, r, logit, y_dir, rv, scale, w_dir: float, w_vol: float) -> np.ndarray:
    """float [n]: the fit's data loss of ``model`` per row (no penalties), summed over horizons:
    ``((r - g d_ret) / scale_r)^2 + w_dir BCE(y_dir, sigmoid(logit + g d_dir)) + w_vol ((rv - g d_vol) / scale_v)^2``,
    an unlabelled term counting 0."""
    g = model.gate(A, avail)
    d = model.deltas(C)  # [3, n, H] in return / logit / log-vol units
    gd = g[None, :, None] * d
    total = np.zeros(len(A))
    for target, k, w, s in ((r, 0, 1.0, scale[0]), (rv, 2, w_vol, scale[1])):
        e = ((target - gd[k]) / s) ** 2
        total += w * np.where(np.isfinite(e), e, 0.0).sum(axis=1)
    z = np.nan_to_num(np.asarray(logit, dtype=np.float64)) + gd[1]
    bce = np.logaddexp(0.0, z) - np.nan_to_num(y_dir) * z
    total += w_dir * np.where(np.isfinite(y_dir), bce, 0.0).sum(axis=1)
    return total


def content_groups(content_names) -> dict[str, np.ndarray]:
    """``{group: positions into content_names}``: ``all``, plus ``no_latents`` (the content features that
    are not per-fold latents ``*_lat_<i>``) when the content has both kinds."""
    names = [str(n) for n in content_names]
    groups = {"all": np.arange(len(names), dtype=np.int64)}
    plain = np.asarray([i for i, n in enumerate(names) if "_lat_" not in n], dtype=np.int64)
    if 0 < len(plain) < len(names):
        groups["no_latents"] = plain
    return groups


def _fit_on(columns: np.ndarray, n_content: int, A, C, avail, r, logit, y_dir, rv, **kw) -> GatedResidual:
    """A gated residual fitted on the content ``columns`` only, its weights embedded in ``n_content``
    (0 for the other columns)."""
    part = fit_gated_residual(A, C[:, columns], avail, r, logit, y_dir, rv, **kw)
    W = np.zeros((*part.W.shape[:2], n_content))
    W[:, :, columns] = part.W
    return GatedResidual(part.a0, part.wa, W, part.b, part.scale)


def select_gated_residual(
    A: np.ndarray,
    C: np.ndarray,
    avail: np.ndarray,
    r: np.ndarray,
    logit: np.ndarray,
    y_dir: np.ndarray,
    rv: np.ndarray,
    t0: np.ndarray,
    t1: np.ndarray,
    keep: np.ndarray | None = None,
    *,
    l2: float,
    gate_penalty: float,
    groups: dict[str, np.ndarray] | None = None,
    max_iter: int = 200,
    holdout_share: float = HOLDOUT_SHARE,
    penalty_factors=PENALTY_FACTORS,
    w_dir: float = 0.5,
    w_vol: float = 0.5,
) -> tuple[GatedResidual, Selection]:
    """The held-out check (module docstring) over ``m`` residual rows; arrays as
    :func:`~quantml.models.fusion.gate.fit_gated_residual` takes them, plus ``t0``/``t1`` [m] the rows'
    label start and end (datetime64), ``keep`` bool [m] the rows the fits may show text (modality dropout;
    the held-out part is scored on every row with text) and ``groups`` the content groups to try
    (:func:`content_groups`; None: all content). Returns the model fitted on all rows with the chosen
    candidate (or a closed gate) and the :class:`Selection`."""
    m, H = r.shape
    n_c = C.shape[1]
    closed = GatedResidual.closed(A.shape[1], n_c, H)
    if m == 0:
        return closed, Selection("closed", {}, 0, 0)
    t0, t1 = np.asarray(t0, dtype="datetime64[ns]"), np.asarray(t1, dtype="datetime64[ns]")
    cut = np.quantile(t0.astype(np.int64), 1.0 - float(holdout_share)).astype("datetime64[ns]")
    hold = t0 >= cut
    fit = ~hold & ~np.isnat(t1) & (t1 <= cut)
    n_fit, n_hold = int((fit & avail).sum()), int((hold & avail).sum())
    if n_fit < _MIN_ROWS or n_hold < _MIN_ROWS:
        return closed, Selection("closed", {}, n_fit, n_hold)
    keep = np.ones(m, bool) if keep is None else np.asarray(keep, bool)
    shown = avail & keep
    scale = np.stack([column_std(r[hold]), column_std(rv[hold])])
    arrays = (A, C, r, logit, y_dir, rv)

    A_h, C_h, r_h, lg_h, yd_h, rv_h = (x[hold] for x in arrays)
    base = row_losses(closed, A_h, C_h, avail[hold], r_h, lg_h, yd_h, rv_h, scale, w_dir, w_vol)
    losses, z = {"closed": float(base.mean())}, {}
    best, best_gain = None, 0.0
    for name, columns in (groups or {"all": np.arange(n_c)}).items():
        for f in penalty_factors:
            penalty = float(gate_penalty) * float(f)
            A_f, C_f, r_f, lg_f, yd_f, rv_f = (x[fit] for x in arrays)
            model = _fit_on(
                columns, n_c, A_f, C_f, shown[fit], r_f, lg_f, yd_f, rv_f,
                l2=l2, gate_penalty=penalty, max_iter=max_iter,
            )  # fmt: skip
            label = f"{name}, gate_penalty={penalty:g}"
            gain = base - row_losses(model, A_h, C_h, avail[hold], r_h, lg_h, yd_h, rv_h, scale, w_dir, w_vol)
            losses[label] = float(losses["closed"] - gain.mean())
            z[label] = float(gain.mean() / max(gain.std() / np.sqrt(len(gain)), 1e-300))
            # a win must stand out of the held-out slice's noise: a mean gain over MIN_Z standard errors
            if gain.mean() > max(best_gain, MIN_Z * gain.std() / np.sqrt(len(gain))):
                best, best_gain = (label, columns, penalty), float(gain.mean())
    if best is None:
        return closed, Selection("closed", losses, n_fit, n_hold, z)
    label, columns, penalty = best
    model = _fit_on(columns, n_c, A, C, shown, r, logit, y_dir, rv, l2=l2, gate_penalty=penalty, max_iter=max_iter)
    return model, Selection(label, losses, n_fit, n_hold, z)
