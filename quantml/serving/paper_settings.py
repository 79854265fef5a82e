"""The settings of a ``quantml paper`` session, and what the model's source run says about its data:
where its development data ends (the start a replay may take) and which strategy made its weights
(the ``horizon_weights`` of ``auto``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import TIMESTAMP, QuantmlInputError, parse_duration
from quantml.contracts import run_layout as L
from quantml.market.execution import CostModel
from quantml.registry.store import RegistryStore
from quantml.serving.predict import ResolvedModel
from quantml.tracking.reader import RunReader

START_LOCKBOX = "lockbox"
AUTO = "auto"
ALLOCATOR_TARGET = "AllocatorStrategy"  # suffix of the allocator strategy's ``_target_``


@dataclass(frozen=True)
class PaperSettings:
    """The settings of one ``quantml paper`` session (conf/paper.yaml)."""

    model: str
    log_dir: Path | None
    start: str = START_LOCKBOX  # "lockbox" | ISO time
    end: pd.Timestamp | None = None
    follow: bool = False
    poll_s: float = 60.0
    max_polls: int | None = None
    allow_in_sample: bool = False
    reset: bool = False
    horizon_weights: str | dict = AUTO
    commit_bars: int = 24  # bars acted on between two commits of the state (the logs are appended then)

    def __post_init__(self) -> None:
        if self.end is not None and not isinstance(self.end, pd.Timestamp):
            object.__setattr__(self, "end", _utc_time(self.end, "end"))

    @classmethod
    def from_config(cls, cfg) -> PaperSettings:
        from omegaconf import DictConfig, OmegaConf

        model = cfg.get("model")
        if model is None or (isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, "model")) or not str(model):
            raise QuantmlInputError("model=... is required, e.g. model=models:/NAME@active")
        weights = cfg.get("horizon_weights", AUTO)
        if isinstance(weights, DictConfig):
            weights = OmegaConf.to_container(weights, resolve=True)
        if weights is None:
            weights = AUTO
        if not isinstance(weights, (str, dict)) or (isinstance(weights, str) and weights != AUTO):
            raise QuantmlInputError(
                f"horizon_weights={weights!r} must be 'auto' or a mapping horizon -> weight, "
                "e.g. horizon_weights='{1h: 0.5, 1d: 0.5}'"
            )
        poll_s = _number(cfg.get("poll_s", 60.0), "poll_s")
        if poll_s < 0:
            raise QuantmlInputError(f"poll_s={poll_s} must be >= 0 (seconds between polls)")
        max_polls = cfg.get("max_polls")
        if max_polls is not None and (isinstance(max_polls, bool) or not isinstance(max_polls, int) or max_polls < 1):
            raise QuantmlInputError(f"max_polls={max_polls!r} must be null or an integer >= 1")
        commit = cfg.get("commit_bars", 24)
        if isinstance(commit, bool) or not isinstance(commit, int) or commit < 1:
            raise QuantmlInputError(f"commit_bars={commit!r} must be an integer >= 1 (bars per commit of the state)")
        log_dir = cfg.get("log_dir")
        return cls(
            model=str(model).strip(),
            log_dir=None if log_dir in (None, "") else Path(str(log_dir)).expanduser(),
            start=str(cfg.get("start") or START_LOCKBOX),
            end=None if cfg.get("end") in (None, "") else _utc_time(cfg.get("end"), "end"),
            follow=_flag(cfg.get("follow", False), "follow"),
            poll_s=poll_s,
            max_polls=max_polls,
            allow_in_sample=_flag(cfg.get("allow_in_sample", False), "allow_in_sample"),
            reset=_flag(cfg.get("reset", False), "reset"),
            horizon_weights=weights,
            commit_bars=commit,
        )


def _flag(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    raise QuantmlInputError(f"{key}={value!r} must be true or false")


def _number(value, key: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise QuantmlInputError(f"{key}={value!r} must be a number") from None
    if not math.isfinite(out):
        raise QuantmlInputError(f"{key}={value!r} must be a finite number")
    return out


def _utc_time(value, key: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(str(value))
    except (TypeError, ValueError):
        raise QuantmlInputError(f"{key}={value!r} is not a time; write an ISO time such as 2026-11-30T14:00") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def default_log_dir(resolved: ResolvedModel, root: str | Path = "outputs/paper") -> Path:
    """``outputs/paper/<model name>`` (``run-<id12>`` for an unregistered runs:/ model)."""
    return Path(root) / (resolved.name or f"run-{resolved.run_id[:12]}")


def sort_horizons(horizons) -> list[str]:
    """Horizon labels from the shortest to the longest."""
    return sorted({str(h) for h in horizons}, key=lambda h: (parse_duration(h, "horizon"), h))


def horizon_weight_vector(setting: str | dict, horizons: list[str], strategy_target: str | None) -> np.ndarray:
    """The weight of each horizon bucket ``[H]`` the contract's ``target_weight`` is scaled by.

    ``auto``: ``1/H`` for the rank long/short book (each horizon's weights are a full book of
    gross 1), ``1`` for the allocator (its buckets already sum to the position); an explicit
    mapping gives each horizon's weight."""
    if setting == AUTO:
        if strategy_target is None:
            raise QuantmlInputError(
                "horizon_weights=auto needs the strategy of the model's source run, which could not be "
                "read; set it explicitly, e.g. horizon_weights='{1h: 0.5, 1d: 0.5}'"
            )
        w = 1.0 if str(strategy_target).endswith(ALLOCATOR_TARGET) else 1.0 / len(horizons)
        return np.full(len(horizons), w)
    given = {str(k): v for k, v in dict(setting).items()}
    missing = [h for h in horizons if h not in given]
    extra = sorted(set(given) - set(horizons))
    if missing or extra:
        raise QuantmlInputError(
            f"horizon_weights={given} must name exactly the model's horizons {horizons}"
            f"{f' (missing {missing})' if missing else ''}{f' (unknown {extra})' if extra else ''}"
        )
    return np.array([_number(given[h], f"horizon_weights.{h}") for h in horizons])


# ------------------------------------------------------------------------------------- source run
@dataclass(frozen=True)
class SourceRun:
    """What the model's source run says about its data: where its development data ends
    (``lockbox_start``: the first bar it never trained on; else ``dev_end``: its last bar),
    its strategy's ``_target_`` and its cost settings."""

    run_id: str
    lockbox_start: pd.Timestamp | None
    dev_end: pd.Timestamp | None
    strategy_target: str | None
    cost: dict | None


def read_source_run(resolved: ResolvedModel, store: RegistryStore) -> SourceRun:
    """The version's source run (tag ``quantml.lockbox_start``, its logged config, its market bars)."""
    reader = RunReader(client=store.client)
    run_id = resolved.run_id
    if not run_id:
        return SourceRun("", None, None, None, None)
    try:
        tags = dict(reader.get_run(run_id).data.tags)
    except Exception:  # noqa: BLE001 - a run that is gone: nothing is known about its data
        return SourceRun(run_id, None, None, None, None)
    tag = tags.get(L.TAG_LOCKBOX_START)
    lockbox = None if tag in (None, "", "none") else pd.Timestamp(tag).tz_convert("UTC")
    dev_end = None
    if lockbox is None:
        try:
            market = reader.market(run_id)
            if market is not None and len(market):
                dev_end = pd.to_datetime(market[TIMESTAMP], utc=True).max()
        except Exception:  # noqa: BLE001 - no market artifact: the in-sample check says so
            dev_end = None
    strategy, cost = None, None
    try:
        from omegaconf import OmegaConf

        config = reader.resolved_config(run_id, L.layout_version(tags))
        node = config.get("strategy")
        strategy = None if node is None else str(node.get("_target_", "") or "") or None
        cost_node = config.get("cost")
        cost = None if cost_node is None else OmegaConf.to_container(cost_node, resolve=True)
    except Exception:  # noqa: BLE001 - a run without a logged config (routed, hand-made)
        pass
    return SourceRun(run_id, lockbox, dev_end, strategy, cost)


def resolve_start(settings: PaperSettings, source: SourceRun, resolved: ResolvedModel) -> pd.Timestamp:
    """The first bar the session may act on; refuses one inside the model's development data
    unless ``allow_in_sample``."""
    label = f"{resolved.name} v{resolved.version}" if resolved.name else resolved.load_uri
    if settings.start == START_LOCKBOX:
        if source.lockbox_start is not None:
            return source.lockbox_start
        if source.dev_end is not None:
            return source.dev_end + pd.Timedelta(1, "ns")
        raise QuantmlInputError(
            f"start=lockbox: {label}'s source run {source.run_id or '(none)'} records no lockbox "
            f"({L.TAG_LOCKBOX_START}) nor its development bars; give start=ISO_TIME after its training "
            "data (allow_in_sample=true if you mean to replay data it was fitted on)"
        )
    start = _utc_time(settings.start, "start")
    boundary = source.lockbox_start or (None if source.dev_end is None else source.dev_end + pd.Timedelta(1, "ns"))
    if settings.allow_in_sample:
        return start
    if boundary is None:
        raise QuantmlInputError(
            f"start={settings.start}: where {label}'s development data ends is unknown (its source run records "
            f"no {L.TAG_LOCKBOX_START}); set allow_in_sample=true to replay from there anyway"
        )
    if start < boundary:
        raise QuantmlInputError(
            f"start={start.isoformat()} lies inside {label}'s development data (its folds and final model "
            f"were fitted on bars before {boundary.isoformat()}), so a paper PnL there is in-sample; use "
            f"start=lockbox (= {boundary.isoformat()}) or later, or allow_in_sample=true to replay it anyway"
        )
    return start


def source_costs(source: SourceRun) -> CostModel:
    """``cost=null``: the cost settings the model's source run was evaluated with (else the defaults)."""
    return CostModel.from_config(source.cost) if source.cost else CostModel()
