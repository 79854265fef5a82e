"""Signals: forecasts -> edge, score, confidence, action per horizon."""
from quantml.signals.core import SignalConfig, compute_signals, confidence_score

__all__ = ["SignalConfig", "compute_signals", "confidence_score"]
