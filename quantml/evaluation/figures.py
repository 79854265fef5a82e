"""The report's figures, drawn on ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot).

The style and the helpers (``new_figure``, ``figure_png``, ``close_figures``) are
:mod:`quantml.market.figures`, shared with the backtest's figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from quantml.evaluation.metrics import reliability_table
from quantml.market.figures import close_figures, figure_base64, figure_png, new_figure, plot_times

NOMINAL_COVERAGE = {"coverage_q10": 0.1, "coverage_q50": 0.5, "coverage_q90": 0.9, "coverage_80": 0.8}


def reliability_figure(frame: pd.DataFrame, bins: int = 10) -> Figure:
    """Observed up-frequency vs mean predicted P(up) per bin, raw and calibrated, one panel per horizon."""
    horizons = list(pd.unique(frame["horizon"]))
    fig = new_figure(3.2 * max(len(horizons), 1) + 0.5, 3.4)
    axes = fig.subplots(1, max(len(horizons), 1), squeeze=False)[0]
    for ax, h in zip(axes, horizons):
        part = frame[frame["horizon"] == h]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect")
        series = [("prob_up_raw", "raw", "tab:orange"), ("prob_up", "calibrated", "tab:blue")]
        for col, label, color in series:
            if col not in part.columns or (col == "prob_up_raw" and part[col].equals(part["prob_up"])):
                continue
            tab = reliability_table(part[col], part["dir"], bins)
            ax.plot(tab["prob"], tab["freq"], marker="o", ms=3, color=color, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"reliability {h}")
        ax.set_xlabel("predicted P(up)")
        ax.set_ylabel("observed frequency")
        ax.legend(fontsize=7)
    return fig


def coverage_figure(coverage: pd.DataFrame) -> Figure:
    """Bars of empirical coverage per horizon (``coverage``: index horizon, NOMINAL_COVERAGE columns)."""
    fig = new_figure()
    ax = fig.subplots()
    cols = [c for c in NOMINAL_COVERAGE if c in coverage.columns]
    x = np.arange(len(coverage.index))
    width = 0.8 / max(len(cols), 1)
    for i, col in enumerate(cols):
        bars = ax.bar(x + i * width, coverage[col].to_numpy(np.float64), width, label=col)
        ax.hlines(
            NOMINAL_COVERAGE[col],
            x[0] - width / 2 if len(x) else 0,
            (x[-1] if len(x) else 0) + 0.8,
            colors=bars.patches[0].get_facecolor() if bars.patches else "k",
            ls="--",
            lw=0.8,
        )
    ax.set_xticks(x + width * (len(cols) - 1) / 2, [str(h) for h in coverage.index])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of realised returns (dashed: nominal)")
    ax.set_title("quantile coverage by horizon")
    ax.legend(fontsize=7, ncol=2)
    return fig


def cumulative_ic_figure(ic: dict[str, pd.Series], rank_ic: dict[str, pd.Series]) -> Figure:
    """Cumulative sum of the IC (solid) and Rank IC (dashed) series, one line per horizon."""
    fig = new_figure()
    ax = fig.subplots()
    for i, h in enumerate(ic):
        color = f"C{i}"
        if len(ic[h]):
            ax.plot(plot_times(ic[h].index), ic[h].cumsum().to_numpy(), color=color, label=f"IC {h}")
        if h in rank_ic and len(rank_ic[h]):
            ax.plot(
                plot_times(rank_ic[h].index), rank_ic[h].cumsum().to_numpy(), color=color, ls="--", label=f"Rank IC {h}"
            )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title("cumulative IC")
    ax.set_ylabel("sum of IC")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return fig


def equity_figure(equity: dict[str, pd.Series], benchmark: dict[str, pd.Series]) -> Figure:
    """After-cost cumulative PnL of the forecast long/short per horizon; benchmark dotted."""
    fig = new_figure()
    ax = fig.subplots()
    for i, h in enumerate(equity):
        if len(equity[h]):
            ax.plot(plot_times(equity[h].index), equity[h].to_numpy(), color=f"C{i}", label=f"long/short {h}")
        if h in benchmark and len(benchmark[h]):
            ax.plot(
                plot_times(benchmark[h].index),
                benchmark[h].to_numpy(),
                color=f"C{i}",
                ls=":",
                lw=0.8,
                label=f"equal-weight hold {h}",
            )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title("equity curve (after cost, additive)")
    ax.set_ylabel("cumulative return")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return fig


__all__ = [
    "close_figures",
    "coverage_figure",
    "cumulative_ic_figure",
    "equity_figure",
    "figure_base64",
    "figure_png",
    "new_figure",
    "reliability_figure",
]


def importance_figure(importance: pd.Series, top: int = 25) -> Figure:
    """Horizontal bars of the ``top`` most important features (``importance`` sorted descending)."""
    top_items = importance.head(top)[::-1]
    fig = new_figure(7, max(3, 0.28 * len(top_items)))
    ax = fig.subplots()
    ax.barh(top_items.index, top_items.to_numpy())
    ax.set_title("Feature importance (final model)")
    return fig
