"""Shared by the entrypoints: where the config tree is, the tracking URI, and turning input errors into messages."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from quantml.contracts import QuantmlInputError

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("quantml")


def tracking_uri(cfg) -> str:
    """The tracking/registry URI of a composed config: its ``tracking.uri`` node (conf/tracking/*.yaml),
    resolved the one way every subcommand resolves it."""
    from quantml.tracking.store import resolve_tracking_uri

    tracking = cfg.get("tracking") if cfg is not None else None
    return resolve_tracking_uri(tracking.get("uri") if tracking is not None else None)


def compose(config_name: str, overrides: list[str]):
    """The packaged config ``config_name`` composed with Hydra ``key=value`` overrides (no job is run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf error message on one line (they span several: key, full_key, object_type ...)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(("full_key:", "object_type=", "    "))]
    return "; ".join(keep or lines) or type(exc).__name__


def error_exit(exc: BaseException, settings: str) -> int:
    """The one-line message and exit code 2 of a bad-input error of a subcommand; any other
    error is re-raised. ``settings``: the subcommand's keys, shown after a config error."""
    from hydra.errors import HydraException
    from mlflow.exceptions import MlflowException
    from omegaconf.errors import OmegaConfBaseException

    from quantml.contracts import QuantmlInputError

    if isinstance(exc, QuantmlInputError):
        message = str(exc)
    elif isinstance(exc, MlflowException):  # e.g. an unreachable server or an invalid model name
        message = f"MLflow: {exc.message}"
    elif isinstance(exc, (HydraException, OmegaConfBaseException)):
        message = f"{one_line(exc)} (settings: {settings})"
    else:
        raise exc
    print(f"error: {message}", file=sys.stderr)
    return 2


def flag_hint(argv: list[str], usage: str) -> str | None:
    """The message for a ``--flag`` given where the grammar is ``key=value`` (None when there is none)."""
    for arg in argv:
        if arg.startswith("--") and arg not in ("--help",):
            key, _, value = arg[2:].partition("=")
            suggestion = f"{key.replace('-', '_')}={value or ('true' if key == 'force' else '...')}"
            return f"{arg} is not an option: settings are key=value (e.g. {suggestion}); usage: {usage}"
    return None


def refuse_non_settings(argv: list[str], usage: str) -> None:
    """Raise :class:`QuantmlInputError` for a ``--flag`` or a positional word where every
    argument must be a ``key=value`` setting (commands without identifiers: predict, sweep-report)."""
    from quantml.contracts import QuantmlInputError

    hint = flag_hint(argv, usage)
    positional = [a for a in argv if "=" not in a and not a.startswith(("~", "+", "--"))]
    if hint or positional:
        raise QuantmlInputError(hint or f"{positional[0]!r}: settings are key=value; usage: {usage}")


def compose_run_selection(config_name: str, argv: list[str], usage: str):
    """The config of a command that names runs (``sweep_dir=`` | ``experiment=`` | ``runs=[...]``:
    sweep-report, stack) composed from ``argv``. ``experiment`` is also a config group of the
    packaged tree (``conf/experiment/``): it is read here, not as a Hydra override, so
    ``experiment=NAME`` names an MLflow experiment."""
    refuse_non_settings(argv, usage)
    experiment = [a.split("=", 1)[1] for a in argv if a.startswith("experiment=")]
    cfg = compose(config_name, [a for a in argv if not a.startswith("experiment=")])
    if experiment:
        cfg.experiment = experiment[-1]
    return cfg


def compose_command(config_name: str, overrides: list[str], command: str):
    """The config of a command that reads a panel (paper, monitor): ``overrides`` composed over the
    packaged ``config_name`` (``data=FILE`` read as a file, :func:`quantml.serving.data_overrides`),
    an unknown group option or key as one-line bad input, and ``cfg.tracking_uri`` resolved (the
    library reads it; ``cfg.tracking.uri`` stays the one setting)."""
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from quantml.contracts import QuantmlInputError
    from quantml.serving import data_overrides

    try:
        cfg = compose(config_name, data_overrides(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise QuantmlInputError(config_error(exc, command)) from None
    with open_dict(cfg):
        cfg.tracking_uri = tracking_uri(cfg)
    return cfg


def run_command(argv, doc: str, usage: str, settings: str, execute) -> int:
    """The whole of a settings-only command (paper, monitor): ``--help`` prints ``doc``; a positional
    argument or ``--flag`` is refused; ``execute(argv) -> exit code`` runs. Bad input: one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(doc)
        return 0
    try:
        refuse_non_settings(argv, usage)
        return int(execute(argv))
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(exc, settings)


class CommandFailed(Exception):
    """A command that ran but failed its own check (a stack's leakage audit): exit 1 with the message."""


def run_selection_command(argv, doc: str, config_name: str, usage: str, settings: str, execute) -> int:
    """The whole of a command that names runs (sweep-report, stack): ``--help`` prints ``doc``;
    the config is composed (:func:`compose_run_selection`) and ``execute(cfg) -> text`` runs;
    the text is printed (exit 0). Bad input: one line, exit 2; :class:`CommandFailed`: exit 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(doc)
        return 0
    try:
        text = execute(compose_run_selection(config_name, argv, usage))
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(exc, settings)
    print(text)
    return 0


# A multirun's jobs report bad input here (a file named by this variable: the joblib launcher's
# workers inherit the environment), so the command's exit status can say 2 after the sweep.
FAILURES_ENV = "QUANTML_JOB_FAILURES"
HYDRA_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")


class JobOutcome:
    """What :func:`fail_cleanly` saw: ``failed`` once a job of a sweep has reported bad input."""

    failed = False


@contextmanager
def fail_cleanly():
    """Bad input ends the job with ONE line ``error: ...`` on stderr (no traceback); other errors propagate.

    A single run exits 2. A job of a ``-m`` sweep prints its line (with the job's overrides),
    records the failure for the command's exit status and returns, so Hydra neither prints a
    traceback nor stops the sweep (its MLflow run has already ended FAILED); a hyper-parameter
    trial re-raises instead, for the Optuna sweeper to mark the trial failed (it logs the message).
    """
    outcome = JobOutcome()
    try:
        yield outcome
    except QuantmlInputError as exc:
        _log_to_files(str(exc))  # the job's log file keeps it; the console gets the one line below
        if not _in_multirun():
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        record_failure(2, str(exc))
        if _in_hparams_trial():
            raise
        print(f"error: {exc} [job {_job_label()}]", file=sys.stderr)
        outcome.failed = True


def _log_to_files(message: str) -> None:
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def record_failure(code: int, message: str) -> None:
    path = os.environ.get(FAILURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{code}\t{' '.join(message.split())}\n")


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:
        return None


def _in_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra_config()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def _in_hparams_trial() -> bool:
    hc = _hydra_config()
    return hc is not None and "quantml_optuna" in str(hc.runtime.choices.get("hydra/sweeper", ""))


def _job_label() -> str:
    """``<job number>: <its values of the swept keys>`` (all its overrides when the axes are unknown)."""
    from quantml.tracking.callbacks import SWEEP_AXES_ENV

    hc = _hydra_config()
    if hc is None:
        return "?"
    axes = [a for a in os.environ.get(SWEEP_AXES_ENV, "").split(",") if a]
    return f"{hc.job.num}: {_swept(list(hc.overrides.task), axes)}"


def _swept(overrides: list[str], axes: list[str]) -> str:
    mine = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in axes] if axes else overrides
    return " ".join(mine or overrides)


# --------------------------------------------------------------------------- Hydra commands
def _renamed_setting(key: str, text: str) -> str | None:
    """The message for a setting that was renamed (``evaluation.monitor`` -> ``evaluation.selection_metric``)."""
    from quantml.evaluation.selection import RENAMED_KEYS

    group, _, old = key.partition(".")
    if group != "evaluation" or old not in RENAMED_KEYS:
        return None
    value = re.search(rf"{re.escape(key)}=(\S+)", text)
    new = f"evaluation.{RENAMED_KEYS[old]}"
    return (
        f"{key} was renamed {new} (the model-selection metric; `quantml monitor` is the post-promotion monitor "
        f"now): write {new}={value.group(1) if value else '...'} instead"
    )


def config_error(exc: BaseException, command: str, keys: list[str] | None = None) -> str:
    """A Hydra composition error as one line naming the key and the fix."""
    import difflib

    from hydra.errors import MissingConfigException, OverrideParseException

    text = f"{exc}\n{exc.__cause__ or ''}"
    if isinstance(exc, OverrideParseException):
        reason = str(exc).splitlines()[0] if str(exc) else "bad syntax"
        return (
            f"cannot parse the setting {exc.override!r} ({reason}); write key=value, and quote a value "
            "holding spaces, commas or brackets (key='a b'); -m sweeps take key=a,b"
        )
    listing = f"`{command} --cfg job` prints every setting"
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        missing = str(exc.missing_cfg_file)
        group, _, option = missing.rpartition("/")
        options = ", ".join(exc.options or [])
        if group:
            return f"{group}={option} is not a {group} option; choose one of: {options}"
        return f"config {missing!r} not found{f'; choose one of: {options}' if options else ''}"
    match = re.search(r"Could not override '([^']+)'", text)
    if match and "not in struct" in text:
        key = match.group(1)
        renamed = _renamed_setting(key, text)
        if renamed:
            return renamed
        near = difflib.get_close_matches(key, keys or [], n=1, cutoff=0.75)
        hint = f"did you mean {near[0]}? " if near else ""
        return f"{key} is not a setting of {command}; {hint}{listing}"
    match = re.search(r"Could not append to config. An item is already at '([^']+)'", text)
    if match:
        return f"{match.group(1)} already exists: set it without the +, as {match.group(1)}=..."
    return f"{one_line(exc)} ({listing})"


def _config_keys(cfg) -> list[str]:
    from omegaconf import OmegaConf

    out: list[str] = []

    def walk(node, prefix):
        for key, value in node.items():
            out.append(f"{prefix}{key}")
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def _is_group_override(override, config_dir: Path) -> bool:
    key = override.key_or_group
    return key.startswith("hydra") or (config_dir / key).is_dir()


def job_overrides(overrides: list[str], multirun: bool, basic_sweeper: bool) -> list[list[str]]:
    """The override lists of the jobs a command line runs (a sweep expanded as Hydra's basic
    sweeper expands it; for another sweeper, the fixed overrides: its trials come later)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun or not any(o.is_sweep_override() for o in parsed):
        return [list(overrides)]
    if not basic_sweeper:
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def precheck(config_name: str, argv: list[str], command: str, validate=None) -> None:
    """Compose the config of every job ``argv`` would run and check it (``validate(cfg, reference)``),
    before Hydra starts anything; raises :class:`QuantmlInputError` with the one-line message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args, unknown = get_args_parser().parse_known_args(argv)
    hint = flag_hint(unknown, f"{command} [key=value ...] [-m]")
    if hint or unknown:
        raise QuantmlInputError(hint or f"{' '.join(unknown)}: settings are key=value ({command} --help)")
    if any(getattr(args, flag, None) for flag in HYDRA_FLAGS) or args.config_path or args.config_dir:
        return  # Hydra prints help/config, or composes another tree: the job checks itself
    config_name = args.config_name or config_name
    config_dir = Path(CONFIG_DIR)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):

            def load(overrides, hydra=False):
                return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)

            def keys(overrides):
                try:
                    return _config_keys(load(overrides))
                except (HydraException, OmegaConfBaseException):
                    return _config_keys(load([]))

            try:
                fixed = [
                    o.input_line
                    for o in OverridesParser.create().parse_overrides(list(args.overrides))
                    if not o.is_sweep_override()
                ]
                base = load(fixed, hydra=True)
                basic = str(base.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")
                jobs = job_overrides(list(args.overrides), bool(args.multirun), basic)
            except (HydraException, OmegaConfBaseException) as exc:
                raise QuantmlInputError(config_error(exc, command, keys([]))) from None
            references: dict[tuple[str, ...], object] = {}
            parser = OverridesParser.create()
            axes = [o.key_or_group for o in parser.parse_overrides(list(args.overrides)) if o.is_sweep_override()]
            for n, job in enumerate(jobs):
                where = f" [job {n}: {_swept(job, axes)}]" if len(jobs) > 1 else ""
                groups = tuple(o.input_line for o in parser.parse_overrides(job) if _is_group_override(o, config_dir))
                try:
                    cfg = load(job)
                    if groups not in references:
                        references[groups] = load(groups)
                except (HydraException, OmegaConfBaseException) as exc:
                    raise QuantmlInputError(config_error(exc, command, keys(groups)) + where) from None
                if validate is not None:
                    try:
                        validate(cfg, references[groups])
                    except QuantmlInputError as exc:
                        raise QuantmlInputError(f"{exc}{where}") from None
    finally:
        GlobalHydra.instance().clear()


def run_hydra_command(app, config_name: str, command: str, argv: list[str] | None = None, validate=None) -> int:
    """Run the ``@hydra.main`` function ``app`` as ``command argv...``: the settings of every job
    checked first (one line ``error: ...`` and 2 on bad input), then Hydra. A sweep whose jobs
    reported bad input (:func:`fail_cleanly`) exits 2; one with another failure exits 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        precheck(config_name, argv, command, validate)
    except QuantmlInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fd, failures = tempfile.mkstemp(prefix="quantml-failures-", suffix=".tsv")
    os.close(fd)
    saved_env, saved_argv = os.environ.get(FAILURES_ENV), sys.argv
    os.environ[FAILURES_ENV] = failures
    sys.argv = [command, *argv]
    code = 0
    try:
        app()
    except SystemExit as exc:  # Hydra's own errors exit 1; a single run's bad input exits 2
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop(FAILURES_ENV, None)
        else:
            os.environ[FAILURES_ENV] = saved_env
        reported = Path(failures).read_text(encoding="utf-8").splitlines() if Path(failures).exists() else []
        Path(failures).unlink(missing_ok=True)
    if code == 0 and reported:
        code = 2
    return code
