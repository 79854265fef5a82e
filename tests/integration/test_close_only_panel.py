"""A close-only panel (no volume, open = high = low = close) trains end to end and is served.

The panel is the bundled stocks written as a parquet file the way a vendor of adjusted closes
ships it (tests/helpers/close_only.py); trained through the README's ``data=parquet
data.path=...`` with the default feature set, then predicted by the run's pyfunc and by
``quantml predict`` on the same file.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from quantml.cli.predict import main as predict_main
from quantml.contracts import PREDICTION_COLUMNS
from tests.helpers.close_only import close_only_stocks

# what price_volume_regime skips on the close-only stocks (funding/oi: not on equities anyway)
SKIPPED = {
    "volume",
    "regime.regime_volume",
    "volatility.pk_vol",
    "regime.atr_slope",
    "regime.structure_gap",
    "regime.funding_slope",
    "regime.oi_slope",
}


@pytest.fixture
def trained(tmp_path, tracking_uri, compose_cfg):
    from quantml.experiment import run_experiment
    from quantml.experiment.prepare import prepare_data

    path = close_only_stocks(tmp_path, start="2007-06-01")
    cfg = compose_cfg(
        [
            "data=parquet",
            f"data.path={path}",
            "data.start=2008-01-01",
            "feature_set=price_volume_regime",
            "backbone=ridge",
            "validation.n_splits=3",
            "print_report=false",
            "tracking.log_model=true",
            f"tracking.uri={tracking_uri}",
            "tracking.experiment=close_only",
        ]
    )
    return path, prepare_data(cfg), run_experiment(cfg)


def test_close_only_panel_trains_reports_skips_and_serves(trained, tracking_uri, tmp_path, capsys):
    path, prep, result = trained
    # the run reports what it skipped, as derived.skipped_blocks
    run = mlflow.MlflowClient(tracking_uri).get_run(result.parent_run_id)
    assert set(run.data.params["derived.skipped_blocks"].split(",")) == SKIPPED
    assert set(prep.skipped_blocks) == SKIPPED
    # no feature is computed from the absent columns: none is all zero, constant or all NaN
    X = np.asarray(prep.data.X, dtype=np.float64)
    assert X.shape[1] == len(prep.contract.feature_names) > 0
    assert np.isfinite(X).any(axis=0).all()
    assert (np.nanmax(np.abs(X), axis=0) > 0).all() and (np.nanstd(X, axis=0) > 0).all()
    assert not {"pk_vol_12", "volume_z_24", "atr_slope", "regime_volume"} & set(prep.contract.feature_names)
    # the served model demands only what its features read
    assert prep.contract.input_columns == ["close", "symbol", "timestamp"]
    assert np.isfinite(result.oos["expected_return"]).all() and len(result.oos)

    # the pyfunc takes the same close-only panel (NaN volume, collapsed OHLC)
    panel = pd.read_parquet(path)
    assert panel["volume"].isna().all() and (panel["high"] == panel["close"]).all()
    model = mlflow.pyfunc.load_model(result.model_uri)
    frame = model.predict(panel, params={"last_only": True})
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert set(frame["symbol"]) == set(panel["symbol"]) and np.isfinite(frame["expected_return"]).all()

    # and so does `quantml predict` on the file
    out = tmp_path / "preds.parquet"
    code = predict_main([f"model={result.model_uri}", f"data={path}", f"output={out}", f"tracking.uri={tracking_uri}"])
    assert code == 0, capsys.readouterr().err
    served = pd.read_parquet(out)
    assert list(served.columns) == list(PREDICTION_COLUMNS) and len(served) == len(frame)
