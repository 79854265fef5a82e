"""The registry workflow: register -> gates -> promote -> rollback, and the read-only views.

Every function takes a :class:`~quantml.registry.store.RegistryStore`; the CLI only parses
arguments and prints what these return. Nothing here promotes on its own: ``promote`` is
the only way a version becomes ``active`` (and, for one release, ``champion`` with it).
Runs are read through :class:`quantml.tracking.reader.RunReader`; a version carries only a
handful of headline tags, the gates read metrics from its run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from omegaconf import DictConfig

from quantml.contracts import HORIZON_SEPARATOR, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.registry.gates import (
    Baseline,
    BookSettings,
    GateReport,
    evaluate_gates,
    load_gates_config,
    load_run_summary,
    lockbox_line,
)
from quantml.registry.store import (
    ACTIVE,
    CANDIDATE,
    CHAMPION,
    MAX_REASON_CHARS,
    Event,
    RegistryError,
    RegistryStore,
    active_lineage,
    current_user,
    normalise_version,
    utc_now,
)
from quantml.tracking.reader import ParentRun, RunReader

MODEL_ARTIFACT = L.MODEL_ARTIFACT
# The handful of parent-run tags a model version carries (its row in the MLflow UI's versions
# table stays readable); everything else stays on the run.
# (and a warm-started run's lineage: its source version, that version's run, the data's start)
RUN_TAGS = (
    L.TAG_HORIZONS,
    L.TAG_VALIDATION,
    L.TAG_DATA_FINGERPRINT,
    L.TAG_GIT_COMMIT,
    L.TAG_SIGNAL,
    *L.WARM_START_TAGS,
)
# Headline out-of-sample metrics, for the first horizon only, as ``quantml.metric.<name>/<h>``.
HEADLINE_METRICS = ("oos_sharpe_after_cost", "oos_rank_ic")
KEY_METRICS = HEADLINE_METRICS  # the 0.1 name
METRIC_TAG_PREFIX = L.VERSION_TAG_METRIC_PREFIX
LIST_METRICS = HEADLINE_METRICS


class GateRefused(RegistryError):
    """``promote`` refused: the gates failed and ``force`` was not given."""

    def __init__(self, report: GateReport) -> None:
        self.report = report
        super().__init__(
            f"promotion refused: gate(s) {', '.join(report.failed)} failed\n{report.to_text()}\n"
            f"fix the run, or override with force=true reason=TEXT (recorded in the history)"
        )


# -- register ----------------------------------------------------------------------------------
def _reader(store: RegistryStore) -> RunReader:
    return RunReader(client=store.client)


def _parent(store: RegistryStore, run_id: str, action: str) -> ParentRun:
    try:
        return _reader(store).parent(run_id, action=action, kinds=L.REGISTRABLE_KINDS)
    except RegistryError:
        raise
    except QuantmlInputError as exc:
        raise RegistryError(str(exc)) from None


def default_model_name(store: RegistryStore, run_id: str | ParentRun) -> str:
    """The run's ``quantml.model_name`` tag, else its experiment name ('/' and ':' -> '-')."""
    run = run_id if isinstance(run_id, ParentRun) else _parent(store, run_id, "register")
    name = run.tags.get(L.TAG_MODEL_NAME) or store.client.get_experiment(run.experiment_id).name
    return name.replace("/", "-").replace(":", "-").strip("-") or "quantml"


def _model_source(store: RegistryStore, run: ParentRun) -> tuple[str, str | None]:
    """(source URI, logged model id) of the run's ``model``: MLflow 3 logged model or run artifact."""
    client, run_id = store.client, run.run_id
    found, token = [], None
    while True:
        page = client.search_logged_models(
            experiment_ids=[run.experiment_id], filter_string=f"name = '{MODEL_ARTIFACT}'", page_token=token
        )
        found += [m for m in page if m.source_run_id == run_id]
        token = page.token
        if not token:
            break
    if found:
        model = max(found, key=lambda m: m.creation_timestamp)
        return f"models:/{model.model_id}", model.model_id
    if any(a.path.endswith("MLmodel") for a in client.list_artifacts(run_id, MODEL_ARTIFACT)):
        return f"{run.artifact_uri}/{MODEL_ARTIFACT}", None
    raise RegistryError(
        f"run {run_id} has no logged model {MODEL_ARTIFACT!r} (runs:/{run_id}/{MODEL_ARTIFACT}); "
        f"register the parent run of a finished `quantml train` job (tracking.log_model=true)"
    )


def version_tags(run: ParentRun) -> dict[str, str]:
    """The headline tags of a model version: source run, layout version, horizons, validation,
    data fingerprint, git commit (and tuned signal), and the headline OOS metrics of the
    first horizon. The rest stays on the run."""
    tags = {L.VERSION_TAG_RUN_ID: run.run_id, L.TAG_LAYOUT_VERSION: run.layout_version}
    if run.kind == L.KIND_STACK:  # a served stack: its experts stay on the run (quantml.stack_experts)
        tags[L.TAG_KIND] = L.KIND_STACK
    tags.update({k: run.tags[k] for k in RUN_TAGS if k in run.tags})
    horizons = run.horizons or sorted(
        {k.partition(HORIZON_SEPARATOR)[2] for k in run.metrics if HORIZON_SEPARATOR in k} - {""}
    )
    if horizons:
        for base in HEADLINE_METRICS:
            key = f"{base}{HORIZON_SEPARATOR}{horizons[0]}"
            value = run.metrics.get(key)
            if value is not None and math.isfinite(value):
                tags[L.version_metric_tag(key)] = f"{value:.6g}"
    return tags


def register(store: RegistryStore, run_id: str, name: str | None = None) -> ModelVersion:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` with alias ``candidate``."""
    client = store.client
    run = _parent(store, run_id, "register")
    name = name or default_model_name(store, run)
    source, model_id = _model_source(store, run)
    store.ensure_model(name)
    with store.global_uri():
        version = client.create_model_version(
            name,
            source,
            run_id=run_id,
            tags=version_tags(run),
            model_id=model_id,
            description=f"quantml run {run.run_name or run_id}",
        )
    store.set_alias(name, CANDIDATE, version.version)
    return client.get_model_version(name, version.version)


def copy_version_with_bundle(
    client,
    name: str,
    version: str,
    settle,
    *,
    log_run_id: str,
    extra_tags: dict[str, str] | None = None,
    artifact_name: str = MODEL_ARTIFACT,
) -> ModelVersion:
    """A NEW version of ``name``: the model of ``version`` copied, its bundle changed by
    ``settle(bundle)``, logged as a quantml pyfunc onto ``log_run_id`` and registered with the
    source version's headline tags (minus a 0.1 ``quantml.signal``) plus ``extra_tags``, alias
    ``candidate``. The new version's ``run_id`` stays the source parent run (the gates read it).
    ``artifact_name``: the logged model's name on ``log_run_id`` (not ``model`` on a parent run,
    whose ``model`` `register` reads)."""
    import tempfile

    from quantml.tracking.pyfunc import load_bundle, log_bundle_info

    store = RegistryStore(client.tracking_uri)
    mv = store.get_version(name, version)
    with tempfile.TemporaryDirectory() as tmp, store.global_uri():
        bundle = load_bundle(f"models:/{name}/{mv.version}", tmp)
        settle(bundle)
        info = log_bundle_info(bundle, log_run_id, artifact_name)
    stale = {L.TAG_SIGNAL, L.TAG_ALLOCATOR, L.TAG_TUNE_RUN, L.TAG_TUNE_HOLDOUT_SHARPE, L.TAG_TUNE_SELECTION_SHARPE}
    tags = {k: v for k, v in (mv.tags or {}).items() if k.startswith(L.TAG_PREFIX) and k not in stale}
    tags.update(extra_tags or {})
    with store.global_uri():
        new = client.create_model_version(
            name,
            info.model_uri,
            run_id=mv.run_id,
            tags=tags,
            model_id=getattr(info, "model_id", None),
            description=f"v{mv.version} with tuned settings in its bundle (from run {log_run_id})",
        )
    store.set_alias(name, CANDIDATE, new.version)
    return client.get_model_version(name, new.version)


# -- read-only views -------------------------------------------------------------------------------
def list_versions(store: RegistryStore, name: str) -> pd.DataFrame:
    """One row per version: aliases, run, creation time and the headline out-of-sample metrics."""
    by_version: dict[str, list[str]] = {}
    for alias, v in store.aliases(name).items():
        by_version.setdefault(v, []).append(alias)
    rows = []
    for mv in store.versions(name):
        row = {
            "version": int(mv.version),
            "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"),
            "run_id": (mv.run_id or "")[:12],
            "status": mv.status,
        }
        for key, value in sorted((mv.tags or {}).items()):
            metric = key.removeprefix(METRIC_TAG_PREFIX)
            if key.startswith(METRIC_TAG_PREFIX) and metric.partition(HORIZON_SEPARATOR)[0] in LIST_METRICS:
                row[metric.removeprefix("oos_")] = float(value)
        rows.append(row)
    return pd.DataFrame(rows)


def list_models(store: RegistryStore) -> pd.DataFrame:
    rows = []
    for name in store.model_names():
        aliases = store.aliases(name)
        versions = store.versions(name)
        rows.append(
            {
                "name": name,
                "versions": len(versions),
                "latest": max((int(v.version) for v in versions), default=None),
                "candidate": aliases.get(CANDIDATE, ""),
                "active": aliases.get(ACTIVE) or aliases.get(CHAMPION, ""),
            }
        )
    return pd.DataFrame(rows, columns=["name", "versions", "latest", "candidate", "active"])


def history(store: RegistryStore, name: str) -> pd.DataFrame:
    """Every promotion and rollback of ``name``, oldest first."""
    rows = [
        {
            "seq": e.seq,
            "time": e.time,
            "action": _action(e),
            "version": e.version,
            "previous": e.previous or "-",
            "user": e.user,
            "gates": e.gates,
            "reason": e.reason,
        }
        for e in store.events(name)
    ]
    return pd.DataFrame(rows, columns=["seq", "time", "action", "version", "previous", "user", "gates", "reason"])


def _action(e: Event) -> str:
    """The history's action: a route map's per-entry rollback is recorded as a promotion (the active
    lineage), shown as what it was."""
    if e.extra.get("route_action") == "rollback":
        return f"rollback {e.extra.get('entry', '')}".strip()
    return e.action + (" (forced)" if e.forced else "")


# -- gates and promotion ---------------------------------------------------------------------------
def version_book(store: RegistryStore, mv: ModelVersion) -> BookSettings:
    """The settings of the book ``mv`` would trade and the folds it may be judged on.

    A version made by ``quantml tune attach=`` (tag ``quantml.source_version``) trades its bundle's
    signal and allocator, judged on its tune run's ``selection_folds`` (the development folds its
    thresholds were not tuned on); any other version trades its run's own book, judged on every fold."""
    import tempfile

    from quantml.portfolio.allocator import AllocatorConfig
    from quantml.signals.core import SignalConfig
    from quantml.tracking.pyfunc import load_bundle

    tags = mv.tags or {}
    if L.TAG_SOURCE_VERSION not in tags:
        return BookSettings(label=f"v{mv.version}: the run's own (untuned) settings, every fold")
    tune_run = tags.get(L.TAG_TUNE_RUN)
    if not tune_run:
        return BookSettings(
            label=f"v{mv.version}: tuned",
            problem=(
                f"v{mv.version} carries tuned settings but no {L.TAG_TUNE_RUN} tag, so the folds its thresholds "
                f"were tuned on are unknown and no fold is known to be unseen; re-run `quantml tune "
                f"run_id={mv.run_id} log_to_mlflow=true attach={mv.name}:{tags[L.TAG_SOURCE_VERSION]}`"
            ),
        )
    try:
        params = store.client.get_run(tune_run).data.params
    except Exception as exc:  # noqa: BLE001 - a deleted / foreign tune run: say so
        return BookSettings(label=f"v{mv.version}: tuned", problem=f"tune run {tune_run} cannot be read: {exc}")
    folds = tuple(int(f) for f in str(params.get("selection_folds", "")).split(",") if f.strip())
    if not folds:
        return BookSettings(
            label=f"v{mv.version}: tuned",
            problem=f"tune run {tune_run} records no selection_folds param; re-run `quantml tune` with this quantml",
        )
    with tempfile.TemporaryDirectory() as tmp, store.global_uri():
        bundle = load_bundle(f"models:/{mv.name}/{mv.version}", tmp)
    signal = SignalConfig.from_dict(bundle.signal) if bundle.signal else None
    allocator = AllocatorConfig.from_dict(bundle.allocator) if bundle.allocator else None
    shown = ",".join(map(str, folds))
    return BookSettings(
        label=f"v{mv.version}: its bundle's tuned settings (tune run {tune_run}), on selection folds {shown}",
        signal=signal,
        allocator=allocator,
        folds=folds,
    )


def resolve_baseline(
    store: RegistryStore, name: str, version: str, cfg: DictConfig, baseline_run_id: str | None = None
) -> Baseline:
    """``baseline_run_id`` (CLI) > ``sharpe.baseline_run_id`` (config) > current active version > zero."""
    reader = _reader(store)
    run_id = baseline_run_id or cfg.sharpe.get("baseline_run_id")
    if run_id:
        return Baseline(f"run {run_id}", load_run_summary(reader, run_id))
    active = store.active_version(name)
    if active is None:
        return Baseline("0 (no active version yet)")
    if active == version:
        return Baseline(f"0 (v{version} is the active version itself)")
    mv = store.get_version(name, active)
    if not mv.run_id:
        return Baseline(f"0 (active v{active} has no source run)")
    book = version_book(store, mv)
    if book.problem:  # the baseline's settings cannot be read back: its run's own book stands in
        book = BookSettings(label=f"v{active}: its run's own settings ({book.problem})")
    return Baseline(f"active v{active} (run {mv.run_id})", load_run_summary(reader, mv.run_id), book=book)


def check_gates(
    store: RegistryStore, name: str, version, cfg: DictConfig | None = None, baseline_run_id: str | None = None
) -> GateReport:
    """The promotion gates of ``name`` v``version`` as a report; changes nothing."""
    cfg = cfg if cfg is not None else load_gates_config()
    mv = store.get_version(name, version)
    from quantml.registry import routing  # a route map: the gates of its entry versions

    if routing.is_route_version(mv):
        return routing.check_route_gates(store, name, mv.version, cfg, baseline_run_id)
    if not mv.run_id:
        raise RegistryError(
            f"{name} v{mv.version} has no source run, so no metrics to gate on; "
            f"register versions with `quantml registry register <run_id>`"
        )
    baseline = resolve_baseline(store, name, str(mv.version), cfg, baseline_run_id)
    candidate = version_book(store, mv) if cfg.sharpe.enabled else None
    reader = _reader(store)
    report = evaluate_gates(
        reader, mv.run_id, cfg, baseline, subject=f"{name} v{mv.version} (run {mv.run_id})", candidate=candidate
    )
    # the lockbox beside the verdict, for the person who promotes: a read, counted on the parent
    report.lockbox = lockbox_line(reader.parent(mv.run_id, action="gate", kinds=L.REGISTRABLE_KINDS).lockbox_metrics())
    return report


@dataclass
class Promotion:
    event: Event
    report: GateReport


def promote(
    store: RegistryStore,
    name: str,
    version,
    *,
    reason: str = "",
    force: bool = False,
    cfg: DictConfig | None = None,
    baseline_run_id: str | None = None,
    lock_timeout: float = 60.0,
) -> Promotion:
    """Gate ``name`` v``version`` and, on pass (or ``force`` with a reason), make it ``active``
    (and, for one release, ``champion``: the same version under its 0.1 name).

    The state is read, gated and written under the model's lock, so concurrent promotions
    serialise: each one is gated against the active version the previous one left.
    Raises :class:`GateRefused` when a gate fails without ``force``.
    """
    version = normalise_version(version)
    reason = (reason or "").strip()
    if force and not reason:
        raise RegistryError("force=true needs reason=TEXT: a forced promotion must say why (it is recorded)")
    if len(reason) > MAX_REASON_CHARS:
        raise RegistryError(f"reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    cfg = cfg if cfg is not None else load_gates_config()
    mv = store.get_version(name, version)
    if mv.status != "READY":
        raise RegistryError(f"{name} v{version} is {mv.status}, not READY; wait for registration to finish")
    with store.lock(name, timeout=lock_timeout):
        previous = store.active_version(name)
        if previous == version:
            raise RegistryError(f"{name} v{version} is already the active version; nothing to promote")
        report = check_gates(store, name, version, cfg, baseline_run_id)
        if not report.passed and not force:
            raise GateRefused(report)
        store.set_active(name, version)
        event = store.append_event(
            name,
            Event(
                seq=0,
                action="promote",
                version=version,
                previous=previous,
                time=utc_now(),
                user=current_user(),
                reason=reason,
                forced=force and not report.passed,
                gates=report.summary(),
                run_id=mv.run_id or "",
            ),
        )
    return Promotion(event, report)


def rollback(store: RegistryStore, name: str, *, reason: str = "", lock_timeout: float = 60.0) -> Event:
    """Make the previous active version (from the history) active again; repeatable."""
    reason = (reason or "").strip()[:MAX_REASON_CHARS]
    store.get_model(name)
    with store.lock(name, timeout=lock_timeout):
        lineage = active_lineage(store.events(name))
        aliases = store.aliases(name)
        current = aliases.get(ACTIVE) or aliases.get(CHAMPION)
        if len(lineage) < 2:
            have = f"only v{lineage[0]} was ever active" if lineage else "no version was ever promoted"
            raise RegistryError(
                f"nothing to roll back to for {name!r}: {have}; promote another version "
                f"with `quantml registry promote {name} VERSION`"
            )
        moved = [a for a in (ACTIVE, CHAMPION) if a in aliases and aliases[a] != lineage[-1]]
        if current != lineage[-1] or moved:
            shown = ", ".join(f"{a} -> v{aliases[a]}" for a in (ACTIVE, CHAMPION) if a in aliases) or "nothing"
            raise RegistryError(
                f"the aliases of {name!r} point at {shown} but the quantml history says v{lineage[-1]} "
                f"(an alias was moved outside quantml); set the active version explicitly with "
                f"`quantml registry promote {name} VERSION force=true reason=TEXT`"
            )
        target = lineage[-2]
        store.get_version(name, target)  # a clear error if it was deleted
        store.set_active(name, target)
        return store.append_event(
            name,
            Event(
                seq=0,
                action="rollback",
                version=target,
                previous=current,
                time=utc_now(),
                user=current_user(),
                reason=reason,
                run_id=store.get_version(name, target).run_id or "",
            ),
        )
