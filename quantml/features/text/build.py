"""The text modality's feature build: a raw stream -> dense statistics for the feature matrix and the
two towers' sparse side matrices (rows aligned to the panel), with the settings of ``data.text``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.features.text.bucket import bucket_rows
from quantml.features.text.lexicon import LEXICONS
from quantml.features.text.stats import STAT_NAMES, text_stats
from quantml.features.text.towers import build_towers, tokenize

# data.text keys and defaults (path / entity_map are read by quantml.data.text_stream)
DEFAULTS = {"path": None, "entity_map": None, "n_hash": 1024, "latent_dim": 16, "window": 24, "lexicon": "builtin"}
MODALITY = "text"


def text_settings(cfg_text: Mapping | None) -> dict:
    """``data.text`` with defaults filled in, checked (``QuantmlInputError`` naming the key and the fix)."""
    cfg = dict(cfg_text or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise QuantmlInputError(f"data.text has no setting(s) {unknown}; its settings are {sorted(DEFAULTS)}")
    out = {k: (v if cfg.get(k) is None else cfg[k]) for k, v in DEFAULTS.items()}
    for key, lo, hi in (("n_hash", 16, 1 << 20), ("latent_dim", 2, 128), ("window", 1, 100_000)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise QuantmlInputError(f"data.text.{key}={v!r} must be a whole number in {lo}..{hi}")
        out[key] = int(v)
    if out["lexicon"] not in LEXICONS:
        raise QuantmlInputError(f"data.text.lexicon={out['lexicon']!r} must be one of {list(LEXICONS)}")
    return out


@dataclass
class TextFeatures:
    """``frame``: float32 [n, len(STAT_NAMES)] statistics; ``side``: ``{tower: csr float32 [n, n_hash]}``;
    ``rows``: int64 [m] bucket row of each stream row (-1: outside the panel); ``settings``: data.text."""

    frame: pd.DataFrame
    side: dict
    rows: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def modalities(self) -> dict[str, str]:
        return {name: MODALITY for name in self.frame.columns}


def build_text(panel: pd.DataFrame, stream: pd.DataFrame | None, settings: Mapping) -> TextFeatures:
    """Bucket ``stream`` (validated, or None: no text) into ``panel``'s bars; statistics and towers."""
    s = text_settings(settings)
    rows = bucket_rows(panel, stream) if stream is not None else np.zeros(0, np.int64)
    tokens = tokenize(stream["text"].to_numpy()) if stream is not None and len(stream) else None
    frame = text_stats(panel, stream, rows, s["window"], s["lexicon"], tokens)
    side = build_towers(stream, rows, len(panel), s["n_hash"], tokens)
    return TextFeatures(frame, side, rows, s)


def prepare_text(cfg_data, panel: pd.DataFrame, drop_modalities=()) -> TextFeatures | None:
    """The text features of a training run: None when ``text`` is dropped (``ablation=no_text``) or the data
    has no raw text stream (``data.text_stream`` off and no ``data.text.path``)."""
    from quantml.data.text_stream import load_text_stream, text_config

    if MODALITY in set(drop_modalities or ()):
        return None
    settings = text_settings(text_config(cfg_data))
    stream = load_text_stream(cfg_data)
    if stream is None:
        return None
    return build_text(panel, stream, settings)


def serving_text(panel: pd.DataFrame, stream: pd.DataFrame | None, settings: Mapping) -> TextFeatures:
    """The text features of a served panel: ``stream`` validated with the training run's entity map, or
    none at all (the statistics say missing, the side matrices are empty, the latents come out 0)."""
    from quantml.data.text_stream import validate_text_stream

    s = text_settings({k: v for k, v in dict(settings).items() if k in DEFAULTS})
    if stream is not None:
        stream = validate_text_stream(stream, s.get("entity_map"), "the served text stream")
    return build_text(panel, stream, s)


def attach_text(features, text: TextFeatures):
    """``features`` (a :class:`~quantml.features.build.FeatureMatrix`) with the text statistics appended as
    columns (modality ``text``); a name already in the frame is an error."""
    clash = sorted(set(features.frame.columns) & set(text.frame.columns))
    if clash:
        raise QuantmlInputError(f"text statistics {clash} clash with features of the feature set; rename those columns")
    frame = pd.concat([features.frame, text.frame.set_axis(features.frame.index)], axis=1)
    return replace(features, frame=frame, modalities={**features.modalities, **text.modalities})


__all__ = [
    "DEFAULTS",
    "STAT_NAMES",
    "TextFeatures",
    "attach_text",
    "build_text",
    "prepare_text",
    "serving_text",
    "text_settings",
]
