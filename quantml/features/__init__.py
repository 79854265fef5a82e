"""Causal feature blocks tagged by modality, assembled from a feature-set config."""

from quantml.features.blocks import BLOCKS
from quantml.features.build import FeatureMatrix, build_features, event_activity_mask
from quantml.features.causality import causality_violations

__all__ = [
    "BLOCKS",
    "FeatureMatrix",
    "build_features",
    "causality_violations",
    "event_activity_mask",
]
