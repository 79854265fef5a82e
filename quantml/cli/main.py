"""quantml: one command line for the whole workflow.

usage: quantml COMMAND [IDS] [key=value ...]

  quantml train [key=value ...] [-m]        run an experiment (-m: a sweep of them); Hydra command line:
                                            --cfg job, hydra/launcher=joblib, hparams_search=lightgbm ...
  quantml tune run_id=RUN_ID [key=value ...]
                                            tune signal thresholds on a train run's out-of-sample predictions
  quantml predict model=models:/NAME@active data=CONFIG_OR_FILE [key=value ...]
                                            the prediction contract of a registered model for a panel
  quantml registry register RUN_ID [name=NAME]
  quantml registry gates NAME VERSION | promote NAME VERSION [reason=TEXT force=true baseline=RUN_ID]
  quantml registry rollback NAME | list [NAME] | history NAME | unlock NAME
                                            the MLflow model registry: candidate -> active -> rollback
  quantml sweep-report sweep_dir=DIR | experiment=NAME | runs=[ID,ID] [key=value ...]
                                            a sweep's leaderboard, the best run's deflated Sharpe ratio, PBO
  quantml stack sweep_dir=DIR | experiment=NAME | runs=[ID,ID] [key=value ...]
                                            a combiner over walk-forward experts' out-of-fold predictions
  quantml data audit [data=CONFIG_OR_FILE] [data.*=...] [audit.window=30d audit.min_coverage=0.95 ...]
                                            a panel's coverage, gaps and missing streams, and its readiness verdict
  quantml paper model=models:/NAME@active data=CONFIG_OR_DIR [start=TIME] [follow=true] [log_dir=DIR] [key=value ...]
                                            paper-trade a registered (or routed) version bar by bar: prediction,
                                            execution and PnL logs; resumes after a restart
  quantml monitor model=models:/NAME@active log_dir=DIR data=CONFIG_OR_DIR [key=value ...]
                                            drift, calibration, paper PnL and slippage per horizon: OK / WARN / FAIL
  quantml server [backend_store_uri=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB] [port=5000] [key=value ...]
                                            an MLflow tracking server on PostgreSQL (artifacts served through it)
                                            for many jobs and hosts: prints the MLFLOW_TRACKING_URI=http://... to use

Settings are Hydra key=value overrides of the packaged configs (quantml/conf): config.yaml
(train), tune.yaml, predict.yaml, registry.yaml, sweep_report.yaml, stack.yaml, server.yaml,
data_audit.yaml; tracking.uri= picks the MLflow store in every command (default: $MLFLOW_TRACKING_URI,
else sqlite:///mlflow.db). Only identifiers (a run id, a model name and version) are positional.
`quantml COMMAND --help` shows a command's settings.
"""

from __future__ import annotations

import sys

COMMANDS = ("train", "tune", "predict", "registry", "sweep-report", "stack", "server", "data", "paper", "monitor")


def _hydra_app(module: str, args: list[str]) -> int:
    """Run the ``main(argv)`` of a ``@hydra.main`` entrypoint (quantml.cli.train, quantml.cli.tune)."""
    import importlib

    entry = importlib.import_module(module)
    return entry.main(list(args))  # sets sys.argv to ``prog args...`` while Hydra runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--version":
        from quantml import __version__

        print(f"quantml {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command == "train":
        return _hydra_app("quantml.cli.train", args)
    if command == "tune":
        return _hydra_app("quantml.cli.tune", args)
    if command == "predict":
        from quantml.cli.predict import main as predict

        return predict(args)
    if command == "registry":
        from quantml.cli.registry import main as registry

        return registry(args)
    if command == "sweep-report":
        from quantml.cli.sweep_report import main as sweep_report

        return sweep_report(args)
    if command == "stack":
        from quantml.cli.stack import main as stack

        return stack(args)
    if command == "server":
        from quantml.cli.server import main as server

        return server(args)
    if command == "data":
        from quantml.cli.data import main as data

        return data(args)
    if command == "paper":
        from quantml.cli.paper import main as paper

        return paper(args)
    if command == "monitor":
        from quantml.cli.monitor import main as monitor

        return monitor(args)
    print(f"error: unknown command {command!r}; one of {', '.join(COMMANDS)} (quantml --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
