"""The per-fold reducer: each tower's sparse ``[n, n_hash]`` side matrix -> ``k`` dense latents.

A truncated SVD (scikit-learn ``TruncatedSVD``, randomized, seeded) per tower, FITTED ON A FOLD'S TRAINING
ROWS ONLY (the rows with text among them) and kept in the fitted model; it then maps every row
``x -> x @ components.T`` (a row without text maps to 0). Latent names: ``<tower>_lat_<i>``
(``text_post_lat_0 .. text_post_lat_{k-1}``, ``text_comment_lat_*``), modality ``text``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from quantml.contracts import QuantmlInputError
from quantml.features.text.towers import TOWERS

LATENT_MIN, LATENT_MAX = 2, 128


def latent_names(tower: str, k: int) -> list[str]:
    """``[f"{tower}_lat_0", ...]``, ``k`` names."""
    return [f"{tower}_lat_{i}" for i in range(int(k))]


class TowerReducer:
    """``fit(side, rows)`` on training rows, then ``transform(side, n_rows) -> float32 [n_rows, k * towers]``.

    ``components_``: ``{tower: float64 [k, n_hash]}`` (rows beyond the rank the training rows allow are 0).
    """

    def __init__(self, k: int = 16, seed: int = 0, towers: tuple[str, ...] = TOWERS) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not LATENT_MIN <= int(k) <= LATENT_MAX:
            raise QuantmlInputError(
                f"data.text.latent_dim={k!r} must be a whole number in {LATENT_MIN}..{LATENT_MAX} (16 to 64 typical)"
            )
        self.k = int(k)
        self.seed = int(seed)
        self.towers = tuple(towers)

    @property
    def names(self) -> list[str]:
        return [n for t in self.towers for n in latent_names(t, self.k)]

    def fit(self, side: Mapping[str, sp.spmatrix], rows: np.ndarray) -> TowerReducer:
        """Fit each tower's SVD on ``side[tower][rows]`` (only those rows are ever read)."""
        from sklearn.decomposition import TruncatedSVD

        rows = np.asarray(rows, dtype=np.int64)
        self.components_ = {}
        self.n_fit_ = {}
        for tower in self.towers:
            if tower not in side:
                raise QuantmlInputError(f"the text side matrices lack the {tower!r} tower; rebuild the text features")
            X = sp.csr_matrix(side[tower])[rows]
            X = X[np.flatnonzero(X.getnnz(axis=1))].astype(np.float64)
            comp = np.zeros((self.k, X.shape[1]))
            rank = min(self.k, X.shape[0] - 1, X.shape[1] - 1)
            if rank >= 1:
                svd = TruncatedSVD(n_components=rank, algorithm="randomized", n_iter=7, random_state=self.seed)
                svd.fit(X)
                comp[:rank] = svd.components_
            self.components_[tower] = comp
            self.n_fit_[tower] = int(X.shape[0])
        return self

    def transform(self, side: Mapping[str, sp.spmatrix] | None, n_rows: int) -> np.ndarray:
        """float32 [n_rows, k * len(towers)]; a tower absent from ``side`` (serving without text) gives 0."""
        out = np.zeros((int(n_rows), self.k * len(self.towers)), dtype=np.float32)
        for j, tower in enumerate(self.towers):
            X = (side or {}).get(tower)
            if X is None:
                continue
            if X.shape[0] != n_rows:
                raise QuantmlInputError(f"text side matrix {tower!r} has {X.shape[0]} rows for {n_rows} panel rows")
            comp = self.components_[tower]
            if X.shape[1] != comp.shape[1]:
                raise QuantmlInputError(
                    f"text side matrix {tower!r} has {X.shape[1]} hash columns, the reducer was fitted on "
                    f"{comp.shape[1]}: build the text features with the training run's data.text.n_hash"
                )
            out[:, j * self.k : (j + 1) * self.k] = np.asarray(sp.csr_matrix(X).astype(np.float64) @ comp.T)
        return out
