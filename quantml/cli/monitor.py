"""quantml monitor model=models:/NAME@active log_dir=DIR data=<config or file> [window=168|7d] [key=value ...].

Checks a promoted version's `quantml paper` logs against its training reference, per horizon (and
per producing version of a routed map): prediction drift (PSI of expected_return and prob_up) and
the drift of its top features, calibration (ECE of prob_up, coverage of the 80% interval), the
after-cost paper PnL by bucket, symbol and policy, fill slippage against the cost model, and the
fusion checks (n/a: no fusion model yet). Each check is OK / WARN / FAIL / n/a (too few rows);
thresholds: checks.<name>.warn=, checks.<name>.fail=, checks.<name>.min_rows=, significance.fail=.
Writes an HTML report (output_dir=) and a monitoring MLflow run in the version's source experiment.

Exit codes: 0 OK or WARN; 1 a check FAILed: the version is tagged quantml.degraded=true and the
`quantml registry rollback NAME reason="..."` command is printed (rolling back is your decision);
2 bad input (unknown model, no logs, a bad setting ...).
"""

from __future__ import annotations

import sys

USAGE = "quantml monitor model=models:/NAME@active log_dir=DIR data=<config or file> [window=168|7d] [key=value ...]"
SETTINGS = (
    "model=, log_dir=, data=, window=, rolling=, output_dir=, checks.<name>.warn|fail|min_rows=, "
    "significance.warn|fail=, psi_bins=, ece_bins=, seed=, tracking.uri=, data.*="
)


def compose_config(overrides: list[str]):
    from omegaconf import open_dict

    from quantml.cli.common import compose_command
    from quantml.contracts import QuantmlInputError
    from quantml.monitoring.checks import CHECKS

    for item in overrides:  # a check that does not exist: name those that do (Hydra would suggest +checks...)
        parts = item.split("=", 1)[0].lstrip("+~").split(".")
        if parts[0] == "checks" and len(parts) > 1 and parts[1] not in CHECKS:
            raise QuantmlInputError(f"checks.{parts[1]} is not a check; the checks are {', '.join(CHECKS)}")
    # experiment= names an MLflow experiment here, not the packaged conf/experiment group
    experiment = [a.split("=", 1)[1] for a in overrides if a.startswith("experiment=")]
    cfg = compose_command("monitor", [a for a in overrides if not a.startswith("experiment=")], "quantml monitor")
    if experiment:
        with open_dict(cfg):
            cfg.experiment = experiment[-1]
    return cfg


def _monitor(argv: list[str]) -> int:
    import pandas as pd
    from omegaconf import OmegaConf

    from quantml.contracts import QuantmlInputError
    from quantml.monitoring import run_monitor

    cfg = compose_config(argv)
    for key, example in (("model", "model=models:/NAME@active"), ("log_dir", "log_dir=paper_logs")):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise QuantmlInputError(f"{key}=... is required, e.g. {example}; usage: {USAGE}")
    result = run_monitor(cfg)
    table = result.checks[
        ["status", "check", "model_version", "horizon", "group", "value", "warn", "fail", "n", "detail"]
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{result.model_name} v{result.model_version}: {result.status}; report {result.report_path}")
    print(f"MLflow: monitor run {result.run_id}")
    if result.rollback_command:
        print(f"\nFAIL: {result.model_name} v{result.model_version} is tagged quantml.degraded=true.")
        print("To roll back to the previous active version (your decision), run:")
        print(f"  {result.rollback_command}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import run_command

    return run_command(argv, __doc__, USAGE, SETTINGS, _monitor)


if __name__ == "__main__":
    sys.exit(main())
