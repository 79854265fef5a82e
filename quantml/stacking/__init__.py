"""The Z-layer: stacking a sweep's walk-forward experts on their out-of-fold predictions (``quantml stack``).

``experts`` selects the parent runs (the sweep-report grammar) and refuses experts that cannot be
stacked together; ``oof`` builds the OOF table and audits it; ``combiners`` are the config group
``combiner``'s classes (fit/predict on the OOF table); ``walkforward`` trains a combiner fold by fold
on earlier folds only; ``model`` is the served stack (the experts' final models and the final
combiner: a raw panel in, the prediction contract out); ``holdout`` scores it on the lockbox;
``run`` compares, prints and logs the stack run. docs/stacking.md.
"""

from quantml.stacking.combiners import BestSingle, EqualWeight, RidgeLogistic, expert_column
from quantml.stacking.experts import CONSISTENCY_FIELDS, Expert, StackConsistencyError, check_consistency
from quantml.stacking.holdout import HoldoutResult, evaluate_holdout
from quantml.stacking.model import StackBundle, fit_final, stack_panel
from quantml.stacking.oof import audit_oof, build_oof_table
from quantml.stacking.run import StackAuditError, StackResult, StackSettings, build_stack, run_stack
from quantml.stacking.walkforward import StackFold, fit_mask, stack_folds, walk_forward

__all__ = [
    "CONSISTENCY_FIELDS",
    "BestSingle",
    "EqualWeight",
    "Expert",
    "HoldoutResult",
    "RidgeLogistic",
    "StackAuditError",
    "StackBundle",
    "StackConsistencyError",
    "StackFold",
    "StackResult",
    "StackSettings",
    "audit_oof",
    "build_oof_table",
    "build_stack",
    "check_consistency",
    "evaluate_holdout",
    "expert_column",
    "fit_final",
    "fit_mask",
    "run_stack",
    "stack_folds",
    "stack_panel",
    "walk_forward",
]
