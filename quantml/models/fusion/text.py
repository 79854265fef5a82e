"""Which features the residual-gate fusion reads as text, which of them measure text activity, and
when a row has no text at all.

Rules (on the panel's ``feature_modalities``):

- **text features**: every feature of modality ``text`` (``social_velocity``, ``sentiment_ewm``,
  ``social_posts_missing``, a text helper's latents ...). The base model never sees them.
- **missing flags**: the text features whose name ends in ``_missing``.
- **activity features** (the gate's inputs): the text features that are not flags and whose name has a
  ``_``-separated word in :data:`ACTIVITY_WORDS` (``social_velocity``, ``social_accel``,
  ``text_post_volume``, ``text_burstiness`` ...). With none, the gate reads every text feature.
- **content features** (the delta's inputs): every text feature that is not a flag.
- a row **has no text** when any text missing flag is set (> 0.5) or none of its content features is
  finite; its gate is held at 0, so its forecast is the base's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

TEXT_MODALITY = "text"
MISSING_SUFFIX = "_missing"
ACTIVITY_WORDS = frozenset(
    {"velocity", "accel", "volume", "activity", "burst", "burstiness", "count", "posts", "authors", "intensity"}
)


def is_activity(name: str) -> bool:
    """True when a text feature's name says activity/volume (a word of :data:`ACTIVITY_WORDS`)."""
    return not name.endswith(MISSING_SUFFIX) and bool(ACTIVITY_WORDS & set(name.lower().split("_")))


@dataclass(frozen=True)
class TextColumns:
    """Positions into a panel's ``feature_names`` (each a sorted int array).

    base : the non-text features (what the base model sees).
    content : text features without the missing flags (the delta's inputs).
    activity : the gate's inputs (a subset of ``content``).
    flags : the text ``*_missing`` flags.
    """

    names: tuple[str, ...]
    base: np.ndarray
    content: np.ndarray
    activity: np.ndarray
    flags: np.ndarray

    @classmethod
    def of(cls, feature_names, modalities: dict) -> TextColumns:
        names = tuple(str(n) for n in feature_names)
        text = [i for i, n in enumerate(names) if modalities.get(n) == TEXT_MODALITY]
        flags = [i for i in text if names[i].endswith(MISSING_SUFFIX)]
        content = [i for i in text if i not in flags]
        activity = [i for i in content if is_activity(names[i])] or content
        base = [i for i in range(len(names)) if i not in set(text)]
        return cls(names, *(np.asarray(v, dtype=np.int64) for v in (base, content, activity, flags)))

    @property
    def has_text(self) -> bool:
        return len(self.content) > 0

    def names_of(self, part: str) -> list[str]:
        return [self.names[i] for i in getattr(self, part)]

    def available(self, X: np.ndarray) -> np.ndarray:
        """bool [n]: rows of the raw features ``X`` [n, F] that carry text (see the module rules)."""
        n = len(X)
        if not self.has_text:
            return np.zeros(n, dtype=bool)
        ok = np.isfinite(X[:, self.content]).any(axis=1)
        if len(self.flags):
            ok &= ~(np.nan_to_num(X[:, self.flags], nan=0.0) > 0.5).any(axis=1)
        return ok


_WARNED_NO_TEXT: set[tuple[str, ...]] = set()  # feature sets already warned about in this process
NO_TEXT_WARNING = (
    "fusion=residual_gate: the features have no text (no feature of modality 'text'), so the gate has nothing "
    "to open on and the model is its base; intended with ablation=no_text, else give it text: "
    "data.text_stream=true (the synthetic raw posts) or data.text.path=posts.parquet (docs/text.md), or a "
    "feature set with the social text block (feature_set=full or full_durations)"
)


def warn_if_no_text(columns: TextColumns) -> None:
    """Log :data:`NO_TEXT_WARNING` once per feature set (a run fits one per fold) when ``columns`` have no text."""
    if columns.has_text or columns.names in _WARNED_NO_TEXT:
        return
    _WARNED_NO_TEXT.add(columns.names)
    log.warning(NO_TEXT_WARNING)
