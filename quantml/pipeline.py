"""One experiment, as the data flows: panel -> features -> labels -> folds -> fit/predict
-> calibration -> signals -> metrics -> MLflow (parent run + one nested run per fold).
"""
from __future__ import annotations

import logging
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from quantml.backtest import CostModel
from quantml.data import data_fingerprint, infer_bar_frequency, load_panel, periods_per_year
from quantml.evaluation import best_monitor, evaluate_predictions, ic_mode_for
from quantml.evaluation.evaluate import evaluation_options
from quantml.evaluation.calibration import fit_calibrator
from quantml.evaluation.drift import population_stability_index
from quantml.evaluation.report import build_report
from quantml.features import build_features, event_activity_mask
from quantml.labels import make_labels
from quantml.models.base import Forecaster, PanelData, SampleSet
from quantml.schema import REQUIRED_COLUMNS, SCHEMA_VERSION, SYMBOL, TIMESTAMP, QuantmlInputError, metric_name
from quantml.signals import SignalConfig, compute_signals
from quantml.tracking import ExperimentTracker, TrackedRun, flatten_config, git_commit, prepare_store
from quantml.tracking.pyfunc import FeatureContract, ModelBundle, log_bundle
from quantml.tracking.store import resolve_tracking_uri
from quantml.validation import audit_folds, inner_validation_split, make_splitter

log = logging.getLogger(__name__)

REALISED = ("ret", "ret_after_cost", "dir", "vol", "ret_next_bar")


@dataclass
class PreparedData:
    """The model-ready panel plus what evaluation needs to know about it."""

    panel: pd.DataFrame
    data: PanelData
    samples: np.ndarray          # positions (into data) of usable samples, in time order
    realised: pd.DataFrame       # per row: ret/ret_after_cost/dir/vol per horizon + ret_next_bar
    contract: FeatureContract
    fingerprint: str
    bar: pd.Timedelta
    periods_per_year: float
    skipped_blocks: dict


@dataclass
class ExperimentResult:
    parent_run_id: str
    oos: pd.DataFrame
    fold_metrics: pd.DataFrame
    metrics: dict[str, float]
    model_uri: str | None = None
    report: object | None = None


def seed_everything(seed: int) -> None:
    """Seed Python and NumPy; backbones seed their own libraries (LightGBM, torch) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Load the panel, build causal features and cost-aware labels, select samples."""
    horizons = list(cfg.horizon.horizons)
    costs = CostModel.from_config(cfg.cost)
    panel = load_panel(cfg.data)
    drop = list(cfg.ablation.drop_modalities or [])
    feature_set = OmegaConf.to_container(cfg.feature_set, resolve=True)
    features = build_features(panel, feature_set, drop)
    labels = make_labels(panel, horizons, costs.round_trip)
    if features.frame.shape[1] == 0:
        raise QuantmlInputError(
            f"feature_set={cfg.feature_set.get('name', '?')} with ablation={cfg.ablation.name} leaves no "
            f"features for this panel (skipped: {features.skipped}); choose a feature_set whose inputs "
            f"the data has, e.g. feature_set=price")
    codes, symbols = pd.factorize(panel[SYMBOL])
    data = PanelData(
        keys=panel[[SYMBOL, TIMESTAMP]].reset_index(drop=True),
        X=features.frame.to_numpy(dtype=np.float32),
        feature_names=list(features.frame.columns),
        feature_modalities=dict(features.modalities),
        horizons=horizons,
        y_ret=labels.ret, y_dir=labels.dir, y_vol=labels.vol,
        t0=panel[TIMESTAMP].to_numpy(dtype="datetime64[ns]"),
        t1=labels.t1_max,
        symbol_codes=codes.astype(np.int64), symbols=list(symbols),
        known_future=list(features.known_future),
    )
    samples = data.labelled_rows()
    if cfg.ablation.get("event_window"):
        samples = samples[event_activity_mask(panel, cfg.ablation.event_window)[samples]]
    # time order (then symbol) so splitters and reports see a timeline
    samples = samples[np.lexsort((data.symbol_codes[samples], data.t0[samples]))]
    if len(samples) == 0:
        raise QuantmlInputError(
            "no labelled samples: the panel is shorter than the longest horizon "
            f"({horizons[-1]}) or the event window keeps nothing; use more data or shorter horizons")
    realised = {f"{name}@{h}": getattr(labels, name)[:, j]
                for j, h in enumerate(horizons) for name in ("ret", "ret_after_cost", "dir", "vol")}
    realised["ret_next_bar"] = labels.ret_next_bar
    contract = FeatureContract(
        input_columns=sorted(set(features.input_columns) | set(REQUIRED_COLUMNS)),
        feature_names=list(features.frame.columns),
        feature_set=feature_set, drop_modalities=drop, horizons=horizons)
    return PreparedData(panel=panel, data=data, samples=samples, realised=pd.DataFrame(realised),
                        contract=contract, fingerprint=data_fingerprint(panel),
                        bar=infer_bar_frequency(panel),
                        periods_per_year=float(cfg.data.get("periods_per_year") or periods_per_year(panel)),
                        skipped_blocks=dict(features.skipped))


def prediction_frame(model: Forecaster, part: SampleSet, realised: pd.DataFrame) -> pd.DataFrame:
    """Forecasts of ``part`` in the long contract layout (horizon-major), joined with what was realised."""
    frame = model.predict(part).to_frame(part.keys)
    horizons = part.data.horizons
    for name in ("ret", "ret_after_cost", "dir", "vol"):
        frame[name] = np.concatenate([realised[f"{name}@{h}"].to_numpy()[part.rows] for h in horizons])
    frame["ret_next_bar"] = np.tile(realised["ret_next_bar"].to_numpy()[part.rows], len(horizons))
    return frame


def _time_range(data: PanelData, rows: np.ndarray) -> tuple[str, str]:
    if not len(rows):
        return "", ""
    t = data.t0[rows]
    return str(pd.Timestamp(t.min(), tz="UTC")), str(pd.Timestamp(t.max(), tz="UTC"))


def _build_model(cfg: DictConfig, horizons: list[str]) -> Forecaster:
    try:
        return instantiate(cfg.backbone, horizons=horizons, seed=int(cfg.seed))
    except Exception as exc:
        raise QuantmlInputError(f"could not build backbone={cfg.backbone.get('_target_')}: {exc}") from exc


def fit_with_calibration(cfg: DictConfig, prep: PreparedData, fit_rows: np.ndarray,
                         valid_rows: np.ndarray):
    """Fit a backbone on ``fit_rows``, a calibrator on its ``valid_rows`` predictions."""
    model = _build_model(cfg, prep.data.horizons)
    valid = prep.data.subset(valid_rows) if len(valid_rows) else None
    model.fit(prep.data.subset(fit_rows), valid)
    valid_frame = prediction_frame(model, valid, prep.realised) if valid is not None else None
    calibrator = fit_calibrator(valid_frame, cfg.evaluation) if valid_frame is not None else None
    if calibrator is not None:
        valid_frame = calibrator.transform(valid_frame)
    return model, calibrator, valid_frame


@dataclass
class Evaluation:
    """How every prediction frame of a run is scored (the same settings for val, test, oos)."""

    periods_per_year: float
    costs: CostModel
    ic_mode: str
    options: dict

    def __call__(self, frame: pd.DataFrame, split: str) -> dict[str, float]:
        return evaluate_predictions(frame, split, self.periods_per_year, self.costs, self.ic_mode, **self.options)


def train_fold(cfg, prep: PreparedData, splitter, fold, signal: SignalConfig,
               run: TrackedRun) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Fit one fold on its purged training part; returns its (test, validation) prediction frames."""
    train = prep.samples[fold.train]
    test = prep.samples[fold.test]
    fit_pos, valid_pos = splitter.inner_split(fold, prep.data.t0[prep.samples], prep.data.t1[prep.samples])
    fit_rows, valid_rows = prep.samples[fit_pos], prep.samples[valid_pos]
    (tr0, tr1), (va0, va1), (te0, te1) = (_time_range(prep.data, r) for r in (fit_rows, valid_rows, test))
    run.log_params({"fold_id": fold.fold_id, "train_start": tr0, "train_end": tr1, "valid_start": va0,
                    "valid_end": va1, "test_start": te0, "test_end": te1, "n_train": len(fit_rows),
                    "n_valid": len(valid_rows), "n_test": len(test), "n_train_before_inner_split": len(train)})
    model, calibrator, valid_frame = fit_with_calibration(cfg, prep, fit_rows, valid_rows)
    test_frame = prediction_frame(model, prep.data.subset(test), prep.realised)
    if calibrator is not None:
        test_frame = calibrator.transform(test_frame)
    test_frame = compute_signals(test_frame, signal)
    test_frame["fold"] = fold.fold_id
    test_frame["path"] = np.tile(np.asarray(fold.test_paths), len(prep.data.horizons))
    if valid_frame is not None:
        valid_frame = compute_signals(valid_frame, signal)
    return test_frame, valid_frame


def score_fold(run: TrackedRun, test_frame: pd.DataFrame, valid_frame: pd.DataFrame | None,
               evaluate: Evaluation, extra: dict[str, float]) -> dict[str, float]:
    """Score a fold's predictions, log them and end its run (runs on the background thread)."""
    try:
        metrics = evaluate(test_frame, "test")
        if valid_frame is not None:
            metrics.update(evaluate(valid_frame, "val"))
        metrics.update(extra)
        run.log_metrics(metrics)
    except BaseException as exc:
        run.fail(exc)
        raise
    run.end("FINISHED")
    return metrics


def run_folds(cfg, tracker: ExperimentTracker, parent: TrackedRun, prep: PreparedData, splitter, folds,
              signal: SignalConfig, evaluate: Evaluation, background: ThreadPoolExecutor):
    """Train folds one after another on this thread while the previous fold is scored and
    logged on ``background``: model fitting (LightGBM, torch) releases the GIL, so on two
    cores the quant evaluation and MLflow writes cost little wall time.

    Returns the fold test frames and the fold metrics table (index ``fold``).
    """
    bins = int(cfg.evaluation.get("psi_bins", 10))
    frames, pending = [], []
    for fold in folds:
        tags = {"quantml.kind": "fold", "quantml.fold_id": fold.fold_id,
                "quantml.path_ids": ",".join(map(str, sorted(set(np.asarray(fold.test_paths).tolist()))))}
        child = tracker.start(f"fold-{fold.fold_id}", tags, parent=parent)
        try:
            test_frame, valid_frame = train_fold(cfg, prep, splitter, fold, signal, child)
        except BaseException as exc:
            child.fail(exc)
            raise
        drift = _drift(frames[-1], test_frame, prep.data.horizons, bins) if frames else {}
        frames.append(test_frame)
        pending.append(background.submit(score_fold, child, test_frame, valid_frame, evaluate, drift))
        if cfg.get("hparams_search") is not None:  # pruning needs this fold's score now
            _report_fold(cfg, fold.fold_id, pending[-1].result())
    rows = [{"fold": fold.fold_id, **future.result()} for fold, future in zip(folds, pending)]
    return frames, pd.DataFrame(rows).set_index("fold")


def _summarise(oos: pd.DataFrame, fold_metrics: pd.DataFrame, evaluate: Evaluation):
    """OOS metrics and the report built on them (the report's ALL rows reuse the metrics)."""
    metrics = evaluate(oos, "oos")
    report = build_report(oos, fold_metrics, evaluate.periods_per_year, evaluate.costs, evaluate.ic_mode,
                          oos_metrics=metrics, **evaluate.options)
    return metrics, report


def _aggregate(fold_metrics: pd.DataFrame) -> dict[str, float]:
    """``test_ic/1d`` over folds -> ``test_ic_mean/1d`` and ``test_ic_std/1d``."""
    out = {}
    for name in fold_metrics.columns:
        base, _, horizon = name.partition("/")
        values = fold_metrics[name].astype(float)
        out[f"{base}_mean/{horizon}" if horizon else f"{base}_mean"] = float(values.mean())
        out[f"{base}_std/{horizon}" if horizon else f"{base}_std"] = float(values.std(ddof=0))
    return out


def _drift(previous: pd.DataFrame, current: pd.DataFrame, horizons: list[str], bins: int) -> dict[str, float]:
    """PSI of a fold's expected returns against the previous fold's, per horizon."""
    out = {}
    for h in horizons:
        prev = previous.loc[previous["horizon"] == h, "expected_return"].to_numpy()
        cur = current.loc[current["horizon"] == h, "expected_return"].to_numpy()
        out[metric_name("test", "psi", h)] = population_stability_index(prev, cur, bins=bins)
    return out


def _report_fold(cfg: DictConfig, fold_id: int, metrics: dict[str, float]) -> None:
    """Hook for hyper-parameter search: report a fold's metrics so a bad trial can be pruned."""
    if cfg.get("hparams_search") is None:
        return
    from quantml.tuning import pruning

    pruning.report(cfg, fold_id, metrics)


def _hydra_context() -> tuple[dict[str, str], object | None]:
    """The job's Hydra choices and HydraConfig; empty when called as a library."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}, hc
    except ValueError:  # not running under Hydra (library use, tests)
        return {}, None


def default_run_name(cfg: DictConfig, choices: dict[str, str]) -> str:
    if cfg.get("run_name"):
        return str(cfg.run_name)
    parts = [choices.get(g) for g in ("backbone", "data", "feature_set", "horizon", "ablation", "validation")]
    return "-".join(p for p in parts if p) or f"{cfg.backbone._target_.rsplit('.', 1)[-1]}"


def run_experiment(cfg: DictConfig) -> ExperimentResult:
    """Run one experiment end to end and log it to MLflow. Returns what was measured."""
    seed_everything(int(cfg.seed))
    experiment_id = prepare_store(resolve_tracking_uri(cfg.tracking.get("uri")), cfg.tracking.experiment)
    choices, hydra_cfg = _hydra_context()
    tracker = ExperimentTracker(experiment_id)
    tags = {"quantml.kind": "parent", "quantml.seed": int(cfg.seed), "quantml.git_commit": git_commit(),
            "quantml.schema_version": SCHEMA_VERSION, "quantml.validation": cfg.validation.method,
            "quantml.horizons": ",".join(cfg.horizon.horizons),
            **{f"choice.{k}": v for k, v in choices.items()}}
    if hydra_cfg is not None:
        tags["quantml.sweep_dir"] = hydra_cfg.sweep.dir if hydra_cfg.mode.name == "MULTIRUN" else hydra_cfg.run.dir
        tags["quantml.output_dir"] = hydra_cfg.runtime.output_dir
    with tracker.run(default_run_name(cfg, choices), tags) as parent:
        parent.log_params(flatten_config(cfg))
        parent.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
        output_dir = Path(hydra_cfg.runtime.output_dir) if hydra_cfg is not None else None
        return _run_in_parent(cfg, tracker, parent, output_dir)


def _run_in_parent(cfg: DictConfig, tracker: ExperimentTracker, parent: TrackedRun,
                   output_dir: Path | None = None) -> ExperimentResult:
    prep = prepare_data(cfg)
    costs = CostModel.from_config(cfg.cost)
    signal = SignalConfig.from_config(cfg.signal, cost=costs.round_trip)
    n_symbols = int(prep.panel[SYMBOL].nunique())
    ic_mode = ic_mode_for(n_symbols)
    evaluate = Evaluation(prep.periods_per_year, costs, ic_mode, evaluation_options(cfg.evaluation))
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

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantml-scoring") as background:
        fold_frames, fold_metrics = run_folds(cfg, tracker, parent, prep, splitter, folds, signal, evaluate,
                                              background)
        oos = pd.concat(fold_frames, ignore_index=True)
        summary_job = background.submit(_summarise, oos, fold_metrics, evaluate)
        final_model, calibrator, _ = _fit_final(cfg, prep, splitter)
        model_uri = None
        if cfg.tracking.get("log_model", True):  # while the report is still being built
            bundle = ModelBundle(forecaster=final_model, calibrator=calibrator, contract=prep.contract,
                                 signal=signal.to_dict(), data_fingerprint=prep.fingerprint,
                                 metadata={"bar": str(prep.bar), "periods_per_year": prep.periods_per_year})
            model_uri = log_bundle(bundle, parent.run_id)
        metrics, report = summary_job.result()

    metrics.update(_aggregate(fold_metrics))
    monitor_name, monitor_value = best_monitor(fold_metrics, cfg.evaluation.monitor, prep.data.horizons)
    metrics["best_monitor"] = monitor_value
    parent.set_tags({"quantml.monitor": cfg.evaluation.monitor, "quantml.best_monitor": monitor_name})
    parent.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        _stage_artifacts(Path(tmp), oos, fold_metrics, report, final_model)
        parent.log_artifacts(tmp)
    if output_dir is not None:  # a local copy of the report beside Hydra's outputs
        report.write(output_dir / "report")

    if cfg.get("print_report", True):
        print(f"\nOut-of-sample results ({len(folds)} {cfg.validation.method} folds, {ic_mode} IC):")
        print(report.summary)
        print(f"\nMLflow: experiment '{cfg.tracking.experiment}', parent run {parent.run_id}")
        print(f"Open the runs with:  {_ui_command(resolve_tracking_uri(cfg.tracking.get('uri')))}")
    return ExperimentResult(parent.run_id, oos, fold_metrics, metrics, model_uri, report)


def _ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def _fit_final(cfg: DictConfig, prep: PreparedData, splitter):
    """The model that gets logged: fitted on every sample, calibrated on the last purged slice."""
    positions = np.arange(len(prep.samples))
    fit_pos, valid_pos = inner_validation_split(positions, prep.data.t0[prep.samples], prep.data.t1[prep.samples],
                                                splitter.valid_fraction, splitter.embargo)
    return fit_with_calibration(cfg, prep, prep.samples[fit_pos], prep.samples[valid_pos])


def _stage_artifacts(root: Path, oos: pd.DataFrame, fold_metrics: pd.DataFrame, report, model: Forecaster) -> None:
    """Write the parent run's artifacts into ``root`` (one upload instead of one per file)."""
    for folder in ("predictions", "report", "figures"):
        (root / folder).mkdir()
    oos.to_parquet(root / "predictions" / "oos_predictions.parquet", index=False)
    fold_metrics.reset_index().to_csv(root / "report" / "fold_metrics.csv", index=False)
    report.by_symbol_horizon.to_csv(root / "report" / "report_by_symbol_horizon.csv", index=False)
    (root / "report" / "report.html").write_text(report.html, encoding="utf-8")
    for name in report.figures:
        (root / "figures" / name).write_bytes(report.png(name))
    importance = model.feature_importance()
    if importance is not None:
        importance.rename("importance").rename_axis("feature").reset_index().to_csv(
            root / "report" / "feature_importance.csv", index=False)
        _importance_figure(importance).savefig(root / "figures" / "feature_importance.png")
    for name, figure in model.figures().items():
        figure.savefig(root / "figures" / name)


def _importance_figure(importance: pd.Series, top: int = 25):
    from matplotlib.figure import Figure

    top_items = importance.head(top)[::-1]
    fig = Figure(figsize=(7, max(3, 0.28 * len(top_items))))
    ax = fig.subplots()
    ax.barh(top_items.index, top_items.to_numpy())
    ax.set_title("Feature importance (final model)")
    fig.tight_layout()
    return fig
