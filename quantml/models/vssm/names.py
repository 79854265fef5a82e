"""Names the VSSM backbone writes: diagnostics columns, the figure, its capacity key (for the run layout)."""

from __future__ import annotations

from quantml.contracts import run_layout as L

REGIME_COLUMN_PREFIX = L.REGIME_COLUMN_PREFIX  # Forecast.diagnostics / prediction columns regime_p0, regime_p1, ...
POSTERIOR_FIGURE = L.VSSM_POSTERIOR_FIGURE  # figures/<name> on the parent run (the final model's fit data)
TRANSITION_FIGURE = L.VSSM_TRANSITION_FIGURE  # figures/<name>: the learned transition matrix
CAPACITY_EPOCHS = "epochs"  # capacity_ key: training epochs of the best (early-stopped) state


def regime_column(k: int) -> str:
    """``regime_p<k>``: the filtered posterior P(z_t = k | observations up to t)."""
    return f"{REGIME_COLUMN_PREFIX}{int(k)}"
