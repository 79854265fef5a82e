"""One experiment end to end in one MLflow parent run with a nested run per fold."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.bundle import ModelBundle, warmup_bars
from quantml.contracts import SYMBOL, TIMESTAMP
from quantml.contracts import run_layout as L
from quantml.contracts.config import build
from quantml.evaluation import best_monitor, check_selection_keys, ic_mode_for
from quantml.evaluation.evaluate import Scorer, aggregate_fold_metrics, evaluation_options
from quantml.evaluation.reference import REFERENCE_KEY, reference_from_columns, top_features
from quantml.evaluation.report import build_report
from quantml.experiment.artifacts import oos_appender, read_staged_oos, stage_artifacts
from quantml.experiment.callbacks import FoldCallback
from quantml.experiment.fitting import (
    COLUMN_CHUNK_ROWS,
    calibrated_columns,
    fit_final,
    symbol_column,
)
from quantml.experiment.folds import run_folds
from quantml.experiment.lockbox import holdout_scorer, lockbox_check, predict_holdout, resolve_lockbox
from quantml.experiment.prepare import PreparedData, prepare_data, reserve_lockbox, seed_everything
from quantml.experiment.resume import run_identity
from quantml.experiment.warm_start import WarmSource, check_warm_data, resolve_warm_start, with_warm_source
from quantml.features.memory import mark, trim
from quantml.portfolio.strategy import build_strategy
from quantml.tracking import RunWriter, TrackedRun, flatten_config
from quantml.tracking.pyfunc import log_bundle
from quantml.tracking.store import DEFAULT_LEASE_S, resolve_tracking_uri
from quantml.validation import audit_folds, make_splitter


@dataclass
class RunContext:
    """Where a run was launched from: the launcher's config-group choices, the job's command-line
    overrides (Hydra's ``HydraConfig.get().overrides.task``) and output folders."""

    choices: dict[str, str] = field(default_factory=dict)
    sweep_dir: str | None = None
    output_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    sweep_axes: list[str] | None = None  # a multirun's swept keys; None for a single run


@dataclass
class ExperimentResult:
    parent_run_id: str
    oos: pd.DataFrame
    fold_metrics: pd.DataFrame
    metrics: dict[str, float]
    model_uri: str | None = None
    report: object | None = None
    holdout: pd.DataFrame | None = None  # the final model's lockbox predictions


RUN_NAME_MAX = 40
RUN_NAME_SEPARATOR = " · "
_PRIMARY_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "config.yaml"


def primary_defaults(path: Path = _PRIMARY_CONFIG) -> dict[str, str | None]:
    """``{group: default choice}`` of the primary config's defaults list, in its order."""
    try:
        defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])
    except (OSError, ValueError):
        return {}
    out: dict[str, str | None] = {}
    for item in defaults:
        if isinstance(item, dict):
            for key, value in item.items():
                key = str(key).removeprefix("optional ").strip()
                if not key.startswith(("override ", "hydra/")):
                    out[key] = None if value is None else str(value)
    return out


def _overridden_groups(overrides: list[str]) -> set[str]:
    groups = set()
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep:
            groups.add(key.lstrip("+~").removeprefix("optional "))
    return groups


def default_run_name(
    cfg: DictConfig, choices: dict[str, str], overrides: list[str] | None = None, sweep_axes: list[str] | None = None
) -> str:
    """``run_name`` when set; else the backbone, then only the config-group choices that differ:
    those unlike the primary config's defaults and those the command line set (``overrides``:
    a sweep's axes, even where one value is the default). ``lightgbm · purged_kfold · no_macro``;
    at most ~40 characters."""
    if cfg.get("run_name"):
        return str(cfg.run_name)
    backbone = choices.get("backbone") or str(cfg.backbone.get("_target_", "model")).rsplit(".", 1)[-1]
    if sweep_axes is not None:  # one job of a sweep: what differs is what the sweep varies
        return _cap(RUN_NAME_SEPARATOR.join([backbone, *_axis_values(sweep_axes, choices, overrides or [])]))
    defaults = primary_defaults()
    overridden = _overridden_groups(list(overrides or []))
    order = [g for g in defaults if g in choices] + sorted(g for g in choices if g not in defaults)
    parts = [backbone]
    for group in order:
        value = choices.get(group)
        if group == "backbone" or group.startswith("hydra/") or value in (None, "", "None", "null"):
            continue
        if group in overridden or value != defaults.get(group):
            parts.append(str(value).rsplit("/", 1)[-1])
    return _cap(RUN_NAME_SEPARATOR.join(parts))


def _cap(name: str) -> str:
    return name if len(name) <= RUN_NAME_MAX else name[: RUN_NAME_MAX - 1].rstrip(" ·") + "…"


def _axis_values(axes: list[str], choices: dict[str, str], overrides: list[str]) -> list[str]:
    """A job's value on each swept key: a group's choice (``no_macro``), else ``leaf=value``."""
    given = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            given[key.lstrip("+~")] = value
    out = []
    for axis in axes:
        if axis == "backbone":
            continue
        if axis in choices:
            out.append(str(choices[axis]).rsplit("/", 1)[-1])
        elif axis in given:
            out.append(f"{axis.rsplit('.', 1)[-1]}={given[axis]}")
    return out


def run_experiment(
    cfg: DictConfig, context: RunContext | None = None, callbacks: list[FoldCallback] = ()
) -> ExperimentResult:
    """Run one experiment end to end and log it to MLflow. Returns what was measured."""
    context = context or RunContext()
    check_selection_keys(cfg.get("evaluation"))  # a renamed key: refused before any run is made
    seed_everything(int(cfg.seed))
    writer = RunWriter.prepare(resolve_tracking_uri(cfg.tracking.get("uri")), cfg.tracking.experiment)
    # warm_start=: the version every fit starts from (an unknown version or backbone: no run is made)
    warm = resolve_warm_start(cfg, writer.client)
    tags = {L.TAG_RUN_IDENTITY: run_identity(cfg)}  # what resume=true finds a FINISHED job by
    if context.sweep_dir is not None:
        tags[L.TAG_SWEEP_DIR] = context.sweep_dir
    if context.output_dir is not None:
        tags[L.TAG_OUTPUT_DIR] = str(context.output_dir)
    # the run holds a lease while this job lives: should the job die without ending the run
    # (SIGKILL, out of memory), the next command that prepares the store ends it FAILED
    lease_s = cfg.tracking.get("lease_s")
    parent = writer.start_parent(
        default_run_name(cfg, context.choices, context.overrides, context.sweep_axes),
        seed=int(cfg.seed),
        horizons=cfg.horizon.horizons,
        validation=cfg.validation.method,
        choices=context.choices,
        tags=tags,
        lease_s=float(lease_s) if lease_s is not None else DEFAULT_LEASE_S,
    )
    try:
        # the parent run's artifacts are written here as they are made, uploaded at the end in one go
        with parent.ending(), tempfile.TemporaryDirectory(prefix="quantml-artifacts-") as staging:
            parent.log_params(flatten_config(cfg))
            parent.log_resolved_config(cfg)
            return _run_in_parent(cfg, writer, parent, Path(staging), context.output_dir, list(callbacks), warm)
    finally:
        parent.stop_lease()  # ending() stopped it already; this holds even if ending the run failed


def _run_in_parent(
    cfg: DictConfig,
    writer: RunWriter,
    parent: TrackedRun,
    staging: Path,
    output_dir: Path | None,
    callbacks: list[FoldCallback],
    warm: WarmSource | None = None,
) -> ExperimentResult:
    prep: PreparedData = prepare_data(cfg)
    mark("data prepared")
    if warm is not None:  # only bars after the source's training end; its features and horizons
        check_warm_data(prep, warm)
        parent.set_tags(warm.tags())
        prep = with_warm_source(prep, warm)
    costs = build(cfg.cost, "cost", "quantml.market.CostModel")
    signal = build(cfg.signal, "signal", "quantml.signals.SignalConfig.build", cost=costs.round_trip)
    strategy = build_strategy(cfg.get("strategy"), signal)
    n_symbols = int(prep.panel[SYMBOL].nunique())
    ic_mode = ic_mode_for(n_symbols)
    splitter = make_splitter(cfg.validation)
    prep = reserve_lockbox(prep, resolve_lockbox(cfg.validation, prep, writer), splitter.embargo)
    # every development bar: the backtest's PnL runs over the full bar calendar, not only forecast rows
    market = prep.market("development")
    score = Scorer(prep.periods_per_year, costs, ic_mode, evaluation_options(cfg.evaluation), strategy, market)
    parent.set_tags(
        {
            L.TAG_DATA_FINGERPRINT: prep.fingerprint,
            L.TAG_FEATURE_CONTRACT_HASH: prep.contract.hash,
            L.TAG_IC_MODE: ic_mode,
            L.TAG_BAR: str(prep.bar),
            L.TAG_N_SYMBOLS: n_symbols,
            L.TAG_N_FEATURES: len(prep.contract.feature_names),
            L.TAG_TRADABLE: str(_tradable(cfg)).lower(),
            L.TAG_LOCKBOX_START: prep.lockbox.tag(),
            L.TAG_LOCKBOX_SOURCE: prep.lockbox.source,
        }
    )
    derived = {
        "periods_per_year": prep.periods_per_year,
        "n_samples": len(prep.samples),
        "n_holdout_samples": len(prep.holdout_samples),
        "skipped_blocks": ",".join(prep.skipped_blocks) or "none",
        "bar": str(prep.bar),
    }
    parent.log_derived(derived)
    # also as params, for the UI's columns and comparisons (readers use derived.json)
    parent.log_params({f"{L.DERIVED_PARAM_PREFIX}{k}": v for k, v in derived.items() if k != "bar"})

    t0s, t1s = prep.data.t0[prep.samples], prep.data.t1[prep.samples]
    calendar = prep.calendar
    folds = splitter.split(t0s, t1s, calendar=calendar)
    plan = splitter.fold_plan(calendar)
    plan["lockbox_start"] = prep.lockbox.tag()
    parent.log_dict(plan, L.FOLD_PLAN_ARTIFACT)
    parent.set_tags({L.TAG_FOLD_PLAN: plan["hash"]})
    _log_market(parent, market)
    audit = audit_folds(
        prep.data.keys.iloc[prep.samples].reset_index(drop=True),
        t0s,
        t1s,
        folds,
        splitter.embargo,
        valid_fraction=splitter.valid_fraction,
    )
    audit["checks"]["lockbox"] = lockbox_check(prep, splitter.embargo)
    audit["clean"] = bool(audit["clean"] and audit["checks"]["lockbox"]["ok"])
    parent.log_dict(audit, L.AUDIT_ARTIFACT)
    parent.set_tags({L.TAG_LEAKAGE_AUDIT: "clean" if audit["clean"] else "violations", L.TAG_N_FOLDS: len(folds)})

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantml-scoring") as scoring:
        # each fold's predictions go to the OOS file as the fold is scored: on a large panel every
        # fold's frame held beside the panel would not fit, so the report is built once the panel is gone
        oos_file = oos_appender(staging)
        try:
            fold_metrics, capacities = run_folds(
                cfg, writer, parent, prep, splitter, folds, signal, score, scoring, oos_file.append, callbacks
            )
        finally:
            oos_path = oos_file.close()
        trim("final model")  # the folds' freed heap, before the largest fit
        final_model, calibrator, capacity = fit_final(cfg, prep, splitter, capacities)
        mark("final model fitted")
        if getattr(final_model, "threads_", None):
            parent.set_tags({L.TAG_THREADS: int(final_model.threads_)})
        model_uri = None
        if cfg.tracking.get("log_model", True):
            bundle = ModelBundle(
                forecaster=final_model,
                calibrator=calibrator,
                contract=prep.contract,
                signal=signal.to_dict(),
                data_fingerprint=prep.fingerprint,
                metadata={
                    "bar": str(prep.bar),
                    "periods_per_year": prep.periods_per_year,
                    "ic_mode": ic_mode,
                    L.WARMUP_BARS: warmup_bars(prep.data),
                    L.FIRST_BARS: {
                        str(sym): ts.isoformat() for sym, ts in prep.panel.groupby(SYMBOL)[TIMESTAMP].min().items()
                    },
                    L.CAPACITY: capacity,
                    # a backbone that needs every one of its symbols at once (the hybrid): routing reads it
                    **({L.CROSS_SECTIONAL: True} if getattr(final_model, "cross_sectional", False) else {}),
                    # what `quantml monitor` compares live predictions and features with (development data only)
                    REFERENCE_KEY: _reference(prep, final_model, calibrator),
                },
                strategy=OmegaConf.to_container(cfg.strategy, resolve=True) if cfg.get("strategy") else None,
            )
            model_uri = log_bundle(bundle, parent.run_id)
        mark("holdout")
        holdout = predict_holdout(final_model, calibrator, prep, signal)
        holdout_job = None if holdout is None else scoring.submit(holdout_scorer(score, prep), holdout, L.SPLIT_HOLDOUT)
        holdout_metrics = {} if holdout_job is None else holdout_job.result()  # for the record; nothing chooses on them

    lockbox = lockbox_line(prep)
    horizons = prep.data.horizons
    # the panel, its matrix and labels go before the OOS frame comes back: they would stack
    del prep, holdout_job, folds, t0s, t1s, calendar
    trim("report")
    oos = read_staged_oos(oos_path)
    mark("report: summarise")
    metrics, report = _summarise(oos, fold_metrics, score, _tradable(cfg))
    mark("report: logging")
    metrics.update(holdout_metrics)
    metrics.update(aggregate_fold_metrics(fold_metrics))
    # a backbone's own figures of its final model (distilled: the student's and teacher's predict latency)
    metrics.update(getattr(final_model, "run_metrics", dict)())
    # the layout keeps its names (best_monitor, quantml.monitor): runs logged before the rename read the same
    selection = str(cfg.evaluation.selection_metric)
    monitor_name, monitor_value = best_monitor(fold_metrics, selection, horizons)
    metrics["best_monitor"] = monitor_value
    parent.set_tags({L.TAG_MONITOR: selection, L.TAG_BEST_MONITOR: monitor_name})
    parent.log_metrics(metrics)
    header = f"Out-of-sample results ({len(fold_metrics)} {cfg.validation.method} folds, {ic_mode} IC):"
    parent.set_description(run_description(header, report.summary))
    stage_artifacts(staging, fold_metrics, report, final_model)
    if holdout is not None:
        (staging / L.HOLDOUT_ARTIFACT).parent.mkdir(parents=True, exist_ok=True)
        holdout.to_parquet(staging / L.HOLDOUT_ARTIFACT, index=False)
    parent.log_artifacts(str(staging))
    if output_dir is not None:  # a local copy of the report beside Hydra's outputs
        report.write(output_dir / "report")

    if cfg.get("print_report", True):
        print(f"\n{header}")
        print(report.summary)
        print(lockbox)
        print(f"\nMLflow: experiment '{cfg.tracking.experiment}', parent run {parent.run_id}")
        print(_ui_command(resolve_tracking_uri(cfg.tracking.get("uri")), parent.experiment_id))
    return ExperimentResult(parent.run_id, oos, fold_metrics, metrics, model_uri, report, holdout)


def _reference(prep: PreparedData, model, calibrator, chunk_rows: int = COLUMN_CHUNK_ROWS) -> dict:
    """The version's monitoring reference (``quantml.evaluation.reference``): the final model's
    calibrated forecasts and the top features on the development samples, never the lockbox. The
    final model's own forecasts, not the folds' OOS ones: earlier folds' models (trained on less
    data) forecast on another scale, which would read as drift on stationary data.

    Only the summarised columns are kept whole (:func:`calibrated_columns`, ``chunk_rows`` rows
    forecast at a time): no long prediction frame of every development sample, no copy of ``X``."""
    rows = prep.samples
    part = prep.data.subset(rows)
    columns = calibrated_columns(model, part, calibrator, chunk_rows=chunk_rows)
    importance = model.feature_importance() if hasattr(model, "feature_importance") else None
    names, _ = top_features(prep.data.feature_names, importance)
    index = [list(prep.data.feature_names).index(name) for name in names]
    # the symbols as codes over their sorted names and the naive UTC bar times: no string per row
    symbols, times = symbol_column(part, 1), prep.data.t0[rows]
    reference = reference_from_columns(columns, symbols, times, prep.data.X[np.ix_(rows, index)], names, importance)
    reference["source"] = "final model on the development samples"
    return reference


def lockbox_line(prep: PreparedData) -> str:
    """What the run printed about its lockbox: where it starts, how much it holds, and that
    its figures are logged but not shown (commands that show them count each read)."""
    box = prep.lockbox
    if not box.enabled:
        return "Lockbox: none (validation.holdout=0): every figure above was also available to choose with"
    where = {"pinned": "pinned by validation.holdout_start", "computed": "computed and recorded by this run"}.get(
        box.source, f"recorded by run {box.source.partition(':')[2][:12]}"
    )
    return (
        f"Lockbox: from {box.start:%Y-%m-%d %H:%M} UTC ({where}), {len(prep.holdout_samples)} samples; its "
        f"{L.LOCKBOX_PREFIX}* figures are logged, not shown (each command that shows them counts a read)"
    )


def _log_market(parent: TrackedRun, market: pd.DataFrame) -> None:
    """Every development bar (``symbol, timestamp, ret_next_bar``) as :data:`MARKET_ARTIFACT`:
    tuning and the gates rebuild the book on the same calendar the folds were scored on."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(L.MARKET_ARTIFACT).name
        market.to_parquet(path, index=False)
        parent.log_artifact(str(path), str(Path(L.MARKET_ARTIFACT).parent))


def run_description(header: str, table: str, limit: int = 7900) -> str:
    """The parent run's description (markdown): the header line, then the results table as the
    run prints it (a code block keeps its columns aligned in the MLflow UI). A table too long
    for an MLflow tag keeps its first lines and points at the full report."""
    lines = table.splitlines()
    note = "... (the full table: report/report.html)"
    while lines and len(header) + sum(len(x) + 1 for x in lines) + len(note) + 16 > limit:
        lines = lines[:-1]
    shown = "\n".join(lines) if len(lines) == len(table.splitlines()) else "\n".join([*lines, note])
    return f"{header}\n\n```\n{shown}\n```"


def _tradable(cfg: DictConfig) -> bool:
    """Whether the run's OOS backtest is a tradable timeline: walk-forward only (purged K-fold and
    CPCV folds train on data after their test block)."""
    return str(cfg.validation.method) in L.TRADABLE_VALIDATIONS


def _summarise(oos: pd.DataFrame, fold_metrics: pd.DataFrame, score: Scorer, tradable: bool | None = None):
    """OOS metrics and the report built on them (the report's ALL rows reuse the metrics)."""
    metrics = score(oos, "oos")
    report = build_report(
        oos,
        fold_metrics,
        score.periods_per_year,
        score.costs,
        score.ic_mode,
        oos_metrics=metrics,
        strategy=score.strategy,
        market=score.market,
        tradable=tradable,
        **score.options,
    )
    return metrics, report


def _ui_command(uri: str, experiment_id: str | None) -> str:
    """How to open the runs. MLflow 3.17's UI opens experiments on its GenAI overview unless the
    page is asked for the model-training workflow (the experiment's kind tag alone is not read
    while the UI's workflow toggle is on), so the link asks for it."""
    page = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return f"Open the runs:  {uri.rstrip('/')}{page}"
    return f"Open the runs:  mlflow ui --backend-store-uri {uri}  then  http://127.0.0.1:5000{page}"
