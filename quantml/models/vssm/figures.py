"""Figures of a fitted VSSM: the filtered regime posterior per bar, and the learned transition matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd

_MAX_POINTS = 4000


def posterior_figure(posterior: pd.DataFrame, columns: list[str]):
    """Stacked areas of the cross-symbol mean filtered posterior per bar (``posterior``: one row per
    (symbol, timestamp) with the ``columns`` regime_p*), and one line of P(last regime) per symbol."""
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    mean = posterior.groupby("timestamp")[columns].mean().sort_index()
    step = max(1, len(mean) // _MAX_POINTS)
    mean = mean.iloc[::step]
    top.stackplot(mean.index, *[mean[c].to_numpy() for c in columns], labels=columns, alpha=0.8)
    top.set_ylim(0, 1)
    top.set_ylabel("mean P(regime)")
    top.set_title("VSSM filtered regime posterior (observations up to each bar)")
    top.legend(loc="upper right", fontsize=8)
    last = columns[-1]
    for symbol, part in posterior.groupby("symbol"):
        part = part.sort_values("timestamp").iloc[::step]
        bottom.plot(part["timestamp"], part[last].to_numpy(), lw=0.7, label=str(symbol))
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel(f"P({last}) per symbol")
    if posterior["symbol"].nunique() <= 12:
        bottom.legend(loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout()
    return fig


def transition_figure(transition: np.ndarray):
    """Heatmap of the [K, K] transition matrix (row = from, column = to)."""
    import matplotlib.pyplot as plt

    K = len(transition)
    fig, ax = plt.subplots(figsize=(2.2 + 0.8 * K, 1.8 + 0.8 * K))
    im = ax.imshow(transition, vmin=0, vmax=1, cmap="viridis")
    for i in range(K):
        for j in range(K):
            ax.text(
                j, i, f"{transition[i, j]:.3f}", ha="center", va="center", color="w" if transition[i, j] < 0.6 else "k"
            )
    ax.set_xticks(range(K), [f"to {k}" for k in range(K)])
    ax.set_yticks(range(K), [f"from {k}" for k in range(K)])
    ax.set_title("VSSM regime transition")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
