"""Warm start (``warm_start=models:/NAME@active``): a LightGBM run trained on the first part of a
synthetic panel is registered and promoted; a candidate warm-started from it on the later bars
finishes, names its source in its tags (and its registered version's), and its heads hold the
source's trees plus the ones it grew; a warm start on bars the source trained on is refused
with the source's training end and the ``data.start=`` that fixes it."""

from __future__ import annotations

import tempfile

import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.data.synthetic import generate_synthetic
from quantml.experiment import run_experiment
from quantml.registry import check_gates, promote, register
from quantml.registry.store import RegistryStore
from quantml.tracking.pyfunc import load_bundle
from tests.helpers.registry_fakes import sqlite_store

NAME = "warm"
SPLIT = 500  # the source trains on the first SPLIT hourly bars, the candidate on the later ones
SETTINGS = [
    "data=parquet",
    "feature_set=price",
    "backbone=lightgbm",
    "backbone.n_estimators=30",
    "backbone.n_jobs=1",
    "horizon=4h",
    "validation.embargo=4h",
    "validation.n_splits=3",
    "validation.min_train_samples=50",
    "print_report=false",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The store, the panel file, the promoted source version and its training end."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from quantml.cli.common import CONFIG_DIR

    root = tmp_path_factory.mktemp("warm")
    uri = sqlite_store(root)
    bars = generate_synthetic(freq="1h", n_symbols=3, n_bars=900, seed=5).bars
    path = root / "bars.parquet"
    bars.to_parquet(path, index=False)
    times = pd.DatetimeIndex(sorted(bars["timestamp"].unique()))
    common = [*SETTINGS, f"data.path={path}", f"tracking.uri={uri}", "tracking.experiment=warm-start"]

    def train(*overrides: str, drop: tuple[str, ...] = ()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            kept = [o for o in common if not o.startswith(drop)] if drop else common
            cfg = compose(config_name="config", overrides=[*kept, *overrides])
        GlobalHydra.instance().clear()
        return run_experiment(cfg)

    source = train(f"data.end={times[SPLIT - 1].strftime('%Y-%m-%dT%H:%M:%S')}")
    store = RegistryStore(uri)
    version = register(store, source.parent_run_id, NAME)
    promote(store, NAME, version.version, force=True, reason="the warm-start test's source")
    run = store.client.get_run(source.parent_run_id)
    lockbox = pd.Timestamp(run.data.tags[L.TAG_LOCKBOX_START])
    end = times[times < lockbox][-1]  # the bar before the source's lockbox: its last development bar
    return store, train, source, version, end, times


def _after(end: pd.Timestamp) -> str:
    """``data.start`` of the bar after ``end`` (what the refusal's fix names)."""
    return (end + pd.Timedelta("1h")).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="module")
def candidate(world):
    """The candidate warm-started from the active version on the bars after its training end."""
    _, train, _, _, end, _ = world
    return train(f"warm_start=models:/{NAME}@active", f"data.start={_after(end)}")


def test_warm_start_continues_the_source_boosters_and_records_the_lineage(world, candidate):
    store, _, source, version, end, _ = world
    after, result = end + pd.Timedelta("1h"), candidate
    run = store.client.get_run(result.parent_run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[L.TAG_WARM_START_SOURCE] == f"models:/{NAME}/{version.version}"
    assert tags[L.TAG_WARM_START_RUN] == source.parent_run_id
    assert pd.Timestamp(tags[L.TAG_WARM_START_AFTER]) == end
    # every sample it fitted, validated or scored lies after the source's training end
    assert (pd.to_datetime(result.oos["timestamp"], utc=True) > end).all()
    assert (pd.to_datetime(result.holdout["timestamp"], utc=True) > end).all()
    # the candidate's own lockbox sits at the end of the newer data
    assert pd.Timestamp(tags[L.TAG_LOCKBOX_START]) > after

    with tempfile.TemporaryDirectory() as tmp:
        old = load_bundle(source.model_uri, tmp).forecaster
        new = load_bundle(result.model_uri, tmp).forecaster
    old_heads, new_heads = old.head_boosters(), new.head_boosters()
    assert set(new_heads) == set(old_heads)
    for key, booster in new_heads.items():
        grown = new.capacity_[key]  # the trees the candidate grew itself
        assert grown >= 1
        assert booster.num_trees() == old_heads[key].num_trees() + grown, key
        assert booster.num_trees() > grown, key

    # register copies the lineage to the version
    candidate = register(store, result.parent_run_id, NAME)
    for tag in L.WARM_START_TAGS:
        assert candidate.tags[tag] == tags[tag]


def test_warm_candidate_is_gated_against_a_baseline_on_its_own_windows(world, candidate):
    """The active version's folds lie before the candidate's, so the Sharpe gate finds no window in
    common with it; a from-scratch run of the same config on the same bars is the baseline that
    gives the gate the candidate's windows (docs/registry.md, "Warm start")."""
    store, train, _, _, end, _ = world
    version = register(store, candidate.parent_run_id, NAME)
    against_active = check_gates(store, NAME, version.version)
    sharpe = next(r for r in against_active.results if r.name == "sharpe")
    assert not sharpe.passed and "no walk-forward window in common" in sharpe.detail
    scratch = train(f"data.start={_after(end)}")
    report = check_gates(store, NAME, version.version, baseline_run_id=scratch.parent_run_id)
    sharpe = next(r for r in report.results if r.name == "sharpe")
    assert "no walk-forward window in common" not in sharpe.detail
    assert set(sharpe.figures["candidate"]) == set(sharpe.figures["baseline"]) == {"4h"}
    assert len(sharpe.figures["candidate"]["4h"]) == len(sharpe.figures["baseline"]["4h"]) == 3


def test_warm_start_on_the_source_development_window_is_refused(world):
    store, train, _, _, end, times = world
    overlap = times[SPLIT // 2].strftime("%Y-%m-%dT%H:%M:%S")  # inside the source's development data
    with pytest.raises(QuantmlInputError) as err:
        train(f"warm_start=models:/{NAME}@active", f"data.start={overlap}")
    message = str(err.value)
    assert f"up to {end:%Y-%m-%d %H:%M} UTC" in message
    assert f"data.start={_after(end)}" in message
    failed = store.client.search_runs(
        [store.client.get_experiment_by_name("warm-start").experiment_id],
        filter_string=f"tags.`{L.TAG_KIND}` = '{L.KIND_PARENT}' and attributes.status = 'FAILED'",
    )
    assert any("fall in that window" in run.data.tags.get(L.TAG_ERROR, "") for run in failed)


def test_warm_start_refuses_ridge_and_unknown_versions_before_any_run(world):
    store, train, _, _, end, _ = world
    after = _after(end)
    experiment = store.client.get_experiment_by_name("warm-start").experiment_id
    before = len(store.client.search_runs([experiment]))
    with pytest.raises(QuantmlInputError, match="warm start is built for lightgbm"):
        train(f"warm_start=models:/{NAME}@active", f"data.start={after}", "backbone=ridge", drop=("backbone",))
    with pytest.raises(QuantmlInputError, match="has no version 99"):
        train(f"warm_start=models:/{NAME}/99", f"data.start={after}")
    assert len(store.client.search_runs([experiment])) == before  # a bad warm_start makes no run
