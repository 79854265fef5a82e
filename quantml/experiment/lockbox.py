"""The run's lockbox: where it starts (pinned, recorded for this data, or computed) and the
final model's predictions on it, the only ``holdout_*`` figures."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from quantml.evaluation.evaluate import Scorer
from quantml.experiment.fitting import prediction_frame
from quantml.experiment.prepare import PreparedData
from quantml.signals import SignalConfig, compute_signals
from quantml.tracking import RunWriter
from quantml.validation.lockbox import Lockbox, calendar_of, computed_start, parse_holdout, pinned_start

log = logging.getLogger(__name__)


def resolve_lockbox(validation_cfg, prep: PreparedData, writer: RunWriter | None) -> Lockbox:
    """The lockbox of a run on ``prep``'s data.

    ``validation.holdout`` off: none. ``validation.holdout_start`` set: that date (the first
    bar at or after it). Otherwise the start first recorded for this data fingerprint in the
    store, so every run on the same data is judged on the same stretch; otherwise computed
    from ``validation.holdout`` on the data's calendar (and recorded by this run)."""
    holdout = validation_cfg.get("holdout")
    if parse_holdout(holdout) is None:
        return Lockbox(None, "none")
    calendar = calendar_of(prep.panel["timestamp"])
    pinned = validation_cfg.get("holdout_start")
    if pinned not in (None, ""):
        return Lockbox(pinned_start(pinned, calendar), "pinned")
    recorded = writer.recorded_lockbox(prep.fingerprint) if writer is not None else None
    if recorded is not None:
        start, run_id = recorded
        return Lockbox(pinned_start(start, calendar), f"recorded:{run_id}")
    return Lockbox(computed_start(calendar, holdout), "computed")


def predict_holdout(model, calibrator, prep: PreparedData, signal: SignalConfig) -> pd.DataFrame | None:
    """The final model's calibrated predictions and signals on the lockbox (None: no lockbox
    rows), in the prediction layout of the OOS frame, ``fold = -1``."""
    if not len(prep.holdout_samples):
        return None
    frame = prediction_frame(model, prep.data.subset(prep.holdout_samples), prep.realised)
    if calibrator is not None:
        frame = calibrator.transform(frame, copy=False)
    frame = compute_signals(frame, signal, copy=False)
    frame["fold"] = -1
    frame["path"] = 0
    return frame


def holdout_scorer(score: Scorer, prep: PreparedData) -> Scorer:
    """``score`` with the lockbox's bars as the book's calendar."""
    return replace(score, market=prep.market("holdout"))


def lockbox_check(prep: PreparedData, embargo) -> dict:
    """The leakage audit's ``lockbox`` check: no development label reaches within ``embargo``
    of the lockbox's first bar, and no lockbox sample is a development sample."""
    if not prep.lockbox.enabled:
        return {"ok": True, "count": 0, "detail": "no lockbox (validation.holdout=0)"}
    start = prep.lockbox.start.tz_convert("UTC").tz_localize(None).to_datetime64()
    reach = prep.data.t1[prep.samples] >= start - pd.Timedelta(embargo).to_timedelta64()
    shared = np.intersect1d(prep.samples, prep.holdout_samples)
    count = int(reach.sum() + len(shared))
    return {
        "ok": count == 0,
        "count": count,
        "detail": f"lockbox from {prep.lockbox.tag()}: {int(reach.sum())} development label(s) reach it "
        f"(embargo {pd.Timedelta(embargo)}), {len(shared)} sample(s) on both sides",
    }
