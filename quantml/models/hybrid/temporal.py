"""Stage 3 of the hybrid: a sequence backbone built from its packaged config.

``quantml/conf/backbone/sequence/base.yaml`` (the keys every sequence backbone shares), then
``quantml/conf/backbone/<name>.yaml`` (its own keys), then the hybrid's ``temporal_kwargs``: the same
backbone ``backbone=<name>`` would train, with the overrides given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import quantml
from quantml.contracts import QuantmlInputError
from quantml.contracts.config import locate
from quantml.models.sequence import BACKBONES, SequenceForecaster

BACKBONE_DIR = Path(quantml.__file__).resolve().parent / "conf" / "backbone"


def temporal_config(name: str, overrides: Mapping | None = None) -> dict:
    """The resolved keys of sequence backbone ``name`` (``_target_`` included) with ``overrides`` on top."""
    from omegaconf import OmegaConf

    if name not in BACKBONES:
        raise QuantmlInputError(
            f"backbone.temporal={name!r} is not a sequence backbone; choose from {sorted(BACKBONES)}"
        )
    own = OmegaConf.to_container(OmegaConf.load(BACKBONE_DIR / f"{name}.yaml"), resolve=True)
    own.pop("defaults", None)
    base = OmegaConf.to_container(OmegaConf.load(BACKBONE_DIR / "sequence" / "base.yaml"), resolve=True)
    extra = dict(overrides or {})
    for key in ("_target_", "horizons", "seed"):
        if key in extra:
            raise QuantmlInputError(
                f"backbone.temporal_kwargs.{key} cannot be set: the hybrid sets it (choose the backbone with "
                "backbone.temporal=lstm|gru|tcn|tft, the seed with seed=)"
            )
    return {**base, **own, **extra}


def build_temporal(name: str, horizons: list[str], seed: int, overrides: Mapping | None = None) -> SequenceForecaster:
    """An unfitted sequence backbone ``name`` (see :func:`temporal_config`)."""
    cfg = temporal_config(name, overrides)
    cls = locate(cfg.pop("_target_"), "backbone.temporal")
    try:
        return cls(list(horizons), seed=int(seed), **cfg)
    except TypeError as exc:
        raise QuantmlInputError(
            f"backbone.temporal_kwargs has a key that {name} does not take ({exc}); see "
            f"quantml/conf/backbone/{name}.yaml and sequence/base.yaml for its settings"
        ) from None
