"""Promotion gates: read-only checks of a candidate run against a baseline.

Every gate reads the run layout (``quantml.contracts.run_layout``: parent run + nested
fold runs) through :class:`quantml.tracking.reader.RunReader` and returns a
:class:`GateResult` whose ``detail`` says what was measured and, on failure, by how much
it missed. Nothing here writes to MLflow but the lockbox read counter: the ``holdout`` gate
(off by default) reads the candidate's lockbox (``holdout_*``), which increments its parent's
``quantml.lockbox_reads``.

The Sharpe gate judges the book that would be traded (:mod:`quantml.registry.book`): the
candidate version's signal and allocator settings in the source run's configured strategy,
recomputed fold by fold on the run's out-of-sample predictions and market calendar, on the
development folds its thresholds were not tuned on, against the baseline's book recomputed the
same way on the same folds. Runs without out-of-sample predictions fall back to the fold runs'
logged ``test_sharpe_after_cost/<h>`` (with a note).

The ``dsr`` gate (off by default) asks the same book for its deflated Sharpe ratio: the
probability that its true Sharpe ratio is positive once the number of trials tried on the same
data (every parent run on the candidate's ``quantml.data_fingerprint``) is accounted for
(:mod:`quantml.evaluation.overfitting`, docs/sweeps.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import HORIZON_SEPARATOR, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.metrics import METRICS_VERSION, format_lockbox
from quantml.portfolio.allocator import AllocatorConfig
from quantml.signals.core import SignalConfig
from quantml.tracking.reader import FoldRun, ParentRun, RunReader, metric_horizons

RECOMPUTED_METRIC = "test_sharpe_after_cost"  # the fold metric the book recomputation reproduces
FEWER_WINDOWS = ("all", "fail")

GATES_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "registry" / "gates.yaml"
AUDIT_ARTIFACT = L.AUDIT_ARTIFACT


def load_gates_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The packaged ``conf/registry/gates.yaml``, merged with ``path`` and dotlist ``overrides``."""
    cfg = OmegaConf.load(GATES_CONFIG)
    if path is not None:
        if not Path(path).is_file():
            raise QuantmlInputError(f"gates config {path} does not exist; pass a YAML file like {GATES_CONFIG}")
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


# -- what the gates read ------------------------------------------------------------------------
# A fold (child) run as the gates need it: the reader's FoldRun (id, fold id, test window, metrics).
FoldSummary = FoldRun


@dataclass
class RunSummary:
    """A parent run with its fold runs, as the gates need them."""

    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    folds: list[FoldRun] = field(default_factory=list)
    parent: ParentRun | None = field(default=None, repr=False)

    @property
    def horizons(self) -> list[str]:
        tagged = L.split_list_tag(self.tags.get(L.TAG_HORIZONS))
        if tagged:
            return tagged
        found = set().union(*(metric_horizons(f.metrics) for f in self.folds)) | metric_horizons(self.metrics)
        return sorted(found)


def _reader(client: MlflowClient | RunReader) -> RunReader:
    return client if isinstance(client, RunReader) else RunReader(client=client)


def load_run_summary(client: MlflowClient | RunReader, run_id: str) -> RunSummary:
    """Read the parent run ``run_id`` and its fold runs through the run reader."""
    reader = _reader(client)
    parent = reader.parent(run_id, action="gate", kinds=L.REGISTRABLE_KINDS)
    return RunSummary(
        run_id=parent.run_id,
        status=parent.status,
        tags=parent.tags,
        metrics=parent.metrics,
        folds=parent.folds(),
        parent=parent,
    )


# -- results ---------------------------------------------------------------------------------------
@dataclass
class GateResult:
    name: str
    passed: bool
    detail: str
    # what the gate measured, for programs: the Sharpe gate's {"candidate"|"baseline": {h: {fold id: sharpe}}}
    figures: dict = field(default_factory=dict)


@dataclass
class BookSettings:
    """The settings of a version's book: ``signal``/``allocator`` (None: the run's own, i.e. the
    untuned book), the fold ids to judge it on (None: every fold), and ``problem``: why its book
    cannot be judged honestly (the Sharpe gate then fails saying so)."""

    label: str = "untuned"
    signal: SignalConfig | None = None
    allocator: AllocatorConfig | None = None
    folds: tuple[int, ...] | None = None
    problem: str | None = None


@dataclass
class Baseline:
    """What the candidate is compared with: a run (the active version's or a named one) or zero."""

    label: str
    run: RunSummary | None = None
    short: str = ""
    book: BookSettings = field(default_factory=BookSettings)

    def __post_init__(self) -> None:
        self.short = self.short or self.label.split(" (")[0]


@dataclass
class GateReport:
    """All gate results for one candidate; ``passed`` when every enabled gate passed."""

    subject: str
    baseline: str
    results: list[GateResult]
    lockbox: str = ""  # the candidate's lockbox figures, printed beside the verdict (never gated on by default)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]

    def summary(self) -> str:
        return "passed" if self.passed else "failed: " + ", ".join(self.failed)

    def to_text(self) -> str:
        width = max((len(r.name) for r in self.results), default=4)
        lines = [f"Promotion gates for {self.subject}", f"baseline: {self.baseline}"]
        for r in self.results:
            head = f"  {'PASS' if r.passed else 'FAIL'}  {r.name:<{width}}  "
            body = r.detail.splitlines() or [""]
            lines.append(head + body[0])
            lines += [" " * len(head) + extra for extra in body[1:]]
        lines.append(f"result: {'PASSED' if self.passed else 'FAILED (' + ', '.join(self.failed) + ')'}")
        if self.lockbox:
            lines.append(self.lockbox)
        return "\n".join(lines)


# -- the gates ----------------------------------------------------------------------------------
def gate_leakage_audit(client: MlflowClient | RunReader, run: RunSummary, cfg) -> GateResult:
    if run.tags.get(L.TAG_KIND) == L.KIND_STACK:
        return _stack_leakage_audit(client, run)
    tag = run.tags.get(L.TAG_LEAKAGE_AUDIT)
    audit = _reader(client).leakage_audit(run.run_id) if tag != "clean" else None
    if tag is not None:
        clean = tag == "clean"
        detail = f"parent run tag {L.TAG_LEAKAGE_AUDIT}={tag!r}"
    elif audit is not None:
        clean = bool(audit.get("clean"))
        detail = f"artifact {AUDIT_ARTIFACT}: clean={clean}"
    else:
        return GateResult(
            "leakage_audit",
            False,
            f"run {run.run_id} records no leakage audit (no tag {L.TAG_LEAKAGE_AUDIT}, no "
            f"{AUDIT_ARTIFACT}); retrain with the current `quantml train`",
        )
    if not clean and audit is not None:
        bad = [
            k
            for k, v in (audit.get("checks") or {}).items()
            if v is False or (isinstance(v, dict) and v.get("ok", v.get("clean", True)) is False)
        ]
        if bad:
            detail += f"; failed checks: {', '.join(bad)}"
    return GateResult("leakage_audit", clean, detail)


def _stack_leakage_audit(client: MlflowClient | RunReader, run: RunSummary) -> GateResult:
    """A stack run is clean when its OOF table's audit was clean (not forced) and every expert's
    own leakage audit was clean."""
    reader = _reader(client)
    stack = run.tags.get(L.TAG_STACK_AUDIT)
    forced = str(run.tags.get(L.TAG_STACK_FORCED, "")).lower() == "true"
    parts = [f"stack run tag {L.TAG_STACK_AUDIT}={stack!r}" + (" (forced)" if forced else "")]
    clean = stack == "clean" and not forced
    for expert in L.split_list_tag(run.tags.get(L.TAG_STACK_EXPERTS)):
        try:
            tag = reader.get_run(expert).data.tags.get(L.TAG_LEAKAGE_AUDIT)
        except QuantmlInputError:
            tag = None
        clean &= tag == "clean"
        parts.append(f"expert {expert[:12]} {L.TAG_LEAKAGE_AUDIT}={tag!r}")
    return GateResult("leakage_audit", clean, "; ".join(parts))


def _logged(run: RunSummary | None, key: str) -> dict[str, tuple[FoldRun, float]]:
    if run is None:
        return {}
    return {f.fold_id: (f, float(f.metrics[key])) for f in run.folds if _finite(f.metrics.get(key))}


def _recomputed(
    run: RunSummary, book: BookSettings, horizons: list[str], notes: list[str], who: str
) -> dict[str, dict[str, tuple[FoldRun, float]]] | None:
    """``{h: {fold id: (fold run, Sharpe of the version's book)}}``, or None when the run has no
    out-of-sample predictions to recompute from (a note says the logged figure is used)."""
    from quantml.registry.book import describe, run_books

    books = run_books(run.parent) if run.parent is not None else None
    if books is None:
        notes.append(
            f"{who}: run {run.run_id} (layout {run.parent.layout_version if run.parent else '?'}) has no "
            f"{L.OOS_ARTIFACT} with folds: its fold runs' logged {RECOMPUTED_METRIC} is judged, not its book"
        )
        return None
    strategy = books.strategy(book.signal, book.allocator)
    if not books.has_market:
        notes.append(
            f"{who}: run {run.run_id} has no {L.MARKET_ARTIFACT}: its book runs on the forecast bars only "
            f"(training's backtests used the full bar calendar); re-run `quantml train`"
        )
    by_id = {f.fold_id: f for f in run.folds}
    sharpe = books.books.fold_sharpe(strategy, book.folds, horizons)
    out: dict[str, dict[str, tuple[FoldRun, float]]] = {}
    for h, per in sharpe.items():
        out[h] = {str(f): (by_id[str(f)], v) for f, v in per.items() if str(f) in by_id and _finite(v)}
    notes.append(f"{who}: {describe(strategy)} book, {book.label}")
    return out


def gate_sharpe(run: RunSummary, baseline: Baseline, cfg, candidate: BookSettings | None = None) -> GateResult:
    """Candidate's book beats the baseline's in >= ``min_windows`` matched walk-forward windows, per
    horizon, on the folds the candidate's thresholds were not tuned on (see the module doc)."""
    metric, min_windows = str(cfg.metric), int(cfg.min_windows)
    margin, match_on = float(cfg.get("margin", 0.0)), str(cfg.get("match_on", "time_range"))
    fewer = str(cfg.get("fewer_windows", "all"))
    if match_on not in ("time_range", "fold_id"):
        raise QuantmlInputError(f"gates sharpe.match_on={match_on!r}; use time_range or fold_id")
    if fewer not in FEWER_WINDOWS:
        raise QuantmlInputError(f"gates sharpe.fewer_windows={fewer!r}; use one of {FEWER_WINDOWS}")
    refusal = sharpe_refusal(run, baseline)
    if refusal:
        return GateResult("sharpe", False, refusal)
    candidate = candidate or BookSettings()
    if candidate.problem:
        return GateResult("sharpe", False, f"candidate: {candidate.problem}")
    horizons = list(cfg.horizons) if cfg.get("horizons") else run.horizons
    if not horizons:
        return GateResult("sharpe", False, f"run {run.run_id} logs no horizons (tag {L.TAG_HORIZONS})")
    notes: list[str] = []
    recompute = metric == RECOMPUTED_METRIC
    cand_books = _recomputed(run, candidate, horizons, notes, "candidate") if recompute else None
    base_run = baseline.run
    base_books = None
    if recompute and cand_books is not None and base_run is not None:
        base_books = _recomputed(base_run, baseline.book, horizons, notes, f"baseline {baseline.short}")
    judged = None if candidate.folds is None else {str(f) for f in candidate.folds}
    lines, ok = [], True
    figures: dict = {"candidate": {}, "baseline": {}}
    for h in horizons:
        key = f"{metric}{HORIZON_SEPARATOR}{h}"
        if cand_books is not None:
            cand_by_id = cand_books.get(h, {})
        else:
            cand_by_id = {i: v for i, v in _logged(run, key).items() if judged is None or i in judged}
        cand = {fr.window(match_on): (fr, v) for fr, v in cand_by_id.values()}
        if base_run is not None and base_books is not None:
            base_by_id = base_books.get(h, {})
        else:
            base_by_id = _logged(base_run, key)
        if base_run is not None and base_by_id:
            base = {fr.window(match_on): v for fr, v in base_by_id.values()}
            against = baseline.short
        else:
            base = {w: 0.0 for w in cand}
            against = "0" if base_run is None else f"0 ({baseline.short} has no {key})"
        common = [w for w in cand if w in base]
        figures["candidate"][h] = {fr.fold_id: v for fr, v in cand.values()}
        figures["baseline"][h] = {fr.fold_id: v for fr, v in base_by_id.values()} if base_run is not None else {}
        if not cand:
            ok = False
            lines.append(f"{h}: the candidate has no {key} on the folds it is judged on")
            continue
        if not common:
            ok = False
            lines.append(
                f"{h}: no walk-forward window in common with {against} (matched on {match_on}); "
                f"retrain on the same splits, use baseline=RUN_ID, or sharpe.match_on=fold_id"
            )
            continue
        deltas = [(cand[w][0], cand[w][1], cand[w][1] - base[w]) for w in common]
        wins = sum(d > margin for _, _, d in deltas)
        need, rule = min_windows, f"needs {min_windows}"
        if len(common) < min_windows:
            if fewer == "all":
                need = len(common)
                rule = f"only {len(common)} comparable < min_windows {min_windows}: all {need} must be better"
            else:
                rule = (
                    f"only {len(common)} comparable < min_windows {min_windows}: cannot pass "
                    f"(sharpe.fewer_windows=all requires all of them instead)"
                )
        passed = wins >= need
        ok &= passed
        shown = ", ".join(f"{f.fold_id}:{d:+.3f}" for f, _, d in deltas)
        sharpe_shown = ", ".join(f"{f.fold_id}:{v:.3f}" for f, v, _ in deltas)
        gap = "" if passed else f", {need - wins} short"
        by = f" by more than {margin:g}" if margin else ""
        lines.append(
            f"{h}: {key} better than {against}{by} in {wins}/{len(common)} windows "
            f"({rule}{gap}); delta per fold {shown}; candidate per fold {sharpe_shown}"
        )
    return GateResult("sharpe", ok, "\n".join(lines + [f"note: {n}" for n in notes]), figures)


def sharpe_refusal(run: RunSummary, baseline: Baseline) -> str | None:
    """Why the after-cost Sharpe comparison cannot be made at all, or None.

    Refused: a candidate (or baseline) validated with purged K-fold or CPCV (its fold backtests
    are not tradable), and a baseline whose metrics were computed under another metrics version."""
    for who, summary in (("candidate", run), (f"baseline {baseline.short}", baseline.run)):
        problem = summary.parent.walk_forward_problem() if summary is not None and summary.parent else None
        if problem:
            return f"{who}: {problem}"
    if baseline.run is not None:
        cand_v, base_v = _metrics_version(run), _metrics_version(baseline.run)
        if cand_v != base_v:
            return (
                f"metrics version differs: candidate run {run.run_id} has {L.TAG_METRICS_VERSION}={cand_v}, "
                f"baseline {baseline.short} (run {baseline.run.run_id}) has {base_v}; their Sharpe ratios are "
                f"computed differently and are not compared. Recompute the baseline: re-run `quantml train` "
                f"with the baseline's config under this quantml (metrics version {METRICS_VERSION}), "
                f"then pass baseline=<new run id> (or promote its registered version)"
            )
    return None


def _metrics_version(run: RunSummary) -> str:
    if run.parent is not None:
        return run.parent.metrics_version
    return str(run.tags.get(L.TAG_METRICS_VERSION) or "1")


def gate_calibration(run: RunSummary, cfg) -> GateResult:
    bound, metric = float(cfg.max_ece), str(cfg.metric)
    horizons = list(cfg.horizons) if cfg.get("horizons") else run.horizons
    lines, ok = [], bool(horizons)
    for h in horizons:
        key = f"{metric}{HORIZON_SEPARATOR}{h}"
        value = run.metrics.get(key)
        if not _finite(value):
            ok = False
            lines.append(f"{h}: parent run logs no {key}")
        elif value > bound:
            ok = False
            lines.append(f"{h}: {key}={value:.4f} > {bound:g} by {value - bound:.4f}")
        else:
            lines.append(f"{h}: {key}={value:.4f} <= {bound:g}")
    return GateResult("calibration", ok, "; ".join(lines) or "no horizons to check")


def gate_folds(run: RunSummary, cfg) -> GateResult:
    need, have = int(cfg.min_folds), len(run.folds)
    if have >= need:
        return GateResult("folds", True, f"{have} fold runs >= {need}")
    return GateResult(
        "folds",
        False,
        f"{have} fold runs < {need} (short by {need - have}); use more walk-forward splits (validation.n_splits)",
    )


def gate_holdout(run: RunSummary, cfg, lockbox: dict[str, float]) -> GateResult:
    """The lockbox gate (off by default; using it is a lockbox read): every horizon's
    ``<metric>/<h>`` on the parent run >= ``min``."""
    metric, bound = str(cfg.get("metric", "holdout_sharpe_after_cost")), float(cfg.get("min", 0.0))
    horizons = list(cfg.horizons) if cfg.get("horizons") else run.horizons
    if not lockbox:
        return GateResult(
            "holdout",
            False,
            f"run {run.run_id} has no lockbox ({L.LOCKBOX_PREFIX}* metrics): an older run; retrain with this "
            f"quantml, or disable the gate with gates.holdout.enabled=false",
        )
    lines, ok = [], bool(horizons)
    for h in horizons:
        key = f"{metric}{HORIZON_SEPARATOR}{h}"
        value = lockbox.get(key)
        if not _finite(value):
            ok = False
            lines.append(f"{h}: no {key} on the parent run")
        else:
            ok &= value >= bound
            lines.append(f"{h}: {key}={value:.4f} {'>=' if value >= bound else '<'} {bound:g}")
    return GateResult("holdout", ok, "; ".join(lines) + " (a lockbox read, counted)")


# -- the deflated Sharpe ratio of the book (off by default) ---------------------------------------
def bar_returns(books, horizon: str, strategy=None, folds=None):
    """A run's book per bar at ``horizon`` (:class:`~quantml.registry.book.RunBooks`: the one book the
    Sharpe gate judges; ``strategy`` None: the run's own): each fold's out-of-sample backtest (a
    fold's lowest path), folds one after another on the run's market calendar. A bar two folds'
    books both cover (one fold's last holding over the next fold's first bars) carries their summed
    PnL. A ``pd.Series`` of after-cost PnL indexed by UTC timestamp, sorted; None when no fold of
    ``folds`` (None: every fold) has the horizon."""
    import pandas as pd

    results = books.books.results(strategy or books.strategy(), folds=folds, horizons=[horizon])
    if not results:
        return None
    lowest: dict[int, int] = {}
    for f, _, path in results:
        lowest[f] = min(path, lowest.get(f, path))
    parts = [results[k].pnl for k in sorted(results) if k[2] == lowest[k[0]]]
    pnl = pd.concat(parts)
    return pnl.groupby(level=0).sum().sort_index()


@dataclass
class TrialCount:
    """How many trials a selection was made from: ``n_trials`` (counted, or given), ``source``
    (``store`` | ``given``), the counted parent ``runs`` and a one-line ``description``."""

    n_trials: float
    source: str
    description: str
    runs: list = field(default_factory=list, repr=False)
    by_status: dict[str, int] = field(default_factory=dict)


def _trial_status(run: ParentRun) -> str:
    if str(run.tags.get(L.TAG_PRUNED, "")).lower() == "true":
        return "pruned"
    return {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running"}.get(
        run.status, run.status.lower()
    )


def count_trials(reader: RunReader, fingerprint: str | None, also=(), given: float | None = None) -> TrialCount:
    """Every trial tried on the data ``fingerprint``: each parent run of the store tagged with it
    (every experiment and sweep, pruned and failed trials included), plus the runs ``also`` (e.g. a
    sweep's runs that failed before recording a fingerprint); ``given`` (an effective number of
    trials, >= 1) replaces the count, which is still described."""
    found = reader.parents_on_fingerprint(fingerprint) if fingerprint else []
    seen = {r.run_id for r in found}
    extra = [r for r in also if r.run_id not in seen]
    runs = found + extra
    by_status: dict[str, int] = {}
    for r in runs:
        status = _trial_status(r)
        by_status[status] = by_status.get(status, 0) + 1
    sweeps = {r.tags.get(L.TAG_SWEEP_DIR) for r in runs if r.tags.get(L.TAG_SWEEP_DIR)}
    experiments = {r.experiment_id for r in runs}
    statuses = ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()))
    where = f"data fingerprint {fingerprint}" if fingerprint else "no data fingerprint"
    text = (
        f"{len(found)} parent run(s) of the store on {where} ({statuses}; "
        f"{len(sweeps)} sweep dir(s), {len(experiments)} experiment(s))"
    )
    if extra:
        text += f", plus {len(extra)} run(s) of this selection not tagged with that fingerprint"
    if given is not None:
        if not float(given) >= 1:
            raise QuantmlInputError(f"n_trials={given}: the number of trials must be >= 1 (or null: count them)")
        return TrialCount(
            float(given), "given", f"n_trials={float(given):g} given; the store has {text}", runs, by_status
        )
    return TrialCount(float(len(runs)), "store", f"N={len(runs)} counted: {text}", runs, by_status)


def trial_sharpe_variance(runs, horizon: str, cache: dict | None = None) -> tuple[float | None, int]:
    """``(V[SR], k)``: the sample variance (ddof=1) of the per-bar Sharpe ratios of the books of the
    ``k`` finished ``runs`` with out-of-sample predictions at ``horizon``; V is None when k < 2.
    ``cache``: ``{run id: per-bar returns}`` filled as the books are computed."""
    import numpy as np

    from quantml.evaluation.overfitting import per_period_sharpe
    from quantml.registry.book import run_books

    cache = {} if cache is None else cache
    sharpes = []
    for r in runs:
        if r.run_id not in cache:
            cache[r.run_id] = None
            if r.status == "FINISHED" and r.walk_forward_problem() is None:
                books = run_books(r)
                cache[r.run_id] = bar_returns(books, horizon) if books is not None else None
        series = cache[r.run_id]
        if series is not None and len(series) >= 2:
            sharpes.append(per_period_sharpe(series.to_numpy()))
    sharpes = [v for v in sharpes if math.isfinite(v)]
    if len(sharpes) < 2:
        return None, len(sharpes)
    return float(np.var(sharpes, ddof=1)), len(sharpes)


def gate_dsr(
    client: MlflowClient | RunReader, run: RunSummary, cfg, candidate: BookSettings | None = None
) -> GateResult:
    """The deflated Sharpe ratio of the candidate's book >= ``min_probability`` at every horizon.

    The book is the one the Sharpe gate judges (the version's settings, on the folds it may be
    judged on); N counts every parent run on the candidate's data fingerprint in the store
    (``n_trials``: an effective number instead); V[SR] is the variance of those trials' book Sharpe
    ratios (``sr_variance``: per bar, instead). A candidate chosen out of many trials must clear the
    bar its search raised (docs/sweeps.md)."""
    from quantml.evaluation.overfitting import deflated_sharpe
    from quantml.registry.book import run_books

    reader = _reader(client)
    bound = float(cfg.get("min_probability", 0.95))
    parent = run.parent or reader.parent(run.run_id, action="gate", kinds=L.REGISTRABLE_KINDS)
    problem = parent.walk_forward_problem()
    if problem:
        return GateResult("dsr", False, f"candidate: {problem}")
    candidate = candidate or BookSettings()
    if candidate.problem:
        return GateResult("dsr", False, f"candidate: {candidate.problem}")
    books = run_books(parent)
    if books is None:
        return GateResult(
            "dsr",
            False,
            f"run {run.run_id} has no {L.OOS_ARTIFACT} with folds, so its book's per-bar returns are unknown; "
            f"re-run `quantml train`, or disable the gate with gates.dsr.enabled=false",
        )
    fingerprint = run.tags.get(L.TAG_DATA_FINGERPRINT)
    given = cfg.get("n_trials")
    if not fingerprint and given is None:
        return GateResult(
            "dsr",
            False,
            f"run {run.run_id} records no {L.TAG_DATA_FINGERPRINT}, so the trials tried on its data cannot be "
            f"counted; set gates.dsr.n_trials=N (every trial tried before choosing it)",
        )
    count = count_trials(reader, fingerprint, also=[parent], given=given)
    horizons = list(cfg.horizons) if cfg.get("horizons") else run.horizons
    strategy = books.strategy(candidate.signal, candidate.allocator)
    lines, ok, cache, figures = [], bool(horizons), {}, {}
    for h in horizons:
        own = bar_returns(books, h, strategy, candidate.folds)
        if own is None or len(own) < 2:
            ok = False
            lines.append(f"{h}: the candidate's book has no out-of-sample bars at this horizon")
            continue
        variance = cfg.get("sr_variance")
        k = None
        if variance is None and count.n_trials > 1:
            variance, k = trial_sharpe_variance(count.runs, h, cache)
            if variance is None:
                ok = False
                lines.append(
                    f"{h}: N={count.n_trials:g} trials but only {k} with a book, so the variance of the trials' "
                    f"Sharpe ratios cannot be estimated; set gates.dsr.sr_variance=V (per-bar Sharpe ratios)"
                )
                continue
        d = deflated_sharpe(own.to_numpy(), count.n_trials, float(variance or 0.0))
        passed = math.isfinite(d.dsr) and d.dsr >= bound
        ok &= passed
        figures[h] = d.dsr
        ppy = books.books.periods_per_year
        sr_ann, sr0_ann = d.annualised(ppy)
        source = f"V[SR] {d.sr_variance:.3g} from {k} trials' books" if k else f"V[SR] {d.sr_variance:.3g}"
        lines.append(
            f"{h}: DSR {d.dsr:.4f} {'>=' if passed else '<'} {bound:g} (book SR {d.sr:.4f}/bar = {sr_ann:.3f} "
            f"annualised over {d.n_obs} bars, skew {d.skewness:.2f}, kurtosis {d.kurtosis:.2f}; E[max SR] "
            f"{d.expected_max_sr:.4f}/bar = {sr0_ann:.3f} annualised from N={d.n_trials:g}, {source}; "
            f"PSR(0) {d.psr_zero:.4f})"
        )
    lines.append(f"trials: {count.description}")
    return GateResult("dsr", ok, "\n".join(lines), {"dsr": figures, "n_trials": count.n_trials})


def lockbox_line(lockbox: dict[str, float]) -> str:
    """The lockbox figures beside the verdict, for the person who promotes."""
    if not lockbox:
        return "lockbox: no lockbox (the run has no holdout_* metrics)"
    return f"lockbox (not gated on; this read is counted in {L.TAG_LOCKBOX_READS}): {format_lockbox(lockbox)}"


def gate_run_status(run: RunSummary) -> GateResult:
    return GateResult("run_status", run.status == "FINISHED", f"parent run status {run.status}")


def evaluate_gates(
    client: MlflowClient | RunReader,
    run_id: str,
    cfg: DictConfig,
    baseline: Baseline,
    subject: str = "",
    candidate: BookSettings | None = None,
) -> GateReport:
    """Run every enabled gate of ``cfg`` on the parent run ``run_id`` (``candidate``: the settings
    of the version's book; None: the run's own). Writes nothing, except that the ``holdout`` gate
    (when enabled) counts its lockbox read."""
    client = _reader(client)
    run = load_run_summary(client, run_id)
    results = []
    if cfg.leakage_audit.enabled:
        results.append(gate_leakage_audit(client, run, cfg.leakage_audit))
    if cfg.sharpe.enabled:
        results.append(gate_sharpe(run, baseline, cfg.sharpe, candidate))
    dsr = cfg.get("dsr") or {}
    if dsr.get("enabled", False):
        results.append(gate_dsr(client, run, dsr, candidate))
    holdout = cfg.get("holdout") or {}
    if holdout.get("enabled", False):
        results.append(gate_holdout(run, holdout, run.parent.lockbox_metrics() if run.parent else {}))
    if cfg.calibration.enabled:
        results.append(gate_calibration(run, cfg.calibration))
    if cfg.folds.enabled:
        results.append(gate_folds(run, cfg.folds))
    if cfg.get("run_status", {}).get("enabled", True):
        results.append(gate_run_status(run))
    return GateReport(subject=subject or f"run {run_id}", baseline=baseline.label, results=results)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))
