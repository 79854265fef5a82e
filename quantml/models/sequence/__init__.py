"""Sequence backbones on Lightning behind the :class:`~quantml.models.base.Forecaster` interface.

``mlp``, ``lstm``, ``gru``, ``tcn``, ``tsmixer``, ``patchtst``, ``itransformer`` and a
Temporal Fusion Transformer (``tft``); see ``docs/backbones.md``.
"""

from quantml.models.sequence.itransformer import ITransformerForecaster
from quantml.models.sequence.mlp import MLPForecaster
from quantml.models.sequence.patchtst import PatchTSTForecaster
from quantml.models.sequence.rnn import GRUForecaster, LSTMForecaster
from quantml.models.sequence.tcn import TCNForecaster
from quantml.models.sequence.tft import TFTForecaster
from quantml.models.sequence.trainer import SequenceForecaster
from quantml.models.sequence.tsmixer import TSMixerForecaster

BACKBONES = {
    "mlp": MLPForecaster,
    "lstm": LSTMForecaster,
    "gru": GRUForecaster,
    "tcn": TCNForecaster,
    "tsmixer": TSMixerForecaster,
    "patchtst": PatchTSTForecaster,
    "itransformer": ITransformerForecaster,
    "tft": TFTForecaster,
}

__all__ = ["SequenceForecaster", "BACKBONES", *[cls.__name__ for cls in BACKBONES.values()]]
