"""Pruning for hyper-parameter search: each fold's metrics are reported here.

:class:`PruningCallback` (a fold callback of the experiment) calls :func:`report` after
every fold when ``cfg.hparams_search`` is set. When the job is a trial of a ``quantml_optuna`` sweep (the sweeper sets
``hparams_search.trial``, ``.study_name`` and ``.storage``), the fold's
``hparams_search.prune_metric`` is reported to the Optuna trial at step = fold id, and
:class:`optuna.TrialPruned` is raised when the pruner says the trial is behind; the
sweeper records the trial as PRUNED. Outside a sweep, :func:`report` does nothing.

``prune_metric`` must improve in the study's direction; prefix it with ``-`` to negate a
lower-is-better metric (``-val_rmse/1d`` in a maximising study).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import optuna

log = logging.getLogger(__name__)

# Studies of sweeps running in this process, with their storage (the sweeper registers them;
# an in-memory study is only reachable this way, i.e. with Hydra's in-process basic launcher).
_LOCAL_STUDIES: dict[str, tuple[optuna.Study, optuna.storages.BaseStorage]] = {}
_TRIALS: dict[tuple[str, int], optuna.Trial] = {}


def register_study(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Make ``study`` reachable by name from jobs of this process (the sweeper calls it)."""
    _LOCAL_STUDIES[study.study_name] = (study, storage)


def metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    """``metrics[name]`` (``-name`` negates); None when absent or not finite."""
    sign = -1.0 if name.startswith("-") else 1.0
    value = metrics.get(name.lstrip("-"))
    if value is None or not math.isfinite(float(value)):
        return None
    return sign * float(value)


def _trial(study_name: str, storage_url: str | None, number: int) -> optuna.Trial | None:
    key = (study_name, int(number))
    if key not in _TRIALS:
        if study_name in _LOCAL_STUDIES:
            study, storage = _LOCAL_STUDIES[study_name]
        else:
            from quantml.tuning.storage import make_storage

            storage = make_storage(storage_url)
            if storage is None:
                log.warning(
                    "study %s is in memory in another process: pruning needs a storage URL "
                    "(hydra.sweeper.storage=sqlite:///optuna.db)",
                    study_name,
                )
                return None
            study = optuna.load_study(study_name=study_name, storage=storage)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study_name), int(number)
        )
        _TRIALS[key] = optuna.trial.Trial(study, trial_id)
    return _TRIALS[key]


def report(cfg, step: int, metrics: Mapping[str, float]) -> None:
    """Report a fold's metrics to the running trial; raise ``optuna.TrialPruned`` to stop it."""
    hs = cfg.get("hparams_search") if hasattr(cfg, "get") else None
    if not hs or hs.get("trial") is None or not hs.get("prune_metric") or not hs.get("study_name"):
        return
    value = metric_value(metrics, str(hs.prune_metric))
    if value is None:
        log.warning("fold %s has no finite %s: nothing reported for pruning", step, hs.prune_metric)
        return
    trial = _trial(str(hs.study_name), hs.get("storage"), int(hs.trial))
    if trial is None:
        return
    trial.report(value, int(step))
    if trial.should_prune():
        raise optuna.TrialPruned(f"trial {hs.trial} pruned after fold {step}: {hs.prune_metric}={value:.4g}")


class PruningCallback:
    """Fold callback of a hyper-parameter trial: :func:`report` after every fold (blocking, so a
    pruned trial stops before the next fold trains)."""

    blocking = True

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def on_fold_end(self, fold_id: int, n_folds: int, metrics: Mapping[str, float]) -> None:
        report(self.cfg, fold_id, metrics)
