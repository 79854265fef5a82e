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
from quantml.serving.text_source import TextSource, serving_text_source

__all__ = [
    "PaperResult",
    "PaperSession",
    "PaperSettings",
    "PaperState",
    "PredictResult",
    "ResolvedModel",
    "TextSource",
    "apply_signal",
    "data_overrides",
    "default_output",
    "log_predictions",
    "predict_panel",
    "resolve_model",
    "run_paper",
    "run_paper_config",
    "run_predict",
    "serving_text_source",
    "write_predictions",
]
