"""``quantml-registry``: candidate -> champion -> rollback on the MLflow model registry.

Exit codes: 0 done; 1 gates failed (``gates``, or ``promote`` refused); 2 bad input
(unknown run/model/version, nothing to roll back to, --force without --reason ...).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantml-registry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("register", help="register a run's model as a new version with alias 'candidate'")
    s.add_argument("run_id")
    s.add_argument("--name", help="registered model name (default: the run's experiment name)")

    s = sub.add_parser("list", help="models, or the versions of NAME with aliases and key metrics")
    s.add_argument("name", nargs="?")

    for cmd, text in (("gates", "the promotion gates of NAME VERSION as a report (changes nothing)"),
                      ("promote", "gate NAME VERSION and make it champion (refused when a gate fails)")):
        s = sub.add_parser(cmd, help=text)
        s.add_argument("name")
        s.add_argument("version")
        s.add_argument("--baseline", metavar="RUN_ID", help="compare with this parent run instead of the champion")
        s.add_argument("--gates-config", metavar="YAML", help="gates config (default conf/registry/gates.yaml)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one gates setting, e.g. --set calibration.max_ece=0.05")
        if cmd == "promote":
            s.add_argument("--reason", default="", help="why (recorded in the history)")
            s.add_argument("--force", action="store_true", help="promote even if gates fail (needs --reason)")

    s = sub.add_parser("rollback", help="restore the previous champion (repeat to walk further back)")
    s.add_argument("name")
    s.add_argument("--reason", default="")

    s = sub.add_parser("history", help="every promotion and rollback of NAME")
    s.add_argument("name")

    s = sub.add_parser("unlock", help="break a lock left by a promotion that died")
    s.add_argument("name")
    return p


def _table(frame) -> str:
    import pandas as pd

    if frame.empty:
        return "(none)"
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
        return frame.to_string(index=False)


def run(args: argparse.Namespace) -> int:
    from quantml.registry import commands as reg
    from quantml.registry.gates import load_gates_config
    from quantml.registry.store import CHAMPION, RegistryStore

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    store = RegistryStore(uri)
    if args.command == "register":
        mv = reg.register(store, args.run_id, args.name)
        print(f"registered {mv.name} v{mv.version} from run {args.run_id} (alias candidate)")
        print(f"next: quantml-registry gates {mv.name} {mv.version}")
    elif args.command == "list":
        print(_table(reg.list_versions(store, args.name) if args.name else reg.list_models(store)))
    elif args.command == "gates":
        cfg = load_gates_config(args.gates_config, args.overrides)
        report = reg.check_gates(store, args.name, args.version, cfg, args.baseline)
        print(report.to_text())
        return 0 if report.passed else 1
    elif args.command == "promote":
        cfg = load_gates_config(args.gates_config, args.overrides)
        try:
            result = reg.promote(store, args.name, args.version, reason=args.reason, force=args.force,
                                 cfg=cfg, baseline_run_id=args.baseline)
        except reg.GateRefused as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(result.report.to_text())
        e = result.event
        forced = " (FORCED past failing gates)" if e.forced else ""
        print(f"{args.name}: champion v{e.previous or '-'} -> v{e.version}{forced}; recorded as event {e.seq} "
              f"by {e.user} at {e.time}")
    elif args.command == "rollback":
        e = reg.rollback(store, args.name, reason=args.reason)
        print(f"{args.name}: rolled back champion v{e.previous} -> v{e.version}; recorded as event {e.seq}")
    elif args.command == "history":
        print(_table(reg.history(store, args.name)))
        champion = store.alias_version(args.name, CHAMPION)
        print(f"champion: {'v' + champion if champion else 'none'}")
    elif args.command == "unlock":
        holder = store.break_lock(args.name)
        print(f"removed the lock of {args.name} held by {holder.get('user')}@{holder.get('host')} "
              f"pid {holder.get('pid')} since {holder.get('since')}" if holder is not None
              else f"{args.name} was not locked")
    return 0


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException

    from quantml.contracts import QuantmlInputError

    args = _parser().parse_args(argv)
    try:
        return run(args)
    except QuantmlInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:  # e.g. an invalid model name: MLflow's message is the explanation
        print(f"error: MLflow: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
