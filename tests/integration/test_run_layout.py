"""The run layout round trip: runs written through the one writer read back through the one reader;
a 0.1 run (no layout tag) is read where its layout allows and refused with the fix elsewhere."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.metrics import METRICS_VERSION
from quantml.tracking import RunReader, RunWriter, prepare_store
from quantml.tuning.source import load_source_run

CFG = {
    "seed": 3,
    "data": {"freq": "1h", "periods_per_year": None},
    "cost": {"fee_bps": 4.0, "slippage_bps": 2.0, "impact_bps": 0.0},
    "signal": {"eps": 1e-6, "threshold": {"default": 0.001, "4h": 0.002}, "min_confidence": {"default": 0.1}},
    "horizon": {"horizons": ["1h", "4h"]},
}


def _oos(n: int = 48) -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC")
    frames = []
    for h in ("1h", "4h"):
        frames.append(
            pd.DataFrame(
                {
                    "symbol": "S0",
                    "timestamp": ts,
                    "horizon": h,
                    "score": 0.1,
                    "confidence": 0.5,
                    "vol_forecast": 0.01,
                    "ret_next_bar": 0.0,
                    "expected_return": 0.001,
                    "fold": [i * 3 // n for i in range(n)],
                    "path": 0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def written(tracking_uri, tmp_path):
    """A parent with three folds and a tune run, written through the writer."""
    writer = RunWriter.for_experiment(tracking_uri, "layout")
    parent = writer.start_parent(
        "ridge · walk_forward",
        seed=3,
        horizons=["1h", "4h"],
        validation="walk_forward",
        choices={"backbone": "ridge", "validation": "walk_forward"},
        commit="abc",
    )
    with parent.ending():
        parent.log_params({"cost.fee_bps": "999"})  # params are for the UI: readers never use them
        parent.log_resolved_config(OmegaConf.create(CFG))
        parent.log_derived({"periods_per_year": 8760.0, "n_samples": 96})
        path = tmp_path / "oos_predictions.parquet"
        _oos().to_parquet(path, index=False)
        parent.log_artifact(str(path), "predictions")
        parent.set_description("Out-of-sample results:\n\n```\ntable\n```")
        for i in (2, 0, 1):  # written out of order: read back in fold order
            fold = writer.start_fold(parent, i, [i, 0])
            with fold.ending():
                fold.log_batch(
                    params={
                        L.PARAM_FOLD_ID: i,
                        L.PARAM_TEST_START: f"2024-01-0{i + 1}",
                        L.PARAM_TEST_END: f"2024-01-0{i + 2}",
                    },
                    metrics={"test_sharpe_after_cost/1h": 0.1 * i},
                )
        parent.log_metrics({"oos_sharpe_after_cost/1h": 0.5})
    tune = writer.start_tune(parent.run_id, "sharpe")
    tune.end()
    return writer, parent.run_id, tune.run_id


def test_written_runs_read_back(written, tracking_uri):
    writer, parent_id, tune_id = written
    client = mlflow.MlflowClient(tracking_uri)
    assert client.get_experiment(writer.experiment_id).tags[L.EXPERIMENT_KIND_TAG] == L.EXPERIMENT_KIND
    reader = RunReader(tracking_uri)
    parent = reader.parent(parent_id)
    assert (parent.kind, parent.layout_version, parent.status) == (L.KIND_PARENT, L.LAYOUT_VERSION, "FINISHED")
    assert parent.tags[L.TAG_METRICS_VERSION] == METRICS_VERSION
    assert parent.tags[L.TAG_SEED] == "3" and parent.tags[L.TAG_GIT_COMMIT] == "abc"
    assert parent.tags[L.choice_tag("validation")] == "walk_forward" and parent.run_name == "ridge · walk_forward"
    assert parent.tags[L.MLFLOW_NOTE].startswith("Out-of-sample results:")
    assert parent.horizons == ["1h", "4h"] and parent.metrics == {"oos_sharpe_after_cost/1h": 0.5}
    assert OmegaConf.to_container(parent.config()) == CFG
    assert parent.derived() == {"periods_per_year": 8760.0, "n_samples": 96}
    assert parent.periods_per_year() == 8760.0
    pd.testing.assert_frame_equal(parent.oos_predictions(), _oos())
    folds = parent.folds()
    assert [f.fold_id for f in folds] == ["0", "1", "2"]
    assert [(f.test_start, f.test_end) for f in folds][0] == ("2024-01-01", "2024-01-02")
    assert folds[2].metrics == {"test_sharpe_after_cost/1h": pytest.approx(0.2)}
    assert folds[1].tags[L.TAG_PATH_IDS] == "0,1" and folds[1].tags[L.TAG_LAYOUT_VERSION] == L.LAYOUT_VERSION
    (tune,) = reader.children(parent, L.KIND_TUNE)
    assert tune.info.run_id == tune_id and tune.data.tags[L.TAG_SOURCE_RUN] == parent_id

    # children are refused with their parent's id
    with pytest.raises(QuantmlInputError, match=f"fold run; tune its parent run {parent_id} instead"):
        load_source_run(folds[0].run_id, tracking_uri)
    with pytest.raises(QuantmlInputError, match=f"tune run; .*run_id={parent_id}"):
        reader.parent(tune_id, action="register")

    # tune's source: configuration from the logged config, not from the params
    source = load_source_run(parent_id, tracking_uri)
    assert source.costs().fee_bps == 4.0 and source.costs().round_trip == pytest.approx(2 * 6 / 1e4)
    signal = source.signal_config(source.costs())
    assert signal.threshold_for("4h") == 0.002 and signal.threshold_for("1h") == 0.001
    assert source.periods_per_year() == 8760.0 and source.horizons == ["1h", "4h"]


def test_no_run_is_left_running(tracking_uri):
    import optuna

    writer = RunWriter.for_experiment(tracking_uri, "layout")
    with pytest.raises(RuntimeError, match="boom"):
        with writer.start_parent("p", seed=1).ending() as parent:
            with writer.start_fold(parent, 0).ending():
                raise RuntimeError("boom")
    with pytest.raises(optuna.TrialPruned):
        with writer.start_parent("trial").ending() as trial:
            raise optuna.TrialPruned("below the median")
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([writer.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED", "KILLED"]
    assert client.get_run(trial.run_id).data.tags[L.TAG_PRUNED] == "true"
    assert "RuntimeError: boom" in client.get_run(parent.run_id).data.tags[L.TAG_ERROR]


def _legacy_run(tracking_uri, tmp_path, with_config: bool) -> str:
    """A run as quantml 0.1 wrote it: no layout tag, configuration also as params."""
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment(f"legacy-{with_config}")
    run_id = client.create_run(exp, tags={L.TAG_KIND: L.KIND_PARENT, L.TAG_HORIZONS: "1h,4h"}).info.run_id
    for key, value in {
        "cost.fee_bps": 4.0,
        "signal.threshold.default": 0.001,
        L.LEGACY_PARAM_PERIODS_PER_YEAR: 8760.0,
    }.items():
        client.log_param(run_id, key, value)
    fold = client.create_run(
        exp, tags={L.TAG_KIND: L.KIND_FOLD, L.TAG_FOLD_ID: "0", L.MLFLOW_PARENT_RUN_ID: run_id}
    ).info.run_id
    client.log_param(fold, L.PARAM_TEST_START, "2024-01-01")
    client.log_metric(fold, "test_sharpe_after_cost/1h", 0.3)
    path = tmp_path / "oos_predictions.parquet"
    _oos().to_parquet(path, index=False)
    client.log_artifact(run_id, str(path), "predictions")
    if with_config:
        client.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(CFG)), L.CONFIG_ARTIFACT)
    return run_id


def test_a_0_1_run_is_read_where_its_layout_allows(tracking_uri, tmp_path):
    reader = RunReader(tracking_uri)
    parent = reader.parent(_legacy_run(tracking_uri, tmp_path, with_config=True))
    assert parent.layout_version == L.LEGACY_LAYOUT_VERSION == "1"
    assert parent.periods_per_year() == 8760.0  # layout 1 recorded it only as a param
    assert [(f.fold_id, f.test_start, f.metrics) for f in parent.folds()] == [
        ("0", "2024-01-01", {"test_sharpe_after_cost/1h": 0.3})
    ]
    source = load_source_run(parent.run_id, tracking_uri)
    assert source.costs().fee_bps == 4.0 and source.periods_per_year() == 8760.0


def test_a_0_1_run_without_its_config_is_refused_with_the_fix(tracking_uri, tmp_path):
    run_id = _legacy_run(tracking_uri, tmp_path, with_config=False)
    with pytest.raises(
        QuantmlInputError,
        match=r"run layout version 1\) has no config/config.yaml.*"
        r"re-run `quantml train`",
    ):
        load_source_run(run_id, tracking_uri)


def test_an_unknown_layout_version_is_refused(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("future"), tags={L.TAG_LAYOUT_VERSION: "99"}).info.run_id
    with pytest.raises(QuantmlInputError, match="run layout version 99, which this quantml does not know"):
        RunReader(tracking_uri).parent(run_id)


def test_prepare_store_tags_an_existing_experiment_for_the_ui(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("made-elsewhere")
    assert L.EXPERIMENT_KIND_TAG not in client.get_experiment(exp).tags
    assert prepare_store(tracking_uri, "made-elsewhere") == exp
    assert client.get_experiment(exp).tags[L.EXPERIMENT_KIND_TAG] == L.EXPERIMENT_KIND


def test_run_names_lead_with_what_differs():
    from quantml.experiment.run import default_run_name

    cfg = OmegaConf.create({"run_name": None, "backbone": {"_target_": "quantml.models.ridge.RidgeForecaster"}})
    defaults = {
        "data": "stocks_daily",
        "feature_set": "price_volume_regime",
        "horizon": "auto",
        "backbone": "lightgbm",
        "ablation": "full",
        "validation": "walk_forward",
        "cost": "equity",
        "signal": "default",
        "evaluation": "default",
        "tracking": "local",
        "experiment": "None",
    }
    assert default_run_name(cfg, defaults) == "lightgbm"
    swept = {**defaults, "validation": "purged_kfold", "ablation": "no_macro", "data": "synthetic"}
    # the choices unlike the primary config's defaults, backbone first, in the defaults' order
    assert default_run_name(cfg, {**swept, "data": "stocks_daily"}) == "lightgbm · no_macro · purged_kfold"
    # a sweep's axes show even where this job has the default value
    sweep = {**defaults, "ablation": "no_macro"}
    assert (
        default_run_name(
            cfg, sweep, ["backbone=lightgbm", "validation=walk_forward", "ablation=no_macro", "data.n_bars=300"]
        )
        == "lightgbm · no_macro · walk_forward"
    )
    long = default_run_name(cfg, {**swept, "feature_set": "full", "horizon": "intraday"})
    assert len(long) <= 40 and long.startswith("lightgbm · synthetic · full") and long.endswith("…")
    assert default_run_name(cfg, {}) == "RidgeForecaster"
    assert default_run_name(OmegaConf.merge(cfg, {"run_name": "mine"}), swept) == "mine"
