"""Signals: forecasts -> edge, score, confidence, action per horizon."""

from quantml.signals.core import (
    ACTION_SIGN,
    ACTIONS,
    SIGNAL_TAG,
    SignalConfig,
    apply_thresholds,
    compute_signals,
    confidence_score,
    decide_actions,
)

__all__ = [
    "ACTIONS",
    "ACTION_SIGN",
    "SIGNAL_TAG",
    "SignalConfig",
    "apply_thresholds",
    "compute_signals",
    "confidence_score",
    "decide_actions",
]
