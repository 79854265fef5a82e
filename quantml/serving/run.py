"""``quantml predict`` as a library call: composed config in, parquet file out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from quantml.registry.store import RegistryStore
from quantml.serving.predict import ResolvedModel, default_output, predict_panel, write_predictions

_SUFFIXES = (".parquet", ".pq", ".csv")


def data_overrides(overrides: list[str]) -> list[str]:
    """Turn ``data=<file or directory>`` into ``data=parquet data.path=<absolute path>``.

    Any other ``data=NAME`` stays a choice of the ``data`` config group.
    """
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+~") == "data" and _looks_like_path(value):
            out += ["data=parquet", f"data.path={Path(value).expanduser().resolve()}"]
        else:
            out.append(item)
    return out


def _looks_like_path(value: str) -> bool:
    """A file name, an explicit path, or something that exists; not a (nested) group choice."""
    return (
        value.lower().endswith(_SUFFIXES)
        or value.startswith(("/", "./", "../", "~"))
        or Path(value).expanduser().exists()
    )


@dataclass
class PredictResult:
    frame: pd.DataFrame
    resolved: ResolvedModel
    output: Path


def run_predict(cfg: DictConfig) -> PredictResult:
    """Load ``cfg.data``, predict with ``cfg.model``, write ``cfg.output`` (see conf/predict.yaml)."""
    from quantml.data import load_panel

    panel = load_panel(cfg.data)
    store = RegistryStore(cfg.tracking_uri)
    frame, resolved = predict_panel(str(cfg.model), panel, store=store, last_only=bool(cfg.last_only))
    output = write_predictions(frame, cfg.output or default_output(resolved))
    return PredictResult(frame, resolved, output)
