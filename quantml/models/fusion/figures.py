"""The fusion's figure: gate opening and text contribution against text activity."""

from __future__ import annotations

import pandas as pd


def gate_figure(summary: pd.DataFrame, title: str = ""):
    """Mean gate opening and text contribution per activity decile (``summary`` from
    :func:`~quantml.models.fusion.tabular.activity_summary`: ``activity, gate, text_contribution, n``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(summary["activity"], summary["gate"], marker="o", label="mean gate opening")
    ax.plot(summary["activity"], summary["text_contribution"], marker="s", label="text contribution")
    ax.set_xlabel("text activity (mean standardised activity feature, decile means)")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.set_title(f"residual-gate fusion{': ' + title if title else ''}")
    ax.legend()
    fig.tight_layout()
    return fig
