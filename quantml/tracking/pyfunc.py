"""The MLflow pyfunc around a :class:`quantml.bundle.ModelBundle`: logging it and loading it.

``FeatureContract`` and ``ModelBundle`` stay importable from here: models logged by 0.1
pickled them under this module's name.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from quantml.bundle import FeatureContract, ModelBundle
from quantml.contracts import PREDICTION_COLUMNS, SYMBOL, TIMESTAMP
from quantml.contracts.run_layout import MODEL_ARTIFACT
from quantml.contracts.schema import prediction_columns

MODEL_NAME = MODEL_ARTIFACT  # runs:/<parent run id>/model


class QuantmlPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper; params: ``last_only``, ``model_name``, ``model_version`` and ``text_path``
    (a model trained on a raw text stream: a parquet/CSV file or directory of its posts, read by the
    serving process; empty: served without text, docs/text.md)."""

    def load_context(self, context) -> None:
        with open(context.artifacts["bundle"], "rb") as fh:
            self.bundle: ModelBundle = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        params = params or {}
        text_path = str(params.get("text_path") or "")
        text = {"text_stream": self._text_stream(text_path)} if text_path else {}
        return self.bundle.predict_contract(
            model_input,
            last_only=bool(params.get("last_only", False)),
            model_name=str(params.get("model_name", "")),
            model_version=str(params.get("model_version", "")),
            **text,
        )

    def _text_stream(self, text_path: str) -> pd.DataFrame:
        """The posts at ``text_path``, validated with the training run's entity map."""
        from quantml.contracts import QuantmlInputError
        from quantml.data.text_stream import read_text_file

        if not isinstance(self.bundle, ModelBundle):  # a stack or a route map: several models, no one stream
            raise QuantmlInputError(
                f"text_path= is for a single model trained on a raw text stream, not a {type(self.bundle).__name__}; "
                "predict without text_path"
            )
        entity_map = (getattr(self.bundle.contract, "text", None) or {}).get("entity_map")
        return read_text_file(text_path, entity_map, f"text_path={text_path}")


def _signature(contract: FeatureContract, diagnostics=()) -> ModelSignature:
    """The pyfunc's signature; ``diagnostics``: the optional diagnostic columns the model declares
    (``DIAGNOSTIC_FIELDS``), outputs after the contract's columns, not required."""
    # AnyType for the timestamp: MLflow's datetime type refuses tz-aware values and its string
    # type refuses datetimes, while callers send either (Python: datetimes, REST: ISO strings).
    numeric = [c for c in contract.input_columns if c not in (TIMESTAMP, SYMBOL)]
    inputs = Schema(
        [
            ColSpec(AnyType(), TIMESTAMP),
            ColSpec("string", SYMBOL),
            *[ColSpec("double", c, required=False) for c in numeric],
            ColSpec("string", "schema_version", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", c)
            if c
            in (SYMBOL, TIMESTAMP, "horizon", "action", "model_name", "model_version", "schema_version", "data_version")
            else ColSpec("double", c)
            for c in PREDICTION_COLUMNS
        ]
        + [ColSpec("double", c, required=False) for c in prediction_columns(diagnostics)[len(PREDICTION_COLUMNS) :]]
    )
    params = ParamSchema(
        [
            ParamSpec("last_only", "boolean", False),
            ParamSpec("model_name", "string", ""),
            ParamSpec("model_version", "string", ""),
            ParamSpec("text_path", "string", ""),  # the raw posts of a model trained on a text stream
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_bundle(bundle: ModelBundle, run_id: str) -> str:
    """Log ``bundle`` as the pyfunc ``model`` of ``run_id``; returns the model URI."""
    log_bundle_info(bundle, run_id)
    return f"runs:/{run_id}/{MODEL_NAME}"


def load_bundle(model_uri: str, directory: str | Path) -> ModelBundle:
    """The :class:`ModelBundle` pickled inside the quantml pyfunc at ``model_uri``."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(directory)))
    found = sorted(local.rglob("bundle.pkl"))
    if not found:
        from quantml.contracts import QuantmlInputError

        raise QuantmlInputError(f"{model_uri} is not a quantml pyfunc (no bundle.pkl); log models with quantml train")
    with open(found[0], "rb") as fh:
        return pickle.load(fh)


def log_bundle_info(bundle: ModelBundle, run_id: str, name: str = MODEL_NAME):
    """Log ``bundle`` as the pyfunc ``name`` (default ``model``) of ``run_id``; returns MLflow's ``ModelInfo``."""
    from quantml.tracking.store import retrying

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.pkl"
        with open(path, "wb") as fh:
            pickle.dump(bundle, fh)
        # pyfunc.log_model's own call with run_id=: `with mlflow.start_run(run_id=...)` would end the run
        # FINISHED on leaving, while the job still runs (its report, its lease). Without an active run
        # MLflow files the logged model under the fluent experiment: the run's, through the environment
        experiment_id = retrying(mlflow.MlflowClient().get_run)(run_id).info.experiment_id
        with warnings.catch_warnings(), _environment("MLFLOW_EXPERIMENT_ID", experiment_id):
            # the bundle is our own pickle; MLflow's notes on type hints / cloudpickle / input
            # examples do not apply to a panel-in, contract-out model
            warnings.simplefilter("ignore", UserWarning)
            # logged by name= (MLflow 3). Model.log still declares the deprecated artifact path as its first,
            # required parameter: None there, as mlflow.pyfunc.log_model passes it. pyfunc.log_model itself
            # takes no run_id and would need the fluent run whose exit ends the job's run
            info = retrying(mlflow.models.Model.log)(
                None,
                flavor=mlflow.pyfunc,
                flavor_name="pyfunc.ModelFromCode",  # what pyfunc.log_model labels a model from code
                run_id=run_id,
                name=name,
                python_model=str(Path(__file__).with_name("model_code.py")),
                artifacts={"bundle": str(path)},
                signature=_signature(bundle.contract, getattr(bundle, "diagnostic_fields", ())),
                pip_requirements=_requirements(),
                code_paths=None,
            )
    return info


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "pandas", "numpy", "scikit-learn", "lightgbm", "torch", "lightning", "pyarrow"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return reqs
