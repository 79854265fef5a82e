"""The identity of a train job (tag ``quantml.run_identity``): what ``resume=true`` skips a job by."""

from __future__ import annotations

from omegaconf import OmegaConf

from quantml.experiment.resume import run_identity
from tests.helpers import TINY


def test_the_identity_ignores_what_does_not_change_the_experiment(compose_cfg):
    base = run_identity(compose_cfg([*TINY, "backbone=ridge"]))
    assert len(base) == 16 and int(base, 16) >= 0
    assert run_identity(compose_cfg([*TINY, "backbone=ridge"])) == base  # stable across compositions
    for same in (
        ["resume=true"],
        ["run_name=mine"],
        ["print_report=true"],
        ["tracking.uri=sqlite:////elsewhere/mlflow.db"],
        ["tracking.lease_s=3"],
    ):
        assert run_identity(compose_cfg([*TINY, "backbone=ridge", *same])) == base, same


def test_the_identity_changes_with_anything_that_changes_the_experiment(compose_cfg):
    base = run_identity(compose_cfg([*TINY, "backbone=ridge"]))
    others = [
        ["seed=43"],
        ["backbone=lightgbm"],
        ["ablation=no_macro"],
        ["data.n_bars=701"],
        ["validation.n_splits=4"],
        ["tracking.log_model=false"],
        ["tracking.experiment=other"],
    ]
    seen = {base}
    for change in others:
        ident = run_identity(compose_cfg([*TINY, "backbone=ridge", *change]))
        assert ident not in seen, change
        seen.add(ident)


def test_output_folders_and_hydra_runtime_values_are_not_part_of_it():
    plain = {"seed": 1, "data": {"n": 3}}
    assert run_identity(OmegaConf.create(plain)) == run_identity(
        OmegaConf.create({**plain, "hydra": {"run": {"dir": "x"}}, "data": {"n": 3, "output_dir": "/tmp/a"}})
    )
    assert run_identity(OmegaConf.create(plain)) == run_identity(
        OmegaConf.create({**plain, "where": "${hydra:runtime.output_dir}"})  # never resolved
    )
    assert run_identity(OmegaConf.create(plain)) != run_identity(OmegaConf.create({"seed": 1, "data": {"n": 4}}))
