"""quantml paper model=models:/NAME@active data=<config or file/dir> [key=value ...]

Paper-trades a registered (or routed) version bar by bar: predicts the panel with the version the
model URI points at (pinned once), allocates with the bundle's strategy, executes with the policy
of each horizon bucket, and appends to keyed logs in log_dir (predictions, executions, pnl);
its state (positions, carried orders, last bar acted on) is persisted after every bar, so a rerun
resumes without duplicating a row or acting on a bar twice. Nothing ever trades live.

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
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from quantml.cli.common import compose, config_error, tracking_uri
    from quantml.contracts import QuantmlInputError
    from quantml.serving import data_overrides

    try:
        cfg = compose("paper", data_overrides(overrides))
    except (HydraException, OmegaConfBaseException) as exc:  # an unknown group option or key: one line
        raise QuantmlInputError(config_error(exc, "quantml paper")) from None
    with open_dict(cfg):  # the library reads the resolved URI (cfg.tracking.uri is the one setting)
        cfg.tracking_uri = tracking_uri(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import error_exit, refuse_non_settings

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        from quantml.serving.paper import run_paper_config

        refuse_non_settings(argv, USAGE)
        result = run_paper_config(compose_config(argv), echo=lambda line: print(line, flush=True))
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(exc, SETTINGS)
    print(result.summary(" ".join(a for a in argv if a.split("=", 1)[0].split(".", 1)[0] == "data")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
