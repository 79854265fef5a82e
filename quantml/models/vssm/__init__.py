"""``backbone=vssm``: a regime-latent variational state-space forecaster (docs/vssm.md)."""

from quantml.models.vssm.model import VSSMForecaster
from quantml.models.vssm.names import POSTERIOR_FIGURE, REGIME_COLUMN_PREFIX, TRANSITION_FIGURE, regime_column

__all__ = ["VSSMForecaster", "POSTERIOR_FIGURE", "REGIME_COLUMN_PREFIX", "TRANSITION_FIGURE", "regime_column"]
