"""``quantml-train``: one Hydra job = one experiment; ``-m`` sweeps run many."""
from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from quantml.cli.common import CONFIG_DIR, fail_cleanly

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def train(cfg: DictConfig) -> float | None:
    from quantml.pipeline import run_experiment

    with fail_cleanly():
        result = run_experiment(cfg)
    objective = cfg.get("hparams_search", {}) or {}
    if objective.get("objective"):
        return float(result.metrics[objective.objective])
    return None


def main() -> None:
    sys.exit(train())


if __name__ == "__main__":
    main()
