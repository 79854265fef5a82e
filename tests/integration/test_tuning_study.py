"""quantml-tune: time split, objectives, no look-ahead, seeding, resume, processes sharing a storage,
the CLI's MLflow child run and attach. One MLflow store per module (creating one costs seconds)."""

import multiprocessing
import sys

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from quantml.cli.tune import tune
from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.portfolio import AllocatorConfig
from quantml.registry import RegistryStore, register
from quantml.signals import SIGNAL_TAG, SignalConfig
from quantml.tracking.pyfunc import load_bundle
from quantml.tuning.objectives import objective_value
from quantml.tuning.run import attach_to_model_version, parse_attach, read_model_version_signal, run_tuning
from quantml.tuning.source import load_source_run
from quantml.tuning.split import time_split
from quantml.tuning.thresholds import SearchSpace, ThresholdStudy, TuneSettings, make_sampler
from tests.helpers.synthetic_oos import log_synthetic_source_run, synthetic_oos_frame

optuna.logging.set_verbosity(optuna.logging.WARNING)
ALLOC = AllocatorConfig(cov_window=30, cov_min_periods=10)
SMALL = ["study.n_trials=3", "study.n_startup_trials=2", "allocator.cov_window=30", "allocator.cov_min_periods=10"]


def test_time_split_cuts_at_a_fold_boundary_for_disjoint_folds():
    frame = synthetic_oos_frame(n_bars=100, n_folds=5)
    split = time_split(frame, 0.6)
    assert split.method == "folds" and split.tune_folds == (0, 1, 2) and split.selection_folds == (3, 4)
    assert split.cutoff == frame.loc[frame["fold"] == 3, "timestamp"].min()
    assert frame.loc[frame["fold"].isin(split.tune_folds), "timestamp"].max() < split.cutoff
    assert time_split(frame, 0.01).tune_folds == (0,) and time_split(frame, 0.99).selection_folds == (4,)
    with pytest.raises(QuantmlInputError, match="tune_fraction"):
        time_split(frame, 1.0)


def test_time_split_uses_time_quantile_when_folds_interleave():
    frame = synthetic_oos_frame(n_bars=100, n_folds=5)
    frame["fold"] = np.arange(len(frame)) % 3  # CPCV-like: every fold spans the whole period
    split = time_split(frame, 0.6)
    ts = np.sort(frame["timestamp"].unique())
    assert split.method == "time" and split.cutoff == ts[60]
    assert split.tune_folds == () and split.selection_folds == ()


def test_objectives_by_hand():
    stats = {"sharpe": 1.5, "calmar": float("inf"), "ann_return": 0.2, "max_drawdown": -0.08}
    assert objective_value(stats, "sharpe") == 1.5
    assert objective_value(stats, "calmar") == 1e6  # clipped so Optuna can rank it
    assert objective_value(stats, "return_dd", dd_penalty=2.0) == pytest.approx(0.2 - 0.16)
    with pytest.raises(QuantmlInputError, match="objective.name"):
        objective_value(stats, "sortino")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating a SQLite store costs seconds): (uri, source run id)."""
    root = tmp_path_factory.mktemp("tune_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # ./mlruns artifacts land in the tmp dir
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        run_id = log_synthetic_source_run(uri, n_symbols=3, n_bars=300, seed=2)
        yield uri, run_id
    mlflow.set_tracking_uri(None)


@pytest.fixture
def tracking_uri(store):
    return store[0]


@pytest.fixture
def source(store):
    return load_source_run(store[1], store[0])


def _study_values(src, seed=7, n=6):
    study = ThresholdStudy(src, TuneSettings(), ALLOC)
    opt = optuna.create_study(direction="maximize", sampler=make_sampler(seed, n_startup_trials=3))
    opt.optimize(study.objective, n_trials=n)
    return study, opt


def test_trials_never_see_the_selection_bars(source):
    study, opt = _study_values(source)
    tampered = source.frame.copy()
    late = tampered["timestamp"] >= study.split.cutoff
    rng = np.random.default_rng(0)
    tampered.loc[late, "ret_next_bar"] = rng.normal(0, 0.05, late.sum())
    tampered.loc[late, "score"] = rng.normal(0, 1, late.sum())
    source2 = type(source)(**{**source.__dict__, "frame": tampered})
    study2, opt2 = _study_values(source2)
    assert study2.split == study.split
    assert [t.value for t in opt2.trials] == [t.value for t in opt.trials]
    assert opt2.best_params == opt.best_params
    sig, alloc = SearchSpace.configs(opt.best_params, study.base_signal, study.allocator)
    before, after = study.evaluate(sig, alloc), study2.evaluate(sig, alloc)
    assert before.tune == after.tune and before.selection["sharpe"] != after.selection["sharpe"]


def test_seeded_sampler_reproduces_the_study(source):
    _, a = _study_values(source, seed=11)
    _, b = _study_values(source, seed=11)
    _, c = _study_values(source, seed=12)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.params for t in a.trials] != [t.params for t in c.trials]


def test_source_run_costs_thresholds_and_periods(source):
    costs = source.costs()
    assert costs.round_trip == pytest.approx(2 * (2 + 1 + 1) / 1e4)
    assert source.signal_config(costs).cost == pytest.approx(0.0008, rel=1e-9)  # read back from the frame
    assert source.periods_per_year() == 365.25
    assert source.horizons == ["1d", "5d"]


def test_search_space_is_fixed_by_tuning_bars_and_maps_params_back(source):
    study = ThresholdStudy(source, TuneSettings(threshold_quantile=0.5, target_vol=None), ALLOC)
    tune_scores = np.abs(np.concatenate([p.score[:, :, 0].ravel() for p in study.tune_panels.values()]))
    tune_scores = tune_scores[np.isfinite(tune_scores) & (tune_scores > 0)]
    assert study.space.threshold_high["1d"] == pytest.approx(np.quantile(tune_scores, 0.5))
    sig, alloc = SearchSpace.configs(
        {"threshold/1d": 0.3, "min_confidence/5d": 0.2, "risk_budget/1d": 0.4}, SignalConfig(cost=0.001), ALLOC
    )
    assert sig.threshold_for("1d") == 0.3 and sig.min_confidence_for("5d") == 0.2 and sig.cost == 0.001
    assert alloc.risk_budget == {"1d": 0.4} and alloc.target_vol == ALLOC.target_vol


def test_resume_and_threads_share_one_storage(source, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kw = dict(
        settings=TuneSettings(),
        allocator=ALLOC,
        storage=storage,
        study_name="s",
        n_startup_trials=2,
        log_to_mlflow=False,
    )
    run_tuning(source.run_id, n_trials=3, **kw)
    out = run_tuning(source.run_id, n_trials=4, n_jobs=2, **kw)
    assert out.n_complete == 7
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 7
    again = run_tuning(source.run_id, n_trials=0, **kw)  # re-report a stored study, no new trial
    assert again.n_complete == 7 and again.best_params == out.best_params and again.metrics == out.metrics
    with pytest.raises(QuantmlInputError, match="tune_fraction"):
        run_tuning(source.run_id, n_trials=1, **{**kw, "settings": TuneSettings(tune_fraction=0.5)})


def test_attach_refuses_another_runs_version(source, tracking_uri):
    other = log_synthetic_source_run(tracking_uri, n_symbols=2, n_bars=80, log_model=True)
    RegistryStore(tracking_uri).ensure_model("other")
    register(RegistryStore(tracking_uri), other, "other")
    sig = SignalConfig(threshold={"1d": 0.1})
    with pytest.raises(QuantmlInputError, match="attach_force=true"):
        attach_to_model_version("other", "1", sig, source_run_id=source.run_id, tracking_uri=tracking_uri)
    new = attach_to_model_version("other", "1", sig, source_run_id=source.run_id, force=True, tracking_uri=tracking_uri)
    assert str(new.version) == "2" and read_model_version_signal("other", "2", tracking_uri) == sig
    assert read_model_version_signal("other", "1", tracking_uri) is None  # versions are immutable
    with pytest.raises(QuantmlInputError, match="not registered"):
        attach_to_model_version("nope", "1", sig, tracking_uri=tracking_uri)
    assert parse_attach("a:b:3") == ("a:b", "3")
    with pytest.raises(QuantmlInputError, match="NAME:VERSION"):
        parse_attach("model")


def test_bad_source_runs_explain_the_fix(tracking_uri):
    with pytest.raises(QuantmlInputError, match="pass run_id="):
        load_source_run(None, tracking_uri)
    with pytest.raises(QuantmlInputError, match="not a run"):
        load_source_run("0123456789abcdef0123456789abcdef", tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("bad-sources")
    parent = client.create_run(exp).info.run_id
    fold = client.create_run(exp, tags={L.TAG_KIND: "fold", "mlflow.parentRunId": parent}).info.run_id
    with pytest.raises(QuantmlInputError, match=f"run_id={parent}"):
        load_source_run(fold, tracking_uri)
    with pytest.raises(QuantmlInputError, match="has no predictions/oos_predictions.parquet"):
        load_source_run(parent, tracking_uri)


def _run_cli(monkeypatch, args):
    monkeypatch.setattr(sys, "argv", ["quantml-tune", *args])
    try:
        tune()
    except SystemExit as exc:
        return exc.code
    return 0


def test_cli_tunes_logs_a_child_run_and_attaches(tracking_uri, tmp_path, monkeypatch, capsys):
    run_id = log_synthetic_source_run(tracking_uri, n_symbols=3, n_bars=250, seed=4, log_model=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    register(RegistryStore(tracking_uri), run_id, "syn")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    code = _run_cli(
        monkeypatch,
        [
            f"run_id={run_id}",
            f"study.storage={storage}",
            "objective.name=calmar",
            "cost=crypto",
            "attach=syn:1",
            *SMALL,
        ],
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "selection calmar" in out and "logged as MLflow run" in out and "hold-out" not in out
    assert "registered syn v2 with the tuned settings in its bundle (alias candidate)" in out
    (child,) = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{run_id}' and tags.`quantml.kind` = 'tune'",
    )
    assert child.data.params["objective"] == "calmar" and child.data.params["cost.fee_bps"] == "4.0"
    m = child.data.metrics
    for key in (
        "tune_sharpe_after_cost",
        "selection_sharpe_after_cost",
        "selection_baseline_sharpe_after_cost",
        "selection_calmar",
        "selection_max_drawdown",
        "selection_sharpe_after_cost/1d",
        "best_value",
    ):
        assert key in m
    assert m["best_value"] == pytest.approx(m["tune_calmar"], rel=1e-9)  # best trial re-scored on tuning bars
    arts = {f.path for d in ("tune", "figures", "backtest") for f in client.list_artifacts(child.info.run_id, d)}
    assert {
        "tune/trials.csv",
        "tune/best_params.json",
        "tune/signal.json",
        "figures/optimization_history.png",
        "figures/param_importances.png",
        "figures/selection_equity.png",
        "figures/tuned_equity.png",
        "backtest/selection_bars.csv",
    } <= arts
    assert not any(k.startswith("holdout_") for k in m)  # holdout_* is the lockbox's
    bars = pd.read_csv(client.download_artifacts(child.info.run_id, "backtest/selection_bars.csv", str(tmp_path)))
    assert {"pnl", "equity", "drawdown", "turnover", "cost"} <= set(bars.columns)
    equity = client.get_metric_history(child.info.run_id, "selection_equity")  # per-bar curve for the UI
    assert [m.step for m in equity] == list(range(len(bars)))
    assert [m.value for m in equity] == pytest.approx(bars["equity"].tolist())
    ppy = float(child.data.params["periods_per_year"])
    # the selection bars are the selection folds' books of the first horizon, one after another;
    # each fold's bars give that fold's logged Sharpe (tune/fold_sharpe.csv, selection_fold_* metrics)
    from quantml.market.performance import performance_stats

    folds = pd.read_csv(client.download_artifacts(child.info.run_id, "tune/fold_sharpe.csv", str(tmp_path)))
    sel = folds[(folds["split"] == "selection") & (folds["horizon"] == "1d")].set_index("fold")["sharpe_after_cost"]
    assert (
        sorted(bars["fold"].unique())
        == sorted(sel.index)
        == [int(f) for f in child.data.params["selection_folds"].split(",")]
    )
    for f, part in bars.groupby("fold"):
        stats = performance_stats(part["pnl"].to_numpy(), part["turnover"].to_numpy(), ppy)
        assert stats["sharpe"] == pytest.approx(sel[f], rel=1e-9)
    history = client.get_metric_history(child.info.run_id, "selection_fold_sharpe_after_cost/1d")
    assert {h.step: h.value for h in history} == pytest.approx(sel.to_dict())
    assert m["selection_sharpe_after_cost/1d"] == pytest.approx(sel.mean())
    trials = pd.read_csv(client.download_artifacts(child.info.run_id, "tune/trials.csv", str(tmp_path)))
    assert len(trials) == 3 and "params_threshold/1d" in trials.columns
    study = optuna.load_study(study_name=f"quantml-tune-{run_id[:12]}-calmar", storage=storage)
    assert len(study.trials) == 3
    # a NEW version v2 whose bundle carries the tuned SignalConfig (and the allocator's settings)
    tuned = read_model_version_signal("syn", "2", tracking_uri)
    assert tuned.threshold_for("1d") == pytest.approx(study.best_params["threshold/1d"])
    assert tuned == SignalConfig.from_json(child.data.tags[SIGNAL_TAG])
    assert read_model_version_signal("syn", "1", tracking_uri) is None  # v1 is untouched
    mv = client.get_model_version("syn", "2")
    assert mv.run_id == run_id and mv.tags["quantml.source_version"] == "1"
    assert mv.tags["quantml.tune_run"] == child.info.run_id and "quantml.tune_selection_sharpe" in mv.tags
    assert "quantml.signal" not in mv.tags
    assert RegistryStore(tracking_uri).aliases("syn")["candidate"] == "2"
    with RegistryStore(tracking_uri).global_uri():
        bundle = load_bundle("models:/syn/2", tmp_path / "v2")
    assert bundle.allocator["target_vol"] == pytest.approx(study.best_params["target_vol"])


def test_tuning_refuses_purged_kfold_and_cpcv_sources(tracking_uri):
    for method in ("purged_kfold", "cpcv"):
        run_id = log_synthetic_source_run(tracking_uri, n_symbols=2, n_bars=80, validation=method)
        with pytest.raises(QuantmlInputError, match=f"validated with {method}.*validation=walk_forward"):
            run_tuning(run_id, tracking_uri, storage=None, n_trials=1, log_to_mlflow=False)


def test_cli_prints_the_lockbox_beside_and_counts_the_read(tracking_uri, tmp_path, monkeypatch, capsys):
    run_id = log_synthetic_source_run(tracking_uri, n_symbols=3, n_bars=250, seed=6)
    client = mlflow.MlflowClient(tracking_uri)
    client.log_metric(run_id, "holdout_sharpe_after_cost/1d", 0.42)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    code = _run_cli(monkeypatch, [f"run_id={run_id}", "study.storage=memory", "log_to_mlflow=false", *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "lockbox" in out and "1d: sharpe_after_cost 0.42" in out
    assert client.get_run(run_id).data.tags["quantml.lockbox_reads"] == "1"


def _worker(source, storage, worker):
    run_tuning(
        source,
        settings=TuneSettings(),
        allocator=AllocatorConfig(cov_window=30, cov_min_periods=10),
        storage=storage,
        study_name="shared",
        n_trials=3,
        n_startup_trials=2,
        worker=worker,
        log_to_mlflow=False,
    )


def test_two_processes_share_one_storage(source, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="shared", direction="maximize")
    ctx = multiprocessing.get_context("fork")  # forked workers skip the imports
    procs = [ctx.Process(target=_worker, args=(source, storage, i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    done = optuna.load_study(study_name="shared", storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert len(done) == 6
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6  # the workers drew different trials


def test_selection_sharpe_reads_the_old_tag_name_of_old_versions():
    from quantml.tuning.run import version_selection_sharpe

    assert version_selection_sharpe({"quantml.tune_selection_sharpe": "0.5"}) == 0.5
    assert version_selection_sharpe({"quantml.tune_holdout_sharpe": "0.25"}) == 0.25  # written by 0.2
    assert version_selection_sharpe({}) is None
