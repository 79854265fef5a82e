"""Pruning hook for hyper-parameter search: the pipeline reports each fold's metrics here.

``quantml.pipeline`` calls :func:`report` after every fold when ``cfg.hparams_search`` is
set. When the job is a trial of a ``quantml_optuna`` sweep (the sweeper sets
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

# Studies of sweeps running in this process (in-memory storage with Hydra's basic launcher).
_LOCAL_STUDIES: dict[str, optuna.Study] = {}
_TRIALS: dict[tuple[str, int], optuna.Trial] = {}


def register_study(study: optuna.Study) -> None:
    """Make ``study`` reachable by name from jobs of this process (the sweeper calls it)."""
    _LOCAL_STUDIES[study.study_name] = study


def metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    """``metrics[name]`` (``-name`` negates); None when absent or not finite."""
    sign = -1.0 if name.startswith("-") else 1.0
    value = metrics.get(name.lstrip("-"))
    if value is None or not math.isfinite(float(value)):
        return None
    return sign * float(value)


def _trial(study_name: str, storage: str | None, number: int) -> optuna.Trial:
    key = (study_name, int(number))
    if key not in _TRIALS:
        study = _LOCAL_STUDIES.get(study_name)
        if study is None:
            from quantml.tuning.storage import make_storage

            study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
        st = study._storage  # noqa: SLF001 - public BaseStorage API on the study's storage
        trial_id = st.get_trial_id_from_study_id_trial_number(st.get_study_id_from_name(study_name), int(number))
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
    trial.report(value, int(step))
    if trial.should_prune():
        raise optuna.TrialPruned(f"trial {hs.trial} pruned after fold {step}: {hs.prune_metric}={value:.4g}")
