"""Structured config of the sweeper, stored as ``hydra/sweeper=quantml_optuna``.

No ``from __future__ import annotations`` here: Hydra's plugin scan executes this module
before registering it in ``sys.modules``, and dataclasses then cannot resolve string
annotations.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class QuantmlOptunaSweeperConf:
    _target_: str = "hydra_plugins.quantml_optuna_sweeper.sweeper.QuantmlOptunaSweeper"
    # maximize | minimize the value the task function returns (quantml train: hparams_search.objective)
    direction: str = "maximize"
    study_name: Optional[str] = None  # null -> "quantml-hparams"; the same name resumes a study
    storage: Optional[str] = "sqlite:///optuna.db"  # any DB URL, journal:///file, or null (in memory)
    # the study's trial budget, shared by every sweeper on it: a rerun (or a second sweeper on the
    # same study_name and storage) runs only the trials left (COMPLETE, PRUNED, FAIL, RUNNING count)
    n_trials: int = 20
    n_jobs: int = 1  # trials per batch handed to the launcher (parallel launchers)
    seed: Optional[int] = None  # TPE sampler seed
    n_startup_trials: int = 5  # random trials before TPE
    pruner: str = "median"  # median | percentile | hyperband | none
    pruner_startup_trials: int = 2  # trials that complete before any pruning
    pruner_warmup_steps: int = 1  # folds reported before a trial can be pruned
    percentile: float = 25.0  # pruner=percentile: prune below this percentile
    # search space: "<config key>": "<Hydra sweep: interval(a,b) | tag(log, interval(a,b)) |
    # int(interval(a,b)) | range(a,b[,step]) | choice(a,b,...)>"; command-line sweeps add to it
    params: Dict[str, Any] = field(default_factory=dict)
    # RDB storages (sqlite, postgresql): each running trial's heartbeat every heartbeat_interval s
    # (null: none); a RUNNING trial without one for grace_period s (null: 3x the interval) is failed
    # before the next ask, its MLflow run ended FAILED, and it leaves the budget (run again)
    heartbeat_interval: Optional[int] = 10
    grace_period: Optional[int] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="quantml_optuna", node=QuantmlOptunaSweeperConf, provider="quantml_optuna_sweeper"
)
