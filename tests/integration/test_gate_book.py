"""One book: the Sharpe gate judges the book that would be traded, the tune study trades the training book.

A tiny walk-forward run is trained in-process (ridge), registered (v1), tuned with attach (v2).
The untuned study's per-fold Sharpe equals the fold runs' logged ``test_sharpe_after_cost``; the
gate's per-fold Sharpe of v1 is that logged figure on every fold, of v2 the tune run's selection
Sharpe on its selection folds only (= the book recomputed from v2's bundle settings). A synthetic
allocator-book run checks the same for a book the tuned thresholds actually change."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from quantml.contracts import SYMBOL, TIMESTAMP
from quantml.contracts import run_layout as L
from quantml.portfolio import AllocatorConfig
from quantml.registry import RegistryStore, check_gates, load_gates_config, register
from quantml.registry.book import FoldBooks, book_strategy, run_strategy_config
from quantml.signals import SignalConfig
from quantml.tracking.pyfunc import load_bundle
from quantml.tracking.reader import RunReader
from quantml.tuning.run import run_tuning
from quantml.tuning.source import load_source_run
from quantml.tuning.thresholds import ThresholdStudy, TuneSettings
from tests.helpers import TINY
from tests.helpers.registry_fakes import sqlite_store
from tests.helpers.synthetic_oos import log_synthetic_source_run, synthetic_oos_frame

optuna.logging.set_verbosity(optuna.logging.WARNING)
TOL = 1e-12


def ensure_market_artifact(run_id: str, cfg) -> None:
    """Log ``predictions/market.parquet`` (every development bar) on a run trained before the
    experiment wrote it: the same frame the run's Scorer used (the prepared panel's bars)."""
    client = mlflow.MlflowClient()
    if RunReader(client=client).has_artifact(run_id, L.MARKET_ARTIFACT):
        return
    from quantml.experiment.prepare import prepare_data

    prep = prepare_data(cfg)
    market = pd.DataFrame(
        {
            SYMBOL: prep.panel[SYMBOL].to_numpy(),
            TIMESTAMP: pd.to_datetime(prep.panel[TIMESTAMP], utc=True).to_numpy(),
            "ret_next_bar": prep.realised.take("ret_next_bar"),
        }
    )
    market[TIMESTAMP] = pd.to_datetime(market[TIMESTAMP], utc=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(L.MARKET_ARTIFACT).name
        market.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), str(Path(L.MARKET_ARTIFACT).parent))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from quantml.cli.common import CONFIG_DIR
    from quantml.experiment import run_experiment

    root = tmp_path_factory.mktemp("gate_book")
    uri = sqlite_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(
                "config",
                overrides=[*TINY, "backbone=ridge", "validation.n_splits=4", "tracking.experiment=gate_book"],
            )
        GlobalHydra.instance().clear()
        result = run_experiment(cfg)
        run_id = result.parent_run_id
        ensure_market_artifact(run_id, cfg)
        store = RegistryStore(uri)
        v1 = register(store, run_id, "book")
        outcome = run_tuning(
            run_id,
            uri,
            TuneSettings(target_vol=None),
            storage=None,
            n_trials=4,
            n_startup_trials=2,
            attach=f"book:{v1.version}",
        )
        yield {"uri": uri, "run_id": run_id, "store": store, "outcome": outcome, "cfg": cfg}
    mlflow.set_tracking_uri(None)


def _logged(run_id: str, h: str) -> dict[str, float]:
    return {f.fold_id: f.metrics[f"test_sharpe_after_cost/{h}"] for f in RunReader().folds(run_id)}


def _sharpe_figures(report) -> dict:
    (sharpe,) = [r for r in report.results if r.name == "sharpe"]
    return sharpe.figures


def test_the_untuned_study_trades_the_training_book(world):
    source = load_source_run(world["run_id"], world["uri"])
    assert source.market is not None and source.strategy_config() is not None
    study = ThresholdStudy(source, TuneSettings(target_vol=None))
    untuned = study.evaluate(study.base_signal, study.allocator)
    for h in source.horizons:
        logged = _logged(world["run_id"], h)
        assert set(map(str, untuned.fold_sharpe[h])) == set(logged)
        for f, value in untuned.fold_sharpe[h].items():
            assert value == pytest.approx(logged[str(f)], abs=TOL, rel=0)
    # the tune run logged the same untuned figures as selection_baseline per fold
    client = mlflow.MlflowClient()
    h = source.horizons[0]
    history = client.get_metric_history(world["outcome"].tune_run_id, f"selection_baseline_fold_sharpe_after_cost/{h}")
    logged = _logged(world["run_id"], h)
    assert history and all(m.value == pytest.approx(logged[str(m.step)], abs=TOL, rel=0) for m in history)


def test_gate_of_an_untuned_version_is_the_logged_fold_sharpe_on_every_fold(world):
    report = check_gates(world["store"], "book", "1")
    figures = _sharpe_figures(report)["candidate"]
    for h, per in figures.items():
        logged = _logged(world["run_id"], h)
        assert set(per) == set(logged)
        assert all(per[f] == pytest.approx(logged[f], abs=TOL, rel=0) for f in per)
    assert "RankLongShort book" in report.to_text()


def test_gate_of_the_tuned_version_is_its_served_book_on_its_selection_folds(world, tmp_path):
    outcome, client = world["outcome"], mlflow.MlflowClient()
    mv = outcome.attached
    tune_params = client.get_run(outcome.tune_run_id).data.params
    selection = tune_params["selection_folds"].split(",")
    report = check_gates(world["store"], "book", mv.version)
    figures = _sharpe_figures(report)["candidate"]
    # the book recomputed from the tuned bundle's own settings on those folds
    with world["store"].global_uri():
        bundle = load_bundle(f"models:/book/{mv.version}", tmp_path / "b")
    source = load_source_run(world["run_id"], world["uri"])
    books = FoldBooks(
        source.frame, source.market, source.costs(), source.periods_per_year(), source.ic_mode(), source.horizons
    )
    alloc = AllocatorConfig.from_dict(bundle.allocator) if bundle.allocator else None
    served = book_strategy(run_strategy_config(source.cfg), SignalConfig.from_dict(bundle.signal), alloc)
    recomputed = books.fold_sharpe(served, folds=[int(f) for f in selection])
    for h, per in figures.items():
        assert sorted(per) == sorted(selection)  # only folds its thresholds were not tuned on
        history = {
            str(m.step): m.value
            for m in client.get_metric_history(outcome.tune_run_id, f"selection_fold_sharpe_after_cost/{h}")
        }
        assert sorted(history) == sorted(selection)
        for f in per:
            assert per[f] == pytest.approx(history[f], abs=TOL, rel=0)
            assert per[f] == pytest.approx(recomputed[h][int(f)], abs=TOL, rel=0)
    assert "selection folds" in report.to_text()


def test_fewer_comparable_windows_than_min_windows_is_said_and_reachable(world):
    mv = world["outcome"].attached
    cfg = load_gates_config(overrides=["sharpe.min_windows=9"])
    text = check_gates(world["store"], "book", mv.version, cfg).to_text()
    assert "< min_windows 9: all" in text and "must be better" in text
    cfg = load_gates_config(overrides=["sharpe.min_windows=9", "sharpe.fewer_windows=fail"])
    report = check_gates(world["store"], "book", mv.version, cfg)
    assert "sharpe" in report.failed and "cannot pass" in report.to_text()


def test_gate_prints_the_lockbox_and_counts_each_read(world):
    client = mlflow.MlflowClient()
    run_id = world["run_id"]
    reads = lambda: int(client.get_run(run_id).data.tags.get(L.TAG_LOCKBOX_READS, "0"))  # noqa: E731
    if not any(k.startswith(L.LOCKBOX_PREFIX) for k in client.get_run(run_id).data.metrics):
        before = reads()
        assert "no lockbox" in check_gates(world["store"], "book", "1").to_text()
        assert reads() == before  # nothing read
        client.log_metric(run_id, "holdout_sharpe_after_cost/4h", -0.5)
    before = reads()
    text = check_gates(world["store"], "book", "1").to_text()
    assert "lockbox (not gated on" in text and "4h: rank_ic" in text and "sharpe_after_cost" in text
    assert reads() == before + 1
    cfg = load_gates_config(overrides=["holdout.enabled=true", "holdout.min=100"])
    report = check_gates(world["store"], "book", "1", cfg)
    assert "holdout" in report.failed and reads() == before + 3  # the print and the gate


def test_tuned_allocator_book_is_judged_as_served(tmp_path, monkeypatch):
    """A run without a strategy config trades the allocator book: tuned thresholds change it, and
    the gate's per-fold Sharpe of the tuned version is the tune run's selection Sharpe per fold."""
    uri = sqlite_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    frame = synthetic_oos_frame(n_symbols=3, n_bars=250, seed=4)
    run_id = log_synthetic_source_run(uri, frame=frame, log_model=True)
    store = RegistryStore(uri)
    register(store, run_id, "alloc")
    outcome = run_tuning(
        run_id,
        uri,
        TuneSettings(),
        AllocatorConfig(cov_window=30, cov_min_periods=10),
        storage=None,
        n_trials=4,
        n_startup_trials=2,
        attach="alloc:1",
    )
    folds = pd.read_csv(
        mlflow.MlflowClient().download_artifacts(outcome.tune_run_id, "tune/fold_sharpe.csv", str(tmp_path))
    )
    sel = folds[folds["split"] == "selection"]
    report = check_gates(store, "alloc", outcome.attached.version)
    figures = _sharpe_figures(report)["candidate"]
    for h, per in figures.items():
        expected = sel[sel["horizon"] == h].set_index("fold")["sharpe_after_cost"]
        assert sorted(per) == sorted(str(f) for f in expected.index)
        assert all(per[str(f)] == pytest.approx(v, abs=TOL, rel=0) for f, v in expected.items())
    assert not np.allclose(sel["sharpe_after_cost"], sel["baseline"])  # the tuned book is another book
    # v1 (untuned, no allocator recorded: the defaults) is judged on every fold
    untuned = _sharpe_figures(check_gates(store, "alloc", "1"))["candidate"]
    source = load_source_run(run_id, uri)
    books = FoldBooks(frame, None, source.costs(), source.periods_per_year(), source.ic_mode(), source.horizons)
    own = books.fold_sharpe(book_strategy(None, source.signal_config(source.costs())))
    assert untuned["1d"] == pytest.approx({str(f): v for f, v in own["1d"].items()}, abs=TOL, rel=0)
    assert sorted(untuned["1d"]) == [str(f) for f in sorted(set(frame["fold"]))]
    assert "forecast bars only" in report.to_text()  # no market artifact: said, not hidden
    mlflow.set_tracking_uri(None)
