"""quantml stack sweep_dir=DIR | experiment=NAME | runs=[ID,ID] [key=value ...]

A Z-layer over a sweep's walk-forward experts: their out-of-fold predictions in one OOF table keyed by
(symbol, timestamp, horizon), a leakage audit of it (PASS/FAIL per check; a FAIL stops the stack unless
force=true reason=TEXT), and a combiner trained walk-forward (fold k fitted on earlier folds' rows whose
labels ended before fold k), compared on the same folds with equal weight, the best single expert and
each expert. Printed, and logged as a stack run (quantml.kind=stack) with nested fold runs.

Settings are Hydra key=value overrides of the packaged conf/stack.yaml:
  sweep_dir= | experiment= | runs=[...]   the experts (exactly one), as quantml sweep-report reads them
  exclude=[ID,...]                        leave these parent runs out
  horizons=[4h]                           the horizons to stack (default: every horizon all experts cover)
  combiner=ridge | equal_weight | best_single | mlp | lightgbm | regime_gate   combiner.alpha=10 combiner.regime=true
  regime_source=block | e1 | RUN_ID | [block,e1]   the regime__* inputs: the regime block and/or a VSSM run's
                                          out-of-fold posterior (regime__p*)
  baselines=[equal_weight,best_single]    compared on the same folds
  embargo=4h crossfit_folds=3 min_fit_rows=50
  audit.max_gap_bars=5 audit.max_missing=0.0
  force=true reason=TEXT                  stack despite a failed audit (recorded)
  serve=true holdout=true register=NAME   the served stack (the run's model), its lockbox evaluation, register it
  log_to_mlflow=false output_dir=DIR run_name=NAME
  tracking.uri=...                        the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)

Exit codes: 0 done; 1 the leakage audit failed (nothing fitted); 2 bad input (no such sweep, experiment or
run, experts that cannot be stacked together, a setting that does not exist, force=true without reason=).
"""

from __future__ import annotations

import sys

USAGE = "quantml stack sweep_dir=DIR | experiment=NAME | runs=[ID,ID] [key=value ...]"
SETTINGS = (
    "sweep_dir=, experiment=, runs=[...], exclude=[...], horizons=[...], combiner=, combiner.<key>=, baselines=[...], "
    "regime_source=, embargo=, crossfit_folds=, min_fit_rows=, audit.max_gap_bars=, audit.max_missing=, force=, "
    "reason=, serve=, holdout=, register=, log_to_mlflow=, output_dir=, run_name=, tracking.uri="
)


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import CommandFailed, run_selection_command, tracking_uri

    def execute(cfg) -> str:
        from quantml.stacking.run import StackAuditError, StackSettings, run_stack

        try:
            return run_stack(tracking_uri(cfg), StackSettings.from_config(cfg)).to_text()
        except StackAuditError as exc:
            raise CommandFailed(str(exc)) from exc

    return run_selection_command(argv, __doc__, "stack", USAGE, SETTINGS, execute)


if __name__ == "__main__":
    sys.exit(main())
