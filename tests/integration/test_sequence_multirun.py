"""`quantml train -m backbone=<every sequence backbone>` on tiny synthetic data, end to end."""

from __future__ import annotations

import mlflow
import numpy as np

from quantml.contracts import PREDICTION_COLUMNS
from quantml.contracts import run_layout as L
from tests.helpers import failed_train, run_train

SEQUENCE = ["mlp", "lstm", "gru", "tcn", "tsmixer", "patchtst", "itransformer", "tft"]
# "++" because the sweep is composed against the default (lightgbm) backbone first
TINY_SEQ = [
    "++backbone.max_epochs=2",
    "++backbone.limit_train_batches=2",
    "++backbone.lookback=8",
    "++backbone.hidden_size=8",
    "++backbone.batch_size=64",
]


def test_multirun_over_every_sequence_backbone(tracking_uri, tmp_path):
    # two jobs at a time (each trains on one torch thread): CI has 2 cores
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"backbone={','.join(SEQUENCE)}",
        "data=synthetic",
        "data.n_symbols=2",
        "data.n_bars=400",
        "data.freq=1h",
        "feature_set=price",
        "horizon=4h",
        "validation.n_splits=2",
        "validation.min_train_samples=50",
        "validation.embargo=4h",
        "print_report=false",
        "tracking.experiment=seq_multirun",
        *TINY_SEQ,
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    proc = run_train(args, tmp_path, timeout=900)
    assert proc.returncode == 0, failed_train(proc)
    assert not (tmp_path / "lightning_logs").exists()

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("seq_multirun")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = {r.data.tags["choice.backbone"]: r for r in runs if r.data.tags.get(L.TAG_KIND) == "parent"}
    folds = [r for r in runs if r.data.tags.get(L.TAG_KIND) == "fold"]
    assert sorted(parents) == sorted(SEQUENCE)
    for name, parent in parents.items():
        assert parent.info.status == "FINISHED", name
        mine = [f for f in folds if f.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(mine) == int(parent.data.tags["quantml.n_folds"]) >= 2
        assert np.isfinite(parent.data.metrics["oos_rank_ic/4h"]), name
        assert 0 < parent.data.metrics["oos_coverage_80/4h"] <= 1, name
        figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
        assert f"figures/{name}_loss_curve.png" in figures, name
    tft_figures = {a.path for a in client.list_artifacts(parents["tft"].info.run_id, "figures")}
    assert {"figures/tft_variable_importance.png", "figures/tft_attention.png"} <= tft_figures

    # the logged TFT pyfunc (forecaster pickled inside) serves a raw panel
    from quantml.data.asof import join_streams
    from quantml.data.synthetic import generate_synthetic

    synth = generate_synthetic(freq="1h", n_symbols=2, n_bars=200, seed=3)
    panel = join_streams(synth.bars, synth.streams)
    model = mlflow.pyfunc.load_model(f"runs:/{parents['tft'].info.run_id}/model")
    out = model.predict(panel, params={"last_only": True})
    assert list(out.columns) == list(PREDICTION_COLUMNS) and len(out) == 2
    assert (out["q10"] <= out["q50"]).all() and (out["q50"] <= out["q90"]).all()
    assert out[["expected_return", "prob_up", "vol_forecast"]].notna().all().all()
