"""Raw text as a modality: bucketing posts into bars, two sparse towers, robust statistics, the per-fold
reducer (docs/text.md)."""

from quantml.features.text.build import (
    DEFAULTS,
    TextFeatures,
    attach_text,
    build_text,
    prepare_text,
    serving_text,
    text_settings,
)
from quantml.features.text.reducer import TowerReducer, latent_names
from quantml.features.text.stats import STAT_NAMES
from quantml.features.text.towers import TOWERS

__all__ = [
    "DEFAULTS",
    "STAT_NAMES",
    "TOWERS",
    "TextFeatures",
    "TowerReducer",
    "attach_text",
    "build_text",
    "latent_names",
    "prepare_text",
    "serving_text",
    "text_settings",
]
