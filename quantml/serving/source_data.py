"""``data=model``: the panel a version was trained on, read back from its source run's resolved config.

``quantml paper``, ``quantml monitor`` and ``quantml predict`` take ``data=model`` (conf/data/model.yaml)
so the data settings of a training command need not be typed again (and cannot be typed differently):
the ``data`` section of the source run's ``config/config.yaml`` is loaded, with any ``data.symbols=`` /
``data.end=`` given on the command line on top.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L

MODEL_SOURCE = "model"  # data.source of conf/data/model.yaml
OVERRIDABLE = ("symbols", "end")  # data.* keys a command line may set on top of the source run's


def is_model_source(data_cfg: Mapping | None) -> bool:
    return data_cfg is not None and data_cfg.get("source") == MODEL_SOURCE


def model_data_config(data_cfg: Mapping, resolved, store) -> DictConfig:
    """The ``data`` config of ``resolved``'s source run, with the command line's :data:`OVERRIDABLE` keys."""
    from quantml.tracking import RunReader
    from quantml.tracking.reader import RunLayoutError

    label = f"models:/{resolved.name}/{resolved.version}" if resolved.name else resolved.load_uri
    if not resolved.run_id:
        raise QuantmlInputError(f"data=model: {label} names no source run; give the panel with data=<config or file>")
    reader = RunReader(store.tracking_uri, client=store.client)
    tags = dict(reader.get_run(resolved.run_id).data.tags)
    if L.run_kind(tags) == L.KIND_ROUTE:
        raise QuantmlInputError(
            f"data=model: {label} is a route map, whose entries may come from different panels; give the panel "
            "with data=<config or file> (e.g. data=synthetic data.freq=5m ...)"
        )
    try:
        source = reader.resolved_config(resolved.run_id)
    except RunLayoutError as exc:
        raise QuantmlInputError(f"data=model: {exc}; give the panel with data=<config or file>") from None
    if "data" not in source:
        raise QuantmlInputError(f"data=model: the source run of {label} records no data config; give data=<config>")
    data = OmegaConf.create(OmegaConf.to_container(source.data, resolve=True))
    for key in OVERRIDABLE:
        value = data_cfg.get(key)
        if value is not None:
            data[key] = value
    return data


def load_serving_panel(data_cfg: Mapping, resolved, store) -> pd.DataFrame:
    """``load_panel`` of ``data_cfg``, or of the version's own data config with ``data=model``."""
    from quantml.data import load_panel

    if is_model_source(data_cfg):
        return load_panel(model_data_config(data_cfg, resolved, store))
    return load_panel(data_cfg)
