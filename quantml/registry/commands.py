"""The registry workflow: register -> gates -> promote -> rollback, and the read-only views.

Every function takes a :class:`~quantml.registry.store.RegistryStore`; the CLI
(``quantml-registry``) only parses arguments and prints what these return. Nothing here
promotes on its own: ``promote`` is the only way a version becomes champion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from quantml.registry.gates import (
    Baseline, GateReport, evaluate_gates, load_gates_config, load_run_summary,
)
from quantml.registry.store import (
    CANDIDATE, CHAMPION, MAX_REASON_CHARS, Event, RegistryError, RegistryStore, champion_lineage,
    current_user, normalise_version, utc_now,
)
from quantml.contracts import HORIZON_SEPARATOR

MODEL_ARTIFACT = "model"
# Parent-run tags copied onto the model version (the contracts' run layout).
RUN_TAGS = ("quantml.data_fingerprint", "quantml.feature_contract_hash", "quantml.schema_version",
            "quantml.git_commit", "quantml.seed", "quantml.horizons", "quantml.leakage_audit",
            "quantml.validation", "quantml.ic_mode", "quantml.signal")
# Out-of-sample parent metrics copied as version tags ``quantml.metric.<name>``.
KEY_METRICS = ("oos_sharpe_after_cost", "oos_ic", "oos_rank_ic", "oos_hit_rate", "oos_ece",
               "test_sharpe_after_cost_mean")
METRIC_TAG_PREFIX = "quantml.metric."
LIST_METRICS = ("oos_sharpe_after_cost", "oos_rank_ic", "oos_ece")


class GateRefused(RegistryError):
    """``promote`` refused: the gates failed and ``force`` was not given."""

    def __init__(self, report: GateReport) -> None:
        self.report = report
        super().__init__(f"promotion refused: gate(s) {', '.join(report.failed)} failed\n{report.to_text()}\n"
                         f"fix the run, or override with --force --reason TEXT (recorded in the history)")


# -- register ----------------------------------------------------------------------------------
def default_model_name(store: RegistryStore, run_id: str) -> str:
    """The run's ``quantml.model_name`` tag, else its experiment name ('/' and ':' -> '-')."""
    run = store.client.get_run(run_id)
    name = run.data.tags.get("quantml.model_name") or store.client.get_experiment(run.info.experiment_id).name
    return name.replace("/", "-").replace(":", "-").strip("-") or "quantml"


def _model_source(store: RegistryStore, run) -> tuple[str, str | None]:
    """(source URI, logged model id) of the run's ``model``: MLflow 3 logged model or run artifact."""
    client, run_id = store.client, run.info.run_id
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                           filter_string=f"name = '{MODEL_ARTIFACT}'", page_token=token)
        found += [m for m in page if m.source_run_id == run_id]
        token = page.token
        if not token:
            break
    if found:
        model = max(found, key=lambda m: m.creation_timestamp)
        return f"models:/{model.model_id}", model.model_id
    if any(a.path.endswith("MLmodel") for a in client.list_artifacts(run_id, MODEL_ARTIFACT)):
        return f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", None
    raise RegistryError(f"run {run_id} has no logged model {MODEL_ARTIFACT!r} (runs:/{run_id}/{MODEL_ARTIFACT}); "
                        f"register the parent run of a finished quantml-train job (tracking.log_model=true)")


def version_tags(run) -> dict[str, str]:
    """Provenance and key out-of-sample metrics of a parent run, as model-version tags."""
    tags = {k: run.data.tags[k] for k in RUN_TAGS if k in run.data.tags}
    tags["quantml.run_id"] = run.info.run_id
    for key, value in sorted(run.data.metrics.items()):
        base = key.partition(HORIZON_SEPARATOR)[0]
        if base in KEY_METRICS and math.isfinite(value):
            tags[f"{METRIC_TAG_PREFIX}{key}"] = f"{value:.6g}"
    return tags


def register(store: RegistryStore, run_id: str, name: str | None = None) -> ModelVersion:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` with alias ``candidate``."""
    client = store.client
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"MLflow run {run_id!r} not found in {client.tracking_uri}; check the id "
                            f"(mlflow ui) and MLFLOW_TRACKING_URI") from None
    if run.data.tags.get("quantml.kind") == "fold":
        parent = run.data.tags.get("mlflow.parentRunId", "?")
        raise RegistryError(f"run {run_id} is a fold run; register its parent run {parent} instead")
    name = name or default_model_name(store, run_id)
    source, model_id = _model_source(store, run)
    store.ensure_model(name)
    with store.global_uri():
        version = client.create_model_version(name, source, run_id=run_id, tags=version_tags(run),
                                              model_id=model_id,
                                              description=f"quantml run {run.info.run_name or run_id}")
    store.set_alias(name, CANDIDATE, version.version)
    return client.get_model_version(name, version.version)


# -- read-only views -------------------------------------------------------------------------------
def list_versions(store: RegistryStore, name: str) -> pd.DataFrame:
    """One row per version: aliases, run, creation time and key out-of-sample metrics."""
    by_version: dict[str, list[str]] = {}
    for alias, v in store.aliases(name).items():
        by_version.setdefault(v, []).append(alias)
    rows = []
    for mv in store.versions(name):
        row = {"version": int(mv.version), "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
               "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"),
               "run_id": (mv.run_id or "")[:12], "status": mv.status}
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
        rows.append({"name": name, "versions": len(versions),
                     "latest": max((int(v.version) for v in versions), default=None),
                     "candidate": aliases.get(CANDIDATE, ""), "champion": aliases.get(CHAMPION, "")})
    return pd.DataFrame(rows, columns=["name", "versions", "latest", "candidate", "champion"])


def history(store: RegistryStore, name: str) -> pd.DataFrame:
    """Every promotion and rollback of ``name``, oldest first."""
    rows = [{"seq": e.seq, "time": e.time, "action": e.action + (" (forced)" if e.forced else ""),
             "version": e.version, "previous": e.previous or "-", "user": e.user, "gates": e.gates,
             "reason": e.reason} for e in store.events(name)]
    return pd.DataFrame(rows, columns=["seq", "time", "action", "version", "previous", "user", "gates", "reason"])


# -- gates and promotion ---------------------------------------------------------------------------
def resolve_baseline(store: RegistryStore, name: str, version: str, cfg: DictConfig,
                     baseline_run_id: str | None = None) -> Baseline:
    """``baseline_run_id`` (CLI) > ``sharpe.baseline_run_id`` (config) > current champion > zero."""
    run_id = baseline_run_id or cfg.sharpe.get("baseline_run_id")
    if run_id:
        return Baseline(f"run {run_id}", load_run_summary(store.client, run_id))
    champion = store.alias_version(name, CHAMPION)
    if champion is None:
        return Baseline("0 (no champion yet)")
    if champion == version:
        return Baseline(f"0 (v{version} is the champion itself)")
    mv = store.get_version(name, champion)
    if not mv.run_id:
        return Baseline(f"0 (champion v{champion} has no source run)")
    return Baseline(f"champion v{champion} (run {mv.run_id})", load_run_summary(store.client, mv.run_id))


def check_gates(store: RegistryStore, name: str, version, cfg: DictConfig | None = None,
                baseline_run_id: str | None = None) -> GateReport:
    """The promotion gates of ``name`` v``version`` as a report; changes nothing."""
    cfg = cfg if cfg is not None else load_gates_config()
    mv = store.get_version(name, version)
    if not mv.run_id:
        raise RegistryError(f"{name} v{mv.version} has no source run, so no metrics to gate on; "
                            f"register versions with `quantml-registry register <run_id>`")
    baseline = resolve_baseline(store, name, str(mv.version), cfg, baseline_run_id)
    return evaluate_gates(store.client, mv.run_id, cfg, baseline,
                          subject=f"{name} v{mv.version} (run {mv.run_id})")


@dataclass
class Promotion:
    event: Event
    report: GateReport


def promote(store: RegistryStore, name: str, version, *, reason: str = "", force: bool = False,
            cfg: DictConfig | None = None, baseline_run_id: str | None = None,
            lock_timeout: float = 60.0) -> Promotion:
    """Gate ``name`` v``version`` and, on pass (or ``force`` with a reason), make it champion.

    The state is read, gated and written under the model's lock, so concurrent promotions
    serialise: each one is gated against the champion the previous one left.
    Raises :class:`GateRefused` when a gate fails without ``force``.
    """
    version = normalise_version(version)
    reason = (reason or "").strip()
    if force and not reason:
        raise RegistryError("--force needs --reason TEXT: a forced promotion must say why (it is recorded)")
    if len(reason) > MAX_REASON_CHARS:
        raise RegistryError(f"--reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    cfg = cfg if cfg is not None else load_gates_config()
    mv = store.get_version(name, version)
    if mv.status != "READY":
        raise RegistryError(f"{name} v{version} is {mv.status}, not READY; wait for registration to finish")
    with store.lock(name, timeout=lock_timeout):
        previous = store.alias_version(name, CHAMPION)
        if previous == version:
            raise RegistryError(f"{name} v{version} is already the champion; nothing to promote")
        report = check_gates(store, name, version, cfg, baseline_run_id)
        if not report.passed and not force:
            raise GateRefused(report)
        store.set_alias(name, CHAMPION, version)
        event = store.append_event(name, Event(
            seq=0, action="promote", version=version, previous=previous, time=utc_now(), user=current_user(),
            reason=reason, forced=force and not report.passed, gates=report.summary(), run_id=mv.run_id or ""))
    return Promotion(event, report)


def rollback(store: RegistryStore, name: str, *, reason: str = "", lock_timeout: float = 60.0) -> Event:
    """Make the previous champion (from the history) champion again; repeatable."""
    reason = (reason or "").strip()[:MAX_REASON_CHARS]
    store.get_model(name)
    with store.lock(name, timeout=lock_timeout):
        lineage = champion_lineage(store.events(name))
        current = store.alias_version(name, CHAMPION)
        if len(lineage) < 2:
            have = f"only v{lineage[0]} was ever champion" if lineage else "no version was ever promoted"
            raise RegistryError(f"nothing to roll back to for {name!r}: {have}; promote another version "
                                f"with `quantml-registry promote {name} VERSION`")
        if current != lineage[-1]:
            raise RegistryError(
                f"the champion alias of {name!r} points at {'v' + current if current else 'nothing'} but the "
                f"quantml history says v{lineage[-1]} (the alias was moved outside quantml-registry); "
                f"set it explicitly with `quantml-registry promote {name} VERSION --force --reason TEXT`")
        target = lineage[-2]
        store.get_version(name, target)  # a clear error if it was deleted
        store.set_alias(name, CHAMPION, target)
        return store.append_event(name, Event(
            seq=0, action="rollback", version=target, previous=current, time=utc_now(), user=current_user(),
            reason=reason, run_id=store.get_version(name, target).run_id or ""))
