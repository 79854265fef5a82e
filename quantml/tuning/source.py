"""The run a study tunes: a quantml-train parent run and its out-of-sample predictions."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from quantml.market.execution import CostModel
from quantml.market.performance import infer_periods_per_year
from quantml.contracts import QuantmlInputError, TIMESTAMP
from quantml.signals.core import SignalConfig

OOS_ARTIFACT = "predictions/oos_predictions.parquet"


@dataclass
class SourceRun:
    """``frame``: the OOS prediction frame; ``params``/``tags``: the run's; ``horizons``: in run order."""

    run_id: str
    experiment_id: str
    frame: pd.DataFrame
    params: dict[str, str]
    tags: dict[str, str]
    horizons: list[str]

    def costs(self) -> CostModel:
        """The run's cost model (``cost.*`` params); zero costs when the run has none."""
        cost = {k[len("cost."):]: v for k, v in self.params.items() if k.startswith("cost.")}
        if not cost:
            return CostModel(fee_bps=0.0, slippage_bps=0.0)
        return CostModel.from_config({k: v for k, v in cost.items() if _is_number(v)})

    def signal_config(self, costs: CostModel) -> SignalConfig:
        """The run's own thresholds (``signal.*`` params). ``cost`` is read back from the frame
        (``|expected_return| - |edge|`` on rows with an edge), else ``costs.round_trip``."""
        tree: dict = {}
        for k, v in self.params.items():
            if k.startswith("signal.") and _is_number(v):
                node = tree
                *path, leaf = k.split(".")[1:]
                for p in path:
                    node = node.setdefault(p, {})
                node[leaf] = float(v)
        f = self.frame
        with_edge = f["edge"].abs() > 0 if "edge" in f.columns else pd.Series(False, index=f.index)
        cost = (float(np.median(f.loc[with_edge, "expected_return"].abs() - f.loc[with_edge, "edge"].abs()))
                if with_edge.any() else costs.round_trip)
        return SignalConfig.from_config(tree, cost=max(cost, 0.0))

    def periods_per_year(self) -> float:
        """The run's own (``derived.periods_per_year``, else ``data.periods_per_year``), else
        inferred from the timestamps."""
        for key in ("derived.periods_per_year", "data.periods_per_year"):
            value = self.params.get(key)
            if value not in (None, "", "None", "null") and _is_number(value):
                return float(value)
        return infer_periods_per_year(self.frame[TIMESTAMP])

    def paths(self) -> list[int]:
        return sorted(int(p) for p in self.frame["path"].unique()) if "path" in self.frame.columns else [0]


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def load_source_run(run_id: str, tracking_uri: str | None = None) -> SourceRun:
    """Read a parent run and download its ``predictions/oos_predictions.parquet``."""
    if not run_id:
        raise QuantmlInputError("no run to tune: pass run_id=<parent run id of a quantml-train job> "
                                "(find it in `mlflow ui` or `mlflow runs list`)")
    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise QuantmlInputError(f"run_id={run_id} is not a run of the tracking store {client.tracking_uri}: "
                                "check the id, or point tracking_uri= / MLFLOW_TRACKING_URI at the store "
                                "the run was logged to") from exc
    tags = dict(run.data.tags)
    if tags.get("quantml.kind") == "fold":
        parent = tags.get("mlflow.parentRunId", "<parent>")
        raise QuantmlInputError(f"run {run_id} is a fold run; tune its parent: run_id={parent}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, OOS_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            raise QuantmlInputError(f"run {run_id} has no {OOS_ARTIFACT}: tune the parent run of a finished "
                                    "quantml-train job (its out-of-sample predictions are logged there)") from exc
        frame = pd.read_parquet(Path(path))
    required = ("symbol", TIMESTAMP, "horizon", "score", "confidence", "vol_forecast", "ret_next_bar", "fold")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise QuantmlInputError(f"{OOS_ARTIFACT} of run {run_id} lacks column(s) {missing}; re-run quantml-train "
                                "with this quantml version (prediction contract in quantml.contracts)")
    listed = [h for h in tags.get("quantml.horizons", "").split(",") if h]
    horizons = [h for h in listed if h in set(frame["horizon"])] or list(dict.fromkeys(frame["horizon"]))
    return SourceRun(run_id, run.info.experiment_id, frame, dict(run.data.params), tags, horizons)
