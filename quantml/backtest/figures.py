"""Figures of a backtest, in the one figure style (:mod:`quantml.market.figures`: pyplot-free
``Figure`` objects on an Agg canvas; callers save or log them)."""

from __future__ import annotations

import numpy as np

from quantml.backtest.vectorised import BacktestResult
from quantml.market.figures import new_figure, plot_times


def equity_figure(result: BacktestResult, title: str = "after-cost backtest", split_at=None):
    """Equity (cumulative after-cost PnL) with gross equity, drawdown and turnover panels.

    ``split_at``: a timestamp drawn as a vertical line (e.g. the tuning / hold-out boundary).
    """
    bars = result.bars
    times = plot_times(bars.index)
    fig = new_figure(10, 7)
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1, 1]})
    axes[0].plot(times, bars["equity"], label="after cost", color="C0")
    axes[0].plot(times, bars["gross"].cumsum(), label="gross", color="C7", lw=0.8)
    if result.horizon_pnl is not None and result.horizon_pnl.shape[1] > 1:
        for h in result.horizon_pnl.columns:
            axes[0].plot(times, result.horizon_pnl[h].cumsum(), lw=0.8, ls="--", label=f"bucket {h}")
    s = result.stats
    axes[0].set_title(
        f"{title}: Sharpe {s['sharpe']:.2f}, ann. return {s['ann_return']:.2%}, max DD {s['max_drawdown']:.2%}"
    )
    axes[0].set_ylabel("cumulative PnL")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[1].fill_between(times, bars["drawdown"], 0.0, color="C3", alpha=0.5)
    axes[1].set_ylabel("drawdown")
    axes[2].plot(times, bars["turnover"], color="C2", lw=0.8)
    axes[2].set_ylabel("turnover")
    if split_at is not None:
        for ax in axes:
            ax.axvline(split_at, color="k", ls=":", lw=1)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def positions_figure(result: BacktestResult, title: str = "target positions"):
    """Stacked target positions per symbol over time."""
    pos = result.positions
    fig = new_figure(10, 4)
    ax = fig.subplots()
    for s in pos.columns:
        ax.plot(plot_times(pos.index), pos[s], lw=0.8, label=str(s))
    ax.plot(plot_times(pos.index), np.abs(pos).sum(axis=1), color="k", lw=1, label="gross")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    return fig
