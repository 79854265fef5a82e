"""The hybrid's attention heatmap: which assets each asset attends to (stage 1, mean over timestamps)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def attention_heatmap(attention: pd.DataFrame, span=None):
    """A matplotlib figure of ``attention`` [S, 1 + S] (rows: query assets; columns: ``market`` then the
    assets), each cell annotated; ``span``: ``(first, last, n_timestamps)`` the mean was taken over."""
    import matplotlib.pyplot as plt

    values = attention.to_numpy(dtype=float)
    S, C = values.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * C, 1.0 + 0.6 * S))
    image = ax.imshow(
        values, cmap="viridis", vmin=0.0, vmax=max(float(np.nanmax(values)) if values.size else 1.0, 1e-9)
    )
    ax.set_xticks(range(C), [str(c) for c in attention.columns], rotation=45, ha="right")
    ax.set_yticks(range(S), [str(i) for i in attention.index])
    ax.set_xlabel("attended to (key)")
    ax.set_ylabel("asset (query)")
    for i in range(S):
        for j in range(C):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    title = "hybrid stage 1: attention between assets"
    if span is not None:
        first, last, n = span
        title += f"\nmean over {n} timestamps, {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}"
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
