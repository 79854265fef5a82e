"""``quantml tune``'s library side: run (or resume) a threshold study, log it as a child run
of the source run, and optionally attach the tuned thresholds to a registered model version."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from quantml.backtest.figures import equity_figure  # noqa: E402
from quantml.backtest.mlflow_logging import log_backtest  # noqa: E402
from quantml.contracts import QuantmlInputError, metric_name  # noqa: E402
from quantml.contracts import run_layout as L  # noqa: E402
from quantml.market.execution import CostModel  # noqa: E402
from quantml.portfolio.allocator import AllocatorConfig  # noqa: E402
from quantml.signals.core import SignalConfig  # noqa: E402
from quantml.tracking.writer import RunWriter  # noqa: E402
from quantml.tuning.source import SourceRun, load_source_run  # noqa: E402
from quantml.tuning.storage import is_memory, make_storage, redact  # noqa: E402
from quantml.tuning.thresholds import (  # noqa: E402
    Evaluation,
    SearchSpace,
    ThresholdStudy,
    TuneSettings,
    check_or_set_attrs,
    make_sampler,
    study_attrs,
    trials_frame,
)

log = logging.getLogger(__name__)
SIGNAL_TAG = L.TAG_SIGNAL
ALLOCATOR_TAG = L.TAG_ALLOCATOR
STAT_KEYS = {
    "sharpe": "sharpe_after_cost",
    "calmar": "calmar",
    "ann_return": "ann_return",
    "ann_vol": "ann_vol",
    "max_drawdown": "max_drawdown",
    "turnover": "turnover",
}


@dataclass
class TuneOutcome:
    """What a tuning run produced (also logged to MLflow)."""

    study_name: str
    best_params: dict[str, float]
    signal: SignalConfig
    allocator: AllocatorConfig
    tuned: Evaluation
    baseline: Evaluation
    metrics: dict[str, float]
    tune_run_id: str | None
    n_complete: int
    lockbox: dict[str, float] = field(default_factory=dict)  # holdout_* of the source run (read counted)
    attached: object | None = None  # the new ModelVersion of ``attach=``
    book: str = ""  # the strategy the study traded (the run's configured one)
    source_run_id: str = ""  # the run the study tuned (a route map's: its version's route run)
    notes: list[str] = field(default_factory=list)  # what the person should know about the book


def default_study_name(run_id: str, objective: str) -> str:
    return f"quantml-tune-{run_id[:12]}-{objective}"


def run_tuning(
    run_id: str | SourceRun,
    tracking_uri: str | None = None,
    settings: TuneSettings | None = None,
    allocator: AllocatorConfig | None = None,
    costs: CostModel | None = None,
    periods_per_year: float | None = None,
    storage: str | None = "sqlite:///optuna.db",
    study_name: str | None = None,
    n_trials: int = 50,
    n_jobs: int = 1,
    timeout: float | None = None,
    seed: int = 42,
    worker: int = 0,
    n_startup_trials: int = 10,
    log_to_mlflow: bool = True,
    attach: str | None = None,
    attach_force: bool = False,
    n_workers: int = 1,
) -> TuneOutcome:
    """Tune ``run_id``'s thresholds; see ``docs/signals.md``.

    ``run_id``: a parent run id, or an already loaded :class:`SourceRun`. ``worker`` offsets
    the sampler seed so several processes sharing one ``storage`` draw different first
    trials. ``n_trials=0`` only re-reports (and attaches) a stored study.

    ``n_workers``: processes optimizing the study at once (this one and ``n_workers - 1`` spawned
    ones), worker ``i`` with sampler seed ``seed + worker + i`` and a fixed share of the
    ``n_trials`` (:func:`worker_shares`): exactly ``n_trials`` new trials in all. They need a
    storage they share (SQLite, PostgreSQL, a journal file): an in-memory study is refused.
    """
    settings = settings or TuneSettings()
    n_workers = check_workers(n_workers, storage)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    source = run_id if isinstance(run_id, SourceRun) else load_source_run(run_id, tracking_uri)
    run_id = source.run_id
    problem = _validation_problem(source)
    if problem:
        raise QuantmlInputError(f"cannot tune: {problem}")
    study = ThresholdStudy(source, settings, allocator, costs, periods_per_year)
    name = study_name or default_study_name(run_id, settings.objective)
    optuna_study = optuna.create_study(
        storage=make_storage(storage),
        study_name=name,
        direction="maximize",
        sampler=make_sampler(seed + worker, n_startup_trials),
        load_if_exists=True,
    )
    check_or_set_attrs(optuna_study, study_attrs(study))
    if n_trials > 0 and n_workers > 1:
        optimize_in_workers(
            optuna_study,
            study,
            storage,
            n_trials=int(n_trials),
            n_workers=n_workers,
            n_jobs=int(n_jobs),
            timeout=timeout,
            seed=seed + worker,
            n_startup_trials=n_startup_trials,
        )
    elif n_trials > 0:
        optuna_study.optimize(study.objective, n_trials=int(n_trials), n_jobs=int(n_jobs), timeout=timeout)
    complete = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise QuantmlInputError(f"study {name!r} has no completed trial; run with n_trials>0")
    best = optuna_study.best_trial
    signal, alloc = SearchSpace.configs(best.params, study.base_signal, study.allocator)
    tuned = study.evaluate(signal, alloc)
    baseline = study.evaluate(study.base_signal, study.allocator)
    metrics = _metrics(tuned, baseline, best.value, len(complete), study.horizons)
    log.info(
        "study %s: %d trials, best tuning %s %.4g; selection %s %.4g (untuned baseline %.4g)",
        name,
        len(complete),
        settings.objective,
        best.value,
        settings.objective,
        tuned.selection_objective,
        baseline.selection_objective,
    )
    tune_run_id = None
    if log_to_mlflow:
        tune_run_id = _log_child_run(
            study, optuna_study, signal, alloc, tuned, baseline, metrics, storage, seed, worker, n_workers
        )
    outcome = TuneOutcome(name, dict(best.params), signal, alloc, tuned, baseline, metrics, tune_run_id, len(complete))
    outcome.book = study.book_name
    outcome.source_run_id = run_id
    outcome.notes = book_notes(study)
    outcome.lockbox = read_lockbox(run_id, tracking_uri)
    if attach:
        model, version = parse_attach(attach)
        outcome.attached = attach_to_model_version(
            model,
            version,
            signal,
            alloc,
            source_run_id=run_id,
            tune_run_id=tune_run_id,
            selection_sharpe=metrics.get("selection_sharpe_after_cost"),
            force=attach_force,
            tracking_uri=tracking_uri,
        )
    return outcome


def check_workers(n_workers, storage: str | None) -> int:
    """``study.n_workers`` as an int >= 1; several workers need a storage they share."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise QuantmlInputError(f"study.n_workers={n_workers!r}: give a whole number of processes >= 1")
    if n_workers > 1 and is_memory(storage):
        raise QuantmlInputError(
            f"study.n_workers={n_workers} with study.storage={storage}: worker processes need a storage they "
            "share, not memory; give study.storage=sqlite:///optuna.db (the workers wait on its lock) or "
            "study.storage=journal:///path/tune.log"
        )
    return n_workers


def worker_shares(n_trials: int, n_workers: int) -> list[int]:
    """Trials per worker: ``n_trials`` split as evenly as possible, the first workers one more."""
    base, extra = divmod(int(n_trials), int(n_workers))
    return [base + (1 if i < extra else 0) for i in range(int(n_workers))]


def optimize_in_workers(
    optuna_study: optuna.Study,
    study: ThresholdStudy,
    storage: str,
    n_trials: int,
    n_workers: int,
    n_jobs: int,
    timeout: float | None,
    seed: int,
    n_startup_trials: int,
) -> None:
    """Optimize ``optuna_study`` in ``n_workers`` processes: this one (worker 0, sampler seed
    ``seed``) and ``n_workers - 1`` started ones (worker ``i``: seed ``seed + i``), each running its
    share of ``n_trials`` (:func:`worker_shares`) on the shared ``storage``. The workers are fresh
    interpreters (``python -c``, the study's inputs pickled to a temporary file), so nothing of this
    process (threads, DB connections, an unguarded ``__main__``) is forked or re-run. Raises when a
    worker failed (after the others end)."""
    import pickle
    import subprocess
    import sys

    shares = worker_shares(n_trials, n_workers)
    procs = []
    with tempfile.TemporaryDirectory(prefix="quantml-tune-") as tmp:
        try:
            for i, share in enumerate(shares[1:], start=1):
                if share == 0:
                    continue
                job = {
                    "source": study.source,
                    "settings": study.settings,
                    "allocator": study.allocator,
                    "costs": study.costs,
                    "periods_per_year": study.periods_per_year,
                    "storage": storage,
                    "study_name": optuna_study.study_name,
                    "n_trials": share,
                    "n_jobs": n_jobs,
                    "timeout": timeout,
                    "seed": seed + i,
                    "n_startup_trials": n_startup_trials,
                }
                path = Path(tmp) / f"worker-{i}.pkl"
                path.write_bytes(pickle.dumps(job))
                code = f"from quantml.tuning.run import tune_worker; tune_worker({str(path)!r})"
                procs.append((i, subprocess.Popen([sys.executable, "-c", code])))
            log.info("study %s: %d worker processes, trials per worker %s", optuna_study.study_name, n_workers, shares)
            if shares[0]:  # the study was created with this process's sampler, seed ``seed``
                optuna_study.optimize(study.objective, n_trials=shares[0], n_jobs=n_jobs, timeout=timeout)
        except BaseException:
            for _, proc in procs:
                proc.kill()
            raise
        finally:
            for _, proc in procs:
                proc.wait()
    failed = [f"worker {i} (exit code {proc.returncode})" for i, proc in procs if proc.returncode != 0]
    if failed:
        raise RuntimeError(f"study {optuna_study.study_name}: {', '.join(failed)} failed; its traceback is above")


def tune_worker(job_file: str) -> None:
    """One started worker of :func:`optimize_in_workers`: its share of the trials on the shared
    study, from the pickled inputs in ``job_file``."""
    import pickle

    job = pickle.loads(Path(job_file).read_bytes())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = ThresholdStudy(job["source"], job["settings"], job["allocator"], job["costs"], job["periods_per_year"])
    optuna_study = optuna.load_study(
        study_name=job["study_name"],
        storage=make_storage(job["storage"]),
        sampler=make_sampler(job["seed"], job["n_startup_trials"]),
    )
    optuna_study.optimize(
        study.objective, n_trials=int(job["n_trials"]), n_jobs=int(job["n_jobs"]), timeout=job["timeout"]
    )


def book_notes(study: ThresholdStudy) -> list[str]:
    """Plain-language caveats on the book a study traded."""
    notes = []
    src = study.source
    if src.market is None:
        notes.append(
            f"run {src.run_id} has no {L.MARKET_ARTIFACT}: its books ran on the forecast bars only, not the "
            "full bar calendar its training backtests used; re-run `quantml train` for matching Sharpe ratios"
        )
    if study.strategy_cfg is None:
        notes.append(f"run {src.run_id} names no strategy in its config: the study traded the allocator book")
    if not study.reads_settings:
        notes.append(
            f"the run's book ({study.book_name}) reads no thresholds or allocator settings: every trial traded "
            "the same book; train with strategy=allocator to tune the book itself"
        )
    return notes


def _metrics(
    tuned: Evaluation, baseline: Evaluation, best_value: float, n_complete: int, horizons: list[str]
) -> dict[str, float]:
    out = {
        "best_value": float(best_value),
        "n_trials_complete": float(n_complete),
        "tune_objective": tuned.tune_objective,
        "selection_objective": tuned.selection_objective,
        "selection_baseline_objective": baseline.selection_objective,
    }
    for split, stats in (
        ("tune", tuned.tune),
        ("selection", tuned.selection),
        ("selection_baseline", baseline.selection),
    ):
        for k, name in STAT_KEYS.items():
            out[f"{split}_{name}"] = stats[k]
        if split != "selection_baseline":
            for h in horizons:
                for k in ("sharpe", "ann_return", "max_drawdown"):
                    if f"{k}/{h}" in stats:
                        out[metric_name(split, STAT_KEYS[k], h)] = stats[f"{k}/{h}"]
    return {k: (float(v) if abs(float(v)) != float("inf") else float("nan")) for k, v in out.items()}


def _log_child_run(
    study: ThresholdStudy,
    optuna_study: optuna.Study,
    signal: SignalConfig,
    alloc: AllocatorConfig,
    tuned: Evaluation,
    baseline: Evaluation,
    metrics: dict[str, float],
    storage: str | None,
    seed: int,
    worker: int,
    n_workers: int = 1,
) -> str:
    """The study as a ``quantml.kind=tune`` child run of its source run, through the run writer."""
    source = study.source
    writer = RunWriter(source.experiment_id)
    run = writer.start_tune(
        source.run_id,
        study.settings.objective,
        tags={
            L.TAG_OPTUNA_STUDY_NAME: optuna_study.study_name,
            L.TAG_OPTUNA_STORAGE: redact(storage),
            SIGNAL_TAG: signal.to_json(),
            ALLOCATOR_TAG: json.dumps(alloc.to_dict(), sort_keys=True),
        },
    )
    with run.ending():
        s = study.settings
        run.log_params(
            {
                "objective": s.objective,
                "dd_penalty": s.dd_penalty,
                "tune_fraction": s.tune_fraction,
                "split_method": study.split.method,
                "cutoff": str(study.split.cutoff),
                "tune_folds": ",".join(map(str, study.split.tune_folds)),
                "selection_folds": ",".join(map(str, study.split.selection_folds)),
                "periods_per_year": study.periods_per_year,
                "book": study.book_name,
                "market_calendar": "yes" if study.source.market is not None else "no",
                "seed": seed,
                "worker": worker,
                "n_workers": n_workers,
                **{f"cost.{k}": v for k, v in study.costs.to_dict().items()},
                **{f"best.{k}": v for k, v in optuna_study.best_params.items()},
            }
        )
        run.log_metrics({k: v for k, v in metrics.items() if v == v})
        folds = fold_table(study, tuned, baseline)
        _log_fold_metrics(run, folds)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fold_sharpe.csv"
            folds.to_csv(path, index=False)
            run.log_artifact(str(path), "tune")
        run.log_dict(optuna_study.best_params, "tune/best_params.json")
        run.log_dict(signal.to_dict(), "tune/signal.json")
        run.log_dict(alloc.to_dict(), "tune/allocator.json")
        run.log_dict(study_attrs(study), "tune/study.json")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trials.csv"
            trials_frame(optuna_study).to_csv(path, index=False)
            run.log_artifact(str(path), "tune")
        for name, fig in study_figures(optuna_study, seed).items():
            run.log_figure(fig, f"figures/{name}")
            plt.close(fig)
        h0 = study.horizons[0]
        tune_chain = chain_folds(tuned.results, study.split.tune_folds, h0, study.periods_per_year)
        sel_chain = chain_folds(tuned.results, study.split.selection_folds, h0, study.periods_per_year)
        log_backtest(tune_chain, "tune", per_bar_steps=False, log_stats=False, figures=False, run=run)
        log_backtest(sel_chain, "selection", per_bar_steps=True, log_stats=False, run=run)
        fig = equity_figure(chain_folds(tuned.results, None, h0, study.periods_per_year), f"tuned {h0}, folds chained")
        run.log_figure(fig, "figures/tuned_equity.png")
        plt.close(fig)
    return run.run_id


FOLD_SHARPE_METRIC = "fold_sharpe_after_cost"  # <split>_fold_sharpe_after_cost/<h>, step = fold id


def fold_table(study: ThresholdStudy, tuned: Evaluation, baseline: Evaluation) -> pd.DataFrame:
    """One row per (fold, horizon): the split it belongs to, the tuned book's and the untuned
    book's after-cost Sharpe (``tune/fold_sharpe.csv``; the gate recomputes the same figures)."""
    rows = []
    for h in study.horizons:
        for f, value in tuned.fold_sharpe.get(h, {}).items():
            split = "tune" if f in study.split.tune_folds else "selection"
            base = baseline.fold_sharpe.get(h, {}).get(f, float("nan"))
            rows.append({"fold": int(f), "split": split, "horizon": h, "sharpe_after_cost": value, "baseline": base})
    return pd.DataFrame(rows, columns=["fold", "split", "horizon", "sharpe_after_cost", "baseline"])


def _log_fold_metrics(run, folds: pd.DataFrame) -> None:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    rows = []
    for r in folds.itertuples(index=False):
        for prefix, value in ((r.split, r.sharpe_after_cost), (f"{r.split}_baseline", r.baseline)):
            if value == value:
                rows.append(
                    Metric(metric_name(prefix, FOLD_SHARPE_METRIC, r.horizon), float(value), stamp, int(r.fold))
                )
    if rows:
        mlflow.MlflowClient().log_batch(run.run_id, metrics=rows)


def chain_folds(results: dict, folds, horizon: str, periods_per_year: float):
    """The per-fold backtests of one horizon (path 0), one after another, as one result for the
    figures and ``backtest/*_bars.csv`` (columns ``fold`` and ``timestamp``; equity restarts at 0)."""
    from quantml.backtest.vectorised import BacktestResult, result_stats
    from quantml.market.performance import compounded_drawdown

    keys = sorted(k for k in results if k[1] == horizon and (folds is None or k[0] in set(folds)))
    keys = [k for k in keys if k[2] == min(kk[2] for kk in keys if kk[0] == k[0])]
    bars = pd.concat(
        [results[k].bars.rename_axis("timestamp").reset_index().assign(fold=k[0]) for k in keys], ignore_index=True
    )
    positions = pd.concat([results[k].positions.reset_index(drop=True) for k in keys], ignore_index=True).fillna(0.0)
    bars["equity"] = bars["pnl"].cumsum()
    bars["drawdown"] = compounded_drawdown(bars["pnl"].to_numpy())
    stats = result_stats(bars["pnl"].to_numpy(), bars["turnover"].to_numpy(), periods_per_year)
    return BacktestResult(bars, positions, None, stats, float(periods_per_year))


def study_figures(optuna_study: optuna.Study, seed: int = 0) -> dict:
    """``optimization_history.png`` and, with >= 2 completed trials, ``param_importances.png``."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    figs = {}
    # optuna's plots switch the global matplotlib style: keep that change local
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is flagged experimental
        figs["optimization_history.png"] = ovm.plot_optimization_history(optuna_study).figure
        complete = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) >= 2:
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
                figs["param_importances.png"] = ovm.plot_param_importances(optuna_study, evaluator=evaluator).figure
            except (RuntimeError, ValueError) as exc:  # e.g. every trial drew the same values
                log.warning("no parameter-importance figure: %s", exc)
    for fig in figs.values():
        fig.set_size_inches(8, 5)
        fig.tight_layout()
    return figs


def parse_attach(value: str) -> tuple[str, str]:
    """``"NAME:VERSION"`` -> ``(NAME, VERSION)``."""
    name, sep, version = str(value).rpartition(":")
    if not sep or not name or not version.isdigit():
        raise QuantmlInputError(f"attach={value!r}: use attach=NAME:VERSION, e.g. attach=btc_lgbm:3")
    return name, version


def attach_to_model_version(
    name: str,
    version: str,
    signal: SignalConfig,
    allocator: AllocatorConfig | None = None,
    source_run_id: str | None = None,
    tune_run_id: str | None = None,
    selection_sharpe: float | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    holdout_sharpe: float | None = None,
):
    """Register a NEW version of ``name`` whose bundle carries the tuned settings; returns it.

    Versions are immutable: the source version ``name``:``version`` is left as it is. Its model
    is copied, the bundle's ``signal`` replaced by ``signal`` and its ``allocator`` set, logged as
    a pyfunc onto the tune run (else the source run) and registered with lineage tags
    (``quantml.source_version``, ``quantml.tune_run``, ``quantml.tune_selection_sharpe``) and
    alias ``candidate``: it must pass the gates again before ``promote``. Refuses a version
    registered from another run than ``source_run_id`` unless ``force``.
    ``holdout_sharpe``: the 0.2 name of ``selection_sharpe``.
    """
    from quantml.registry.commands import copy_version_with_bundle

    if selection_sharpe is None:
        selection_sharpe = holdout_sharpe
    client = mlflow.MlflowClient(tracking_uri)
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise QuantmlInputError(
            f"model version {name}:{version} is not registered in {client.tracking_uri}; "
            "register it first (quantml registry) or fix attach=NAME:VERSION"
        ) from exc
    if source_run_id and mv.run_id and mv.run_id != source_run_id and not force:
        raise QuantmlInputError(
            f"model version {name}:{version} comes from run {mv.run_id}, the thresholds were "
            f"tuned on run {source_run_id}; attach to that run's version, or pass "
            "attach_force=true"
        )
    tags = {L.TAG_SOURCE_VERSION: str(mv.version)}
    if tune_run_id:
        tags[L.TAG_TUNE_RUN] = tune_run_id
    if selection_sharpe is not None and selection_sharpe == selection_sharpe:
        tags[L.TAG_TUNE_SELECTION_SHARPE] = f"{selection_sharpe:.6g}"

    def settle(bundle) -> None:
        bundle.signal = signal.to_dict()
        bundle.allocator = allocator.to_dict() if allocator is not None else None
        bundle.metadata = {**(bundle.metadata or {}), "tuned": dict(tags)}

    new = copy_version_with_bundle(
        client,
        name,
        str(mv.version),
        settle,
        log_run_id=tune_run_id or mv.run_id,
        extra_tags=tags,
        # without a tune run the copy goes on the source run, beside (not over) its own `model`
        artifact_name=L.MODEL_ARTIFACT if tune_run_id else L.TUNED_MODEL_ARTIFACT,
    )
    log.info(
        "registered %s v%s: v%s with the tuned thresholds of tune run %s in its bundle (alias candidate; "
        "gate and promote it)",
        name,
        new.version,
        mv.version,
        tune_run_id or "-",
    )
    return new


def version_selection_sharpe(tags: dict[str, str]) -> float | None:
    """A tuned version's selection Sharpe: ``quantml.tune_selection_sharpe``, else (versions tuned
    before the rename) ``quantml.tune_holdout_sharpe``; None when neither is there."""
    text = tags.get(L.TAG_TUNE_SELECTION_SHARPE) or tags.get(L.TAG_TUNE_HOLDOUT_SHARPE)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def read_lockbox(run_id: str, tracking_uri: str | None = None) -> dict[str, float]:
    """The source run's lockbox metrics (``holdout_*``), read through the reader (the read is
    counted in ``quantml.lockbox_reads``); ``{}`` when it has none."""
    from quantml.tracking.reader import RunReader

    try:
        return RunReader(tracking_uri).parent(run_id, action="tune").lockbox_metrics()
    except QuantmlInputError:
        return {}


def _validation_problem(source: SourceRun) -> str | None:
    method = source.tags.get(L.TAG_VALIDATION) or str((source.cfg.get("validation") or {}).get("method") or "")
    if not method or method in L.TRADABLE_VALIDATIONS:
        return None
    return (
        f"run {source.run_id} was validated with {method}: its fold models train on data later than "
        f"their test blocks, so a tuning/selection cut of its out-of-sample predictions is not out of "
        f"sample and its backtests are not tradable; re-run `quantml train validation={L.WALK_FORWARD}` "
        f"and tune that run"
    )


def read_model_version_signal(name: str, version: str, tracking_uri: str | None = None) -> SignalConfig | None:
    """The tuned :class:`SignalConfig` of a registered version: its bundle's, for a version made by
    ``attach=`` (lineage tag ``quantml.source_version``); else a 0.1-style ``quantml.signal`` tag;
    else None."""
    client = mlflow.MlflowClient(tracking_uri)
    mv = client.get_model_version(name, str(version))
    tags = mv.tags or {}
    if L.TAG_SOURCE_VERSION in tags:
        from quantml.registry.store import RegistryStore
        from quantml.tracking.pyfunc import load_bundle

        store = RegistryStore(client.tracking_uri)
        with tempfile.TemporaryDirectory() as tmp, store.global_uri():
            bundle = load_bundle(f"models:/{name}/{mv.version}", tmp)
        return SignalConfig.from_dict(bundle.signal)
    text = tags.get(SIGNAL_TAG)
    return SignalConfig.from_json(text) if text else None


def settings_from_config(cfg) -> TuneSettings:
    """:class:`TuneSettings` from ``conf/tune.yaml``'s ``objective``, ``split`` and ``search``."""
    obj, split, search = cfg.get("objective", {}), cfg.get("split", {}), cfg.get("search", {})
    tv = search.get("target_vol")
    cq = search.get("confidence_quantile")
    return TuneSettings(
        objective=str(obj.get("name", "sharpe")),
        dd_penalty=float(obj.get("dd_penalty", 1.0)),
        tune_fraction=float(split.get("tune_fraction", 0.6)),
        threshold_quantile=float(search.get("threshold_quantile", 0.99)),
        confidence_quantile=None if cq is None else float(cq),
        target_vol=None if tv is None else tuple(float(x) for x in tv),
        tune_risk_budget=bool(search.get("risk_budget", True)),
        min_active_fraction=float(search.get("min_active_fraction", 0.05)),
    )
