"""Serving: batch prediction with a registered model (``quantml predict``)."""

from quantml.serving.predict import (
    ResolvedModel,
    apply_signal,
    default_output,
    predict_panel,
    resolve_model,
    write_predictions,
)
from quantml.serving.run import PredictResult, data_overrides, run_predict

__all__ = [
    "PredictResult",
    "ResolvedModel",
    "apply_signal",
    "data_overrides",
    "default_output",
    "predict_panel",
    "resolve_model",
    "run_predict",
    "write_predictions",
]
