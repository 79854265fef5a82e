"""A routing map: the active model per (symbol, horizon), as a registered model of its own.

A map (a registered model, e.g. ``desk``) holds **entries** ``(symbols | *, horizons | *, model,
version)``. Each change makes a NEW version of the map whose quantml pyfunc wraps a
:class:`RoutedBundle`: the entries and a pickled COPY of every entry version's bundle, so a map
version is immutable and what is served is what was judged. The map version is promoted, gated
(every distinct entry version's own gates), rolled back and served like any other version
(``models:/desk@active``; ``mlflow models serve`` works on it).

Who serves a cell ``(symbol, horizon)``: among the entries that cover it (their selector names the
symbol and horizon, or ``*``, and their model has that horizon) the most specific wins, symbol +
horizon > symbol > horizon > default; between equally specific entries the one changed last wins.
Every map has exactly one **default** entry (symbols and horizons ``*``): the first route of a map is
a default entry, or names one with ``default=NAME:VERSION``.

A route is refused when its version lacks a routed symbol (its training symbols: bundle metadata
``first_bars``) or horizon (``contract.horizons``), and when a cross-sectional model (bundle metadata
``cross_sectional: true``) would serve only part of its symbols at a horizon.

Each entry remembers the values it had before (a stack, ``previous``): ``rollback_entry`` returns it
to the one before its last change (or removes it when it had none) as a new map version, made
``active`` at once and recorded as an event (``quantml.event.<seq>``) like promote and rollback.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from quantml.bundle import FeatureContract
from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, parse_duration
from quantml.contracts import run_layout as L
from quantml.contracts.schema import DIAGNOSTIC_FIELDS, prediction_columns
from quantml.registry.gates import GateReport, GateResult
from quantml.registry.store import (
    ACTIVE,
    CANDIDATE,
    MAX_REASON_CHARS,
    Event,
    RegistryError,
    RegistryStore,
    current_user,
    normalise_version,
    utc_now,
)

log = logging.getLogger(__name__)

# names this module writes: quantml.contracts.run_layout (route maps)
KIND_ROUTE = L.KIND_ROUTE
TAG_ROUTE_ENTRIES = L.TAG_ROUTE_ENTRIES
TAG_ROUTE_MAP = L.TAG_ROUTE_MAP
TAG_ROUTE_BASE = L.TAG_ROUTE_BASE
TAG_ROUTE_CHANGE = L.TAG_ROUTE_CHANGE
ROUTE_ENTRIES_ARTIFACT = L.ROUTE_ENTRIES_ARTIFACT
ROUTE_EXPERIMENT = L.ROUTE_EXPERIMENT
CROSS_SECTIONAL = L.CROSS_SECTIONAL
ALL = "*"
MAX_TAG_CHARS = 5000  # MLflow's SQL stores: a model-version tag value


# -- selectors and entries -------------------------------------------------------------------------------
def parse_selector(value, what: str) -> tuple[str, ...] | None:
    """``None | "*" | "BTC" | "BTC,ETH" | ["BTC", "ETH"]`` -> ``None`` (all) or a sorted tuple of names."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "ListConfig":
        items = [str(v).strip() for v in value]
    else:
        items = [str(value).strip()]
    items = [v for v in items if v]
    if not items or items == [ALL]:
        return None
    if ALL in items:
        raise QuantmlInputError(f"{what}={','.join(items)} mixes '*' with names; give names, or omit {what} for all")
    return tuple(sorted(set(items)))


def _shown(selector: tuple[str, ...] | None) -> str:
    return ALL if selector is None else ",".join(selector)


@dataclass(frozen=True)
class RouteEntry:
    """One entry of a map: ``symbols``/``horizons`` (None: all) served by ``model`` v``version``.

    ``previous``: the ``(model, version)`` values this selector had before, oldest first (what a
    per-entry rollback returns to)."""

    symbols: tuple[str, ...] | None
    horizons: tuple[str, ...] | None
    model: str
    version: str
    previous: tuple[tuple[str, str], ...] = ()

    @property
    def selector(self) -> tuple:
        return (self.symbols, self.horizons)

    @property
    def key(self) -> str:
        """The entry's bundle in :attr:`RoutedBundle.bundles`: ``"<model>/<version>"``."""
        return bundle_key(self.model, self.version)

    @property
    def specificity(self) -> int:
        """3 symbol + horizon, 2 symbol, 1 horizon, 0 the default."""
        return 2 * (self.symbols is not None) + (self.horizons is not None)

    @property
    def is_default(self) -> bool:
        return self.specificity == 0

    def label(self) -> str:
        return f"symbols={_shown(self.symbols)} horizons={_shown(self.horizons)}"

    def covers(self, symbol: str, horizon: str) -> bool:
        return (self.symbols is None or symbol in self.symbols) and (self.horizons is None or horizon in self.horizons)

    def to_dict(self, with_previous: bool = True) -> dict:
        out = {
            "symbols": list(self.symbols) if self.symbols is not None else ALL,
            "horizons": list(self.horizons) if self.horizons is not None else ALL,
            "model": self.model,
            "version": self.version,
        }
        if with_previous:
            out["previous"] = [list(p) for p in self.previous]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RouteEntry:
        return cls(
            symbols=parse_selector(data.get("symbols"), "symbols"),
            horizons=parse_selector(data.get("horizons"), "horizons"),
            model=str(data["model"]),
            version=normalise_version(data["version"]),
            previous=tuple((str(m), normalise_version(v)) for m, v in data.get("previous", [])),
        )


def bundle_key(model: str, version) -> str:
    return f"{model}/{normalise_version(version)}"


# -- what a bundle serves ------------------------------------------------------------------------------
def bundle_horizons(bundle) -> list[str]:
    """The horizons a bundle predicts (its feature contract's)."""
    return [str(h) for h in (getattr(bundle, "horizons", None) or bundle.contract.horizons)]


def training_symbols(bundle) -> list[str] | None:
    """The symbols a bundle was trained on (metadata ``first_bars`` keys; a stack: the symbols every
    expert was trained on); None when not recorded (models logged before quantml recorded them)."""
    first = (getattr(bundle, "metadata", None) or {}).get(L.FIRST_BARS)
    if first:
        return sorted(str(s) for s in first)
    experts = getattr(bundle, "experts", None)
    if experts:
        sets = [training_symbols(e) for e in experts]
        if all(s is not None for s in sets):
            return sorted(set.intersection(*(set(s) for s in sets)))
    return None


def is_cross_sectional(bundle) -> bool:
    return bool((getattr(bundle, "metadata", None) or {}).get(CROSS_SECTIONAL, False))


def _horizon_order(horizons) -> list[str]:
    def key(h: str):
        try:
            return (0, parse_duration(h).value, h)
        except QuantmlInputError:
            return (1, 0, h)

    return sorted(set(horizons), key=key)


def owner(entries: list[RouteEntry], bundles: dict, symbol: str, horizon: str) -> RouteEntry | None:
    """The entry that serves ``(symbol, horizon)``: the most specific one covering it whose model has
    ``horizon``; between equally specific ones the later in ``entries`` (changed last). None: nobody."""
    best, rank = None, None
    for i, entry in enumerate(entries):
        if entry.covers(symbol, horizon) and horizon in bundle_horizons(bundles[entry.key]):
            r = (entry.specificity, i)
            if rank is None or r > rank:
                best, rank = entry, r
    return best


def union_contract(bundles: list, horizons: list[str]) -> FeatureContract:
    """The inputs a routed map reads: every column any entry's feature contract needs (the pyfunc's
    input signature); features stay each entry's own."""
    inputs = sorted(set().union(*(set(b.contract.input_columns) for b in bundles)))
    return FeatureContract(
        input_columns=inputs,
        feature_names=[],
        feature_set={KIND_ROUTE: [b.contract.hash for b in bundles]},
        drop_modalities=[],
        horizons=list(horizons),
        schema_version=bundles[0].contract.schema_version,
    )


# -- the served map ------------------------------------------------------------------------------------
@dataclass
class RoutedBundle:
    """The entries of one map version and a copy of each entry version's bundle: panel in, one
    prediction contract out, each row stamped with the entry version that produced it.

    ``bundles``: ``"<model>/<version>" -> ModelBundle | StackBundle``. ``signal``, ``strategy``,
    ``data_fingerprint``, ``allocator`` and the bar/periods metadata are the default entry's (what
    code reading a single bundle finds); ``metadata[first_bars]`` is every symbol any entry trained on."""

    entries: list[RouteEntry]
    bundles: dict[str, object]
    contract: FeatureContract
    map_name: str = ""
    signal: dict = field(default_factory=dict)
    strategy: dict | None = None
    data_fingerprint: str = ""
    metadata: dict = field(default_factory=dict)
    allocator: dict | None = None
    calibrator: object | None = None
    kind: str = KIND_ROUTE

    @classmethod
    def build(cls, entries: list[RouteEntry], bundles: dict[str, object], map_name: str = "") -> RoutedBundle:
        """Check the entries against their bundles (:func:`check_map`) and assemble the routed bundle."""
        check_map(entries, bundles)
        used = {e.key: bundles[e.key] for e in entries}
        default = used[next(e for e in entries if e.is_default).key]
        horizons = _horizon_order(h for b in used.values() for h in bundle_horizons(b))
        first: dict[str, str] = {}
        for b in used.values():
            for sym, ts in ((getattr(b, "metadata", None) or {}).get(L.FIRST_BARS) or {}).items():
                first[str(sym)] = min(first.get(str(sym), ts), ts)
        meta = {k: v for k, v in (getattr(default, "metadata", None) or {}).items() if k in ("bar", "periods_per_year")}
        meta.update(
            {
                "ic_mode": (getattr(default, "metadata", None) or {}).get("ic_mode"),
                "route_entries": [e.to_dict(with_previous=False) for e in entries],
                L.FIRST_BARS: first,
            }
        )
        return cls(
            entries=list(entries),
            bundles=used,
            contract=union_contract(list(used.values()), horizons),
            map_name=map_name,
            signal=dict(getattr(default, "signal", None) or {}),
            strategy=getattr(default, "strategy", None),
            data_fingerprint=str(getattr(default, "data_fingerprint", "")),
            metadata=meta,
        )

    @property
    def horizons(self) -> list[str]:
        return list(self.contract.horizons)

    def predict_contract(
        self,
        panel: pd.DataFrame,
        last_only: bool = False,
        model_name: str = "",
        model_version: str = "",
        signal: dict | None = None,
    ) -> pd.DataFrame:
        """The prediction contract ``[rows, len(PREDICTION_COLUMNS)]`` of ``panel``: each entry bundle
        predicts the whole panel (cross-sectional features and weights read the whole cross-section),
        each ``(symbol, horizon)`` cell is kept from the entry that serves it, stamped with that
        entry's ``model_name``/``model_version`` (``model_name``/``model_version`` given here are
        ignored). Sorted like a single model's: horizon-major (shortest first), then symbol, timestamp.
        ``signal``: thresholds replacing every entry's own (a 0.1 ``quantml.signal`` tag); else a map
        version tuned as one book (``quantml tune map=`` ... ``attach=``) gives every entry its tuned ones."""
        from quantml.bundle.model import _coerce_panel

        if signal is None and self.is_tuned:
            signal = dict(self.signal)

        panel = _coerce_panel(panel)
        self.contract.check(panel)
        symbols = sorted(panel[SYMBOL].astype(str).unique())
        cells: dict[str, set[tuple[str, str]]] = {}
        stamp: dict[str, tuple[str, str]] = {}
        for sym in symbols:
            for h in self.contract.horizons:
                entry = owner(self.entries, self.bundles, sym, h)
                if entry is not None:
                    cells.setdefault(entry.key, set()).add((sym, h))
                    stamp[entry.key] = (entry.model, entry.version)
        frames = []
        for key, owned in cells.items():
            frame = self.bundles[key].predict_contract(panel, last_only=last_only, signal=signal)
            pairs = pd.MultiIndex.from_arrays([frame[SYMBOL].astype(str), frame["horizon"].astype(str)])
            frame = frame[pairs.isin(list(owned))].copy()
            frame["model_name"], frame["model_version"] = stamp[key]
            frames.append(frame)
        if not frames:
            raise QuantmlInputError(
                f"no entry of route map {self.map_name or '?'} serves any symbol of the panel ({', '.join(symbols)}); "
                f"see `quantml registry routes {self.map_name or 'MAP'}`"
            )
        out = pd.concat(frames, ignore_index=True)
        rank = {h: i for i, h in enumerate(self.contract.horizons)}
        out["_h"] = out["horizon"].astype(str).map(rank)
        out = out.sort_values(["_h", SYMBOL, TIMESTAMP], kind="mergesort")
        # a diagnostic column any entry declares is kept, NaN on the rows of entries that do not
        return out.reindex(columns=list(prediction_columns(self.diagnostic_fields))).reset_index(drop=True)

    @property
    def is_tuned(self) -> bool:
        """Whether this map version carries thresholds tuned on its routed book (``metadata["tuned"]``,
        set by ``quantml tune map=NAME:V attach=NAME:V``), served for every cell."""
        return bool((self.metadata or {}).get("tuned")) and bool(self.signal)

    @property
    def diagnostic_fields(self) -> tuple[str, ...]:
        """The diagnostic columns (``DIAGNOSTIC_FIELDS``) any entry's bundle declares (docs/fusion.md)."""
        declared = {name for bundle in self.bundles.values() for name in getattr(bundle, "diagnostic_fields", ())}
        return tuple(name for name in DIAGNOSTIC_FIELDS if name in declared)


def check_entry(entry: RouteEntry, bundle) -> None:
    """Refuse an entry whose version lacks a routed symbol or horizon, or that routes a
    cross-sectional model for part of its symbols."""
    where = f"{entry.model} v{entry.version}"
    horizons = bundle_horizons(bundle)
    if entry.horizons is not None:
        missing = [h for h in entry.horizons if h not in horizons]
        if missing:
            raise RegistryError(
                f"{where} has no horizon {', '.join(missing)} (it predicts {', '.join(horizons)}); route it for "
                f"horizons it predicts, or route a version trained with those horizons"
            )
    if entry.symbols is None:
        return
    trained = training_symbols(bundle)
    if trained is None:
        raise RegistryError(
            f"{where} records no training symbols (bundle metadata {L.FIRST_BARS!r}), so a route for symbols "
            f"{', '.join(entry.symbols)} cannot be checked; retrain it with this quantml, or route it as the "
            f"default (no symbols=)"
        )
    missing = [s for s in entry.symbols if s not in trained]
    if missing:
        raise RegistryError(
            f"{where} was not trained on symbol {', '.join(missing)} (its symbols: {', '.join(trained)}); "
            f"route symbols it was trained on, or a version trained on them"
        )
    if is_cross_sectional(bundle) and set(entry.symbols) != set(trained):
        raise RegistryError(
            f"{where} is cross-sectional (bundle metadata {CROSS_SECTIONAL}: true): it can only be routed for all "
            f"its symbols at once ({', '.join(trained)}), not for {', '.join(entry.symbols)}; omit symbols= or "
            f"give them all"
        )


def check_map(entries: list[RouteEntry], bundles: dict) -> None:
    """Refuse a map without exactly one default entry, with two entries of one selector, with a bad
    entry (:func:`check_entry`), or where another entry takes part of a cross-sectional model's
    symbols at a horizon it serves."""
    defaults = [e for e in entries if e.is_default]
    if len(defaults) != 1:
        raise RegistryError(
            f"a route map needs exactly one default entry (symbols and horizons omitted), got {len(defaults)}; "
            f"route one with `quantml registry route MAP NAME VERSION` (no symbols=/horizons=)"
        )
    selectors = [e.selector for e in entries]
    if len(set(selectors)) != len(selectors):
        raise RegistryError("a route map has two entries with the same symbols and horizons; keep one")
    for entry in entries:
        check_entry(entry, bundles[entry.key])
    for entry in entries:
        bundle = bundles[entry.key]
        if not is_cross_sectional(bundle):
            continue
        trained = training_symbols(bundle) or []
        for h in entry.horizons or bundle_horizons(bundle):
            taken = {s: o for s in trained if (o := owner(entries, bundles, s, h)) is not None and o.key != entry.key}
            if taken and len(taken) < len(trained):
                shown = ", ".join(f"{s} ({o.model} v{o.version})" for s, o in sorted(taken.items()))
                raise RegistryError(
                    f"{entry.model} v{entry.version} is cross-sectional: it serves all its symbols at {h} or none, "
                    f"but other entries would take {shown}; route those symbols at {h} together, or not at all"
                )


# -- reading a map ---------------------------------------------------------------------------------------
def is_route_version(mv: ModelVersion) -> bool:
    return (mv.tags or {}).get(L.TAG_KIND) == KIND_ROUTE


def is_route_map(store: RegistryStore, name: str) -> bool:
    """Whether ``name`` is a route map (its latest version is a map version)."""
    versions = store.versions(name)
    return bool(versions) and is_route_version(versions[-1])


def _require_map_version(store: RegistryStore, name: str, version) -> ModelVersion:
    mv = store.get_version(name, version)
    if not is_route_version(mv):
        raise RegistryError(
            f"{name} v{mv.version} is not a route map version (no tag {L.TAG_KIND}={KIND_ROUTE}); "
            f"route maps are made by `quantml registry route MAP NAME VERSION`"
        )
    return mv


def map_entries(store: RegistryStore, name: str, version) -> list[RouteEntry]:
    """The entries of map ``name`` v``version``, with their previous values (the route run's artifact)."""
    mv = _require_map_version(store, name, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = store.client.download_artifacts(mv.run_id, ROUTE_ENTRIES_ARTIFACT, tmp)
        data = json.loads(Path(path).read_text())
    return [RouteEntry.from_dict(d) for d in data["entries"]]


def tagged_entries(mv: ModelVersion) -> list[RouteEntry]:
    """The current entries of a map version from its tag (no previous values; no download)."""
    return [RouteEntry.from_dict(d) for d in json.loads((mv.tags or {}).get(TAG_ROUTE_ENTRIES, "[]"))]


def _load(store: RegistryStore, model: str, version: str, tmp: str):
    from quantml.tracking.pyfunc import load_bundle

    with store.global_uri():
        return load_bundle(f"models:/{model}/{version}", tempfile.mkdtemp(dir=tmp))


def _entry_bundle(store: RegistryStore, model: str, version, tmp: str):
    """The bundle of ``model`` v``version`` (refused: an unknown model/version, a route map)."""
    mv = store.get_version(model, version)
    if is_route_version(mv):
        raise RegistryError(
            f"{model} v{mv.version} is itself a route map; route the model versions it serves instead "
            f"(`quantml registry routes {model}`)"
        )
    return _load(store, model, str(mv.version), tmp)


# -- writing a map version -------------------------------------------------------------------------------
@dataclass
class RouteChange:
    """A new map version: its registry entry, entries, the version it was built on and the change."""

    version: ModelVersion
    entries: list[RouteEntry]
    base: str | None
    change: str
    event: Event | None = None


def _bundles_for(store: RegistryStore, name: str, base: str | None, entries: list[RouteEntry], tmp: str) -> dict:
    """Every entry's bundle: from the base map version's copy where it holds one, else the registry."""
    bundles: dict[str, object] = {}
    if base is not None:
        routed = _load(store, name, base, tmp)
        bundles.update(getattr(routed, "bundles", {}) or {})
    for entry in entries:
        if entry.key not in bundles:
            bundles[entry.key] = _entry_bundle(store, entry.model, entry.version, tmp)
    return bundles


def _write_version(
    store: RegistryStore,
    name: str,
    entries: list[RouteEntry],
    bundles: dict,
    *,
    base: str | None,
    change: str,
    reason: str,
    experiment: str,
) -> ModelVersion:
    """Log the routed bundle on a new route run and register it as a new version of map ``name``."""
    from quantml.tracking.pyfunc import log_bundle_info
    from quantml.tracking.writer import RunWriter

    routed = RoutedBundle.build(entries, bundles, name)
    tag_entries = json.dumps([e.to_dict(with_previous=False) for e in entries], separators=(",", ":"))
    if len(tag_entries) > MAX_TAG_CHARS:
        raise RegistryError(
            f"the entries of {name} take {len(tag_entries)} characters, more than a registry tag holds "
            f"({MAX_TAG_CHARS}); route symbols in fewer entries (symbols=A,B,C in one entry)"
        )
    writer = RunWriter.for_experiment(store.tracking_uri, experiment)
    run = writer.start(f"route {name}", tags={L.TAG_KIND: KIND_ROUTE, TAG_ROUTE_MAP: name})
    with run.ending():
        run.set_description(f"route map {name}: {change}" + (f" ({reason})" if reason else ""))
        run.log_dict({"map": name, "base": base, "entries": [e.to_dict() for e in entries]}, ROUTE_ENTRIES_ARTIFACT)
        with store.global_uri():
            info = log_bundle_info(routed, run.run_id, L.MODEL_ARTIFACT)
        store.ensure_model(name)
        tags = {
            L.TAG_KIND: KIND_ROUTE,
            L.VERSION_TAG_RUN_ID: run.run_id,
            L.TAG_LAYOUT_VERSION: L.LAYOUT_VERSION,
            L.TAG_HORIZONS: ",".join(routed.horizons),
            TAG_ROUTE_ENTRIES: tag_entries,
            TAG_ROUTE_BASE: base or "",
            TAG_ROUTE_CHANGE: change[:MAX_TAG_CHARS],
        }
        with store.global_uri():
            mv = store.client.create_model_version(
                name,
                info.model_uri,
                run_id=run.run_id,
                tags=tags,
                model_id=getattr(info, "model_id", None),
                description=f"route map: {change}" + (f" ({reason})" if reason else ""),
            )
    return store.client.get_model_version(name, mv.version)


def _check_map_name(store: RegistryStore, name: str) -> bool:
    """True when ``name`` is an existing map, False when it does not exist; refuses a plain model."""
    try:
        store.get_model(name)
    except RegistryError:
        return False
    versions = store.versions(name)
    plain = [v.version for v in versions if not is_route_version(v)]
    if plain:
        raise RegistryError(
            f"{name!r} is a registered model (versions {', '.join(map(str, plain))}), not a route map; "
            f"give the map another name, e.g. `quantml registry route desk {name} VERSION`"
        )
    return bool(versions)


def _base_version(store: RegistryStore, name: str, base) -> str | None:
    """The map version a route builds on: ``base`` if given, else the newer of ``candidate`` and
    ``active`` (routes not yet promoted accumulate), else None (a new map)."""
    if base is not None:
        return str(_require_map_version(store, name, base).version)
    if not _check_map_name(store, name):
        return None
    aliases = store.aliases(name)
    found = [int(aliases[a]) for a in (CANDIDATE, ACTIVE) if a in aliases]
    if not found:
        return str(store.versions(name)[-1].version)
    return str(max(found))


def parse_model_version(text: str, what: str = "default") -> tuple[str, str]:
    """``"NAME:VERSION"`` (or ``NAME/VERSION``) -> (name, version)."""
    text = str(text).strip()
    for sep in (":", "/"):
        name, found, version = text.rpartition(sep)
        if found and name:
            return name, normalise_version(version)
    raise RegistryError(f"{what}={text!r} is not NAME:VERSION; pass e.g. {what}=served:1")


def _with_entry(entries: list[RouteEntry], new: RouteEntry) -> tuple[list[RouteEntry], RouteEntry | None]:
    """``entries`` with ``new`` replacing the entry of its selector (its value pushed on ``previous``),
    moved last (changed last wins ties); returns (entries, the replaced entry or None)."""
    old = next((e for e in entries if e.selector == new.selector), None)
    if old is not None:
        new = replace(new, previous=(*old.previous, (old.model, old.version)))
    return [e for e in entries if e.selector != new.selector] + [new], old


def route(
    store: RegistryStore,
    name: str,
    model: str,
    version,
    *,
    symbols=None,
    horizons=None,
    default: str | None = None,
    reason: str = "",
    base=None,
    experiment: str = ROUTE_EXPERIMENT,
    lock_timeout: float = 60.0,
) -> RouteChange:
    """A new version of map ``name`` (alias ``candidate``): the entries of its base version (the newer
    of ``candidate`` and ``active``, or ``base=``) plus ``symbols``/``horizons`` -> ``model`` v``version``,
    replacing an entry of the same selector. ``default="NAME:VERSION"``: also set the default entry
    (required on the first route of a map unless this route is the default itself)."""
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_CHARS:
        raise RegistryError(f"reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    entry = RouteEntry(
        parse_selector(symbols, "symbols"), parse_selector(horizons, "horizons"), str(model), normalise_version(version)
    )
    if default is not None and entry.is_default:
        raise RegistryError(
            f"default={default} with a default route of {model} v{entry.version}: give one of them "
            f"(symbols=/horizons= make the route an entry beside the default)"
        )
    with store.lock(name, timeout=lock_timeout), tempfile.TemporaryDirectory() as tmp:
        base_version = _base_version(store, name, base)
        entries = map_entries(store, name, base_version) if base_version else []
        changes = []
        if default is not None:
            d_model, d_version = parse_model_version(default)
            entries, old = _with_entry(entries, RouteEntry(None, None, d_model, d_version))
            changes.append(_change_text(RouteEntry(None, None, d_model, d_version), old))
        if not entries and not entry.is_default:
            raise RegistryError(
                f"{name!r} has no entries yet: its first route must be the default (omit symbols= and horizons=), "
                f"or name one with default=NAME:VERSION, e.g. `quantml registry route {name} {model} "
                f"{entry.version} {entry.label()} default={model}:VERSION`"
            )
        entries, old = _with_entry(entries, entry)
        changes.append(_change_text(entry, old))
        bundles = _bundles_for(store, name, base_version, entries, tmp)
        change = "; ".join(changes)
        mv = _write_version(
            store, name, entries, bundles, base=base_version, change=change, reason=reason, experiment=experiment
        )
        store.set_alias(name, CANDIDATE, mv.version)
    return RouteChange(mv, entries, base_version, change)


def _change_text(new: RouteEntry, old: RouteEntry | None) -> str:
    was = f"{old.model} v{old.version}" if old is not None else "unrouted"
    return f"{new.label()}: {was} -> {new.model} v{new.version}"


def rollback_entry(
    store: RegistryStore,
    name: str,
    *,
    symbols=None,
    horizons=None,
    reason: str = "",
    experiment: str = ROUTE_EXPERIMENT,
    lock_timeout: float = 60.0,
) -> RouteChange:
    """A new version of map ``name`` where the entry of ``symbols``/``horizons`` of the ACTIVE map
    version returns to the value it had before its last change (or is removed when it had none),
    made ``active`` at once and recorded as an event (a rollback is a human decision: not gated)."""
    reason = (reason or "").strip()[:MAX_REASON_CHARS]
    selector = (parse_selector(symbols, "symbols"), parse_selector(horizons, "horizons"))
    shown = f"symbols={_shown(selector[0])} horizons={_shown(selector[1])}"
    with store.lock(name, timeout=lock_timeout), tempfile.TemporaryDirectory() as tmp:
        if not _check_map_name(store, name):
            store.get_model(name)  # "does not exist"
        current = store.active_version(name)
        if current is None:
            raise RegistryError(
                f"route map {name!r} has no active version to roll an entry back in; promote one first with "
                f"`quantml registry promote {name} VERSION`"
            )
        entries = map_entries(store, name, current)
        old = next((e for e in entries if e.selector == selector), None)
        if old is None:
            known = "; ".join(e.label() for e in entries)
            raise RegistryError(
                f"active {name} v{current} has no entry {shown} (entries: {known}); name an entry exactly as "
                f"`quantml registry routes {name}` shows it"
            )
        if old.previous:
            (p_model, p_version), rest = old.previous[-1], old.previous[:-1]
            new = RouteEntry(old.symbols, old.horizons, p_model, p_version, rest)
            entries = [new if e.selector == selector else e for e in entries]
            change = f"rollback {shown}: {old.model} v{old.version} -> {p_model} v{p_version}"
        elif old.is_default:
            raise RegistryError(
                f"the default entry of {name} ({old.model} v{old.version}) had no earlier version to return to, "
                f"and a map cannot lose its default; route another default with "
                f"`quantml registry route {name} NAME VERSION`"
            )
        else:
            entries = [e for e in entries if e.selector != selector]
            change = f"rollback {shown}: {old.model} v{old.version} -> removed (served by the other entries)"
        bundles = _bundles_for(store, name, current, entries, tmp)
        mv = _write_version(
            store, name, entries, bundles, base=current, change=change, reason=reason, experiment=experiment
        )
        store.set_active(name, mv.version)
        # recorded as a promotion of the new map version, so `rollback MAP` (the previous active
        # version) and the active lineage keep working; `extra` says what it was
        event = store.append_event(
            name,
            Event(
                seq=0,
                action="promote",
                version=str(mv.version),
                previous=current,
                time=utc_now(),
                user=current_user(),
                reason=reason,
                gates="not gated: per-entry rollback (a human decision)",
                run_id=mv.run_id or "",
                extra={"route_action": "rollback", "entry": shown, "change": change},
            ),
        )
    return RouteChange(mv, entries, current, change, event)


# -- gates ----------------------------------------------------------------------------------------------
def check_route_gates(store: RegistryStore, name: str, version, cfg=None, baseline_run_id: str | None = None):
    """The gates of map ``name`` v``version``: every distinct entry version's own gate report
    (:func:`quantml.registry.commands.check_gates`), one result per entry version and gate; the map
    passes when every entry version passes and so does the book the map trades as a whole
    (:mod:`quantml.registry.routed_book`, with the Sharpe gate's settings)."""
    from quantml.registry.commands import check_gates
    from quantml.registry.gates import load_gates_config

    cfg = cfg if cfg is not None else load_gates_config()

    mv = _require_map_version(store, name, version)
    entries = tagged_entries(mv)
    results: list[GateResult] = []
    baselines, lockbox = [], []
    seen: dict[str, list[RouteEntry]] = {}
    for e in entries:
        seen.setdefault(e.key, []).append(e)
    for users in seen.values():
        model, ver = users[0].model, users[0].version
        report = check_gates(store, model, ver, cfg, baseline_run_id)
        where = f"{model} v{ver}"
        for r in report.results:
            results.append(GateResult(f"{where}: {r.name}", r.passed, r.detail, dict(r.figures)))
        baselines.append(f"{where} vs {report.baseline}")
        if report.lockbox:
            lockbox.append(f"{where}: {report.lockbox}")
    if cfg.sharpe.enabled:  # the map's own book, all cells traded together
        from quantml.registry.routed_book import gate_routed_book

        results.append(gate_routed_book(store, name, mv.version, cfg))
    routed = "; ".join(f"{e.label()} -> {e.model} v{e.version}" for e in entries)
    return GateReport(
        subject=f"route map {name} v{mv.version} ({routed})",
        baseline="; ".join(baselines),
        results=results,
        lockbox="\n".join(lockbox),
    )


# -- the view ----------------------------------------------------------------------------------------------
def routes(store: RegistryStore, name: str, version=None) -> tuple[str, pd.DataFrame]:
    """(header, table) of map ``name`` v``version`` (default: active, else the latest): one row per
    entry, with the map version its current value dates from and its history over the map's versions."""
    versions = [v for v in store.versions(name) if is_route_version(v)]
    if not versions:
        raise RegistryError(
            f"{name!r} is not a route map (none of its versions is a map version); make a map with "
            f"`quantml registry route MAP NAME VERSION`, see `quantml registry list`"
        )
    aliases = store.aliases(name)
    if version is None:
        version = aliases.get(ACTIVE) or str(versions[-1].version)
    mv = _require_map_version(store, name, version)
    chosen = int(mv.version)
    history: dict[tuple, list[tuple[int, str]]] = {}
    for v in versions:
        if int(v.version) > chosen:
            break
        current = {e.selector: f"{e.model} v{e.version}" for e in tagged_entries(v)}
        for sel, value in current.items():
            past = history.setdefault(sel, [])
            if not past or past[-1][1] != value:
                past.append((int(v.version), value))
        for sel, past in history.items():
            if sel not in current and past and past[-1][1] != "removed":
                past.append((int(v.version), "removed"))
    rows = []
    for e in tagged_entries(mv):
        past = history.get(e.selector, [])
        rows.append(
            {
                "symbols": _shown(e.symbols),
                "horizons": _shown(e.horizons),
                "model": e.model,
                "version": int(e.version),
                "since": f"v{past[-1][0]}" if past else f"v{chosen}",
                "history": " -> ".join(f"v{n}: {value}" for n, value in past),
            }
        )
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(v, []).append(alias)
    shown = ",".join(sorted(by_version.get(str(chosen), []))) or "no alias"
    header = f"route map {name} v{chosen} ({shown}): {(mv.tags or {}).get(TAG_ROUTE_CHANGE, '')}"
    columns = ["symbols", "horizons", "model", "version", "since", "history"]
    return header, pd.DataFrame(rows, columns=columns)
