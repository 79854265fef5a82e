"""Promotion gates: read-only checks of a candidate run against a baseline.

Every gate reads the MLflow run layout of the contracts (parent run + nested fold runs)
and returns a :class:`GateResult` whose ``detail`` says what was measured and, on
failure, by how much it missed. Nothing here writes to MLflow.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import HORIZON_SEPARATOR, QuantmlInputError

GATES_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "registry" / "gates.yaml"
AUDIT_ARTIFACT = "audit/leakage_audit.json"


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
@dataclass
class FoldSummary:
    """One fold (child) run: its id, test window and metrics."""

    run_id: str
    fold_id: str
    test_start: str | None
    test_end: str | None
    metrics: dict[str, float]

    def window(self, match_on: str) -> tuple:
        if match_on == "time_range":
            return (self.test_start, self.test_end)
        return (self.fold_id,)

    def label(self) -> str:
        if self.test_start and self.test_end:
            return f"fold {self.fold_id} [{self.test_start[:10]}..{self.test_end[:10]}]"
        return f"fold {self.fold_id}"


@dataclass
class RunSummary:
    """A parent run with its fold runs, as the gates need them."""

    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    folds: list[FoldSummary] = field(default_factory=list)

    @property
    def horizons(self) -> list[str]:
        tagged = self.tags.get("quantml.horizons", "")
        if tagged:
            return [h.strip() for h in tagged.split(",") if h.strip()]
        found = {k.partition("/")[2] for f in self.folds for k in f.metrics if "/" in k}
        found |= {k.partition("/")[2] for k in self.metrics if "/" in k}
        return sorted(h for h in found if h)


def load_run_summary(client: MlflowClient, run_id: str) -> RunSummary:
    """Read the parent run ``run_id`` and its ``quantml.kind=fold`` children."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise QuantmlInputError(f"MLflow run {run_id!r} not found in {client.tracking_uri}: "
                                f"check the run id and MLFLOW_TRACKING_URI ({exc.message})") from None
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                  max_results=5000)
    folds = []
    for child in children:
        tags = child.data.tags
        if tags.get("quantml.kind", "fold") != "fold":
            continue
        params = child.data.params
        folds.append(FoldSummary(run_id=child.info.run_id,
                                 fold_id=str(tags.get("quantml.fold_id", params.get("fold_id", child.info.run_name))),
                                 test_start=params.get("test_start"), test_end=params.get("test_end"),
                                 metrics=dict(child.data.metrics)))
    folds.sort(key=lambda f: (_int_or_inf(f.fold_id), f.fold_id))
    return RunSummary(run_id=run_id, status=run.info.status, tags=dict(run.data.tags),
                      metrics=dict(run.data.metrics), folds=folds)


def _int_or_inf(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return math.inf


# -- results ---------------------------------------------------------------------------------------
@dataclass
class GateResult:
    name: str
    passed: bool
    detail: str


@dataclass
class Baseline:
    """What the candidate is compared with: a run (champion or named) or zero."""

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
def gate_leakage_audit(client: MlflowClient, run: RunSummary, cfg) -> GateResult:
    tag = run.tags.get("quantml.leakage_audit")
    audit = _read_audit(client, run.run_id) if tag != "clean" else None
    if tag is not None:
        clean = tag == "clean"
        detail = f"parent run tag quantml.leakage_audit={tag!r}"
    elif audit is not None:
        clean = bool(audit.get("clean"))
        detail = f"artifact {AUDIT_ARTIFACT}: clean={clean}"
    else:
        return GateResult("leakage_audit", False,
                          f"run {run.run_id} records no leakage audit (no tag quantml.leakage_audit, no "
                          f"{AUDIT_ARTIFACT}); retrain with the current quantml-train")
    if not clean and audit is not None:
        bad = [k for k, v in (audit.get("checks") or {}).items()
               if v is False or (isinstance(v, dict) and v.get("ok", v.get("clean", True)) is False)]
        if bad:
            detail += f"; failed checks: {', '.join(bad)}"
    return GateResult("leakage_audit", clean, detail)


def _read_audit(client: MlflowClient, run_id: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, AUDIT_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 - absent artifact: the tag decides
            return None
        try:
            return json.loads(Path(local).read_text())
        except ValueError:
            return None


def gate_sharpe(run: RunSummary, baseline: Baseline, cfg) -> GateResult:
    """Candidate beats the baseline in >= ``min_windows`` matched walk-forward windows, per horizon."""
    metric, min_windows = str(cfg.metric), int(cfg.min_windows)
    margin, match_on = float(cfg.get("margin", 0.0)), str(cfg.get("match_on", "time_range"))
    if match_on not in ("time_range", "fold_id"):
        raise QuantmlInputError(f"gates sharpe.match_on={match_on!r}; use time_range or fold_id")
    horizons = list(cfg.horizons) if cfg.get("horizons") else run.horizons
    if not horizons:
        return GateResult("sharpe", False, f"run {run.run_id} logs no horizons (tag quantml.horizons)")
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
            lines.append(f"{h}: no walk-forward window in common with {against} (matched on {match_on}); "
                         f"retrain on the same splits, use --baseline RUN_ID, or sharpe.match_on=fold_id")
            continue
        deltas = [(cand[w][0], cand[w][1] - base[w]) for w in common]
        wins = sum(d > margin for _, d in deltas)
        passed = wins >= min_windows
        ok &= passed
        shown = ", ".join(f"{f.fold_id}:{d:+.3f}" for f, d in deltas)
        gap = "" if passed else f", {min_windows - wins} short"
        lines.append(f"{h}: {key} better than {against} in {wins}/{len(common)} windows "
                     f"(needs {min_windows}{gap}); delta per fold {shown}")
    return GateResult("sharpe", ok, "\n".join(lines))


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
    return GateResult("folds", False, f"{have} fold runs < {need} (short by {need - have}); "
                                      f"use more walk-forward splits (validation.n_splits)")


def gate_run_status(run: RunSummary) -> GateResult:
    return GateResult("run_status", run.status == "FINISHED", f"parent run status {run.status}")


def evaluate_gates(client: MlflowClient, run_id: str, cfg: DictConfig, baseline: Baseline,
                   subject: str = "") -> GateReport:
    """Run every enabled gate of ``cfg`` on the parent run ``run_id``; writes nothing."""
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
