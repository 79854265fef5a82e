"""Warm start (``warm_start=models:/NAME@active``): a candidate fitted from a registered version
on newer data.

The source version is pinned once (an alias or ``models:/NAME`` = ``@active`` -> one version),
its bundle loaded, and its fitted forecaster handed to every fit of the run (each fold model,
the cross-fitted calibration models and the final model start from it: LightGBM heads continue
boosting from the source's boosters, ``lgb.train(..., init_model=booster)``).

The source model saw every development bar of its run (its folds, gates and final model), so
the candidate's samples must all lie strictly after the source's **training end**: its run's
last development bar (the bar before ``quantml.lockbox_start``, or the run's last bar when it had
no lockbox; read from the run's ``predictions/market.parquet``, which holds exactly those bars).
Every labelled sample of the candidate (development and lockbox alike) needs ``t0`` after it;
anything else is refused with the end and the ``data.start=`` that fixes it. The candidate's
feature contract and horizons must be the source's.

Built for LightGBM only: ridge refits from scratch in seconds (nothing to continue) and the
sequence backbones do not load a source's weights yet; both are refused with a message.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, replace

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.experiment.prepare import PreparedData
from quantml.models.lightgbm_model import LightGBMForecaster
from quantml.tracking.pyfunc import load_bundle
from quantml.tracking.reader import RunReader

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))?$")
WARM_BACKBONES = ("LightGBMForecaster",)


@dataclass(frozen=True)
class WarmSource:
    """The registered version a warm start continues from.

    uri : the configured URI (``models:/NAME@active``); name, version : what it was pinned to;
    run_id : the version's parent run; end : the source's last development bar (UTC);
    forecaster : its fitted forecaster; bundle : its :class:`~quantml.bundle.ModelBundle`.
    """

    uri: str
    name: str
    version: str
    run_id: str
    end: pd.Timestamp
    forecaster: object
    bundle: object

    def tags(self) -> dict[str, str]:
        """The lineage tags of the candidate's parent run (copied to its version by ``register``)."""
        return {
            L.TAG_WARM_START_SOURCE: f"models:/{self.name}/{self.version}",
            L.TAG_WARM_START_RUN: self.run_id,
            L.TAG_WARM_START_AFTER: self.end.isoformat(),
        }


def warm_start_uri(cfg: DictConfig) -> str | None:
    """``warm_start`` of the config (None or "" -> None)."""
    uri = cfg.get("warm_start")
    return None if uri in (None, "") else str(uri).strip()


def resolve_warm_start(cfg: DictConfig, client: mlflow.MlflowClient) -> WarmSource | None:
    """Pin ``cfg.warm_start`` to one registered version and load what the run needs from it
    (None without ``warm_start``). ``QuantmlInputError`` for a URI that is not a registered model
    version, a backbone other than LightGBM, or a source that is not a LightGBM quantml bundle."""
    uri = warm_start_uri(cfg)
    if uri is None:
        return None
    target = str(cfg.backbone.get("_target_", ""))
    if target.rsplit(".", 1)[-1] not in WARM_BACKBONES:
        raise QuantmlInputError(
            f"warm_start={uri} with backbone {target.rsplit('.', 1)[-1] or '?'}: warm start is built for lightgbm "
            "(ridge refits from scratch in seconds; sequence backbones do not load a source's weights yet); "
            "use backbone=lightgbm or drop warm_start"
        )
    m = _MODELS_URI.match(uri)
    if not m:
        raise QuantmlInputError(
            f"warm_start={uri!r} is not a registered model: use models:/NAME@active, models:/NAME@candidate, "
            "models:/NAME (= @active) or models:/NAME/<version>"
        )
    name, alias = m["name"], m["alias"] or (None if m["version"] else L.ALIAS_ACTIVE)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, m["version"])
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {m['version']}"
        raise QuantmlInputError(
            f"warm_start={uri}: model {name!r} has no {what} in {client.tracking_uri}; register and promote a "
            f"run first (`quantml registry register RUN_ID name={name}`) or name an existing version"
        ) from None
    version = str(mv.version)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(f"models:/{name}/{version}", tmp)
    forecaster = getattr(bundle, "forecaster", None)
    if not isinstance(forecaster, LightGBMForecaster):
        served = type(forecaster if forecaster is not None else bundle).__name__
        raise QuantmlInputError(
            f"warm_start={uri}: v{version} serves a {served}, not a LightGBM model; warm start "
            "continues LightGBM boosters only: name a version trained with backbone=lightgbm"
        )
    run_id = (mv.tags or {}).get(L.VERSION_TAG_RUN_ID) or mv.run_id  # the source parent run
    if not run_id:
        raise QuantmlInputError(f"warm_start={uri}: v{version} has no source run; register it from a quantml train run")
    market = RunReader(client=client).market(run_id)
    if market is None or not len(market):
        raise QuantmlInputError(
            f"warm_start={uri}: run {run_id} of v{version} has no {L.MARKET_ARTIFACT}, so its training end "
            "is unknown; retrain the source with this quantml version"
        )
    end = pd.Timestamp(market["timestamp"].max()).tz_convert("UTC")
    return WarmSource(uri, name, version, run_id, end, forecaster, bundle)


def check_warm_data(prep: PreparedData, source: WarmSource) -> None:
    """Refuse a candidate whose data the source has seen or whose features or horizons differ.

    ``prep``: the candidate's prepared data before the lockbox is reserved (``prep.samples``:
    every labelled sample). Every one needs ``t0`` strictly after ``source.end``."""
    where = f"warm_start={source.uri} (v{source.version}, run {source.run_id[:12]})"
    contract = source.bundle.contract
    if list(contract.horizons) != list(prep.data.horizons):
        raise QuantmlInputError(
            f"{where} forecasts horizons {list(contract.horizons)}, this run {list(prep.data.horizons)}: "
            f"a warm start keeps the source's horizons; set horizon.horizons=[{','.join(contract.horizons)}]"
        )
    if list(contract.feature_names) != list(prep.contract.feature_names) or contract.hash != prep.contract.hash:
        ours, theirs = set(prep.contract.feature_names), set(contract.feature_names)
        detail = (
            f"missing {sorted(theirs - ours)[:5]}, new {sorted(ours - theirs)[:5]}"
            if ours != theirs
            else f"contract hash {prep.contract.hash} vs the source's {contract.hash} (order, settings or calendar)"
        )
        raise QuantmlInputError(
            f"{where} was trained on another feature contract ({detail}): a warm start keeps the source's "
            f"features; use its feature_set and ablation (feature_set={contract.feature_set.get('name', '?')})"
        )
    t0 = prep.data.t0[prep.samples]
    first = pd.Timestamp(t0.min(), tz="UTC")
    end_ns = source.end.tz_convert("UTC").tz_localize(None).to_datetime64()
    if first <= source.end:
        n_seen = int((t0 <= end_ns).sum())
        after = source.end + prep.bar
        fix = after.strftime("%Y-%m-%d") if after == after.normalize() else after.strftime("%Y-%m-%dT%H:%M:%S")
        raise QuantmlInputError(
            f"{where} trained on every bar up to {source.end:%Y-%m-%d %H:%M} UTC (its last development bar): "
            f"{n_seen} of this run's {len(t0)} samples (from {first:%Y-%m-%d %H:%M} UTC) fall in that window, so its "
            f"folds and figures would score data the source already fitted or chose on; use only newer bars: "
            f"data.start={fix}"
        )


def with_warm_source(prep: PreparedData, source: WarmSource | None) -> PreparedData:
    """``prep`` whose fits start from ``source``'s forecaster (``prep`` itself without one)."""
    return prep if source is None else replace(prep, warm_source=source.forecaster)
