"""The quantml_optuna Hydra sweeper: search-space syntax, presets, a toy sweep with pruning and failures."""

import math
import statistics
import sys

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from quantml.cli.common import CONFIG_DIR
from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.tuning import pruning
from quantml.tuning.hparams import HparamSearch, distribution_from_override, format_value

PARSER = OverridesParser.create()


def _dist(text):
    return distribution_from_override(PARSER.parse_override(text))


def test_hydra_sweep_syntax_maps_to_optuna_distributions():
    assert _dist("a=interval(0.1, 0.5)") == FloatDistribution(0.1, 0.5)
    assert _dist("a=tag(log, interval(0.001, 1))") == FloatDistribution(0.001, 1.0, log=True)
    assert _dist("a=int(interval(8, 128))") == IntDistribution(8, 128)
    assert _dist("a=tag(log, int(interval(8, 128)))") == IntDistribution(8, 128, log=True)
    assert _dist("a=range(1, 4)") == IntDistribution(1, 3)  # python range: 1, 2, 3
    assert _dist("a=range(0, 10, 3)") == IntDistribution(0, 9, step=3)
    assert _dist("a=range(0.1, 0.5, 0.1)") == FloatDistribution(0.1, 0.4, step=0.1)
    assert _dist("a=choice(16, 32, 64)") == CategoricalDistribution([16, 32, 64])
    assert _dist("backbone=ridge,lightgbm") == CategoricalDistribution(["ridge", "lightgbm"])
    assert _dist("a=7") == 7
    with pytest.raises(QuantmlInputError, match="empty range"):
        _dist("a=range(5, 5)")


@pytest.mark.parametrize("value", [0.0123, 7, True, None, "lightgbm", "sqlite:///o.db", "it's"])
def test_format_value_round_trips_through_hydras_parser(value):
    assert PARSER.parse_override(f"k={format_value(value)}").value() == value


def test_command_line_sweeps_and_fixed_values_override_the_preset():
    search = HparamSearch(params={"backbone.lr": "interval(0.1, 0.2)", "backbone.depth": "choice(1, 2)"})
    space, fixed = search.search_space(["backbone.depth=3", "backbone.lr=interval(0.3, 0.4)", "data=synthetic"])
    assert space == {"backbone.lr": FloatDistribution(0.3, 0.4)}
    assert fixed == ["backbone.depth=3", "data=synthetic"]
    with pytest.raises(QuantmlInputError, match="hydra.sweeper.pruner"):
        HparamSearch(pruner="asha")


def test_pruning_report_is_a_no_op_outside_a_sweep_and_negates_on_request():
    cfg = OmegaConf.create({"hparams_search": {"trial": None, "prune_metric": "m", "study_name": "s"}})
    pruning.report(cfg, 0, {"m": 1.0})  # no trial: nothing happens
    pruning.report(OmegaConf.create({}), 0, {"m": 1.0})
    assert pruning.metric_value({"val_rmse/1d": 0.5}, "-val_rmse/1d") == -0.5
    assert pruning.metric_value({"x": float("nan")}, "x") is None


@pytest.mark.parametrize("preset,backbone", [("lightgbm", "LightGBMForecaster"), ("lstm", "LSTMForecaster")])
def test_presets_compose_and_every_searched_key_exists(preset, backbone):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose("config", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.backbone._target_.endswith(backbone)
    assert cfg.hydra.sweeper._target_.endswith("QuantmlOptunaSweeper")
    first = cfg.horizon.horizons[0]
    # selection on development folds' test blocks (the lockbox is never in them)
    assert cfg.hparams_search.objective == f"test_rank_ic_mean/{first}"
    assert cfg.hparams_search.prune_metric == f"test_rank_ic/{first}"
    space, fixed = HparamSearch(params=cfg.hydra.sweeper.params).search_space([])
    assert len(space) >= 5 and not fixed
    for key in space:
        assert OmegaConf.select(cfg, key) is not None, f"{preset}: {key} is not a key of the composed config"


APP_CONFIG = """
defaults:
  - override hydra/sweeper: quantml_optuna
  - _self_
x: 0.0
y: 1
hparams_search:
  objective: value
  prune_metric: score
  trial: null
  study_name: null
  storage: null
hydra:
  sweep:
    dir: {root}/multirun
  sweeper:
    n_trials: 8
    seed: 3
    storage: sqlite:///{root}/optuna.db
    study_name: toy
    n_startup_trials: 3
    pruner: median
    pruner_startup_trials: 2
    pruner_warmup_steps: 0
    params:
      x: interval(-2, 2)
      y: choice(1, 2, 3)
"""


def test_toy_sweep_tells_values_prunes_and_survives_failures(tmp_path, monkeypatch):
    import hydra

    (tmp_path / "config.yaml").write_text(APP_CONFIG.format(root=tmp_path))
    seen = []

    @hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="config")
    def app(cfg):
        if cfg.x > 1.8:
            raise RuntimeError("boom")  # a failing job must not stop the sweep
        value = -((cfg.x - 1.0) ** 2) - cfg.y
        for fold in range(3):
            pruning.report(cfg, fold, {"score": value})
        seen.append((cfg.hparams_search.trial, cfg.x, cfg.y, value))
        return value

    monkeypatch.setattr(sys, "argv", ["app", "-m"])
    monkeypatch.chdir(tmp_path)
    try:
        app()
    finally:
        GlobalHydra.instance().clear()
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 8
    states = {t.number: t.state for t in study.trials}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {s[0] for s in seen} == {t.number for t in complete}
    for trial, x, y, value in seen:  # the task's return value is what Optuna got
        t = study.trials[trial]
        assert t.value == pytest.approx(value) and t.params == {"x": x, "y": y}
        assert -2 <= x <= 2 and y in (1, 2, 3)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) + len(pruned) + len(failed) == 8 and complete and pruned and failed
    assert all(t.params["x"] > 1.8 for t in failed)
    for t in pruned:  # pruned at fold 0: its score was below the median of the trials completed before it
        earlier = [c.intermediate_values[0] for c in complete if c.number < t.number]
        assert list(t.intermediate_values) == [0] and len(earlier) >= 2
        assert t.intermediate_values[0] < statistics.median(earlier)
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert results.best_value == pytest.approx(study.best_value) and results.trials.COMPLETE == len(complete)
    assert math.isfinite(results.best_value) and set(states) == set(range(8))


def test_sweep_end_prints_selection_beside_the_best_trials_lockbox(tmp_path, capsys):
    """The best trial's objective (development folds) is printed beside its parent run's holdout_*,
    and that print is a counted lockbox read."""
    import mlflow

    from tests.helpers.registry_fakes import sqlite_store

    uri = sqlite_store(tmp_path)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("hp", artifact_location=(tmp_path / "a").as_uri())
    runs = {}
    for trial in (0, 1):
        run = client.create_run(exp, tags={L.TAG_KIND: "parent"})
        client.log_param(run.info.run_id, "hparams_search.trial", str(trial))
        client.log_param(run.info.run_id, "hparams_search.study_name", "hp-study")
        client.log_metric(run.info.run_id, "holdout_rank_ic/4h", 0.01 * (trial + 1))
        runs[trial] = run.info.run_id
    study = optuna.create_study(study_name="hp-study", direction="maximize")
    for value in (0.2, 0.05):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    search = HparamSearch()
    search.config = OmegaConf.create(
        {"tracking": {"uri": uri}, "hparams_search": {"objective": "test_rank_ic_mean/4h"}}
    )
    out = search._selection_beside_holdout(study)
    printed = capsys.readouterr().out
    assert "selection_test_rank_ic_mean/4h = 0.2 (development folds)" in printed
    assert f"lockbox of run {runs[0]}" in printed and "4h: rank_ic 0.01" in printed
    assert out["best_run_id"] == runs[0] and out["holdout"] == {"holdout_rank_ic/4h": 0.01}
    assert client.get_run(runs[0]).data.tags["quantml.lockbox_reads"] == "1"
    assert "quantml.lockbox_reads" not in client.get_run(runs[1]).data.tags
