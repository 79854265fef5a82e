"""quantml sweep-report sweep_dir=DIR | experiment=NAME | runs=[ID,ID] [key=value ...]

The leaderboard of a sweep: one row per parent run (mean ± std over development folds of rank IC,
after-cost Sharpe, max drawdown and ECE per horizon, the lockbox figures beside them, the run's
choices), then the deflated Sharpe ratio of the best run (chosen on development folds, never the
lockbox), the number of trials it deflates by and how they were counted, and the probability of
backtest overfitting (CSCV) with its logit figure. Printed, and logged to a sweep run
(quantml.kind=sweep: sweep/leaderboard.csv, sweep/leaderboard.html) that each parent names in its
tag quantml.sweep_run.

Settings are Hydra key=value overrides of the packaged conf/sweep_report.yaml:
  sweep_dir= | experiment= | runs=[...]   which runs (exactly one)
  horizon=4h                              the horizon of the selection, DSR and PBO (default: the first)
  select.metric=test_rank_ic_mean select.mode=max
                                          the selection figure (a development figure; holdout_* is refused)
  dsr.n_trials=N                          an effective number of trials instead of the store's count
  dsr.sr_variance=V                       V[SR] of per-bar Sharpe ratios instead of the trials' own
  pbo.n_splits=16                         S, even
  show_lockbox=false                      do not read (nor count) the lockbox
  log_to_mlflow=false output_dir=DIR      where the report goes besides stdout
  tracking.uri=...                        the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)

Exit codes: 0 done; 2 bad input (no such sweep, experiment or run, a setting that does not exist).
"""

from __future__ import annotations

import sys

USAGE = "quantml sweep-report sweep_dir=DIR | experiment=NAME | runs=[ID,ID] [key=value ...]"
SETTINGS = (
    "sweep_dir=, experiment=, runs=[...], horizon=, select.metric=, select.mode=, dsr.n_trials=, "
    "dsr.sr_variance=, pbo.n_splits=, show_lockbox=, log_to_mlflow=, output_dir=, tracking.uri="
)


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import run_selection_command, tracking_uri

    def execute(cfg) -> str:
        from quantml.tuning.sweep_report import SweepReportSettings, run_sweep_report

        return run_sweep_report(tracking_uri(cfg), SweepReportSettings.from_config(cfg)).to_text()

    return run_selection_command(argv, __doc__, "sweep_report", USAGE, SETTINGS, execute)


if __name__ == "__main__":
    sys.exit(main())
