"""The served model as one object: panel in, prediction contract out."""

from quantml.bundle.model import FeatureContract, ModelBundle, warmup_bars

__all__ = ["FeatureContract", "ModelBundle", "warmup_bars"]
