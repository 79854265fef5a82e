"""Serving: batch prediction with a registered model (``quantml predict``) and paper trading (``quantml paper``)."""

from quantml.serving.paper import PaperResult, PaperSession, PaperSettings, PaperState, run_paper, run_paper_config
from quantml.serving.predict import (
    ResolvedModel,
    apply_signal,
    default_output,
    predict_panel,
    resolve_model,
    write_predictions,
)
from quantml.serving.run import PredictResult, data_overrides, log_predictions, run_predict

__all__ = [
    "PaperResult",
    "PaperSession",
    "PaperSettings",
    "PaperState",
    "PredictResult",
    "ResolvedModel",
    "apply_signal",
    "data_overrides",
    "default_output",
    "log_predictions",
    "predict_panel",
    "resolve_model",
    "run_paper",
    "run_paper_config",
    "run_predict",
    "write_predictions",
]
