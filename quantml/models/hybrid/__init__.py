"""The three-stage cross-asset hybrid (``backbone=hybrid``, docs/hybrid.md): a cross-sectional encoder,
an optional residual boost and a temporal sequence backbone."""

from quantml.models.hybrid.forecaster import ATTENTION_FIGURE, MODALITY, HybridForecaster

__all__ = ["HybridForecaster", "ATTENTION_FIGURE", "MODALITY"]
