"""quantml tune run_id=<parent run> | map=NAME:VERSION [key=value ...]: Optuna study over signal thresholds.

Hydra key=value overrides of the packaged conf/tune.yaml (quantml tune --help lists
them); tracking.uri= points at another store. Exit codes: 0 done; 2 bad input.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from quantml.cli.common import CONFIG_DIR, fail_cleanly, run_hydra_command, tracking_uri
from quantml.contracts.metrics import format_lockbox

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="tune")
def tune(cfg: DictConfig) -> float:
    from quantml.market.execution import CostModel
    from quantml.portfolio.allocator import AllocatorConfig
    from quantml.tuning.run import run_tuning

    with fail_cleanly() as job:
        study = cfg.study
        source, settings = tuning_source(cfg)
        outcome = run_tuning(
            run_id=source,
            tracking_uri=tracking_uri(cfg),
            settings=settings,
            allocator=AllocatorConfig.from_dict(OmegaConf.to_container(cfg.allocator, resolve=True)),
            costs=CostModel.from_config(cfg.cost) if cfg.get("cost") else None,
            periods_per_year=cfg.periods_per_year,
            storage=study.storage,
            study_name=study.name,
            n_trials=int(study.n_trials),
            n_jobs=int(study.n_jobs),
            timeout=study.timeout,
            seed=int(cfg.seed),
            worker=int(study.worker),
            n_workers=study.get("n_workers", 1),
            n_startup_trials=int(study.n_startup_trials),
            log_to_mlflow=bool(cfg.log_to_mlflow),
            attach=cfg.attach,
            attach_force=bool(cfg.attach_force),
        )
    if job.failed:  # one job of a sweep with bad input: reported
        return float("nan")
    m = outcome.metrics
    print(f"study {outcome.study_name}: {outcome.n_complete} trials; best params {outcome.best_params}")
    print(
        f"tuning   {cfg.objective.name}: {m['tune_objective']:.4g}  sharpe_after_cost {m['tune_sharpe_after_cost']:.4g}"
    )
    print(
        f"selection {cfg.objective.name}: {m['selection_objective']:.4g}  sharpe_after_cost "
        f"{m['selection_sharpe_after_cost']:.4g} (untuned baseline {m['selection_baseline_sharpe_after_cost']:.4g})"
    )
    # the selection figure beside the lockbox, for the person (the study never reads the lockbox)
    print(f"lockbox  (source run's holdout_*, read counted): {format_lockbox(outcome.lockbox)}")
    print(f"book: {outcome.book} (the run's configured strategy), scored fold by fold")
    for note in outcome.notes:
        print(f"note: {note}")
    if outcome.tune_run_id:
        print(f"logged as MLflow run {outcome.tune_run_id} (child of {outcome.source_run_id})")
    if outcome.attached is not None:
        mv = outcome.attached
        print(
            f"registered {mv.name} v{mv.version} with the tuned settings in its bundle (alias candidate); "
            f"gate and promote it: quantml registry promote {mv.name} {mv.version}"
        )
    return float(m["selection_objective"])


def tuning_source(cfg: DictConfig):
    """(source, settings) of the study: ``run_id`` (a train run's id) or ``map`` (a route map version's
    routed book, allocator search off), never both."""
    from quantml.contracts import QuantmlInputError
    from quantml.tuning.route_map import MAP_NOTE, map_settings, map_source
    from quantml.tuning.run import settings_from_config

    settings = settings_from_config(cfg)
    if not cfg.get("map"):
        return cfg.run_id, settings
    if cfg.run_id:
        raise QuantmlInputError(
            f"run_id={cfg.run_id} and map={cfg.map}: tune one source, a train run (run_id=) or a route map's "
            "book (map=NAME:VERSION)"
        )
    log.info("%s", MAP_NOTE)
    return map_source(cfg.map, tracking_uri(cfg)), map_settings(settings)


def main(argv: list[str] | None = None) -> int:
    """``quantml tune ARGV``: 0 done; 2 bad input. The selection objective ``tune`` returns is for
    sweepers, not an exit status."""
    return run_hydra_command(tune, "tune", "quantml tune", argv)


if __name__ == "__main__":
    sys.exit(main())
