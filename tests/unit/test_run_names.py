"""A sweep's run names show what the sweep varies, not what all its jobs share."""

from omegaconf import OmegaConf

from quantml.experiment.run import default_run_name
from quantml.tracking.callbacks import sweep_axes

CFG = OmegaConf.create({"run_name": None, "backbone": {"_target_": "quantml.models.ridge.RidgeForecaster"}})
CHOICES = {
    "backbone": "lightgbm",
    "data": "synthetic",
    "horizon": "4h",
    "ablation": "no_macro",
    "validation": "purged_kfold",
}


def test_sweep_axes_are_the_swept_keys_of_the_command_line():
    overrides = [
        "backbone=ridge,lightgbm",
        "data=synthetic",
        "ablation=full,no_macro",
        "backbone.num_leaves=15,31",
        "validation.n_splits=3",
    ]
    assert sweep_axes(overrides) == ["backbone", "ablation", "backbone.num_leaves"]


def test_a_sweep_job_is_named_by_its_axes_only():
    job = ["backbone=lightgbm", "data=synthetic", "ablation=no_macro", "backbone.num_leaves=31"]
    assert default_run_name(CFG, CHOICES, job, ["backbone", "ablation"]) == "lightgbm · no_macro"
    assert (
        default_run_name(CFG, CHOICES, job, ["ablation", "backbone.num_leaves"])
        == "lightgbm · no_macro · num_leaves=31"
    )
    # a single run (no axes) still shows the choices unlike the defaults, e.g. data=synthetic
    assert "synthetic" in default_run_name(CFG, CHOICES, job, None)
