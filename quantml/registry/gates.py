"""Promotion gates: read-only checks of a candidate run against a baseline.

Every gate reads the run layout (``quantml.contracts.run_layout``: parent run + nested
fold runs) through :class:`quantml.tracking.reader.RunReader` and returns a
:class:`GateResult` whose ``detail`` says what was measured and, on failure, by how much
it missed. Nothing here writes to MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import HORIZON_SEPARATOR, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.metrics import METRICS_VERSION
from quantml.tracking.reader import FoldRun, ParentRun, RunReader, metric_horizons

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
    parent = reader.parent(run_id, action="gate")
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


@dataclass
class Baseline:
    """What the candidate is compared with: a run (the active version's or a named one) or zero."""

    label: str
    run: RunSummary | None = None
    short: str = ""

    def __post_init__(self) -> None:
        self.short = self.short or self.label.split(" (")[0]


@dataclass
class GateReport:
    """All gate results for one candidate; ``passed`` when every enabled gate passed."""

    subject: str
    baseline: str
    results: list[GateResult]

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
        return "\n".join(lines)


# -- the gates ----------------------------------------------------------------------------------
def gate_leakage_audit(client: MlflowClient | RunReader, run: RunSummary, cfg) -> GateResult:
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


def gate_sharpe(run: RunSummary, baseline: Baseline, cfg) -> GateResult:
    """Candidate beats the baseline in >= ``min_windows`` matched walk-forward windows, per horizon."""
    metric, min_windows = str(cfg.metric), int(cfg.min_windows)
    margin, match_on = float(cfg.get("margin", 0.0)), str(cfg.get("match_on", "time_range"))
    if match_on not in ("time_range", "fold_id"):
        raise QuantmlInputError(f"gates sharpe.match_on={match_on!r}; use time_range or fold_id")
    refusal = sharpe_refusal(run, baseline)
    if refusal:
        return GateResult("sharpe", False, refusal)
    horizons = list(cfg.horizons) if cfg.get("horizons") else run.horizons
    if not horizons:
        return GateResult("sharpe", False, f"run {run.run_id} logs no horizons (tag {L.TAG_HORIZONS})")
    lines, ok = [], True
    for h in horizons:
        key = f"{metric}{HORIZON_SEPARATOR}{h}"
        cand = {f.window(match_on): (f, f.metrics[key]) for f in run.folds if _finite(f.metrics.get(key))}
        base_run = baseline.run
        base_has_h = base_run is not None and any(_finite(f.metrics.get(key)) for f in base_run.folds)
        if base_run is not None and base_has_h:
            base = {f.window(match_on): f.metrics[key] for f in base_run.folds if _finite(f.metrics.get(key))}
            against = baseline.short
        else:
            base = {w: 0.0 for w in cand}
            against = "0" if base_run is None else f"0 ({baseline.short} has no {key})"
        common = [w for w in cand if w in base]
        if not cand:
            ok = False
            lines.append(f"{h}: the candidate's fold runs log no {key}")
            continue
        if not common:
            ok = False
            lines.append(
                f"{h}: no walk-forward window in common with {against} (matched on {match_on}); "
                f"retrain on the same splits, use baseline=RUN_ID, or sharpe.match_on=fold_id"
            )
            continue
        deltas = [(cand[w][0], cand[w][1] - base[w]) for w in common]
        wins = sum(d > margin for _, d in deltas)
        passed = wins >= min_windows
        ok &= passed
        shown = ", ".join(f"{f.fold_id}:{d:+.3f}" for f, d in deltas)
        gap = "" if passed else f", {min_windows - wins} short"
        lines.append(
            f"{h}: {key} better than {against} in {wins}/{len(common)} windows "
            f"(needs {min_windows}{gap}); delta per fold {shown}"
        )
    return GateResult("sharpe", ok, "\n".join(lines))


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


def gate_run_status(run: RunSummary) -> GateResult:
    return GateResult("run_status", run.status == "FINISHED", f"parent run status {run.status}")


def evaluate_gates(
    client: MlflowClient | RunReader, run_id: str, cfg: DictConfig, baseline: Baseline, subject: str = ""
) -> GateReport:
    """Run every enabled gate of ``cfg`` on the parent run ``run_id``; writes nothing."""
    client = _reader(client)
    run = load_run_summary(client, run_id)
    results = []
    if cfg.leakage_audit.enabled:
        results.append(gate_leakage_audit(client, run, cfg.leakage_audit))
    if cfg.sharpe.enabled:
        results.append(gate_sharpe(run, baseline, cfg.sharpe))
    if cfg.calibration.enabled:
        results.append(gate_calibration(run, cfg.calibration))
    if cfg.folds.enabled:
        results.append(gate_folds(run, cfg.folds))
    if cfg.get("run_status", {}).get("enabled", True):
        results.append(gate_run_status(run))
    return GateReport(subject=subject or f"run {run_id}", baseline=baseline.label, results=results)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))
