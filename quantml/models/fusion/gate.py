"""The gated text residual of the tabular fusion, fitted by one small full-batch optimisation.

``g = avail * sigmoid(a0 + A @ wa)`` (one gate per row, shared by every head and horizon) and per
horizon three deltas linear in the text content ``C``: ``d_ret``, ``d_dir`` (added to the base's
direction logit) and ``d_vol`` (added to the base's log volatility). Fitted jointly (L-BFGS, float64)
on the base's out-of-fold residuals, minimising

``sum_h [ MSE(r_h / s_r - g d_ret_h) + w_dir BCE(y_dir_h, sigmoid(logit_h + g d_dir_h))
+ w_vol MSE(rv_h / s_v - g d_vol_h) ] + (l2 / m) (|W|^2 + |wa|^2) + gate_penalty mean(g)``,

where ``r`` is the return residual and ``rv`` the log-vol residual, ``s_r``/``s_v`` their stds (the
return and log-vol deltas are scaled back by them). The gate penalty keeps the gate
shut unless the text earns its keep: with text that is noise the gate stays nearly closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
# the ridge alpha on the gate weights, relative to the deltas' (once 0.01: a nearly free gate grew sharp on
# collinear activity features -- posts vs authors -- and fitted noise on the raw text stream, docs/fusion.md)
WA_L2 = 1.0


@dataclass
class Standardiser:
    """Median imputation + standardisation of a few columns, statistics from the fit rows."""

    median: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardiser:
        X = np.asarray(X, dtype=np.float64)
        med = np.zeros(X.shape[1])
        for j in range(X.shape[1]):
            col = X[:, j][np.isfinite(X[:, j])]
            med[j] = float(np.median(col)) if len(col) else 0.0
        filled = np.where(np.isfinite(X), X, med)
        std = filled.std(axis=0) if len(filled) else np.ones(X.shape[1])
        return cls(med, filled.mean(axis=0) if len(filled) else np.zeros(X.shape[1]), np.where(std > 1e-12, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return (np.where(np.isfinite(X), X, self.median) - self.mean) / self.std


@dataclass
class GatedResidual:
    """Fitted gate and deltas. ``a0`` scalar, ``wa`` [a]; ``W`` [3, H, c] and ``b`` [3, H] (zeros: no
    intercepts are fitted) for the return, direction and log-vol deltas."""

    a0: float
    wa: np.ndarray
    W: np.ndarray
    b: np.ndarray
    scale: np.ndarray | None = None  # [3, H]: the deltas are fitted on targets / scale (None = 1)

    def gate(self, A: np.ndarray, avail: np.ndarray) -> np.ndarray:
        """float [n]: the gate opening of standardised activity ``A`` [n, a]; 0 where ``avail`` is False."""
        z = np.clip(self.a0 + A @ self.wa, -60.0, 60.0)
        return np.where(avail, 1.0 / (1.0 + np.exp(-z)), 0.0)

    def deltas(self, C: np.ndarray) -> np.ndarray:
        """float [3, n, H]: the return, direction-logit and log-vol deltas of standardised content ``C`` [n, c]."""
        d = np.einsum("nc,khc->knh", C, self.W) + self.b[:, None, :]
        return d if self.scale is None else d * self.scale[:, None, :]

    @classmethod
    def closed(cls, n_activity: int, n_content: int, n_horizons: int) -> GatedResidual:
        """A gate held shut (no text to fit on)."""
        return cls(-60.0, np.zeros(n_activity), np.zeros((3, n_horizons, n_content)), np.zeros((3, n_horizons)))


def fit_gated_residual(
    A: np.ndarray,
    C: np.ndarray,
    avail: np.ndarray,
    r: np.ndarray,
    logit: np.ndarray,
    y_dir: np.ndarray,
    rv: np.ndarray,
    *,
    l2: float,
    gate_penalty: float,
    w_dir: float = 0.5,
    w_vol: float = 0.5,
    max_iter: int = 200,
) -> GatedResidual:
    """Fit :class:`GatedResidual` on ``m`` rows: ``A`` [m, a], ``C`` [m, c] standardised, ``avail``
    bool [m] (rows with text; a modality-dropped row is False), ``r``, ``logit``, ``y_dir``, ``rv``
    [m, H] (NaN = unlabelled, left out). L-BFGS-B (scipy) on the analytic gradient, from a half-open
    gate with each delta at its ridge fit: deterministic for a given input."""
    from scipy.optimize import minimize

    m, H = r.shape
    n_a, n_c = A.shape[1], C.shape[1]
    if m == 0 or not avail.any() or n_c == 0:
        return GatedResidual.closed(n_a, n_c, H)
    A, C = np.asarray(A, dtype=np.float64), np.asarray(C, dtype=np.float64)
    av = np.asarray(avail, dtype=np.float64)
    # the return and log-vol deltas are fitted in units of their residual's std: the L2 penalty then
    # means the same on any bar size, and each head's loss is ~1 before the text helps
    scale = np.ones((3, H))
    scale[0], scale[2] = column_std(r), column_std(rv)
    ok = [np.isfinite(x) for x in (r, y_dir, rv)]
    cnt = [np.maximum(o.sum(0), 1) for o in ok]
    rt, yd, rvt = (np.where(o, np.nan_to_num(x), 0.0) for o, x in zip(ok, (r, y_dir, rv)))
    rt, rvt = rt / scale[0], rvt / scale[2]
    lg = np.nan_to_num(np.asarray(logit, dtype=np.float64))
    n_av = max(av.sum(), 1.0)
    lam = l2 / n_av  # a ridge alpha on the sum of squares: the loss terms are means over rows
    sizes = (1, n_a, 3 * H * n_c)

    def unpack(theta):
        a0, wa, W = np.split(theta, np.cumsum(sizes)[:-1])
        return float(a0[0]), wa, W.reshape(3, H, n_c)

    def loss_grad(theta):
        a0, wa, W = unpack(theta)
        s = 1.0 / (1.0 + np.exp(-np.clip(a0 + A @ wa, -60, 60)))
        g = av * s
        d = np.einsum("nc,khc->knh", C, W)  # [3, m, H]
        gd = g[:, None] * d
        e0, e2 = rt - gd[0], rvt - gd[2]
        z1 = lg + gd[1]
        p1 = 1.0 / (1.0 + np.exp(-np.clip(z1, -60, 60)))
        bce = np.logaddexp(0.0, z1) - yd * z1
        loss = (
            ((e0**2 * ok[0]).sum(0) / cnt[0]).sum()
            + w_dir * ((bce * ok[1]).sum(0) / cnt[1]).sum()
            + w_vol * ((e2**2 * ok[2]).sum(0) / cnt[2]).sum()
        )
        loss += lam * ((W**2).sum() + WA_L2 * (wa**2).sum()) + gate_penalty * H * g.sum() / n_av
        # d loss / d (g d_k) [m, H]
        q = np.stack(
            [-2.0 * e0 * ok[0] / cnt[0], w_dir * (p1 - yd) * ok[1] / cnt[1], -2.0 * w_vol * e2 * ok[2] / cnt[2]]
        )
        gW = np.einsum("knh,n,nc->khc", q, g, C) + 2.0 * lam * W
        dg = (q * d).sum(axis=(0, 2)) + gate_penalty * H / n_av  # d loss / d g [m]
        dz = dg * av * s * (1.0 - s)
        grad = np.concatenate([[dz.sum()], A.T @ dz + 2.0 * WA_L2 * lam * wa, gW.ravel()])
        return float(loss), grad

    # start half open, each delta at its ridge fit under that gate: from a closed gate (or zero deltas)
    # the product g * d has no gradient to leave the saddle by; the penalty shuts the gate if text is useless
    theta0 = np.zeros(sum(sizes))
    W0 = np.zeros((3, H, n_c))
    rows = av > 0
    Cr = 0.5 * C[rows]
    for k, target in ((0, rt), (2, rvt)):
        for h in range(H):
            use = ok[k][rows, h]
            if use.sum() > n_c:
                Ck = Cr[use]
                lhs = Ck.T @ Ck / len(Ck) + lam * np.eye(n_c)
                W0[k, h] = np.linalg.solve(lhs, Ck.T @ target[rows][use, h] / len(Ck))
    theta0[1 + n_a :] = W0.ravel()
    res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": int(max_iter)})
    a0, wa, W = unpack(res.x)
    return GatedResidual(a0, wa.copy(), W.copy(), np.zeros((3, H)), scale)


def column_std(x: np.ndarray) -> np.ndarray:
    """Per column std over finite values (1 for an empty or constant column)."""
    out = np.ones(x.shape[1])
    for j in range(x.shape[1]):
        col = x[:, j][np.isfinite(x[:, j])]
        if len(col) > 1 and col.std() > _EPS:
            out[j] = float(col.std())
    return out
