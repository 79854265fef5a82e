"""One experiment as the data flows: prepare -> folds -> final model -> artifacts, in one MLflow parent run.

``prepare`` builds the model-ready panel, ``fitting`` fits a backbone and its calibrator,
``folds`` trains and scores each fold (fold events go to callbacks: progress, pruning),
``artifacts`` stages what the parent run keeps, ``run`` ties them together.
"""

from quantml.experiment.callbacks import FoldCallback, ProgressLine
from quantml.experiment.prepare import PreparedData, prepare_data, seed_everything
from quantml.experiment.run import ExperimentResult, RunContext, run_experiment

__all__ = [
    "ExperimentResult",
    "FoldCallback",
    "PreparedData",
    "ProgressLine",
    "RunContext",
    "prepare_data",
    "run_experiment",
    "seed_everything",
]
