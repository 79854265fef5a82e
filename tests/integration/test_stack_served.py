"""``mlflow models serve`` on a registered stack run (slow: it trains the tiny experts again and starts
an MLflow model server): the REST answer is the prediction contract, equal to ``quantml predict``'s
Python call, and a panel that breaks an expert's contract is refused with that expert's error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.cli import main as dispatcher
from quantml.contracts import PREDICTION_COLUMNS
from tests.helpers.registry_fakes import mlflow_model_server, post_json
from tests.integration.test_stack import SWEEP_DIR, stack_panel_of, sweep  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow
NAME = "stack-rest"


def test_mlflow_models_serve_answers_a_stack_like_predict(sweep):  # noqa: F811 - the imported fixture
    from quantml.registry import RegistryStore, promote
    from quantml.serving import predict_panel

    rc = dispatcher.main(
        ["stack", f"tracking.uri={sweep['uri']}", f"sweep_dir={SWEEP_DIR}", f"register={NAME}", "holdout=false"]
    )
    assert rc == 0
    store = RegistryStore(sweep["uri"])
    promote(store, NAME, "1", force=True, reason="test: serve a stack")
    panel = stack_panel_of(sweep)
    expected, _ = predict_panel(f"models:/{NAME}@active", panel, store=store)
    wire = panel.assign(timestamp=panel["timestamp"].map(lambda t: t.isoformat()))
    with mlflow_model_server(f"models:/{NAME}@active", sweep["uri"], sweep["root"], timeout=150) as url:
        status, body = post_json(
            f"{url}/invocations",
            {
                "dataframe_split": wire.to_dict(orient="split"),
                "params": {"last_only": True, "model_name": NAME, "model_version": "1"},
            },
        )
        assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        assert list(served.columns) == list(PREDICTION_COLUMNS)
        np.testing.assert_allclose(served["expected_return"], expected["expected_return"], rtol=1e-9)
        assert served["action"].tolist() == expected["action"].tolist()
        assert served["target_weight"].tolist() == expected["target_weight"].tolist()
        assert set(served["model_version"]) == {"1"}
        status, body = post_json(
            f"{url}/invocations", {"dataframe_split": wire.drop(columns=["close"]).to_dict(orient="split")}
        )
        assert status == 400 and "close" in body.get("stack_trace", "")
