"""The settings of ``quantml train`` checked at the boundary, before a job starts anything.

Two checks, each raising :class:`QuantmlInputError` with one line that names the key, what
was expected and the fix:

- :func:`check_types`: every value the command line changed keeps the type of the packaged
  default it replaces (``backbone.n_estimators=abc`` where the yaml says ``300``), for every
  group and every backbone, without a schema to keep in step with the yaml files;
- :func:`check_train_settings`: the few keys the run uses before any library code checks them
  (``seed``, the horizons, the dates of ``data``), or whose default (``null``) has no type.

Ranges that only the library knows (``validation.valid_fraction`` in (0, 0.5], the CPCV group
counts ...) stay where the values are used: those checks already raise one-line errors, inside
the MLflow run, which then ends FAILED.
"""

from __future__ import annotations

from collections.abc import Mapping

from quantml.contracts import QuantmlInputError, parse_duration

SEED_MAX = 2**32 - 1  # numpy's seed range
# keys whose packaged default is a number but that also take another form
NUMBER_OR_DURATION = ("validation.holdout",)  # a fraction of the calendar or a duration (365d)
DURATION_PREFIXES = ("feature_set.blocks.",)  # feature windows, lags, half-lives: bars or durations
INT_OR_FLOAT_LEAVES = ("limit_train_batches", "limit_val_batches")  # batches (int) or a share (float)
DATE_KEYS = ("data.start", "data.end", "validation.holdout_start")


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value) if not isinstance(value, (list, dict)) else repr(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interpolation(value) -> bool:
    return isinstance(value, str) and "${" in value


# keys whose packaged default is null (a value derived at run time) but whose values have a type
TYPED_WHEN_NULL = {"data.n_bars": 3000}


def _type_error(key: str, value, default) -> str | None:
    """Why ``value`` cannot replace the packaged ``default`` of ``key`` (None when it can)."""
    if default is None:
        default = TYPED_WHEN_NULL.get(key)
    if default is None or _interpolation(value) or _interpolation(default) or value is None:
        return None
    shown = f"{key}={_show(value)}"
    if key.startswith(DURATION_PREFIXES) and isinstance(value, str) and not isinstance(default, bool):
        return None  # a feature window given as a duration (momentum_window=21d): the features parse it
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return f"{shown} is not true or false; write {key}=true or {key}=false"
    elif isinstance(default, int):
        if key.rsplit(".", 1)[-1] in INT_OR_FLOAT_LEAVES and _is_number(value):
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{shown} is not an integer; give a whole number such as the default {key}={_show(default)}"
    elif isinstance(default, float):
        if key in NUMBER_OR_DURATION and isinstance(value, str):
            return None  # a duration: the library parses it (validation.holdout=365d)
        if not _is_number(value):
            return f"{shown} is not a number; give one such as the default {key}={_show(default)}"
    elif isinstance(default, list):
        if not isinstance(value, list):
            example = ",".join(_show(v) for v in default) or "..."
            return f"{shown} is not a list; write it in brackets, e.g. {key}=[{example}]"
    elif isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            first = next(iter(default), "KEY")
            names = ", ".join(map(str, default))
            return f"{key} is a group of settings ({names}), not a value; set one, e.g. {key}.{first}=..."
    return None


def check_types(cfg, reference, prefix: str = "") -> None:
    """Refuse a value of ``cfg`` whose type differs from the same key's in ``reference`` (the config
    composed with the same group choices and no value overrides: the packaged defaults)."""
    from omegaconf import DictConfig, OmegaConf

    def plain(node):
        return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node

    mine, ref = plain(cfg), plain(reference)
    for key, default in ref.items():
        if key == "hydra" or key not in mine:
            continue
        full = f"{prefix}{key}"
        value = mine[key]
        if value == "???" or default == "???":  # mandatory values: the code that reads them says what is missing
            continue
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            check_types(value, default, f"{full}.")
            continue
        if value != default:
            problem = _type_error(full, value, default)
            if problem:
                raise QuantmlInputError(problem)


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception as exc:  # noqa: BLE001 - a bad interpolation in the value
        raise QuantmlInputError(f"{key} cannot be resolved ({exc}); give it a plain value") from None


def check_train_settings(cfg) -> None:
    """The values the run reads first, or whose default has no type; raises on the first bad one."""
    seed = _select(cfg, "seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise QuantmlInputError(f"seed={_show(seed)} is not a seed: give an integer from 0 to {SEED_MAX}, e.g. seed=42")
    if "horizon" in cfg:
        horizons = _select(cfg, "horizon.horizons")
        if horizons is not None and not isinstance(horizons, str):
            horizons = list(horizons)
        if not horizons or isinstance(horizons, str):
            raise QuantmlInputError(
                f"horizon.horizons={_show(horizons)} must be a non-empty list of durations: "
                "e.g. horizon.horizons=[1d,7d], or choose a preset such as horizon=1d"
            )
        for h in horizons:
            parse_duration(h, "horizon.horizons item")
        if len(set(map(str, horizons))) != len(horizons):
            raise QuantmlInputError(f"horizon.horizons={_show(horizons)} repeats a horizon; list each once")
    warm = _select(cfg, "warm_start") if "warm_start" in cfg else None
    if warm is not None and not (isinstance(warm, str) and warm.startswith("models:/")):
        raise QuantmlInputError(
            f"warm_start={_show(warm)} must be a registered model URI, e.g. warm_start=models:/NAME@active "
            "(or models:/NAME/3), or null to train from scratch"
        )
    for key in DATE_KEYS:
        value = _select(cfg, key)
        if value is None:
            continue
        _check_date(key, value)
    if "data" in cfg:
        symbols = _select(cfg, "data.symbols")
        if symbols is not None and not isinstance(symbols, str) and not _all_scalars(symbols):
            raise QuantmlInputError(
                f"data.symbols={_show(symbols)} must be a list of symbol names, e.g. data.symbols=[AAPL,MSFT]"
            )
        periods = _select(cfg, "data.periods_per_year")
        if periods is not None and (not _is_number(periods) or periods <= 0):
            raise QuantmlInputError(
                f"data.periods_per_year={_show(periods)} must be a positive number (252 for daily equity bars, "
                "8760 for hourly crypto) or null to infer it from the bars"
            )
        calendars = _select(cfg, "data.calendars")
        if calendars is not None and not isinstance(calendars, str):
            from omegaconf import DictConfig, OmegaConf

            plain = OmegaConf.to_container(calendars, resolve=True) if isinstance(calendars, DictConfig) else calendars
            if not isinstance(plain, Mapping) or not all(v is None or isinstance(v, str) for v in plain.values()):
                raise QuantmlInputError(
                    f"data.calendars={_show(plain)} must be null (inferred from the bars), one calendar code for "
                    "every symbol (data.calendars=24/7) or a mapping symbol -> code, e.g. "
                    "data.calendars='{BTC: 24/7, default: XNYS}'"
                )
        max_gap = _select(cfg, "data.max_gap")
        if max_gap is not None:
            parse_duration(max_gap, "data.max_gap")
    if "validation" in cfg:
        blocks = _select(cfg, "validation.train_blocks")
        if blocks is not None and (not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1):
            raise QuantmlInputError(
                f"validation.train_blocks={_show(blocks)} must be a whole number of blocks >= 1 "
                "(with validation.mode=rolling), or null"
            )


def _all_scalars(values) -> bool:
    try:
        return all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)
    except TypeError:
        return False


def _check_date(key: str, value) -> None:
    import pandas as pd

    try:
        stamp = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        stamp = None
    if stamp is None or pd.isna(stamp):
        raise QuantmlInputError(f"{key}={_show(value)} is not a date; write an ISO date such as {key}=2012-01-03")
