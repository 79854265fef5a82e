"""``quantml monitor`` as a library call: a registered version's logs + the panel -> checks, report, MLflow run.

:func:`run_monitor` resolves ``model=`` to one version, reads its prediction / execution / PnL
logs (``quantml.contracts.logs``; rows of every producing ``model_version`` of that model name, so
a routed map's rows are checked per producing version), keeps the last ``window`` (bars: distinct
logged bars; or a duration), joins the realised outcomes from ``data=``, runs the checks of
:mod:`quantml.monitoring.checks` against each producing version's training reference (bundle
metadata ``reference``; older bundles: the source run's ``oos_predictions.parquet``), writes the
HTML report, and logs a run of kind ``monitor`` in the version's source run's experiment (ending
FAILED on any error). On a FAIL it tags the version ``quantml.degraded=true`` with a reason and
returns the ``quantml registry rollback`` command to run; rolling back stays a human decision.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, parse_duration
from quantml.contracts import run_layout as L
from quantml.contracts.logs import EXECUTION_LOG, PNL_LOG, PREDICTION_LOG
from quantml.evaluation.reference import REFERENCE_KEY, build_reference
from quantml.monitoring.checks import (
    ALL,
    FAIL,
    NA,
    STATUS_ORDER,
    CheckSettings,
    coverage_check,
    ece_check,
    frame_of,
    fusion_checks,
    na_row,
    pnl_checks,
    psi_check,
    slippage_checks,
    worst,
)
from quantml.monitoring.realised import realised_outcomes
from quantml.monitoring.report import build_monitor_report, rolling_table

log = logging.getLogger(__name__)

# the run layout's monitor names, used here by their short names
TAG_DEGRADED = L.TAG_DEGRADED
TAG_DEGRADED_REASON = L.TAG_DEGRADED_REASON
TAG_MONITOR_MODEL = L.TAG_MONITOR_MODEL
TAG_MONITOR_VERSION = L.TAG_MONITOR_VERSION
TAG_MONITOR_STATUS = L.TAG_MONITOR_STATUS
TAG_MONITOR_LOG_DIR = L.TAG_MONITOR_LOG_DIR
TAG_MONITOR_WINDOW = L.TAG_MONITOR_WINDOW
MONITOR_REPORT_ARTIFACT = L.MONITOR_REPORT_ARTIFACT
MONITOR_CHECKS_ARTIFACT = L.MONITOR_CHECKS_ARTIFACT
MONITOR_ROLLING_ARTIFACT = L.MONITOR_ROLLING_ARTIFACT
MONITOR_FIGURES = L.MONITOR_FIGURES
METRIC_PREFIX = L.MONITOR_METRIC_PREFIX
STATUS_METRIC = L.MONITOR_STATUS_METRIC

DEFAULT_EXPERIMENT = "monitoring"  # when the source run cannot be read


@dataclass
class VersionInputs:
    """What the checks of one producing version need from the registry."""

    version: str
    reference: dict | None
    reference_source: str  # "bundle" | "source run OOS" | "none"
    assumed_bps: float
    bundle: object | None = None
    run_id: str = ""


@dataclass
class MonitorResult:
    checks: pd.DataFrame
    status: str
    model_name: str
    model_version: str
    run_id: str
    report_path: Path | None
    rollback_command: str | None = None
    degraded_reason: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_window(value) -> int | pd.Timedelta | None:
    """``window=``: an integer number of bars (distinct logged bars), a duration (``7d``), or null (all)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "all")):
        return None
    if isinstance(value, bool):
        raise QuantmlInputError(f"window={value} must be a number of bars (168) or a duration (7d)")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        bars = int(value)
        if bars < 1:
            raise QuantmlInputError(f"window={value} must be >= 1 bar")
        return bars
    return parse_duration(str(value), "window")


def apply_window(frame: pd.DataFrame, window, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Rows of ``frame`` in the last ``window`` (bars: distinct timestamps up to ``end``; or a duration)."""
    if frame.empty or window is None:
        return frame
    ts = pd.to_datetime(frame[TIMESTAMP], utc=True)
    end = ts.max() if end is None else end
    if isinstance(window, int):
        bars = np.sort(ts[ts <= end].unique())
        start = bars[-window] if len(bars) >= window else bars[0] if len(bars) else end
        return frame[(ts >= start) & (ts <= end)]
    return frame[(ts > end - window) & (ts <= end)]


def _read(log_dir: str, log_name: str, model_name: str) -> pd.DataFrame:
    from quantml.serving.logs import read_log

    frame = read_log(log_dir, log_name)
    if frame.empty:
        return frame
    return frame[frame["model_name"].astype(str) == model_name].reset_index(drop=True)


def _load_bundle(store, name: str, version: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    with store.global_uri():
        try:
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        except MlflowException as exc:
            log.warning("cannot load %s v%s: %s", name, version, exc.message)
            return None
    try:
        return getattr(model.unwrap_python_model(), "bundle", None)
    except (MlflowException, AttributeError):
        return None


def last_fold(oos: pd.DataFrame) -> pd.DataFrame:
    """The OOS rows of the run's last fold: its model is the nearest to the final one (earlier
    walk-forward folds' models, trained on less data, forecast on another scale)."""
    if "fold" not in oos.columns or oos.empty:
        return oos
    return oos[oos["fold"] == oos["fold"].max()]


def version_inputs(store, name: str, version: str) -> VersionInputs:
    """The reference, the assumed one-way cost (bps) and the bundle of ``name`` v``version``."""
    from quantml.market import CostModel
    from quantml.registry.store import RegistryError
    from quantml.tracking.reader import RunReader

    try:
        mv = store.get_version(name, version)
    except (RegistryError, QuantmlInputError):
        return VersionInputs(version, None, "none", float("nan"))
    run_id = mv.run_id or ""
    bundle = _load_bundle(store, name, version)
    reference = (getattr(bundle, "metadata", None) or {}).get(REFERENCE_KEY) if bundle is not None else None
    source = "bundle" if reference else "none"
    reader = RunReader(client=store.client)
    if not reference and run_id:  # a version trained before references: its source run's OOS predictions
        try:
            reference, source = build_reference(last_fold(reader.oos_predictions(run_id))), "source run OOS (last fold)"
        except QuantmlInputError:
            reference = None
    assumed = float("nan")
    if run_id:
        try:
            cost = reader.resolved_config(run_id).get("cost")
            assumed = CostModel.from_config(cost).one_way * 1e4 if cost else 0.0
        except QuantmlInputError:
            pass
    return VersionInputs(str(version), reference, source, assumed, bundle, run_id)


def _feature_frame(
    bundle, panel: pd.DataFrame, keys: pd.DataFrame, names: list[str], text_stream: pd.DataFrame | None = None
) -> pd.DataFrame:
    """``symbol, timestamp`` of ``keys`` and the bundle's features ``names`` there (built on the whole panel);
    ``text_stream``: the raw posts a raw-text model reads (``text.path=`` or the data config's stream)."""
    from quantml.features import build_features
    from quantml.features.text import STAT_NAMES, attach_text, serving_text

    contract = bundle.contract
    text_cfg = getattr(contract, "text", None) or {}  # a raw-text model: its statistics come from the stream
    matrix = build_features(
        panel,
        contract.feature_set,
        contract.drop_modalities,
        expected=[n for n in contract.feature_names if not (text_cfg and n in STAT_NAMES)],
        calendar=getattr(contract, "calendar", None) or None,
    )
    if text_cfg:  # without a stream the text statistics read missing (their drift shows it)
        matrix = attach_text(matrix, serving_text(panel, text_stream, text_cfg))
    frame = getattr(matrix, "frame", None)
    if frame is None:
        frame = pd.DataFrame(np.asarray(matrix.X), columns=list(matrix.names))
    cols = [n for n in names if n in frame.columns]
    feats = pd.concat([panel[[SYMBOL, TIMESTAMP]].reset_index(drop=True), frame[cols].reset_index(drop=True)], axis=1)
    feats[TIMESTAMP] = pd.to_datetime(feats[TIMESTAMP], utc=True)
    want = keys[[SYMBOL, TIMESTAMP]].drop_duplicates()
    return want.merge(feats, on=[SYMBOL, TIMESTAMP], how="left")


def _text_stream(cfg, resolved, store, inputs) -> pd.DataFrame | None:
    """The raw posts of the versions trained on a raw text stream (``text.path=``, else the data config's
    stream: ``data=model`` gives the version's own); None when no version reads one or none is there."""
    from quantml.serving.text_source import serving_text_source

    if not any(getattr(getattr(vin.bundle, "contract", None), "text", None) for vin in inputs):
        return None
    return serving_text_source(cfg, resolved, store).load()


def version_checks(
    inputs: VersionInputs,
    frame: pd.DataFrame,
    pnl: pd.DataFrame,
    fills: pd.DataFrame,
    panel: pd.DataFrame,
    settings: CheckSettings,
    text_stream: pd.DataFrame | None = None,
) -> list[dict]:
    """Every check's rows for one producing version: ``frame`` its window's prediction rows with
    realised outcomes, ``pnl`` / ``fills`` its window's PnL and execution rows; ``text_stream``: the raw
    posts a raw-text model's features read (None: they read missing)."""
    v = inputs.version
    ref = inputs.reference or {}
    rows: list[dict] = []
    for h, part in frame.groupby(frame["horizon"].astype(str), sort=True):
        part = part.drop_duplicates([SYMBOL, TIMESTAMP])
        entry = (ref.get("predictions") or {}).get(h) or {}
        rows.append(
            psi_check("psi_expected_return", part, "expected_return", entry.get("expected_return"), settings, h, ALL, v)
        )
        rows.append(psi_check("psi_prob_up", part, "prob_up", entry.get("prob_up"), settings, h, ALL, v))
        vol = entry.get("vol_forecast")
        rows.append(psi_check("psi_vol_forecast", part, "vol_forecast", vol, settings, h, ALL, v))
        rows.append(ece_check(part, settings, h, v))
        rows.append(coverage_check(part, settings, h, v))
    names = list(ref.get("top_features") or [])
    if names and inputs.bundle is not None and len(frame):
        feats = _feature_frame(inputs.bundle, panel, frame, names, text_stream)
        for name in names:
            sub = feats[[SYMBOL, TIMESTAMP, name]] if name in feats.columns else feats[[SYMBOL, TIMESTAMP]]
            rows.append(psi_check("feature_psi", sub, name, ref["features"].get(name), settings, ALL, name, v))
    else:
        why = "no feature reference in this version (trained before references)" if not names else "no rows"
        rows.append(na_row("feature_psi", settings, why, version=v))
    rows += pnl_checks(pnl, settings, v)
    if np.isfinite(inputs.assumed_bps):
        rows += slippage_checks(fills, inputs.assumed_bps, settings, v)
    else:
        rows.append(na_row("slippage", settings, "the source run's cost model is unknown", version=v))
    rows += fusion_checks(settings, v, frame)
    return rows


def metric_key(row) -> str:
    group = (
        "" if row["group"] == ALL else "/" + "".join(ch if ch.isalnum() or ch in "_-. " else "_" for ch in row["group"])
    )
    version = f"/v{row['model_version']}" if row.get("_many") else ""
    return f"{METRIC_PREFIX}{row['check']}/{row['horizon']}{group}{version}"


def degraded_reason(checks: pd.DataFrame) -> str:
    failed = checks[checks["status"] == FAIL]
    parts = []
    for r in failed.itertuples():
        where = r.horizon if r.group == ALL else f"{r.horizon} {r.group}"
        parts.append(f"{r.check}[{where}, v{r.model_version}]={r.value:.3g}>{r.fail:.3g}")
    return "monitor FAIL: " + "; ".join(parts)


def rollback_command(name: str, reason: str) -> str:
    short = reason if len(reason) <= 200 else reason[:197] + "..."
    return f'quantml registry rollback {name} reason="{short.replace(chr(34), chr(39))}"'


def run_monitor(cfg) -> MonitorResult:
    """The monitor of ``cfg`` (conf/monitor.yaml composed: ``model, log_dir, data, window, rolling,
    checks, significance, psi_bins, ece_bins, output_dir, tracking_uri, experiment``)."""
    from quantml.registry.store import RegistryStore
    from quantml.serving.predict import resolve_model
    from quantml.tracking import RunWriter

    settings = CheckSettings.from_config(
        cfg.get("checks"), cfg.get("significance"), cfg.get("psi_bins", 10), cfg.get("ece_bins", 10)
    )
    window = parse_window(cfg.get("window"))
    rolling = int(cfg.get("rolling", 24) or 24)
    log_dir = str(cfg.log_dir)
    if not Path(log_dir).is_dir():
        raise QuantmlInputError(f"log_dir={log_dir} is not a directory; give the log_dir= of `quantml paper`")
    store = RegistryStore(cfg.tracking_uri)
    resolved = resolve_model(str(cfg.model), store)
    if not resolved.name:
        raise QuantmlInputError("model= must be a registered version (models:/NAME@active or models:/NAME/3)")
    name = resolved.name
    predictions = _read(log_dir, PREDICTION_LOG, name)
    if predictions.empty:
        raise QuantmlInputError(
            f"{log_dir}/{PREDICTION_LOG} has no rows of model {name!r}; run `quantml paper model=models:/{name}@active "
            f"log_dir={log_dir}` first (or point log_dir= at its logs)"
        )
    experiment_id = None
    if resolved.run_id:
        try:
            experiment_id = store.client.get_run(resolved.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a deleted source run: log to the default experiment
            experiment_id = None
    writer = (
        RunWriter(experiment_id, store.client)
        if experiment_id is not None
        else RunWriter.for_experiment(store.tracking_uri, str(cfg.get("experiment") or DEFAULT_EXPERIMENT))
    )
    tags = {
        L.TAG_KIND: L.KIND_MONITOR,
        L.TAG_SOURCE_RUN: resolved.run_id,
        TAG_MONITOR_MODEL: name,
        TAG_MONITOR_VERSION: resolved.version,
        TAG_MONITOR_LOG_DIR: str(Path(log_dir).resolve()),
        TAG_MONITOR_WINDOW: str(cfg.get("window")),
    }
    run = writer.start(f"monitor · {name} v{resolved.version}", tags)
    with run.ending():
        result = _monitor_in_run(cfg, run, store, resolved, predictions, log_dir, window, rolling, settings)
    return result


def _monitor_in_run(cfg, run, store, resolved, predictions, log_dir, window, rolling, settings):
    from quantml.serving.source_data import load_serving_panel

    name = resolved.name
    end = pd.to_datetime(predictions[TIMESTAMP], utc=True).max()
    pred_w = apply_window(predictions, window, end)
    pnl_w = apply_window(_read(log_dir, PNL_LOG, name), window, end)
    fills_w = apply_window(_read(log_dir, EXECUTION_LOG, name), window, end)
    panel = load_serving_panel(cfg.data, resolved, store)
    realised = realised_outcomes(pred_w, panel)
    versions = sorted(pd.unique(pred_w["model_version"].astype(str)), key=lambda v: (len(v), v))
    inputs = {v: version_inputs(store, name, v) for v in versions}
    notes = [
        f"model {name} v{resolved.version}; rows of producing version(s) {', '.join(versions)}; log_dir {log_dir}",
        f"window {cfg.get('window')} ({pred_w[TIMESTAMP].min()} .. {pred_w[TIMESTAMP].max()}); "
        f"{int(np.isfinite(realised['ret']).sum())} of {len(realised)} prediction rows realised",
        "fusion checks (text coverage, gate opening): reported for a version whose rows carry a gate (docs/fusion.md)",
    ]
    text_stream = _text_stream(cfg, resolved, store, inputs.values())
    rows = []
    for v in versions:
        vin = inputs[v]
        notes.append(f"v{v}: reference from {vin.reference_source}; assumed one-way cost {vin.assumed_bps:g} bps")
        rows += version_checks(
            vin,
            realised[realised["model_version"].astype(str) == v],
            pnl_w[pnl_w["model_version"].astype(str) == v] if len(pnl_w) else pnl_w,
            fills_w[fills_w["model_version"].astype(str) == v] if len(fills_w) else fills_w,
            panel,
            settings,
            text_stream,
        )
    checks = frame_of(rows)
    status = worst(checks["status"])
    references = {v: inputs[v].reference for v in versions}
    history = realised_outcomes(predictions, panel)  # the rolling figures span the whole log
    roll = rolling_table(history, references, rolling, settings.psi_bins)
    assumed = next((inputs[v].assumed_bps for v in versions if np.isfinite(inputs[v].assumed_bps)), 0.0)
    report = build_monitor_report(
        checks,
        realised,
        roll,
        pnl_w,
        fills_w,
        assumed,
        f"quantml monitor: {name} v{resolved.version} - {status}",
        settings.thresholds["psi_expected_return"].fail,
        notes,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(cfg.get("output_dir") or Path("outputs/monitor") / f"{name}-v{resolved.version}-{stamp}")
    try:
        report_path = report.write(out_dir)
        checks.to_csv(out_dir / "checks.csv", index=False)
        many = len(versions) > 1
        metrics = {}
        for r in checks.to_dict("records"):
            if np.isfinite(r["value"]):
                metrics[metric_key({**r, "_many": many})] = float(r["value"])
        metrics[STATUS_METRIC] = float(STATUS_ORDER[status])
        run.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            report.write(Path(tmp))
            checks.to_csv(Path(tmp) / "checks.csv", index=False)
            roll.to_csv(Path(tmp) / "rolling.csv", index=False)
            run.log_artifacts(tmp, "monitor")
    finally:
        report.close()
    run.set_tags({TAG_MONITOR_STATUS: status})
    result = MonitorResult(checks, status, name, resolved.version, run.run_id, report_path, notes=notes)
    if status == FAIL:
        reason = degraded_reason(checks)
        store.client.set_model_version_tag(name, resolved.version, TAG_DEGRADED, "true")
        store.client.set_model_version_tag(name, resolved.version, TAG_DEGRADED_REASON, reason[:4900])
        result.degraded_reason = reason
        result.rollback_command = rollback_command(name, reason)
    return result


__all__ = ["MonitorResult", "NA", "apply_window", "parse_window", "run_monitor", "version_inputs"]
