"""The Sweeper plugin class; the search logic is :mod:`quantml.tuning.hparams`."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class QuantmlOptunaSweeper(Sweeper):
    """Asks Optuna for parameters, launches jobs through Hydra's launcher, tells Optuna the results."""

    def __init__(self, **settings: Any) -> None:
        from quantml.tuning.hparams import HparamSearch

        self.search = HparamSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.search.setup(
            hydra_context=hydra_context,
            task_function=task_function,
            config=config,
            validate=self.validate_batch_is_legal,
        )

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
