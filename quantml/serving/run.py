"""``quantml predict`` as a library call: composed config in, parquet file out (and, with
``log_dir=``, the rows appended to that directory's keyed prediction log, ``source="predict"``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from quantml.contracts.logs import PREDICTION_LOG, PREDICTION_LOG_COLUMNS, SOURCE_PREDICT
from quantml.registry.store import RegistryStore
from quantml.serving.logs import append_log
from quantml.serving.predict import ResolvedModel, default_output, predict_panel, resolve_model, write_predictions

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
    log_dir: Path | None = None
    logged: int = 0  # rows new to the prediction log (the others were already there: same key)


def log_predictions(log_dir: str | Path, frame: pd.DataFrame, source: str = SOURCE_PREDICT) -> int:
    """Append prediction-contract rows to ``<log_dir>/predictions`` with ``source`` and the wall-clock
    ``logged_at``; returns how many were new (a row whose key is logged already is skipped)."""
    rows = frame.assign(source=source, logged_at=pd.Timestamp.now(tz="UTC"))
    return append_log(log_dir, PREDICTION_LOG, rows.reindex(columns=list(PREDICTION_LOG_COLUMNS)))


def run_predict(cfg: DictConfig) -> PredictResult:
    """Load ``cfg.data``, predict with ``cfg.model``, write ``cfg.output`` and, with ``cfg.log_dir``,
    append the rows to its prediction log (see conf/predict.yaml)."""
    from quantml.serving.source_data import is_model_source, load_serving_panel
    from quantml.serving.text_source import serving_text_source

    store = RegistryStore(cfg.tracking_uri)
    model = str(cfg.model)
    pinned = None
    if is_model_source(cfg.data):  # data=model: the version's own data config, so resolve it first
        pinned = resolve_model(model, store)
        panel, model = load_serving_panel(cfg.data, pinned, store), pinned.load_uri
    else:
        panel = load_serving_panel(cfg.data, None, store)
    text = serving_text_source(cfg, pinned, store)  # text.path=, else the data config's (docs/text.md)
    frame, resolved = predict_panel(model, panel, store=store, last_only=bool(cfg.last_only), text=text)
    output = write_predictions(frame, cfg.output or default_output(resolved))
    log_dir = cfg.get("log_dir")
    if log_dir in (None, ""):
        return PredictResult(frame, resolved, output)
    log_dir = Path(str(log_dir)).expanduser()
    return PredictResult(frame, resolved, output, log_dir, log_predictions(log_dir, frame))
