"""Metrics of a prediction frame's optional diagnostic columns (``quantml.contracts.schema.DIAGNOSTIC_FIELDS``).

A fusion model's frames carry ``gate`` (the text gate's opening) and ``text_contribution`` (the share of
the expected return's magnitude that came from text); per horizon they give
``<split>_gate_mean/<h>`` and ``<split>_text_contribution/<h>`` (frames without them: no metric).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import run_layout as L

# metric names (moved to quantml.contracts.run_layout by the lead)
METRIC_GATE_MEAN = L.METRIC_GATE_MEAN
METRIC_TEXT_CONTRIBUTION = L.METRIC_TEXT_CONTRIBUTION
_COLUMNS = {"gate": METRIC_GATE_MEAN, "text_contribution": METRIC_TEXT_CONTRIBUTION}


def diagnostic_metrics(frame: pd.DataFrame, split: str) -> dict[str, float]:
    """``{f"{split}_gate_mean/{h}": mean gate, f"{split}_text_contribution/{h}": mean contribution}``
    over the finite values of each horizon of ``frame`` (long layout with ``horizon``)."""
    out: dict[str, float] = {}
    present = [c for c in _COLUMNS if c in frame.columns]
    if not present or "horizon" not in frame.columns:
        return out
    for h, part in frame.groupby("horizon", sort=False):
        for column in present:
            values = pd.to_numeric(part[column], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                out[f"{split}_{_COLUMNS[column]}/{h}"] = float(values.mean())
    return out
