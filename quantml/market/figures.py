"""The one figure style: ``matplotlib.figure.Figure`` objects on an Agg canvas, no pyplot.

Figures made this way are not registered with pyplot, so nothing accumulates in a long
sweep: they are freed with the last reference. Every stage that draws (the backtest's
equity and positions, the evaluation report) makes its figures with :func:`new_figure`
and renders them with :func:`figure_png`.

It lives in the market floor because that is the lowest floor both the backtest and the
evaluation (and tuning) can import; ``quantml.contracts`` stays free of matplotlib.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 6.4, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure_base64(fig: Figure) -> str:
    return base64.b64encode(figure_png(fig)).decode("ascii")


def close_figures(figures: dict) -> None:
    """Release the figures' memory (clears them; harmless for pyplot-free figures)."""
    for fig in figures.values():
        fig.clear()


__all__ = ["Figure", "close_figures", "figure_base64", "figure_png", "new_figure"]


def plot_times(index: pd.Index) -> np.ndarray | pd.Index:
    """A tz-aware bar index as naive UTC ``datetime64`` values, which matplotlib converts at once (it
    converts a tz-aware index one Timestamp at a time: 10 s a report at 2M rows). Other indexes as they are."""
    if isinstance(index, pd.DatetimeIndex) and index.tz is not None:
        return index.tz_convert("UTC").tz_localize(None).to_numpy()
    return index
