"""The lockbox: perturbing every raw panel row and stream event from the lockbox start on leaves
every choice bit-identical — the development predictions, the chosen trial of a sweep, the
tuned thresholds and the gate verdict — while the lockbox figures do move."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import run_layout as L
from quantml.data.synthetic import generate_synthetic
from quantml.experiment import run_experiment
from quantml.registry.gates import Baseline, evaluate_gates, load_gates_config, load_run_summary
from quantml.tracking.reader import RunReader
from quantml.tuning.run import run_tuning
from quantml.validation.lockbox import calendar_of, computed_start, split_development

HOLDOUT = 0.2
TRIALS = {"a": ["backbone.alpha=1.0"], "b": ["backbone.alpha=300.0"]}


def _write(tmp_path, name: str, bars: pd.DataFrame, funding: pd.DataFrame | None):
    folder = tmp_path / name
    folder.mkdir()
    bars.to_parquet(folder / "bars.parquet", index=False)
    if funding is not None:
        funding.to_parquet(folder / "funding.parquet", index=False)
    return folder


def _perturbed(bars: pd.DataFrame, funding: pd.DataFrame | None, start: pd.Timestamp):
    """Prices (OHLC scaled together, so bars stay valid), volume and the funding stream from
    ``start`` on, changed at random."""
    rng = np.random.default_rng(1)
    bars = bars.copy()
    late = (bars["timestamp"] >= start).to_numpy()
    scale = np.exp(rng.normal(0, 0.05, late.sum()))
    for col in ("open", "high", "low", "close"):
        bars.loc[late, col] = bars.loc[late, col].to_numpy() * scale
    bars.loc[late, "volume"] = bars.loc[late, "volume"].to_numpy() * rng.uniform(0.2, 3.0, late.sum())
    if funding is None:
        return bars, None
    funding = funding.copy()
    known = (funding["available_at"] >= start).to_numpy()
    value = [c for c in funding.columns if c not in ("symbol", "event_time", "available_at")][0]
    funding.loc[known, value] = rng.normal(0, 0.01, known.sum())
    return bars, funding


def _synthetic():
    synth = generate_synthetic(freq="1h", n_symbols=3, n_bars=900, seed=5)
    settings = ["horizon=4h", "validation.embargo=4h", "validation.n_splits=3", "validation.min_train_samples=50"]
    return synth.bars, synth.streams["funding"], "4h", settings


def _stocks():
    from quantml.data.loaders import load_stocks_daily

    bars = load_stocks_daily()
    bars = bars[bars["timestamp"] >= pd.Timestamp("2008-01-01", tz="UTC")].reset_index(drop=True)
    return bars, None, "1d", ["horizon=1d", "validation.embargo=1d", "validation.n_splits=3"]


DATASETS = {
    "synthetic_intraday": pytest.param(_synthetic, id="synthetic_intraday"),
    "bundled_stocks": pytest.param(_stocks, id="bundled_stocks", marks=pytest.mark.slow),
}


def _train(compose_cfg, folder, trial: str, experiment: str, settings: list[str]):
    streams = [f"+data.streams.funding={folder / 'funding.parquet'}"] if (folder / "funding.parquet").exists() else []
    return run_experiment(
        compose_cfg(
            [
                "data=parquet",
                f"data.path={folder / 'bars.parquet'}",
                *streams,
                "feature_set=price_volume_regime",
                "backbone=ridge",
                "strategy=allocator",  # a book the tuned thresholds change
                *TRIALS[trial],
                *settings,
                f"validation.holdout={HOLDOUT}",
                "print_report=false",
                f"tracking.experiment={experiment}",
            ]
        )
    )


def _choices(compose_cfg, folder, experiment: str, tracking_uri: str, horizon: str, settings: list[str]):
    runs = {trial: _train(compose_cfg, folder, trial, experiment, settings) for trial in TRIALS}
    objective = {t: r.metrics[f"test_rank_ic_mean/{horizon}"] for t, r in runs.items()}
    chosen = max(objective, key=objective.get)
    other = next(t for t in TRIALS if t != chosen)
    tuned = run_tuning(runs[chosen].parent_run_id, tracking_uri, storage=None, n_trials=6, n_startup_trials=3, seed=3)
    reader = RunReader(tracking_uri=tracking_uri)
    report = evaluate_gates(
        reader,
        runs[chosen].parent_run_id,
        load_gates_config(),
        Baseline(f"run {runs[other].parent_run_id}", load_run_summary(reader, runs[other].parent_run_id)),
    )
    verdict = {r.name: r.passed for r in report.results}
    return runs, objective, chosen, tuned, verdict


@pytest.mark.timeout(900)
@pytest.mark.parametrize("dataset", list(DATASETS.values()))
def test_perturbing_the_lockbox_changes_no_choice(tmp_path, tracking_uri, compose_cfg, dataset):
    bars, funding, horizon, settings = dataset()
    start = computed_start(calendar_of(bars["timestamp"]), HOLDOUT)
    clean = _write(tmp_path, "clean", bars, funding)
    noisy = _write(tmp_path, "noisy", *_perturbed(bars, funding, start))

    runs_a, objective_a, chosen_a, tuned_a, verdict_a = _choices(
        compose_cfg, clean, "lockbox-clean", tracking_uri, horizon, settings
    )
    runs_b, objective_b, chosen_b, tuned_b, verdict_b = _choices(
        compose_cfg, noisy, "lockbox-noisy", tracking_uri, horizon, settings
    )

    client = RunReader(tracking_uri=tracking_uri).client
    tags = client.get_run(runs_a[chosen_a].parent_run_id).data.tags
    assert tags[L.TAG_LOCKBOX_START] == start.isoformat()
    # every development number is bit-identical, so is every choice made from them
    for trial in TRIALS:
        pd.testing.assert_frame_equal(runs_a[trial].oos, runs_b[trial].oos, check_exact=True)
    assert objective_a == objective_b and chosen_a == chosen_b
    assert tuned_a.best_params == tuned_b.best_params
    assert tuned_a.metrics == tuned_b.metrics
    assert verdict_a == verdict_b
    # ... while the lockbox saw the perturbation (the test can fail)
    hold_a, hold_b = runs_a[chosen_a].holdout, runs_b[chosen_b].holdout
    assert len(hold_a) and (hold_a["timestamp"] >= start).all()
    assert not np.array_equal(hold_a["ret"].to_numpy(), hold_b["ret"].to_numpy())
    key = f"holdout_rank_ic/{horizon}"
    assert runs_a[chosen_a].metrics[key] != runs_b[chosen_b].metrics[key]


def test_development_rows_end_before_the_lockbox_with_the_embargo():
    t0 = pd.date_range("2024-01-01", periods=10, freq="1h").to_numpy()
    t1 = t0 + np.timedelta64(2, "h")
    start = pd.Timestamp("2024-01-01 07:00", tz="UTC")
    dev, box = split_development(t0, t1, start, pd.Timedelta("1h"))
    # t1 < 07:00 - 1h: rows 0..3 (t1 = 02:00 .. 05:00); lockbox t0 >= 07:00: rows 7..9
    assert np.flatnonzero(dev).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(box).tolist() == [7, 8, 9]
    dev, box = split_development(t0, t1, None, pd.Timedelta("1h"))
    assert dev.all() and not box.any()


def test_fold_plan_and_lockbox_agree_across_horizons_and_ablations(tracking_uri, compose_cfg):
    from tests.helpers import TINY

    base = [*TINY, "backbone=ridge", "tracking.log_model=false", "tracking.experiment=plan"]
    first = run_experiment(compose_cfg([*base, "horizon=4h"]))
    second = run_experiment(compose_cfg([*base, "horizon=1h", "ablation=event_window"]))
    client = RunReader(tracking_uri=tracking_uri).client
    runs = [client.get_run(r.parent_run_id) for r in (first, second)]
    assert runs[0].data.tags[L.TAG_LOCKBOX_SOURCE] == "computed"
    assert runs[1].data.tags[L.TAG_LOCKBOX_SOURCE] == f"recorded:{first.parent_run_id}"
    assert runs[0].data.tags[L.TAG_LOCKBOX_START] == runs[1].data.tags[L.TAG_LOCKBOX_START]
    assert runs[0].data.tags[L.TAG_FOLD_PLAN] == runs[1].data.tags[L.TAG_FOLD_PLAN]
    import json

    plan = json.load(open(client.download_artifacts(first.parent_run_id, L.FOLD_PLAN_ARTIFACT)))
    for result in (first, second):  # every test row lies in its fold's calendar block
        for fold in plan["folds"]:
            (block,) = fold["test_blocks"]
            lo, hi = (pd.Timestamp(plan["blocks"][block][k]) for k in ("start", "end"))
            ts = result.oos.loc[result.oos["fold"] == fold["fold_id"], "timestamp"]
            assert len(ts) and ts.min() >= lo and ts.max() <= hi
    assert len(second.oos) < len(first.oos)  # the ablation kept fewer rows, on the same plan
    audit = json.load(open(client.download_artifacts(first.parent_run_id, L.AUDIT_ARTIFACT)))
    assert audit["checks"]["lockbox"]["ok"] and audit["clean"]
