"""From config to the model-ready panel: load, causal features, cost-aware labels, samples."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.bundle import FeatureContract
from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts.config import build
from quantml.contracts.exchange_calendars import (
    check_max_gap,
    declared_calendar,
    panel_bars_missing,
    resolve_calendars,
)
from quantml.contracts.schema import CORE_COLUMNS, OPTIONAL_COLUMNS
from quantml.contracts.time import infer_calendars, panel_periods_per_year
from quantml.data import data_fingerprint, infer_bar_frequency, load_panel
from quantml.features import event_activity_mask
from quantml.features.text import attach_text, prepare_text
from quantml.labels import Labels, features_and_labels
from quantml.market.execution import panel_half_spread
from quantml.models.base import PanelData
from quantml.portfolio.strategy import HALF_SPREAD
from quantml.validation.lockbox import Lockbox, calendar_of, split_development

# per horizon, from quantml.labels.Labels; t1 = the label end (datetime64, naive UTC here)
REALISED = ("ret", "ret_after_cost", "dir", "vol", "t1")


class RealisedTable:
    """What was realised at each panel row, by column name: ``"{field}@{horizon}"`` for the
    :data:`REALISED` fields, and ``ret_next_bar``. :meth:`take` reads some rows of a column;
    ``ret_after_cost`` and ``t1`` are computed for those rows from the labels' ``ret`` and
    ``t1_row`` (:class:`quantml.labels.Labels`), the others are views of the label arrays."""

    def __init__(self, labels: Labels):
        self.labels = labels
        self.columns = [f"{name}@{h}" for h in labels.horizons for name in REALISED] + ["ret_next_bar"]

    def __contains__(self, key: str) -> bool:
        return key in self.columns

    def take(self, key: str, rows=slice(None)) -> np.ndarray:
        """Column ``key`` at ``rows`` (positions into the panel; every row by default)."""
        if key == "ret_next_bar":
            return self.labels.ret_next_bar[rows]
        if key not in self.columns:
            raise KeyError(f"no realised column {key!r}; the table has {self.columns}")
        name, h = key.split("@", 1)
        j = self.labels.horizons.index(h)
        if name == "ret_after_cost":
            return self.labels.after_cost(rows, j)
        if name == "t1":
            return self.labels.label_end(rows, j)
        return getattr(self.labels, name)[rows, j]

    def frame(self) -> pd.DataFrame:
        """Every column at every row (a copy where computed)."""
        return pd.DataFrame({key: self.take(key) for key in self.columns}, copy=False)


@dataclass
class PreparedData:
    """The model-ready panel plus what evaluation needs to know about it."""

    # every row; built from a partitioned parquet directory, only the columns read after the build
    panel: pd.DataFrame
    data: PanelData
    samples: np.ndarray  # positions (into data) of development samples, in time order
    realised: RealisedTable  # per row: ret/ret_after_cost/dir/vol/t1 per horizon + ret_next_bar
    contract: FeatureContract
    fingerprint: str
    bar: pd.Timedelta
    periods_per_year: float
    skipped_blocks: dict
    # the lockbox's samples (positions into data, time order); empty until reserve_lockbox
    holdout_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lockbox: Lockbox = field(default_factory=lambda: Lockbox(None, "none"))
    # warm_start=: the registered version's fitted forecaster every fit starts from (None: from scratch)
    warm_source: object | None = None

    @property
    def calendar(self) -> np.ndarray:
        """The development bar times (sorted unique int64 ns): every bar of the panel before
        the lockbox. Fold plans are cut from it, so they depend on the data alone."""
        cal = calendar_of(self.panel[TIMESTAMP])
        if self.lockbox.start is None:
            return cal
        return cal[cal < self.lockbox.start.tz_convert("UTC").tz_localize(None).value]

    def market(self, part: str = "development") -> pd.DataFrame:
        """Every bar of the panel (``symbol, timestamp, ret_next_bar`` [+ ``half_spread`` with an
        order-book stream]) of the ``development``
        period (before the lockbox) or of the ``holdout`` (the lockbox): the calendar a book's
        PnL runs over, bars without a forecast included."""
        frame = pd.DataFrame(
            {
                # the columns' arrays: to_numpy() would build a str / Timestamp object per row
                SYMBOL: self.panel[SYMBOL].array,
                TIMESTAMP: self.panel[TIMESTAMP].array,
                "ret_next_bar": self.realised.take("ret_next_bar"),
            }
        )
        half_spread = panel_half_spread(self.panel)
        if half_spread is not None:  # an order-book stream: the book pays its quoted spread
            frame[HALF_SPREAD] = half_spread
        if self.lockbox.start is None:
            return frame if part == "development" else frame.iloc[:0].copy()  # a view would hold every bar
        inside = (frame[TIMESTAMP] >= self.lockbox.start).to_numpy()
        return frame[~inside if part == "development" else inside].reset_index(drop=True)


def seed_everything(seed: int) -> None:
    """Seed Python and NumPy; backbones seed their own libraries (LightGBM, torch) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))


def prepare_data(cfg: DictConfig, served: bool = False) -> PreparedData:
    """Load the panel, build causal features and cost-aware labels, select samples.

    A symbol-partitioned parquet ``data.path`` is built one symbol at a time and ``panel`` keeps only the
    columns read after the build (:func:`_build_partitioned`), plus with ``served`` the columns the
    features read (stacking serves the experts on ``panel``); any other source is loaded whole."""
    horizons = list(cfg.horizon.horizons)
    costs = build(cfg.cost, "cost", "quantml.market.CostModel")
    drop = list(cfg.ablation.drop_modalities or [])
    feature_set = OmegaConf.to_container(cfg.feature_set, resolve=True)
    built = _build_partitioned(cfg.data, feature_set, horizons, costs.round_trip, drop, served)
    if built is None:
        built = _build_in_memory(cfg.data, feature_set, horizons, costs.round_trip, drop)
    panel, declared, features, labels, fingerprint = built
    text = prepare_text(cfg.data, panel, drop)  # the raw text stream: statistics + sparse towers (docs/text.md)
    if text is not None:
        features = attach_text(features, text)
    if features.frame.shape[1] == 0:
        raise QuantmlInputError(
            f"feature_set={cfg.feature_set.get('name', '?')} with ablation={cfg.ablation.name} leaves no "
            f"features for this panel (skipped: {features.skipped}); choose a feature_set whose inputs "
            f"the data has, e.g. feature_set=price"
        )
    data = PanelData.assemble(panel, features, horizons, labels)
    if text is not None:
        data.side = dict(text.side)
    samples = data.labelled_rows()
    if cfg.ablation.get("event_window"):
        samples = samples[event_activity_mask(panel, cfg.ablation.event_window)[samples]]
    # time order (then symbol) so splitters and reports see a timeline
    samples = samples[np.lexsort((data.symbol_codes[samples], data.t0[samples]))]
    if len(samples) == 0:
        raise QuantmlInputError(
            "no labelled samples: the panel is shorter than the longest horizon "
            f"({horizons[-1]}) or the event window keeps nothing; use more data or shorter horizons"
        )
    contract = FeatureContract(
        # what the features read, plus timestamp/symbol/close: a served panel needs no bar
        # column the model never read (a close-only model takes a close-only panel)
        input_columns=sorted(set(features.input_columns) | set(CORE_COLUMNS)),
        feature_names=list(features.frame.columns),
        feature_set=feature_set,
        drop_modalities=drop,
        horizons=horizons,
        calendar=dict(features.calendar),
        text={k: v for k, v in text.settings.items() if k != "path"} if text is not None else {},
    )
    return PreparedData(
        panel=panel,
        data=data,
        samples=samples,
        realised=RealisedTable(labels),
        contract=contract,
        fingerprint=fingerprint,
        bar=infer_bar_frequency(panel),
        periods_per_year=_periods_per_year(cfg.data, panel, declared),
        skipped_blocks=dict(features.skipped),
    )


def _build_in_memory(cfg_data, feature_set: dict, horizons: list[str], round_trip: float, drop: list[str]):
    """``(panel, declared, FeatureMatrix, Labels, fingerprint)`` from the whole validated panel
    (:func:`quantml.data.load_panel`), labels float64."""
    panel = load_panel(cfg_data)
    declared = declared_calendars(cfg_data, panel)
    if _require_ready(cfg_data):  # data.require_ready=true: audit before anything is fitted
        from quantml.data.audit import ReadyThresholds, require_ready

        ready = OmegaConf.to_container(cfg_data.ready, resolve=True) if cfg_data.get("ready") is not None else {}
        require_ready(panel, declared, ready.get("window"), ReadyThresholds.from_config(ready))
    # features and labels in one pass over the symbols (quantml.features.build.build)
    features, labels = features_and_labels(panel, feature_set, horizons, round_trip, drop, declared)
    return panel, declared, features, labels, data_fingerprint(panel)


def _build_partitioned(
    cfg_data, feature_set: dict, horizons: list[str], round_trip: float, drop: list[str], served: bool
):
    """:func:`_build_in_memory`'s result, equal value for value, from a symbol-partitioned parquet
    directory read one symbol at a time, the returned panel slim (:func:`_slim_panel`); None when the
    directory or an option needs the whole raw panel (:func:`_partitioned_symbols`, :func:`_check_partitions`)."""
    from quantml.labels import partitioned_features_and_labels

    found = _partitioned_symbols(cfg_data)
    if found is None:
        return None
    path, symbols = found
    checked = _check_partitions(path, symbols)
    if checked is None:
        return None
    columns, fingerprint = checked
    built = partitioned_features_and_labels(
        path,
        feature_set,
        horizons,
        round_trip,
        drop,
        symbols,
        dtype=np.float64,  # float64 as in memory
    )
    panel = _slim_panel(path, symbols, columns, built.features.input_columns, served)
    if len(panel) != len(built.keys):  # pragma: no cover - the files changed while being read
        raise QuantmlInputError(f"data.path={path} changed while it was read; train on a stable copy")
    declared = declared_calendars(cfg_data, panel)  # {} (calendars fall back); data.max_gap reads the keys
    return panel, declared, built.features, built.labels, fingerprint


def _partitioned_symbols(cfg_data) -> tuple[str, list[str]] | None:
    """``(data.path, symbols)`` when ``data.path`` is a directory of ``symbol=<name>/`` partitions only
    and no option needs the whole raw panel; else None. Left to :func:`_build_in_memory` (None):
    ``data.streams`` (joined as-of on the whole panel), ``data.start``/``end``, ``data.calendars``
    (the streaming build takes no declared calendars), ``data.require_ready`` (audits every column),
    ``data.text.path`` (the text statistics read the panel) and ``data.symbols`` naming a symbol that
    has no partition (the in-memory path names it in its error)."""
    from urllib.parse import unquote

    from quantml.data.loaders import _get, is_partitioned
    from quantml.data.text_stream import text_config

    path = _get(cfg_data, "path")
    if _get(cfg_data, "source") != "file" or not path or path == "???" or not is_partitioned(path):
        return None
    whole = [_get(cfg_data, k) for k in ("streams", "start", "end", "calendars")]
    if any(whole) or _require_ready(cfg_data) or text_config(cfg_data).get("path"):
        return None
    entries = [e for e in Path(path).expanduser().iterdir() if not e.name.startswith((".", "_"))]
    if not all(e.is_dir() and e.name.startswith(f"{SYMBOL}=") for e in entries):
        return None
    have = sorted(unquote(e.name.split("=", 1)[1]) for e in entries)
    wanted = _get(cfg_data, "symbols")
    if not wanted:
        return str(path), have
    wanted = [s.strip() for s in wanted.split(",")] if isinstance(wanted, str) else [str(s) for s in wanted]
    return (str(path), sorted(set(wanted))) if set(wanted) <= set(have) else None


def _check_partitions(path: str, symbols: list[str]) -> tuple[list[str], str] | None:
    """Each symbol's partition loaded and validated as :func:`quantml.data.load_panel` does the whole
    panel (its errors raised), one symbol at a time: ``(columns, fingerprint)``, the validated panel's
    columns and its :func:`quantml.data.data_fingerprint` (the row hashes of each symbol in turn: the
    same digest). None when the validated panel would not be the files' values as they are (a column
    cast or dropped) or when a check spans symbols (columns, bar size, close-only ranges differ): the
    whole-panel path then decides."""
    import pyarrow as pa

    from quantml.data.loaders import load_partitioned
    from quantml.data.panel import _to_utc, degenerate_symbols, validate_panel

    digest, head, shapes = hashlib.sha256(), None, set()
    for sym in symbols:
        raw = load_partitioned(path, [sym])
        if len(raw) == 0 or (raw[SYMBOL] != sym).any():
            return None
        raw[TIMESTAMP] = _to_utc(raw[TIMESTAMP])
        part = validate_panel(raw)
        kinds = [(c, str(part[c].dtype)) for c in part.columns]
        # the streaming build reads the files' values: each must already be the validated one
        cast = list(raw.columns) != list(part.columns) or any(
            raw[c].dtype != part[c].dtype for c in part.columns if c not in (SYMBOL, TIMESTAMP)
        )
        if cast or (head is not None and kinds != head):
            return None
        if head is None:
            head = kinds
            digest.update("".join(f"{c}:{d};" for c, d in kinds).encode())
        shapes.add((bool(degenerate_symbols(part)), infer_bar_frequency(part)))
        rows = pd.util.hash_pandas_object(part, index=False, categorize=False).to_numpy()
        digest.update(np.ascontiguousarray(rows).tobytes())
    pa.default_memory_pool().release_unused()  # the partitions' buffers, before the build allocates
    if len(shapes) > 1:
        return None
    return [c for c, _ in head], digest.hexdigest()[:16]


# read from PreparedData.panel after the build by training: the order book's quotes (market()) and the
# event count (ablation.event_window); the keys are always kept
_AFTER_BUILD = ("bid", "ask", "event_count")
# read besides the experts' inputs when the panel is served (stacking): the regime features' inputs
_SERVED_AFTER_BUILD = (
    "close",
    *OPTIONAL_COLUMNS,
    "funding_rate",
    "open_interest",
    "funding_rate_missing",
    "open_interest_missing",
)


def _slim_panel(path: str, symbols: list[str], columns: list[str], inputs: Sequence[str], served: bool) -> pd.DataFrame:
    """The panel's rows [n] (sorted by symbol, timestamp, as validated) with only the columns read after
    the build: timestamp, symbol and :data:`_AFTER_BUILD`, plus with ``served`` :data:`_SERVED_AFTER_BUILD`
    and ``inputs``; in the validated panel's column order (``columns``), symbol as str as validated.
    (At 8.4M bars each dropped bar column is 67 MB held through every fold.)"""
    from quantml.features.partitioned import Partitioned

    keep = {SYMBOL, TIMESTAMP, *_AFTER_BUILD, *((*_SERVED_AFTER_BUILD, *inputs) if served else ())}
    # the build's reader: one copy per column, no whole-table sort (load_partitioned held 3x the columns)
    thin = Partitioned(path, symbols, [c for c in columns if c in keep]).panel
    thin = thin.assign(**{SYMBOL: thin[SYMBOL].astype(str)})
    return thin[[c for c in columns if c in keep and c in thin.columns]]


def declared_calendars(cfg_data, panel: pd.DataFrame) -> dict[str, str]:
    """``data.calendars`` resolved against the panel's symbols (``{symbol: exchange code}``, the
    inferred symbols left out), after checking every declared symbol's bars against its sessions
    and every symbol's gaps against ``data.max_gap`` (``QuantmlInputError`` naming the bar)."""
    spec = cfg_data.get("calendars", None) if cfg_data is not None else None
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    declared = resolve_calendars(spec, pd.unique(panel[SYMBOL].astype(str)))
    max_gap = cfg_data.get("max_gap", None) if cfg_data is not None else None
    if max_gap is not None:
        missing = panel_bars_missing(panel[TIMESTAMP], panel[SYMBOL], declared)
        calendars = infer_calendars(panel[[TIMESTAMP, SYMBOL]])
        ts = panel[TIMESTAMP]
        for sym, code in declared.items():
            calendars[sym] = declared_calendar(code, ts[panel[SYMBOL].astype(str) == sym])
        check_max_gap(panel, missing, calendars, max_gap)
    return declared


def _require_ready(cfg_data) -> bool:
    value = cfg_data.get("require_ready", False) if cfg_data is not None else False
    if value is None or isinstance(value, bool):
        return bool(value)
    raise QuantmlInputError(f"data.require_ready={value!r} must be true or false (e.g. data.require_ready=true)")


def _periods_per_year(cfg_data, panel: pd.DataFrame, declared: dict[str, str]):
    """``data.periods_per_year`` when set, else the panel's (a plain float on one calendar, a
    :class:`~quantml.contracts.time.PeriodsPerYear` with each symbol's own on mixed calendars)."""
    given = cfg_data.get("periods_per_year")
    return float(given) if given else panel_periods_per_year(panel, declared)


def reserve_lockbox(prep: PreparedData, lockbox: Lockbox, embargo: pd.Timedelta) -> PreparedData:
    """``prep`` with its samples cut at the lockbox: development samples (labels end more than
    ``embargo`` before the lockbox's first bar) stay ``samples``; samples from the first bar on
    become ``holdout_samples``; the ones in between are purged."""
    dev, box = split_development(prep.data.t0[prep.samples], prep.data.t1[prep.samples], lockbox.start, embargo)
    if lockbox.enabled and not dev.any():
        raise QuantmlInputError(
            f"the lockbox from {lockbox.start} leaves no development samples: use a smaller validation.holdout, "
            "an earlier validation.holdout_start, or more data"
        )
    return replace(prep, samples=prep.samples[dev], holdout_samples=prep.samples[box], lockbox=lockbox)


def time_range(data: PanelData, rows: np.ndarray) -> tuple[str, str]:
    """First and last ``t0`` of ``rows`` as UTC strings (empty strings for no rows)."""
    if not len(rows):
        return "", ""
    t = data.t0[rows]
    return str(pd.Timestamp(t.min(), tz="UTC")), str(pd.Timestamp(t.max(), tz="UTC"))
