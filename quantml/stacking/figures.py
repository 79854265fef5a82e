"""The stack's figures, drawn like every quantml figure (:mod:`quantml.market.figures`: an Agg
``Figure``, no pyplot).

``regime_gate_figure``: the ``regime_gate`` combiner's soft weights over the experts through time
(a stacked area of each timestamp's mean weight over the symbols), with the mean of a regime
feature beneath when one is given::

    w = gate.weights(rows, experts)
    fig = regime_gate_figure(w, rows["regime__regime_vol_z"], rows["timestamp"])
    figure_png(fig)                              # quantml.market.figures
"""

from __future__ import annotations

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from quantml.contracts import QuantmlInputError
from quantml.market.figures import new_figure


def _per_timestamp(values: pd.DataFrame, timestamps) -> pd.DataFrame:
    ts = pd.DatetimeIndex(np.asarray(timestamps))
    if len(ts) != len(values):
        raise QuantmlInputError(
            f"regime_gate_figure: {len(ts)} timestamps for {len(values)} weight rows; pass one timestamp per row "
            "(rows['timestamp'])"
        )
    frame = values.reset_index(drop=True)
    frame.index = ts
    return frame.groupby(level=0, sort=True).mean()


def regime_gate_figure(weights: pd.DataFrame, regime: pd.Series | None, timestamps) -> Figure:
    """Stacked area of the experts' mean gate weight per timestamp (one column of ``weights`` per
    expert, one row per predicted row; ``timestamps``: each row's timestamp), and, when ``regime``
    (one value per row) is given, its mean per timestamp in a panel below. Rows with NaN weights
    (a NaN regime input) are left out of the means."""
    experts = [str(c) for c in weights.columns]
    per_ts = _per_timestamp(weights.astype(np.float64), timestamps)
    fig = new_figure(7.5, 5.2 if regime is not None else 3.6)
    axes = fig.subplots(2 if regime is not None else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    shown = per_ts.dropna(how="any")
    if len(shown) and experts:
        ax.stackplot(shown.index, shown.to_numpy().T, labels=experts, alpha=0.85)
        ax.legend(loc="upper left", fontsize=7, ncol=min(len(experts), 6))
    else:
        ax.text(0.5, 0.5, "no gate weights", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean weight")
    ax.set_title("regime gate: weights over the experts")
    if regime is not None:
        values = pd.DataFrame({"regime": np.asarray(regime, dtype=np.float64)})
        line = _per_timestamp(values, timestamps)["regime"]
        name = getattr(regime, "name", None) or "regime"
        axes[1].plot(line.index, line.to_numpy(), color="tab:grey", lw=0.9)
        axes[1].axhline(0.0, color="k", lw=0.5, ls=":")
        axes[1].set_ylabel("mean")
        axes[1].set_title(str(name), fontsize=9)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("timestamp")
    return fig
