"""Time-series cross-validation: walk-forward, purged K-fold, CPCV, purging, leakage audit.

See ``docs/validation.md``. Typical use inside the pipeline::

    splitter = make_splitter(cfg.validation)
    for fold in splitter.split(t0, t1):
        fit, valid = splitter.inner_split(fold, t0, t1)   # or inner_validation_split(...)
        ...
    report = audit_folds(keys, t0, t1, folds, splitter.embargo,
                         valid_fraction=splitter.valid_fraction)
"""

from quantml.validation.audit import audit_folds
from quantml.validation.crossfit import CROSSFIT_BLOCK, crossfit, crossfit_parts
from quantml.validation.purging import inner_validation_split, parse_embargo, purge
from quantml.validation.splitters import (
    CombinatorialPurgedCV,
    Fold,
    PurgedKFold,
    Splitter,
    WalkForward,
    describe_fold,
    make_splitter,
)

__all__ = [
    "CROSSFIT_BLOCK",
    "CombinatorialPurgedCV",
    "Fold",
    "PurgedKFold",
    "Splitter",
    "WalkForward",
    "audit_folds",
    "crossfit",
    "crossfit_parts",
    "describe_fold",
    "inner_validation_split",
    "make_splitter",
    "parse_embargo",
    "purge",
]
