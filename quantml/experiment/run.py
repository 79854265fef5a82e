"""One experiment end to end in one MLflow parent run with a nested run per fold."""
from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.bundle import ModelBundle
from quantml.contracts import SCHEMA_VERSION, SYMBOL
from quantml.evaluation import best_monitor, ic_mode_for
from quantml.evaluation.evaluate import Scorer, aggregate_fold_metrics, evaluation_options
from quantml.evaluation.report import build_report
from quantml.experiment.artifacts import stage_artifacts
from quantml.experiment.callbacks import FoldCallback
from quantml.experiment.fitting import fit_final
from quantml.experiment.folds import run_folds
from quantml.experiment.prepare import PreparedData, prepare_data, seed_everything
from quantml.market import CostModel
from quantml.signals import SignalConfig
from quantml.tracking import ExperimentTracker, TrackedRun, flatten_config, git_commit, prepare_store
from quantml.tracking.pyfunc import log_bundle
from quantml.tracking.store import resolve_tracking_uri
from quantml.validation import audit_folds, make_splitter


@dataclass
class RunContext:
    """Where a run was launched from: the launcher's config-group choices and output folders."""

    choices: dict[str, str] = field(default_factory=dict)
    sweep_dir: str | None = None
    output_dir: Path | None = None


@dataclass
class ExperimentResult:
    parent_run_id: str
    oos: pd.DataFrame
    fold_metrics: pd.DataFrame
    metrics: dict[str, float]
    model_uri: str | None = None
    report: object | None = None


def default_run_name(cfg: DictConfig, choices: dict[str, str]) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    parts = [choices.get(g) for g in ("backbone", "data", "feature_set", "horizon", "ablation", "validation")]
    return "-".join(p for p in parts if p) or f"{cfg.backbone._target_.rsplit('.', 1)[-1]}"


def run_experiment(cfg: DictConfig, context: RunContext | None = None,
                   callbacks: list[FoldCallback] = ()) -> ExperimentResult:
    """Run one experiment end to end and log it to MLflow. Returns what was measured."""
    context = context or RunContext()
    seed_everything(int(cfg.seed))
    experiment_id = prepare_store(resolve_tracking_uri(cfg.tracking.get("uri")), cfg.tracking.experiment)
    tracker = ExperimentTracker(experiment_id)
    tags = {"quantml.kind": "parent", "quantml.seed": int(cfg.seed), "quantml.git_commit": git_commit(),
            "quantml.schema_version": SCHEMA_VERSION, "quantml.validation": cfg.validation.method,
            "quantml.horizons": ",".join(cfg.horizon.horizons),
            **{f"choice.{k}": v for k, v in context.choices.items()}}
    if context.sweep_dir is not None:
        tags["quantml.sweep_dir"] = context.sweep_dir
    if context.output_dir is not None:
        tags["quantml.output_dir"] = str(context.output_dir)
    with tracker.run(default_run_name(cfg, context.choices), tags) as parent:
        parent.log_params(flatten_config(cfg))
        parent.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
        return _run_in_parent(cfg, tracker, parent, context.output_dir, list(callbacks))


def _run_in_parent(cfg: DictConfig, tracker: ExperimentTracker, parent: TrackedRun, output_dir: Path | None,
                   callbacks: list[FoldCallback]) -> ExperimentResult:
    prep: PreparedData = prepare_data(cfg)
    costs = CostModel.from_config(cfg.cost)
    signal = SignalConfig.from_config(cfg.signal, cost=costs.round_trip)
    n_symbols = int(prep.panel[SYMBOL].nunique())
    ic_mode = ic_mode_for(n_symbols)
    score = Scorer(prep.periods_per_year, costs, ic_mode, evaluation_options(cfg.evaluation))
    parent.set_tags({"quantml.data_fingerprint": prep.fingerprint,
                     "quantml.feature_contract_hash": prep.contract.hash, "quantml.ic_mode": ic_mode,
                     "quantml.bar": str(prep.bar), "quantml.n_symbols": n_symbols,
                     "quantml.n_features": len(prep.contract.feature_names)})
    parent.log_params({"derived.periods_per_year": prep.periods_per_year, "derived.n_samples": len(prep.samples),
                       "derived.skipped_blocks": ",".join(prep.skipped_blocks) or "none"})

    splitter = make_splitter(cfg.validation)
    t0s, t1s = prep.data.t0[prep.samples], prep.data.t1[prep.samples]
    folds = splitter.split(t0s, t1s)
    audit = audit_folds(prep.data.keys.iloc[prep.samples].reset_index(drop=True), t0s, t1s, folds,
                        splitter.embargo, valid_fraction=splitter.valid_fraction)
    parent.log_dict(audit, "audit/leakage_audit.json")
    parent.set_tags({"quantml.leakage_audit": "clean" if audit["clean"] else "violations",
                     "quantml.n_folds": len(folds)})

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantml-scoring") as scoring:
        fold_frames, fold_metrics = run_folds(cfg, tracker, parent, prep, splitter, folds, signal, score, scoring,
                                              callbacks)
        oos = pd.concat(fold_frames, ignore_index=True)
        summary_job = scoring.submit(_summarise, oos, fold_metrics, score)
        final_model, calibrator, _ = fit_final(cfg, prep, splitter)
        model_uri = None
        if cfg.tracking.get("log_model", True):  # while the report is still being built
            bundle = ModelBundle(forecaster=final_model, calibrator=calibrator, contract=prep.contract,
                                 signal=signal.to_dict(), data_fingerprint=prep.fingerprint,
                                 metadata={"bar": str(prep.bar), "periods_per_year": prep.periods_per_year})
            model_uri = log_bundle(bundle, parent.run_id)
        metrics, report = summary_job.result()

    metrics.update(aggregate_fold_metrics(fold_metrics))
    monitor_name, monitor_value = best_monitor(fold_metrics, cfg.evaluation.monitor, prep.data.horizons)
    metrics["best_monitor"] = monitor_value
    parent.set_tags({"quantml.monitor": cfg.evaluation.monitor, "quantml.best_monitor": monitor_name})
    parent.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        stage_artifacts(Path(tmp), oos, fold_metrics, report, final_model)
        parent.log_artifacts(tmp)
    if output_dir is not None:  # a local copy of the report beside Hydra's outputs
        report.write(output_dir / "report")

    if cfg.get("print_report", True):
        print(f"\nOut-of-sample results ({len(folds)} {cfg.validation.method} folds, {ic_mode} IC):")
        print(report.summary)
        print(f"\nMLflow: experiment '{cfg.tracking.experiment}', parent run {parent.run_id}")
        print(f"Open the runs with:  {_ui_command(resolve_tracking_uri(cfg.tracking.get('uri')))}")
    return ExperimentResult(parent.run_id, oos, fold_metrics, metrics, model_uri, report)


def _summarise(oos: pd.DataFrame, fold_metrics: pd.DataFrame, score: Scorer):
    """OOS metrics and the report built on them (the report's ALL rows reuse the metrics)."""
    metrics = score(oos, "oos")
    report = build_report(oos, fold_metrics, score.periods_per_year, score.costs, score.ic_mode,
                          oos_metrics=metrics, **score.options)
    return metrics, report


def _ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"
