"""quantml paper model=models:/NAME@active data=<config or file/dir> [key=value ...]

Paper-trades a registered (or routed) version bar by bar: predicts the panel with the version the
model URI points at (pinned once), allocates with the bundle's strategy, executes with the policy
of each horizon bucket, and appends to keyed logs in log_dir (predictions, executions, pnl);
its state (positions, carried orders, last bar acted on) is committed after the logs every
commit_bars bars (default 24), so a rerun resumes without duplicating a row or acting on a bar
twice. Nothing ever trades live.

Settings are Hydra key=value overrides of the packaged conf/paper.yaml plus any data.* override:
  model=models:/NAME@active            the version to trade (models:/NAME/3, runs:/ID/model)
  data=synthetic | data=FILE_OR_DIR    the panel (a directory is re-read at every poll)
  start=lockbox | start=ISO_TIME       first bar (default: the source run's lockbox start)
  end=ISO_TIME                         last bar to act on
  allow_in_sample=true                 accept a start inside the model's development data
  follow=true poll_s=60 max_polls=N    follow a growing panel (Ctrl-C stops, exit 0)
  log_dir=DIR                          default outputs/paper/<model name>
  reset=true                           move log_dir aside and start over
  execution=tiered|close execution.aum=1e6 execution.*=...   the execution policy
  cost=equity|crypto|zero cost.*=...   default: the source run's cost settings
  horizon_weights=auto | '{1h: 0.5, 1d: 0.5}'               scale of each bucket's target_weight
  tracking.uri=URI                     the tracking/registry store

Exit codes: 0 done (or stopped by Ctrl-C); 2 bad input (unknown model, a start inside the
development data, a state written for another version or other settings ...).
"""

from __future__ import annotations

import sys

USAGE = (
    "quantml paper model=models:/NAME@active data=<config or file/dir> [start=lockbox] [follow=true] [key=value ...]"
)
SETTINGS = (
    "model=, data=, start=, end=, allow_in_sample=, follow=, poll_s=, max_polls=, log_dir=, reset=, "
    "execution=, execution.*=, cost=, cost.*=, horizon_weights=, tracking.uri=, data.*=, seed="
)


def compose_config(overrides: list[str]):
    from quantml.cli.common import compose_command

    return compose_command("paper", overrides, "quantml paper")


def _paper(argv: list[str]) -> int:
    from quantml.serving.paper import run_paper_config

    result = run_paper_config(compose_config(argv), echo=lambda line: print(line, flush=True))
    print(result.summary(" ".join(a for a in argv if a.split("=", 1)[0].split(".", 1)[0] == "data")))
    return 0


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import run_command

    return run_command(argv, __doc__, USAGE, SETTINGS, _paper)


if __name__ == "__main__":
    sys.exit(main())
