"""quantml registry COMMAND [IDS] [key=value ...]: candidate -> active -> rollback on the MLflow model registry.

  quantml registry register RUN_ID [name=NAME]          new version of NAME, alias 'candidate'
  quantml registry gates NAME VERSION [baseline=RUN_ID] the promotion gates as a report (changes nothing)
  quantml registry promote NAME VERSION [reason=TEXT] [force=true] [baseline=RUN_ID]
                                                        gate the version and make it 'active'
  quantml registry rollback NAME [reason=TEXT]          restore the previous active version
  quantml registry list [NAME]                          models, or the versions of NAME
  quantml registry history NAME                         every promotion and rollback of NAME
  quantml registry unlock NAME                          break a lock left by a promotion that died

Route maps (docs/routing.md): the active model per symbol and horizon, a registered model of its own
whose versions are promoted, gated (each entry version's gates) and served like any other:
  quantml registry route MAP NAME VERSION [symbols=BTC,ETH] [horizons=1h,4h] [default=NAME:VERSION] [reason=TEXT]
                                                        new map version (alias 'candidate'): NAME vVERSION serves
                                                        those symbols/horizons (omitted: all); the first route
                                                        of a map is its default (or give default=NAME:VERSION)
  quantml registry rollback MAP symbols=BTC [horizons=1h] [reason=TEXT]
                                                        that entry back to its previous version, active at once
  quantml registry routes MAP [version=V]               the entries of a map version and their history

Settings are Hydra key=value overrides of the packaged conf/registry.yaml, e.g.
gates.calibration.max_ece=0.05, gates.sharpe.min_windows=3, gates_file=my_gates.yaml,
tracking.uri=sqlite:///other.db (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).

Exit codes: 0 done; 1 gates failed (gates, or promote refused); 2 bad input
(unknown run/model/version, nothing to roll back to, force=true without reason=..., a route to a version
that lacks the symbol or horizon).
"""

from __future__ import annotations

import sys

USAGE = (
    "quantml registry {register RUN_ID | gates NAME VERSION | promote NAME VERSION | rollback NAME | "
    "list [NAME] | history NAME | unlock NAME | route MAP NAME VERSION | routes MAP} [key=value ...]"
)
# command -> (required identifiers, optional identifiers), in positional order
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "register": (("run_id",), ()),
    "gates": (("name", "version"), ()),
    "promote": (("name", "version"), ()),
    "rollback": (("name",), ()),
    "list": ((), ("name",)),
    "history": (("name",), ()),
    "unlock": (("name",), ()),
    "route": (("name", "model", "version"), ()),
    "routes": (("name",), ()),
}
LIST_KEYS = ("symbols", "horizons")  # symbols=BTC,ETH means the list [BTC,ETH], not a Hydra sweep


class UsageError(ValueError):
    """The command line does not fit the grammar (exit 2)."""


def _is_override(arg: str) -> bool:
    return "=" in arg or arg.startswith(("~", "+"))


def _list_value(override: str) -> str:
    """``symbols=BTC,ETH`` -> ``symbols=[BTC,ETH]`` (Hydra reads a bare comma list as a sweep)."""
    key, sep, value = override.partition("=")
    if sep and key in LIST_KEYS and "," in value and not value.startswith(("[", "'", '"')):
        return f"{key}=[{value}]"
    return override


def parse_args(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """``[COMMAND, *ids, *overrides]`` -> (command, {identifier key: value}, overrides)."""
    from quantml.cli.common import flag_hint

    if not argv:
        raise UsageError(f"a command is required; usage: {USAGE}")
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = flag_hint([command], USAGE)
        raise UsageError(hint or f"unknown command {command!r}; usage: {USAGE}")
    hint = flag_hint(rest, USAGE)
    if hint:
        raise UsageError(hint)
    positional = [a for a in rest if not _is_override(a)]
    overrides = [_list_value(a) for a in rest if _is_override(a)]
    required, optional = COMMANDS[command]
    slots = required + optional
    if len(positional) > len(slots):
        raise UsageError(
            f"{command} takes {' '.join(s.upper() for s in slots) or 'no identifiers'}, "
            f"got {' '.join(positional)}; settings are key=value"
        )
    ids = dict(zip(slots, positional))
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    for key in ids:
        if key in given:
            raise UsageError(f"{key} given twice: as {ids[key]!r} and as {key}=...")
    missing = [s for s in required if s not in ids and s not in given]
    if missing:
        raise UsageError(
            f"{command} needs {' '.join(s.upper() for s in required)} "
            f"(missing {', '.join(s.upper() for s in missing)}); usage: {USAGE}"
        )
    return command, ids, overrides


def compose_config(command: str, ids: dict[str, str], overrides: list[str]):
    """conf/registry.yaml with the overrides; identifiers as strings; ``gates_file`` merged into ``gates``."""
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from quantml.cli.common import compose
    from quantml.contracts import QuantmlInputError

    cfg = compose("registry", overrides)
    cfg.command = command
    for key, value in ids.items():
        cfg[key] = value
    for key in ("run_id", "name", "version", "baseline", "model", "base", "default"):  # strings, never numbers
        if cfg[key] is not None:
            cfg[key] = str(cfg[key])
    if cfg.gates_file:
        path = Path(str(cfg.gates_file)).expanduser()
        if not path.is_file():
            raise QuantmlInputError(
                f"gates_file={path} does not exist; pass a YAML file like quantml/conf/registry/gates.yaml"
            )
        gates = OmegaConf.merge(cfg.gates, OmegaConf.load(path))
        # the command line wins over the file: re-apply its gates.* overrides
        for override in OverridesParser.create().parse_overrides(
            [o for o in overrides if o.lstrip("+~").startswith("gates.")]
        ):
            key = override.key_or_group.removeprefix("gates.")
            if override.is_delete():
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(gates, parent) if parent else gates
                if node is not None and leaf in node:
                    del node[leaf]
            else:
                OmegaConf.update(gates, key, override.value(), merge=True, force_add=True)
        cfg.gates = gates
    return cfg


def _table(frame) -> str:
    import pandas as pd

    if frame.empty:
        return "(none)"
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
        return frame.to_string(index=False)


def run(cfg) -> int:
    """Carry out the composed registry command; returns the exit code."""
    from omegaconf import OmegaConf

    from quantml.cli.common import tracking_uri
    from quantml.registry import commands as reg
    from quantml.registry import routing
    from quantml.registry.store import RegistryStore

    store = RegistryStore(tracking_uri(cfg))
    command, name, version = cfg.command, cfg.name, cfg.version
    gates = OmegaConf.create(OmegaConf.to_container(cfg.gates, resolve=True))  # a plain config, like the packaged file
    active = _active_alias()
    if command == "register":
        mv = reg.register(store, cfg.run_id, name)
        print(f"registered {mv.name} v{mv.version} from run {cfg.run_id} (alias candidate)")
        print(f"next: quantml registry gates {mv.name} {mv.version}")
    elif command == "list":
        print(_table(reg.list_versions(store, name) if name else reg.list_models(store)))
    elif command == "gates":
        report = reg.check_gates(store, name, version, gates, cfg.baseline)
        print(report.to_text())
        return 0 if report.passed else 1
    elif command == "promote":
        try:
            result = reg.promote(
                store,
                name,
                version,
                reason=str(cfg.reason or ""),
                force=bool(cfg.force),
                cfg=gates,
                baseline_run_id=cfg.baseline,
            )
        except reg.GateRefused as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(result.report.to_text())
        e = result.event
        forced = " (FORCED past failing gates)" if e.forced else ""
        print(
            f"{name}: {active} v{e.previous or '-'} -> v{e.version}{forced}; recorded as event {e.seq} "
            f"by {e.user} at {e.time}"
        )
    elif command == "rollback" and (cfg.symbols is not None or cfg.horizons is not None):
        change = routing.rollback_entry(
            store,
            name,
            symbols=cfg.symbols,
            horizons=cfg.horizons,
            reason=str(cfg.reason or ""),
            experiment=str(cfg.route_experiment),
        )
        e = change.event
        print(f"{name}: {change.change}")
        print(f"{name}: {active} v{e.previous} -> v{e.version} (entry rollback); recorded as event {e.seq}")
    elif command == "rollback":
        e = reg.rollback(store, name, reason=str(cfg.reason or ""))
        print(f"{name}: rolled back {active} v{e.previous} -> v{e.version}; recorded as event {e.seq}")
    elif command == "route":
        change = routing.route(
            store,
            name,
            cfg.model,
            version,
            symbols=cfg.symbols,
            horizons=cfg.horizons,
            default=cfg.default,
            reason=str(cfg.reason or ""),
            base=cfg.base,
            experiment=str(cfg.route_experiment),
        )
        mv = change.version
        built = f"built on v{change.base}" if change.base else "a new map"
        print(f"{name} v{mv.version} (alias candidate, {built}): {change.change}")
        print(
            f"next: quantml registry routes {name} version={mv.version}; quantml registry promote {name} {mv.version}"
        )
    elif command == "routes":
        header, table = routing.routes(store, name, version)
        print(header)
        print(_table(table))
    elif command == "history":
        print(_table(reg.history(store, name)))
        served = store.alias_version(name, active)
        print(f"{active}: {'v' + served if served else 'none'}")
    elif command == "unlock":
        holder = store.break_lock(name)
        print(
            f"removed the lock of {name} held by {holder.get('user')}@{holder.get('host')} "
            f"pid {holder.get('pid')} since {holder.get('since')}"
            if holder is not None
            else f"{name} was not locked"
        )
    return 0


def _active_alias() -> str:
    """The alias the registry store writes for the served version (``active``; ``champion`` in 0.1)."""
    from quantml.registry import store

    return getattr(store, "ACTIVE", None) or store.CHAMPION


def main(argv: list[str] | None = None) -> int:
    from quantml.cli.common import error_exit

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help") or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv else 2
    try:
        command, ids, overrides = parse_args(argv)
        cfg = compose_config(command, ids, overrides)
        return run(cfg)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(
            exc,
            "name= version= run_id= reason= force= baseline= gates_file= gates.<gate>.<key>= model= symbols= "
            "horizons= default= base= route_experiment= tracking.uri=",
        )


if __name__ == "__main__":
    sys.exit(main())
