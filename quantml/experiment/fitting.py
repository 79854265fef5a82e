"""Fit a backbone and its calibrator; forecasts in the long contract layout joined with what was realised."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from quantml.contracts import QuantmlInputError
from quantml.evaluation.calibration import fit_calibrator
from quantml.experiment.prepare import REALISED, PreparedData
from quantml.models.base import Forecaster, SampleSet
from quantml.validation import inner_validation_split


def build_model(cfg: DictConfig, horizons: list[str]) -> Forecaster:
    try:
        return instantiate(cfg.backbone, horizons=horizons, seed=int(cfg.seed))
    except Exception as exc:
        raise QuantmlInputError(f"could not build backbone={cfg.backbone.get('_target_')}: {exc}") from exc


def prediction_frame(model: Forecaster, part: SampleSet, realised: pd.DataFrame) -> pd.DataFrame:
    """Forecasts of ``part`` in the long contract layout (horizon-major), joined with what was realised."""
    frame = model.predict(part).to_frame(part.keys)
    horizons = part.data.horizons
    for name in REALISED:
        if name == "t1" and f"t1@{horizons[0]}" not in realised:
            continue  # a realised table without label ends: the backtest holds by the 0.1 rule
        frame[name] = np.concatenate([realised[f"{name}@{h}"].to_numpy()[part.rows] for h in horizons])
    if "t1" in frame.columns:  # label end per row, UTC like the timestamp
        frame["t1"] = pd.to_datetime(frame["t1"]).dt.tz_localize("UTC")
    frame["ret_next_bar"] = np.tile(realised["ret_next_bar"].to_numpy()[part.rows], len(horizons))
    return frame


def fit_with_calibration(cfg: DictConfig, prep: PreparedData, fit_rows: np.ndarray, valid_rows: np.ndarray):
    """Fit a backbone on ``fit_rows``, a calibrator on its ``valid_rows`` predictions.

    Returns ``(model, calibrator or None, calibrated validation frame or None)``.
    """
    model = build_model(cfg, prep.data.horizons)
    valid = prep.data.subset(valid_rows) if len(valid_rows) else None
    model.fit(prep.data.subset(fit_rows), valid)
    valid_frame = prediction_frame(model, valid, prep.realised) if valid is not None else None
    calibrator = fit_calibrator(valid_frame, cfg.evaluation) if valid_frame is not None else None
    if calibrator is not None:
        valid_frame = calibrator.transform(valid_frame)
    return model, calibrator, valid_frame


def fit_final(cfg: DictConfig, prep: PreparedData, splitter):
    """The model that gets logged: fitted on every sample, calibrated on the last purged slice."""
    positions = np.arange(len(prep.samples))
    fit_pos, valid_pos = inner_validation_split(
        positions, prep.data.t0[prep.samples], prep.data.t1[prep.samples], splitter.valid_fraction, splitter.embargo
    )
    splitter.check_inner_outcomes(valid_pos, prep.data.t0[prep.samples], prep.data.t1[prep.samples], "the final model")
    return fit_with_calibration(cfg, prep, prep.samples[fit_pos], prep.samples[valid_pos])
