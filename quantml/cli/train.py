"""quantml train [key=value ...]: one Hydra job = one experiment; -m sweeps run many.

Full Hydra command line: -m multirun sweeps (backbone=ridge,lightgbm), --cfg job,
hydra/launcher=joblib, hparams_search=... (the Optuna sweeper in hydra_plugins/).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from quantml.cli.common import CONFIG_DIR, fail_cleanly, run_hydra_command
from quantml.tracking.callbacks import SWEEP_AXES_ENV

log = logging.getLogger(__name__)


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:  # not running under Hydra (library use, tests)
        return None


def run_context():
    """The job's Hydra choices, command-line overrides and output folders (empty when not under Hydra)."""
    from quantml.experiment import RunContext

    hc = _hydra_config()
    if hc is None:
        return RunContext()
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    sweep_dir = hc.sweep.dir if hc.mode.name == "MULTIRUN" else hc.run.dir
    overrides = [str(o) for o in hc.overrides.task]
    axes = None
    if hc.mode.name == "MULTIRUN" and os.environ.get(SWEEP_AXES_ENV) is not None:
        axes = [a for a in os.environ[SWEEP_AXES_ENV].split(",") if a]
    return RunContext(
        choices=choices,
        sweep_dir=sweep_dir,
        output_dir=Path(hc.runtime.output_dir),
        overrides=overrides,
        sweep_axes=axes,
    )


def job_label(context) -> str:
    """How ``resume=true`` names a job it skips: in a sweep ``#<job number> <its values of the swept
    keys>`` (Hydra's launch line above names all its overrides), else all its overrides."""
    hc = _hydra_config()
    overrides = list(context.overrides)
    if hc is None or hc.mode.name != "MULTIRUN":
        return " ".join(overrides)
    axes = set(context.sweep_axes or [])
    swept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in axes] or overrides
    return " ".join([f"#{hc.job.num}", *swept])


def share_cpus() -> None:
    """Tell backbones with ``n_jobs: auto`` how many jobs of this sweep run side by side (the joblib
    launcher's ``n_jobs``), so they split the CPUs instead of each taking all of them."""
    from quantml.models.threads import PARALLEL_JOBS_ENV, launcher_parallel_jobs

    hc = _hydra_config()
    jobs = launcher_parallel_jobs(hc.launcher) if hc is not None and hc.mode.name == "MULTIRUN" else 1
    os.environ[PARALLEL_JOBS_ENV] = str(jobs)


def interactive() -> bool:
    """A single job started from a terminal (``quantml train ...``), not one job of a ``-m`` sweep."""
    hc = _hydra_config()
    return hc is not None and hc.mode.name != "MULTIRUN"


def fold_callbacks(cfg: DictConfig, progress: bool | None = None) -> list:
    """What watches the folds: a progress line per fold in an interactive run (none in a multirun
    log: ``progress=None`` decides from the Hydra mode), pruning for a hyper-parameter trial."""
    callbacks = []
    if interactive() if progress is None else progress:
        from quantml.experiment import ProgressLine

        horizons = list(cfg.get("horizon", {}).get("horizons", []) or [])
        callbacks.append(ProgressLine(metric=f"test_rank_ic/{horizons[0]}" if horizons else None))
    if cfg.get("hparams_search") is not None:
        from quantml.tuning.pruning import PruningCallback

        callbacks.append(PruningCallback(cfg))
    return callbacks


def check_settings(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """The train settings checked before anything runs (:mod:`quantml.cli.settings`): every value
    the command line changed keeps its packaged default's type (``reference``: the config with the
    same group choices and no value overrides), and the keys read first hold valid values."""
    from quantml.cli.settings import check_train_settings, check_types

    if reference is not None:
        check_types(cfg, reference)
    check_train_settings(cfg)
    check_resume_settings(cfg)


def check_resume_settings(cfg: DictConfig) -> None:
    """``resume`` and ``tracking.lease_s``: a hyper-parameter sweep resumes through its Optuna
    study, not ``resume=true`` (refused, so the two never disagree about which trials ran)."""
    from quantml.contracts import QuantmlInputError

    if cfg.get("resume", False) and cfg.get("hparams_search") is not None:
        raise QuantmlInputError(
            "resume=true does not apply to hparams_search: a hyper-parameter sweep resumes through its Optuna "
            "study (the same hydra.sweeper.study_name and hydra.sweeper.storage continue it); drop resume=true"
        )
    tracking = cfg.get("tracking") or {}
    lease = tracking.get("lease_s") if hasattr(tracking, "get") else None
    if lease is not None and (isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease <= 0):
        raise QuantmlInputError(
            f"tracking.lease_s={lease} must be a positive number of seconds (how long a job's run is taken "
            "for alive without a renewal), e.g. tracking.lease_s=120"
        )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def train(cfg: DictConfig) -> float | None:
    from quantml.experiment import run_experiment
    from quantml.experiment.resume import skip_if_finished

    with fail_cleanly() as outcome:
        check_settings(cfg)  # again in the job: a sweeper's trial values, another config tree
        context = run_context()
        share_cpus()
        if skip_if_finished(cfg, job_label(context)) is not None:  # resume=true: done before
            return None
        result = run_experiment(cfg, context, fold_callbacks(cfg))
    if outcome.failed:  # a sweep's job with bad input: reported, its run ended FAILED
        return None
    objective = cfg.get("hparams_search", {}) or {}
    if objective.get("objective"):  # what the Optuna sweeper maximises
        return float(result.metrics[objective.objective])
    return None


def main(argv: list[str] | None = None) -> int:
    """``quantml train ARGV``: 0 done; 2 bad input (a setting, a file: one line ``error: ...``,
    also when it is one job of a sweep); 1 a job that failed otherwise. A trial's objective value
    is for the sweeper, not an exit status."""
    return run_hydra_command(train, "config", "quantml train", argv, validate=check_settings)


if __name__ == "__main__":
    sys.exit(main())
