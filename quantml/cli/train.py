"""``quantml train``: one Hydra job = one experiment; ``-m`` sweeps run many."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from quantml.cli.common import CONFIG_DIR, fail_cleanly

log = logging.getLogger(__name__)


def run_context():
    """The job's Hydra choices and output folders (empty when not running under Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    from quantml.experiment import RunContext

    try:
        hc = HydraConfig.get()
    except ValueError:  # not running under Hydra (library use, tests)
        return RunContext()
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    sweep_dir = hc.sweep.dir if hc.mode.name == "MULTIRUN" else hc.run.dir
    return RunContext(choices=choices, sweep_dir=sweep_dir, output_dir=Path(hc.runtime.output_dir))


def fold_callbacks(cfg: DictConfig) -> list:
    """Pruning for a hyper-parameter trial."""
    callbacks = []
    if cfg.get("hparams_search") is not None:
        from quantml.tuning.pruning import PruningCallback

        callbacks.append(PruningCallback(cfg))
    return callbacks


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def train(cfg: DictConfig) -> float | None:
    from quantml.experiment import run_experiment

    with fail_cleanly():
        result = run_experiment(cfg, run_context(), fold_callbacks(cfg))
    objective = cfg.get("hparams_search", {}) or {}
    if objective.get("objective"):
        return float(result.metrics[objective.objective])
    return None


def main() -> None:
    sys.exit(train())


if __name__ == "__main__":
    main()
