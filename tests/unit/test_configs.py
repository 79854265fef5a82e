"""Every config group composes, every backbone instantiates, presets pin what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from quantml.cli.common import CONFIG_DIR
from quantml.contracts import QuantmlInputError
from quantml.models.base import Forecaster

GROUPS = [
    "data",
    "feature_set",
    "horizon",
    "backbone",
    "ablation",
    "validation",
    "cost",
    "signal",
    "strategy",
    "evaluation",
    "tracking",
]


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_default_config_is_the_real_data_demo(compose_cfg):
    cfg = compose_cfg()
    assert cfg.data.source == "stocks_daily"
    assert cfg.backbone._target_.endswith("LightGBMForecaster")
    assert list(cfg.horizon.horizons) == ["1d", "7d"]
    assert cfg.validation.method == "walk_forward"
    assert cfg.seed == 42


@pytest.mark.parametrize("group, choice", [(g, c) for g in GROUPS for c in choices(g)])
def test_every_choice_composes_and_resolves(compose_cfg, group, choice):
    overrides = [f"{group}={choice}"]
    if (group, choice) == ("data", "parquet"):
        overrides.append("data.path=/tmp/panel.parquet")
    cfg = compose_cfg(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved[group], f"{group}={choice} composed to an empty group"


@pytest.mark.parametrize("backbone", choices("backbone"))
def test_every_backbone_instantiates_behind_the_forecaster_interface(compose_cfg, backbone):
    cfg = compose_cfg([f"backbone={backbone}"])
    model = instantiate(cfg.backbone, horizons=["1d", "7d"], seed=cfg.seed)
    assert isinstance(model, Forecaster)
    assert model.horizons == ["1d", "7d"]


def test_intraday_and_swing_horizon_presets(compose_cfg):
    assert list(compose_cfg(["horizon=intraday"]).horizon.horizons) == ["1h", "4h", "1d", "7d"]
    assert list(compose_cfg(["horizon=swing"]).horizon.horizons) == ["1d", "7d"]


def test_baselines_experiment_pins_its_study(compose_cfg):
    cfg = compose_cfg(
        ["experiment=baselines"],
    )
    assert cfg.data.source == "synthetic"
    assert cfg.validation.method == "purged_kfold"
    assert cfg.feature_set.name == "full"
    assert list(cfg.horizon.horizons) == ["1h", "4h", "1d", "7d"]
    experiment = OmegaConf.load(Path(CONFIG_DIR) / "experiment" / "baselines.yaml")
    sweep = experiment.hydra.sweeper.params
    assert set(sweep.backbone.split(",")) == {"ridge", "lightgbm"}
    assert set(sweep.ablation.split(",")) == {"full", "no_text", "no_macro", "event_window"}


def test_ablations_drop_the_modalities_they_name(compose_cfg):
    assert list(compose_cfg(["ablation=no_text"]).ablation.drop_modalities) == ["text", "event"]
    assert list(compose_cfg(["ablation=no_macro"]).ablation.drop_modalities) == ["macro"]
    assert compose_cfg(["ablation=event_window"]).ablation.event_window == "1d"


def test_tracking_uri_honours_the_environment(compose_cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert compose_cfg().tracking.uri == "sqlite:///elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert compose_cfg().tracking.uri == "sqlite:///mlflow.db"


def test_unknown_choice_lists_the_valid_ones(compose_cfg):
    with pytest.raises(Exception, match="ridge"):
        compose_cfg(["backbone=ridgee"])


def test_experiments_dir_is_the_experiment_group():
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "experiments" / "baselines.yaml").is_file()
    assert (repo / "conf" / "config.yaml").is_file()


SEQUENCE = ["mlp", "lstm", "gru", "tcn", "tsmixer", "patchtst", "itransformer", "tft"]


@pytest.mark.parametrize("backbone", SEQUENCE)
def test_sequence_backbones_share_one_base_config(compose_cfg, backbone):
    folder = Path(CONFIG_DIR) / "backbone"
    base = OmegaConf.to_container(OmegaConf.load(folder / "sequence" / "base.yaml"))
    own = OmegaConf.to_container(OmegaConf.load(folder / f"{backbone}.yaml"))
    assert own.pop("defaults") == ["sequence/base@_here_", "_self_"]  # the base first, the backbone's keys win
    copied = {k for k, v in own.items() if k in base and base[k] == v}
    assert not copied, f"{backbone}.yaml repeats the shared keys {sorted(copied)}"
    composed = OmegaConf.to_container(compose_cfg([f"backbone={backbone}"]).backbone)
    assert composed == {**base, **own}
    assert composed["batch_chunk"] == (16 if backbone == "tft" else 1)


def test_lightgbm_takes_its_share_of_the_cores_by_default(compose_cfg):
    from quantml.models.lightgbm_model import LightGBMForecaster

    cfg = compose_cfg(["backbone=lightgbm"])
    model = instantiate(cfg.backbone, horizons=["1d"], seed=1)
    assert isinstance(model, LightGBMForecaster) and cfg.backbone.n_jobs == "auto" and model.n_jobs == "auto"
    # the thread count must not change the trees: LightGBM's determinism switches are on
    assert model.params["deterministic"] and model.params["force_row_wise"]


def test_synthetic_data_brings_horizons_its_default_panel_can_validate(compose_cfg):
    """``horizon=auto`` (the default) reads ``data.default_horizons``: on the 125-day synthetic panel every
    walk-forward fold's inner slice holds enough 4h outcomes, where the daily data's 1d + 7d hold one."""
    from quantml.experiment.prepare import prepare_data
    from quantml.validation import make_splitter

    assert list(compose_cfg().horizon.horizons) == ["1d", "7d"]
    cfg = compose_cfg(["data=synthetic", "feature_set=price"])
    assert list(cfg.horizon.horizons) == ["1h", "4h"]
    assert list(compose_cfg(["data=synthetic", "horizon=swing"]).horizon.horizons) == ["1d", "7d"]
    prep = prepare_data(cfg)
    splitter = make_splitter(cfg.validation)
    t0, t1 = prep.data.t0[prep.samples], prep.data.t1[prep.samples]
    folds = splitter.split(t0, t1, calendar=prep.calendar)
    assert len(folds) == cfg.validation.n_splits
    for fold in folds:
        splitter.inner_split(fold, t0, t1)  # refuses a slice with too few outcomes of the longest horizon
    long_t1 = t0 + np.timedelta64(7, "D")  # the same folds with 7d outcomes: fold 0's slice holds too few
    with pytest.raises(QuantmlInputError, match="fold 0: the inner validation slice holds"):
        splitter.inner_split(folds[0], t0, long_t1)
