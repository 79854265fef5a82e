"""The logged model: a bundle that turns a raw panel into the prediction contract.

The bundle carries everything prediction needs — feature contract, fitted forecaster
(with its normalisation statistics), calibrator and signal thresholds — so a served
model recomputes features exactly as training did, and refuses a panel that does not
match its contract instead of answering with garbage.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from quantml.schema import (
    PREDICTION_COLUMNS, SCHEMA_VERSION, SYMBOL, TIMESTAMP, QuantmlInputError,
)

MODEL_NAME = "model"  # runs:/<parent run id>/model


@dataclass
class FeatureContract:
    """What a panel must carry for this model, and what the features must come out as."""

    input_columns: list[str]
    feature_names: list[str]
    feature_set: dict
    drop_modalities: list[str]
    horizons: list[str]
    schema_version: str = SCHEMA_VERSION

    @property
    def hash(self) -> str:
        payload = json.dumps({"inputs": sorted(self.input_columns), "features": self.feature_names,
                              "feature_set": self.feature_set, "drop": sorted(self.drop_modalities),
                              "horizons": self.horizons, "schema": self.schema_version},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def check(self, panel: pd.DataFrame) -> None:
        """Refuse a panel with missing inputs or another schema version."""
        if "schema_version" in panel.columns:
            versions = set(panel["schema_version"].astype(str).unique())
            if versions != {self.schema_version}:
                raise QuantmlInputError(
                    f"panel schema_version {sorted(versions)} does not match the model's "
                    f"{self.schema_version!r}: convert the panel to schema {self.schema_version} "
                    f"or use a model trained on your schema")
        missing = [c for c in self.input_columns if c not in panel.columns]
        if missing:
            raise QuantmlInputError(
                f"panel is missing column(s) {missing} required by the model's feature contract "
                f"(hash {self.hash}); add them to the panel (same names and meaning as at training)")


@dataclass
class ModelBundle:
    """Fitted forecaster + calibrator + contract + signal config: panel in, contract out."""

    forecaster: object
    calibrator: object | None
    contract: FeatureContract
    signal: dict
    data_fingerprint: str
    metadata: dict = field(default_factory=dict)

    def predict_contract(self, panel: pd.DataFrame, last_only: bool = False, model_name: str = "",
                         model_version: str = "", signal: dict | None = None) -> pd.DataFrame:
        from quantml.data import data_fingerprint, validate_panel
        from quantml.features import build_features
        from quantml.models.base import PanelData
        from quantml.signals import SignalConfig, compute_signals

        panel = _coerce_panel(panel)
        self.contract.check(panel)
        panel = validate_panel(panel)
        features = build_features(panel, self.contract.feature_set, self.contract.drop_modalities,
                                  expected=self.contract.feature_names)
        X = features.frame.to_numpy(dtype=np.float32)
        n, H = len(panel), len(self.contract.horizons)
        codes, symbols = pd.factorize(panel[SYMBOL])
        nan = np.full((n, H), np.nan)
        data = PanelData(keys=panel[[SYMBOL, TIMESTAMP]].reset_index(drop=True), X=X,
                         feature_names=self.contract.feature_names,
                         feature_modalities=dict(features.modalities), horizons=self.contract.horizons,
                         y_ret=nan, y_dir=nan.copy(), y_vol=nan.copy(),
                         t0=panel[TIMESTAMP].to_numpy(dtype="datetime64[ns]"),
                         t1=np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]"),
                         symbol_codes=codes.astype(np.int64), symbols=list(symbols),
                         known_future=list(features.known_future))
        rows = np.arange(n)
        if last_only:
            rows = panel.groupby(SYMBOL, sort=False).tail(1).index.to_numpy()
        sample = data.subset(rows)
        frame = self.forecaster.predict(sample).to_frame(sample.keys)
        if self.calibrator is not None:
            frame = self.calibrator.transform(frame)
        signal = signal or self.signal
        config = SignalConfig.from_config(signal, cost=signal.get("cost", 0.0))
        frame = compute_signals(frame, config)
        frame["model_name"] = model_name
        frame["model_version"] = str(model_version)
        frame["schema_version"] = self.contract.schema_version
        frame["data_version"] = data_fingerprint(panel)
        return frame[list(PREDICTION_COLUMNS)].reset_index(drop=True)


def _coerce_panel(panel: pd.DataFrame) -> pd.DataFrame:
    """Accept timestamps as strings (JSON over REST) as well as datetimes."""
    if not isinstance(panel, pd.DataFrame):
        raise QuantmlInputError(f"expected a pandas DataFrame panel, got {type(panel).__name__}")
    panel = panel.copy()
    if TIMESTAMP in panel.columns and not pd.api.types.is_datetime64_any_dtype(panel[TIMESTAMP]):
        panel[TIMESTAMP] = pd.to_datetime(panel[TIMESTAMP], utc=True)
    return panel


class QuantmlPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper; params: ``last_only``, ``model_name``, ``model_version``."""

    def load_context(self, context) -> None:
        with open(context.artifacts["bundle"], "rb") as fh:
            self.bundle: ModelBundle = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        params = params or {}
        return self.bundle.predict_contract(
            model_input, last_only=bool(params.get("last_only", False)),
            model_name=str(params.get("model_name", "")), model_version=str(params.get("model_version", "")))


def _signature(contract: FeatureContract) -> ModelSignature:
    # AnyType for the timestamp: MLflow's datetime type refuses tz-aware values and its string
    # type refuses datetimes, while callers send either (Python: datetimes, REST: ISO strings).
    numeric = [c for c in contract.input_columns if c not in (TIMESTAMP, SYMBOL)]
    inputs = Schema([ColSpec(AnyType(), TIMESTAMP), ColSpec("string", SYMBOL),
                     *[ColSpec("double", c, required=False) for c in numeric],
                     ColSpec("string", "schema_version", required=False)])
    outputs = Schema([ColSpec("string", c) if c in (SYMBOL, TIMESTAMP, "horizon", "action", "model_name",
                                                    "model_version", "schema_version", "data_version")
                      else ColSpec("double", c) for c in PREDICTION_COLUMNS])
    params = ParamSchema([ParamSpec("last_only", "boolean", False), ParamSpec("model_name", "string", ""),
                          ParamSpec("model_version", "string", "")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_bundle(bundle: ModelBundle, run_id: str) -> str:
    """Log ``bundle`` as the pyfunc ``model`` of ``run_id``; returns the model URI."""
    from quantml.tracking.store import retrying

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.pkl"
        with open(path, "wb") as fh:
            pickle.dump(bundle, fh)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # the bundle is our own pickle; MLflow's notes on type hints / cloudpickle / input
            # examples do not apply to a panel-in, contract-out model
            warnings.simplefilter("ignore", UserWarning)
            retrying(mlflow.pyfunc.log_model)(
                name=MODEL_NAME, python_model=str(Path(__file__).with_name("model_code.py")), artifacts={"bundle": str(path)},
                signature=_signature(bundle.contract), pip_requirements=_requirements(),
                code_paths=None)
    return f"runs:/{run_id}/{MODEL_NAME}"


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "pandas", "numpy", "scikit-learn", "lightgbm", "torch", "lightning", "pyarrow"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return reqs
