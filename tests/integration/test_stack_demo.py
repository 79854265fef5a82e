"""The stacking demo (``experiment=stack_demo``, docs/stacking.md "Demo"): a synthetic panel with a planted
price reversal beside the exogenous drift (``data.price_signal=true``), a price-only and an exogenous-only
walk-forward ridge expert (complementary) and two price experts with the same inputs (redundant), stacked
in-process with ``build_stack``.

On the lockbox (the experts' final models feeding the final combiner), the cross-sectional
``regime_gate`` stack of the complementary pair beats equal weight and the best single expert (chosen
on development rows) on rank IC on seeds 0, 1 and 2 (docs/stacking.md "Demo" has the numbers); the
stack of the redundant pair is "no better" than its best expert, and the verdict table says so. On the
development folds equal weight stays hard to beat (the early stack folds fit on little data)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from quantml.contracts import run_layout as L
from quantml.features import build_features
from quantml.stacking import StackSettings
from quantml.stacking.run import combiner_config
from tests.helpers.registry_fakes import sqlite_store

SEED = 2  # docs/stacking.md, Demo: the figures of seeds 0, 1, 2
COMPLEMENTARY = [["feature_set=price_cross_section"], ["feature_set=exogenous"]]
REDUNDANT = [
    ["feature_set=price_cross_section", "backbone.alpha=1"],
    ["feature_set=price_cross_section", "backbone.alpha=1000"],
]
PRICE_MODALITIES = {"price", "volume", "cross_section", "derivatives", "calendar", "microstructure"}
MARGIN = 0.005  # rank IC


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from quantml.cli.common import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose("config", overrides=["experiment=stack_demo", *overrides])
    finally:
        GlobalHydra.instance().clear()


def test_preset_plants_the_price_signal_and_its_experts_see_disjoint_inputs():
    cfg = _compose([])
    assert cfg.data.source == "synthetic" and cfg.data.price_signal is True
    assert cfg.validation.method == "walk_forward" and cfg.backbone._target_.endswith("RidgeForecaster")
    from omegaconf import OmegaConf

    from quantml.cli.common import CONFIG_DIR

    preset = OmegaConf.load(f"{CONFIG_DIR}/experiment/stack_demo.yaml")
    assert preset.hydra.sweeper.params.feature_set == "price_cross_section,exogenous"  # the two experts
    from quantml.data import load_panel

    panel = load_panel({**dict(cfg.data), "n_symbols": 4, "n_bars": 400, "seed": 1})
    price = build_features(panel, _compose(COMPLEMENTARY[0]).feature_set)
    exo = build_features(panel, _compose(COMPLEMENTARY[1]).feature_set)
    # the price expert reads bars only; the exogenous expert no bar-derived input (not even the taker ratio)
    assert set(price.modalities.values()) == {"cross_section"}
    assert set(exo.modalities.values()) and not set(exo.modalities.values()) & PRICE_MODALITIES
    assert not any("taker" in c for c in exo.frame.columns)


def _train(root, name: str, experts, extra=()) -> list[str]:
    from quantml.experiment import RunContext, run_experiment

    ids = []
    for overrides in experts:
        cfg = _compose([f"seed={SEED}", "print_report=false", *overrides, *extra])
        ids.append(run_experiment(cfg, RunContext(sweep_dir=name)).parent_run_id)
    return ids


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Both pairs trained (final models logged) and stacked with ``regime_gate``, lockbox included."""
    from quantml.stacking import run_stack

    root = tmp_path_factory.mktemp("stack_demo")
    uri = sqlite_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            out = {"root": root}
            for name, experts in (("complementary", COMPLEMENTARY), ("redundant", REDUNDANT)):
                _train(root, name, experts)
                settings = StackSettings(
                    combiner=combiner_config("regime_gate"), sweep_dir=name, output_dir=str(root / name)
                )
                out[name] = run_stack(uri, settings)
            yield out
        finally:
            mlflow.set_tracking_uri(None)


def _rank_ic(table: pd.DataFrame) -> dict[str, float]:
    return dict(zip(table["candidate"], table["rank_ic"].astype(float)))


def _xs_corr(result) -> float:
    """Correlation of the two experts' forecasts within each timestamp (what a cross-sectional rank sees)."""
    table = result.table
    cols = ["e0__expected_return", "e1__expected_return"]
    demeaned = table[cols] - table.groupby(["horizon", "timestamp"])[cols].transform("mean")
    return float(demeaned.corr().iloc[0, 1])


def _verdict(result) -> dict[str, str]:
    table = result.holdout.verdict
    return dict(zip(table["versus"], table["verdict"]))


@pytest.mark.slow
def test_complementary_experts_stack_beats_both_baselines_on_the_lockbox(demo):
    comp = demo["complementary"]
    assert comp.audit["clean"] and _xs_corr(comp) < 0.3  # nearly uncorrelated experts
    lock = _rank_ic(comp.holdout.comparison)
    assert lock["regime_gate"] > lock["equal_weight"] + MARGIN and lock["regime_gate"] > lock["best_single"] + MARGIN
    assert _verdict(comp)["best_single"] == "beats"
    assert set(comp.holdout.chosen.values()) <= {"e0", "e1"}  # the best single expert, chosen on development rows
    # on the development folds a combination of the two (there: equal weight) beats the best single expert too
    dev = _rank_ic(comp.comparison)
    assert max(dev["regime_gate"], dev["equal_weight"]) > dev["best_single"]


@pytest.mark.slow
def test_redundant_experts_stack_is_no_better_and_the_table_says_so(demo, capsys):
    red = demo["redundant"]
    assert _xs_corr(red) > 0.9  # the same inputs twice
    lock = _rank_ic(red.holdout.comparison)
    assert abs(lock["regime_gate"] - lock["best_single"]) < MARGIN
    assert _verdict(red)["best_single"] == "no better"
    assert "no better" in red.to_text()
    saved = pd.read_csv(demo["root"] / "redundant" / L.STACK_HOLDOUT_VERDICT_CSV)
    assert list(saved["versus"]) == ["equal_weight", "best_single"] and saved["verdict"].iloc[1] == "no better"
