"""``quantml stack``: select and check the experts, audit their OOF table, train the combiner
walk-forward, compare it with equal weight, the best single expert and every expert on the same
folds, and log it all as a stack run (``quantml.kind=stack``) with nested fold runs.

The walk-forward and the comparison read only the experts' development out-of-fold predictions,
their fold runs' windows, their fold plan and market calendar. Then (``serve``) the final combiner is
fitted on every development OOF row purged before the lockbox and served with the experts' final
models as a :class:`~quantml.stacking.model.StackBundle` (the stack run's ``model``), and
(``holdout``) that served stack, the baselines and each expert's final model are scored on the
lockbox (:mod:`quantml.stacking.holdout`): logged ``holdout_*`` figures, a counted read. Every
combiner is deterministic, so a stack is reproducible from its experts.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import HORIZON_SEPARATOR, TIMESTAMP, QuantmlInputError, parse_duration
from quantml.contracts import run_layout as L
from quantml.contracts.config import build
from quantml.evaluation.evaluate import Scorer, aggregate_fold_metrics, evaluation_options
from quantml.stacking.combiners import expert_column
from quantml.stacking.experts import Expert, check_consistency, load_experts, select_experts
from quantml.stacking.holdout import HoldoutResult, evaluate_holdout
from quantml.stacking.model import StackBundle, fit_final, has_model, load_expert_bundle, stack_panel, uses_regime
from quantml.stacking.oof import EXPERT_FIELDS, REALISED, audit_oof, build_oof_table
from quantml.stacking.regime import regime_columns
from quantml.stacking.regime_posterior import EXTERNAL, parse_regime_source, posterior_frame, resolve_regime_model
from quantml.stacking.walkforward import StackFold, gate_weights, stack_folds, walk_forward
from quantml.tracking.reader import RunReader

COMBINER_DIR = Path(__file__).resolve().parents[1] / "conf" / "combiner"
COMPARED = ("ap", "ece", "rmse", "rank_ic", "sharpe_after_cost")  # the comparison table's figures


class StackAuditError(QuantmlInputError):
    """The leakage audit of the OOF table failed and ``force=true reason=...`` was not given."""


@dataclass
class StackSettings:
    """What ``conf/stack.yaml`` sets (see there)."""

    combiner: dict
    sweep_dir: str | None = None
    experiment: str | None = None
    runs: list[str] | None = None
    exclude: list[str] | None = None
    horizons: list[str] | None = None
    baselines: list[str] = field(default_factory=lambda: ["equal_weight", "best_single"])
    embargo: str | None = None
    crossfit_folds: int | None = None
    min_fit_rows: int = 50
    max_gap_bars: int = 5
    max_missing: float = 0.0
    force: bool = False
    reason: str | None = None
    log_to_mlflow: bool = True
    output_dir: str | None = None
    run_name: str | None = None
    serve: bool = True  # fit the final combiner and log the served stack as the run's `model`
    holdout: bool = True  # score the served stack, the baselines and the experts on the lockbox
    register: str | None = None  # register the stack run's model under this name (alias candidate)
    # where a regime-reading combiner's regime__* inputs come from: block and/or a regime model (alias or run id)
    regime_source: list[str] | str | None = None
    resolved: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> StackSettings:
        def ids(value):
            if value is None:
                return None
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value] or None

        audit = cfg.get("audit") or {}
        out = cls(
            combiner=OmegaConf.to_container(cfg.combiner, resolve=True),
            sweep_dir=cfg.get("sweep_dir") or None,
            experiment=cfg.get("experiment") or None,
            runs=ids(cfg.get("runs")),
            exclude=ids(cfg.get("exclude")),
            horizons=ids(cfg.get("horizons")),
            baselines=ids(cfg.get("baselines")) or [],
            embargo=None if cfg.get("embargo") is None else str(cfg.embargo),
            crossfit_folds=None if cfg.get("crossfit_folds") is None else int(cfg.crossfit_folds),
            min_fit_rows=int(cfg.get("min_fit_rows", 50)),
            max_gap_bars=int(audit.get("max_gap_bars", 5)),
            max_missing=float(audit.get("max_missing", 0.0)),
            force=bool(cfg.get("force", False)),
            reason=None if cfg.get("reason") in (None, "") else str(cfg.reason),
            log_to_mlflow=bool(cfg.get("log_to_mlflow", True)),
            output_dir=cfg.get("output_dir") or None,
            run_name=cfg.get("run_name") or None,
            serve=bool(cfg.get("serve", True)),
            holdout=bool(cfg.get("holdout", True)),
            register=None if cfg.get("register") in (None, "") else str(cfg.register),
            regime_source=_plain(cfg.get("regime_source")),
            resolved=OmegaConf.to_container(cfg, resolve=True),
        )
        out.validate()
        return out

    def validate(self) -> None:
        if self.force and not self.reason:
            raise QuantmlInputError("force=true needs reason=TEXT (recorded on the stack run with the failed audit)")
        if not 0.0 <= self.max_missing <= 1.0:
            raise QuantmlInputError(f"audit.max_missing={self.max_missing} must be a share in [0, 1]")
        if self.max_gap_bars < 0:
            raise QuantmlInputError(f"audit.max_gap_bars={self.max_gap_bars} must be >= 0")
        if self.holdout and not self.serve:
            raise QuantmlInputError(
                "holdout=true needs serve=true: the lockbox is scored through the served stack (the experts' "
                "final models); set serve=true, or holdout=false"
            )
        if self.register and not (self.serve and self.log_to_mlflow):
            raise QuantmlInputError(
                f"register={self.register} needs serve=true and log_to_mlflow=true (a registered version is the "
                "stack run's logged model)"
            )
        parse_regime_source(self.regime_source)
        if self.min_fit_rows < 1:
            raise QuantmlInputError(f"min_fit_rows={self.min_fit_rows} must be >= 1")
        for name in self.baselines:
            if not (COMBINER_DIR / f"{name}.yaml").is_file():
                known = sorted(p.stem for p in COMBINER_DIR.glob("*.yaml"))
                raise QuantmlInputError(f"baselines: no combiner config {name!r}; use some of {known}")


@dataclass
class StackResult:
    """What a stack measured; ``to_text`` is what the command prints."""

    label: str
    combiner: str
    experts: list[Expert]
    horizons: list[str]
    folds: list[StackFold]
    table: pd.DataFrame  # the OOF table
    audit: dict
    predictions: dict[str, pd.DataFrame]  # candidate -> its walk-forward predictions
    comparison: pd.DataFrame
    fold_info: dict[int, dict]
    shared: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fold_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # the stack's test_* per fold (index fold)
    embargo: pd.Timedelta = field(default_factory=pd.Timedelta)
    crossfit_folds: int = 3
    run_id: str | None = None
    bundle: StackBundle | None = None  # the served stack (serve=true and the experts have final models)
    final_info: dict = field(default_factory=dict)  # per candidate and horizon: the final fit's record
    holdout: HoldoutResult | None = None  # the lockbox evaluation (holdout=true and a lockbox)
    registered: tuple[str, str] | None = None  # (model name, version) when register= was given
    # a gating combiner's weight of each expert on each stacked row (walkforward.gate_weights)
    gate_weights: pd.DataFrame | None = None
    book: dict = field(default_factory=dict)  # the first expert's cost, signal, strategy, evaluation
    regime_source: list[str] = field(default_factory=list)  # what the regime__* inputs came from (none read: [])

    def audit_lines(self) -> list[str]:
        lines = []
        for name, check in self.audit["checks"].items():
            lines.append(f"  {check['status']}  {name} ({check['count']}): {check['detail']}")
        return lines

    def comparison_text(self) -> str:
        shown = self.comparison.copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = [("-" if not math.isfinite(v) else f"{v:.4g}") for v in shown[col]]
        with pd.option_context("display.width", 250, "display.max_columns", 40):
            return shown.drop(columns=["run_id"]).to_string(index=False)

    def to_text(self) -> str:
        folds = ", ".join(str(f.fold_id) for f in self.folds)
        lines = [
            f"Stack: {self.combiner} over {len(self.experts)} walk-forward experts of {self.label}, "
            f"folds {folds} (each fitted on earlier folds only)",
            *(f"  {e.alias} = run {e.run_id} ({e.run.run_name})" for e in self.experts),
            "",
            "Leakage audit of the OOF table:"
            + ("" if self.audit["clean"] else "  (FAILED: forced, " + (f"reason: {self.audit.get('reason')})")),
            *self.audit_lines(),
            "",
            "Comparison on the same folds (pooled over the stack folds; ap, ece: direction; rmse, rank_ic: return; "
            "sharpe_after_cost: the one book):",
            self.comparison_text(),
        ]
        if self.holdout is not None:
            lines += ["", self.holdout.to_text()]
        lines += [f"note: {n}" for n in self.notes]
        if self.run_id:
            lines.append(
                f"logged as MLflow run {self.run_id} (kind {L.KIND_STACK}: {L.STACK_COMPARISON_CSV}, "
                f"{L.STACK_OOF_ARTIFACT}, {L.STACK_AUDIT_ARTIFACT}"
                + (f", {L.STACK_HOLDOUT_COMPARISON_CSV}, {L.STACK_SCALE_CHECK_CSV}" if self.holdout is not None else "")
                + ")"
            )
            if self.bundle is not None:
                lines.append(
                    f"served stack: runs:/{self.run_id}/{L.MODEL_ARTIFACT} (register it: quantml registry register "
                    f"{self.run_id} name=NAME)"
                )
        if self.registered:
            lines.append(f"registered as {self.registered[0]} v{self.registered[1]} (alias candidate)")
        return "\n".join(lines)


def combiner_config(name: str) -> dict:
    """A packaged combiner config (``quantml/conf/combiner/<name>.yaml``) as a plain dict."""
    return OmegaConf.to_container(OmegaConf.load(COMBINER_DIR / f"{name}.yaml"), resolve=True)


def make_combiner(node: dict):
    """A fresh combiner from its config (``_target_`` and settings; unknown keys are an error)."""
    return build(node, "combiner")


def _scorer(expert: Expert) -> tuple[Scorer, object, DictConfig]:
    """The Scorer training used for this expert (its costs, signal, strategy, evaluation options,
    periods per year, IC mode and market calendar) and its signal config."""
    from quantml.evaluation import ic_mode_for
    from quantml.portfolio.strategy import build_strategy

    cfg = expert.run.config()
    costs = build(cfg.cost, "cost", "quantml.market.CostModel")
    signal = build(cfg.signal, "signal", "quantml.signals.SignalConfig.build", cost=costs.round_trip)
    strategy = build_strategy(cfg.get("strategy"), signal)
    ppy = expert.run.periods_per_year()
    if ppy is None:
        raise QuantmlInputError(f"run {expert.run_id} records no periods_per_year; {RETRAIN}")
    ic_mode = expert.run.tags.get(L.TAG_IC_MODE) or ic_mode_for(int(expert.oos["symbol"].nunique()))
    market = expert.run.market()
    score = Scorer(float(ppy), costs, str(ic_mode), evaluation_options(cfg.evaluation), strategy, market)
    return score, signal, cfg


RETRAIN = "re-run `quantml train` with this quantml version"


def _expert_frame(table: pd.DataFrame, alias: str) -> pd.DataFrame:
    out = table[["symbol", "timestamp", "horizon", *REALISED, "t1", "fold"]].copy()
    for name in EXPERT_FIELDS:
        out[name] = table[expert_column(alias, name)].to_numpy(np.float64)
    out["path"] = 0
    return out


def _figures(score: Scorer, frame: pd.DataFrame, horizons: list[str]) -> tuple[dict, pd.DataFrame]:
    """Pooled ``oos_*`` metrics over the frame's folds, and the per-fold ``test_*`` table (index fold)."""
    pooled = score(frame, "oos")
    per_fold = {int(k): score(part, "test") for k, part in frame.groupby("fold", sort=True)}
    return pooled, pd.DataFrame.from_dict(per_fold, orient="index").sort_index()


def _comparison_rows(name, kind, run_id, pooled, per_fold, frame, horizons) -> list[dict]:
    rows = []
    for h in horizons:
        row = {"candidate": name, "kind": kind, "horizon": h}
        for m in COMPARED:
            row[m] = float(pooled.get(f"oos_{m}{HORIZON_SEPARATOR}{h}", np.nan))
        for m in ("rank_ic", "sharpe_after_cost"):
            col = f"test_{m}{HORIZON_SEPARATOR}{h}"
            row[f"{m}_fold_mean"] = float(per_fold[col].mean()) if col in per_fold else np.nan
        row["n_rows"] = int((frame["horizon"].astype(str) == h).sum())
        row["n_folds"] = int(frame["fold"].nunique())
        row["run_id"] = run_id or ""
        rows.append(row)
    return rows


def build_stack(reader: RunReader, settings: StackSettings, on_audit=None) -> StackResult:
    """Everything but the logging. ``on_audit(audit, experts, shared, horizons, label)`` is called once
    the audit is known (before a failed audit stops the stack), so the caller can record it."""
    parents, label, notes = select_experts(reader, settings)
    shared, horizons = check_consistency(parents, settings.horizons)
    experts = load_experts(reader, parents, horizons)
    first = experts[0]
    plan = reader.fold_plan(first.run_id)
    if plan is None:
        raise QuantmlInputError(f"run {first.run_id} has no {L.FOLD_PLAN_ARTIFACT}; {RETRAIN}")
    if plan.get("hash") != shared[L.TAG_FOLD_PLAN]:
        raise QuantmlInputError(
            f"{L.FOLD_PLAN_ARTIFACT} of run {first.run_id} hashes to {plan.get('hash')} but the run is tagged "
            f"{L.TAG_FOLD_PLAN}={shared[L.TAG_FOLD_PLAN]}; {RETRAIN}"
        )
    score, signal, cfg = _scorer(first)
    audit = audit_oof(experts, score.market, settings.max_gap_bars, settings.max_missing)
    audit["forced"] = bool(settings.force and not audit["clean"])
    audit["reason"] = settings.reason if audit["forced"] else None
    if on_audit is not None:
        on_audit(audit, experts, shared, horizons, label)
    if not audit["clean"] and not settings.force:
        failed = [f"{k} ({c['count']}: {c['detail']})" for k, c in audit["checks"].items() if not c["ok"]]
        raise StackAuditError(
            "the leakage audit of the OOF table failed: " + "; ".join(failed) + ". Fix the experts (or drop one "
            "with exclude=[...]), or stack anyway with force=true reason=TEXT (recorded on the stack run)"
        )
    table = build_oof_table(experts)
    folds = stack_folds(plan)
    aliases = [e.alias for e in experts]
    main = make_combiner(settings.combiner)
    name = getattr(main, "name", type(main).__name__)
    candidates = [(name, "stack", settings.combiner)]
    for b in settings.baselines:
        node = combiner_config(b)
        if node.get("_target_") != settings.combiner.get("_target_"):
            candidates.append((b, "baseline", node))
    # the experts' panel: for regime inputs and the lockbox (rebuilt from the first expert's config)
    regime = any(uses_regime(make_combiner(node)) for _, _, node in candidates)
    source = parse_regime_source(settings.regime_source)
    model_alias, model_run, posterior = None, None, None
    if regime and source.model:  # a regime model's out-of-fold posterior as regime__p* (stacking.regime_posterior)
        model_alias, model_run = resolve_regime_model(reader, source.model, experts, shared)
        oos = next(e.oos for e in experts if e.alias == model_alias) if model_alias else model_run.oos_predictions()
        posterior = posterior_frame(oos, model_run.run_id)
    elif source.model:
        notes.append(f"regime_source={source.model} not used: no combiner of this stack reads regime inputs")
    block = regime and source.block
    serve = settings.serve
    if serve:
        runs = [e.run_id for e in experts] + ([model_run.run_id] if model_run is not None and not model_alias else [])
        lacking = [r for r in runs if not has_model(reader, r)]
        if lacking:
            serve = False
            notes.append(
                f"served stack and lockbox evaluation skipped: expert run(s) {', '.join(lacking)} logged no "
                f"{L.MODEL_ARTIFACT!r} (trained with tracking.log_model=false); retrain them with "
                "tracking.log_model=true, or set serve=false holdout=false"
            )
    prep = stack_panel(first, shared[L.TAG_DATA_FINGERPRINT]) if (block or serve) else None
    if block or posterior is not None:
        from quantml.stacking.regime import attach_regime, regime_features

        if block:
            table = attach_regime(table, regime_features(prep.panel))
        if posterior is not None:
            table = attach_regime(table, posterior)
    embargo = _embargo(settings, experts)
    crossfit_folds = settings.crossfit_folds or int((cfg.get("validation") or {}).get("crossfit_folds") or 3)
    kwargs = dict(
        embargo=embargo,
        crossfit_folds=crossfit_folds,
        cfg_evaluation=cfg.get("evaluation"),
        signal=signal,
        min_fit_rows=settings.min_fit_rows,
    )
    predictions, fold_info, rows, weights = {}, {}, [], None
    for cand, kind, node in candidates:
        frame, info = walk_forward(lambda node=node: make_combiner(node), table, aliases, folds, **kwargs)
        predictions[cand] = frame
        gated = gate_weights(info)
        if kind == "stack":
            fold_info, weights = info, gated
        pooled, per_fold = _figures(score, frame, horizons)
        rows += _comparison_rows(cand, kind, None, pooled, per_fold, frame, horizons)
        if kind == "stack":
            stack_pooled, stack_folds_table = pooled, per_fold
    stacked = table[table["fold"].isin([f.fold_id for f in folds])]
    for e in experts:
        frame = _expert_frame(stacked, e.alias)
        pooled, per_fold = _figures(score, frame, horizons)
        rows += _comparison_rows(e.alias, "expert", e.run_id, pooled, per_fold, frame, horizons)
    comparison = pd.DataFrame(rows)
    metrics = dict(stack_pooled)
    metrics.update(aggregate_fold_metrics(stack_folds_table))
    for row in rows:
        if row["kind"] == "stack":
            continue
        for m in COMPARED:
            metrics[f"cmp_{row['candidate']}_{m}{HORIZON_SEPARATOR}{row['horizon']}"] = row[m]
    result = StackResult(
        label=label,
        combiner=name,
        experts=experts,
        horizons=horizons,
        folds=folds,
        table=table,
        audit=audit,
        predictions=predictions,
        comparison=comparison,
        fold_info=fold_info,
        gate_weights=weights,
        shared=shared,
        metrics=metrics,
        notes=notes,
        fold_metrics=stack_folds_table,
        embargo=embargo,
        crossfit_folds=crossfit_folds,
        book={k: _plain(cfg.get(k)) for k in ("cost", "signal", "strategy", "evaluation") if cfg.get(k) is not None},
        regime_source=(([] if not block else ["block"]) + ([model_run.run_id] if posterior is not None else [])),
    )
    if serve:
        source_name = (model_alias or EXTERNAL) if posterior is not None else None
        external = model_run.run_id if posterior is not None and not model_alias else None
        _serve(reader, result, settings, candidates, prep, score, signal, cfg, block, source_name, external)
    return result


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _serve(
    reader,
    result: StackResult,
    settings,
    candidates,
    prep,
    score,
    signal,
    cfg,
    regime: bool,
    posterior_source: str | None = None,
    posterior_run: str | None = None,
) -> None:
    """The served stack (final combiner per horizon on every development OOF row purged before the
    lockbox, the experts' final models) and, with ``holdout``, its lockbox evaluation. ``regime``: the
    regime block is attached; ``posterior_source``: the alias of the expert whose posterior is attached
    as ``regime__p*``, or ``EXTERNAL`` for the regime model ``posterior_run`` (not an expert)."""
    experts, horizons = result.experts, result.horizons
    aliases = [e.alias for e in experts]
    start = prep.lockbox.start
    fits = {}
    for cand, kind, node in candidates:
        fits[cand] = (
            kind,
            fit_final(
                lambda node=node: make_combiner(node),
                result.table,
                aliases,
                horizons,
                lockbox_start=start,
                embargo=result.embargo,
                crossfit_folds=result.crossfit_folds,
                cfg_evaluation=cfg.get("evaluation"),
                min_fit_rows=settings.min_fit_rows,
            ),
        )
    result.final_info = {cand: fit.info for cand, (_, fit) in fits.items()}
    bundles = [load_expert_bundle(reader.tracking_uri, e.run_id) for e in experts]
    from quantml.stacking.model import regime_inputs, union_contract

    posterior_model = load_expert_bundle(reader.tracking_uri, posterior_run) if posterior_run else None
    contract = union_contract(bundles + ([posterior_model] if posterior_model is not None else []), horizons)
    if regime:
        contract.input_columns = sorted(set(contract.input_columns) | set(regime_inputs(prep.panel)))
    first = experts[0]
    _, main = fits[result.combiner]
    result.bundle = StackBundle(
        experts=bundles,
        aliases=aliases,
        expert_runs=[e.run_id for e in experts],
        horizons=list(horizons),
        combiners=main.combiners,
        calibrators=main.calibrators,
        signal=signal.to_dict(),
        data_fingerprint=prep.fingerprint,
        contract=contract,
        strategy=_plain(cfg.get("strategy")),
        metadata={
            "bar": str(prep.bar),
            "periods_per_year": first.run.periods_per_year() or prep.periods_per_year,
            "ic_mode": first.run.tags.get(L.TAG_IC_MODE) or score.ic_mode,
            "lockbox_start": prep.lockbox.tag(),
        },
        regime=regime,
        posterior_source=posterior_source,
        posterior_model=posterior_model,
    )
    if not settings.holdout:
        return
    if start is None:
        result.notes.append("lockbox evaluation skipped: the experts have no lockbox (validation.holdout=0)")
        return
    others = {cand: fit for cand, fit in fits.items() if cand != result.combiner}
    result.holdout = evaluate_holdout(result.bundle, others, result.table, experts, prep, score, result.embargo)
    if result.holdout is not None:
        result.metrics.update(result.holdout.metrics)
        for e in experts:  # each expert's lockbox figures were shown: a read of its lockbox
            reader.count_lockbox_read(e.run)


def _duration(value, what: str) -> pd.Timedelta:
    if value is None or str(value).strip() in ("0", "0s", ""):
        return pd.Timedelta(0)
    return pd.Timedelta(parse_duration(value, what, allow_zero=True))


def _embargo(settings: StackSettings, experts: list[Expert]) -> pd.Timedelta:
    """``embargo=``, else the largest of the experts' ``validation.embargo``."""
    if settings.embargo is not None:
        return _duration(settings.embargo, "embargo")
    return max(
        _duration((e.run.config().get("validation") or {}).get("embargo"), "validation.embargo") for e in experts
    )


# -- writing -------------------------------------------------------------------------------------------
def write_files(result: StackResult, folder: Path) -> dict[str, Path]:
    """The OOF table, the comparison table, the audit and the experts under ``folder`` (layout paths)."""
    folder = Path(folder)
    paths = {
        "oof": folder / L.STACK_OOF_ARTIFACT,
        "comparison": folder / L.STACK_COMPARISON_CSV,
        "experts": folder / L.STACK_EXPERTS_ARTIFACT,
        "folds": folder / L.STACK_FOLDS_ARTIFACT,
        "oos": folder / L.OOS_ARTIFACT,
    }
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_parquet(paths["oof"], index=False)
    result.comparison.to_csv(paths["comparison"], index=False)
    paths["experts"].write_text(json.dumps([e.describe() for e in result.experts], indent=2), encoding="utf-8")
    folds = {str(k): v for k, v in result.fold_info.items()}
    paths["folds"].write_text(json.dumps(folds, indent=2, default=str), encoding="utf-8")
    result.predictions[result.combiner].to_parquet(paths["oos"], index=False)
    write_audit(result.audit, folder)
    if result.gate_weights is not None:
        paths["gate_weights"] = folder / L.STACK_GATE_WEIGHTS_ARTIFACT
        paths["gate_figure"] = folder / L.STACK_GATE_FIGURE
        result.gate_weights.to_parquet(paths["gate_weights"], index=False)
        paths["gate_figure"].write_bytes(_gate_png(result.gate_weights, [e.alias for e in result.experts]))
    if result.final_info:
        paths["final"] = folder / L.STACK_FINAL_ARTIFACT
        paths["final"].write_text(json.dumps(result.final_info, indent=2, default=str), encoding="utf-8")
    if result.holdout is not None:
        paths["holdout_comparison"] = folder / L.STACK_HOLDOUT_COMPARISON_CSV
        paths["scale_check"] = folder / L.STACK_SCALE_CHECK_CSV
        paths["holdout"] = folder / L.HOLDOUT_ARTIFACT
        result.holdout.comparison.to_csv(paths["holdout_comparison"], index=False)
        result.holdout.scale_check.to_csv(paths["scale_check"], index=False)
        paths["holdout_verdict"] = folder / L.STACK_HOLDOUT_VERDICT_CSV
        result.holdout.verdict.to_csv(paths["holdout_verdict"], index=False)
        result.holdout.predictions.to_parquet(paths["holdout"], index=False)
    return paths


def _gate_png(weights: pd.DataFrame, aliases: list[str]) -> bytes:
    """The gate's weights through time (first horizon), with its first regime input beneath."""
    from quantml.market.figures import figure_png
    from quantml.stacking.figures import regime_gate_figure

    rows = weights[weights["horizon"] == weights["horizon"].iloc[0]]
    regime = regime_columns(rows)
    fig = regime_gate_figure(rows[aliases], rows[regime[0]] if regime else None, rows[TIMESTAMP])
    return figure_png(fig)


def write_audit(audit: dict, folder: Path) -> Path:
    path = Path(folder) / L.STACK_AUDIT_ARTIFACT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(audit, indent=2, default=str), encoding="utf-8")
    return path


def _run_tags(settings: StackSettings, experts: list[Expert], shared: dict, horizons: list[str], name: str) -> dict:
    first = experts[0].run
    tags = {
        L.TAG_KIND: L.KIND_STACK,
        L.TAG_STACK_EXPERTS: ",".join(e.run_id for e in experts),
        L.TAG_COMBINER: name,
        L.TAG_VALIDATION: L.WALK_FORWARD,
        L.TAG_HORIZONS: ",".join(horizons),
        L.TAG_EXPERTS_LAYOUT_VERSION: shared[L.TAG_LAYOUT_VERSION],
        **{k: v for k, v in shared.items() if k != L.TAG_LAYOUT_VERSION},
    }
    for tag in (L.TAG_IC_MODE, L.TAG_BAR, L.TAG_N_SYMBOLS, L.TAG_PERIODS_PER_YEAR):
        if first.tags.get(tag):
            tags[tag] = first.tags[tag]
    if settings.sweep_dir:
        tags[L.TAG_SWEEP_DIR] = first.tags.get(L.TAG_SWEEP_DIR, settings.sweep_dir)
    return tags


def run_stack(tracking_uri: str, settings: StackSettings) -> StackResult:
    """Build the stack; log it (``log_to_mlflow``: a stack run, FAILED with its audit when the audit
    stops it) and write its files to ``output_dir`` when given."""
    from quantml.tracking.writer import RunWriter

    reader = RunReader(tracking_uri)
    state: dict = {}
    main_name = getattr(make_combiner(settings.combiner), "name", "stack")

    def on_audit(audit, experts, shared, horizons, label):
        if settings.output_dir:
            write_audit(audit, Path(settings.output_dir).expanduser())
        if not settings.log_to_mlflow:
            return
        writer = RunWriter(experts[0].run.experiment_id, reader.client)
        tags = _run_tags(settings, experts, shared, horizons, main_name)
        tags[L.TAG_STACK_AUDIT] = "clean" if audit["clean"] else "violations"
        if audit["forced"]:
            tags[L.TAG_STACK_FORCED] = "true"
            tags[L.TAG_STACK_FORCE_REASON] = settings.reason
        run = writer.start((settings.run_name or f"stack · {main_name} · {label}")[:240], tags)
        run.log_dict(audit, L.STACK_AUDIT_ARTIFACT)
        state.update(writer=writer, run=run)

    try:
        result = build_stack(reader, settings, on_audit)
    except BaseException as exc:
        if "run" in state:
            state["run"].fail(exc)
        raise
    if "run" in state:
        _log(reader, state["writer"], state["run"], result, settings)
    if settings.output_dir:
        write_files(result, Path(settings.output_dir).expanduser())
    return result


def _log(reader: RunReader, writer, run, result: StackResult, settings: StackSettings) -> None:
    with run.ending():
        params = {
            "combiner": result.combiner,
            "n_experts": len(result.experts),
            "embargo": str(result.embargo),
            "crossfit_folds": result.crossfit_folds,
            "min_fit_rows": settings.min_fit_rows,
            "audit.max_gap_bars": settings.max_gap_bars,
            "audit.max_missing": settings.max_missing,
            "baselines": ",".join(settings.baselines),
            **{f"combiner.{k}": v for k, v in settings.combiner.items()},
        }
        params.update({"serve": settings.serve, "holdout": settings.holdout})
        params["regime_source"] = ",".join(result.regime_source) or "none"
        run.log_params(params)
        # the stack's settings, plus the book it trades (the first expert's cost, signal, strategy,
        # evaluation): what the registry's Sharpe gate rebuilds the stack's book from
        resolved = dict(settings.resolved or {"combiner": settings.combiner})
        resolved.update(result.book)
        run.log_resolved_config(resolved)
        ppy = result.experts[0].run.periods_per_year()
        if ppy is not None:
            run.log_derived({"periods_per_year": ppy})
        run.set_tags({L.TAG_N_FOLDS: len(result.folds)})
        if result.holdout is not None:  # the lockbox figures printed by this command: one read
            run.set_tags({L.TAG_LOCKBOX_READS: 1})
        run.log_metrics(result.metrics)
        windows = result.experts[0].fold_params
        for fold in result.folds:
            info = result.fold_info.get(fold.fold_id, {})
            # the test window as the experts' fold runs logged it: the Sharpe gate matches windows on it
            window = windows.get(str(fold.fold_id)) or {}
            child = writer.start_fold(run, fold.fold_id)
            with child.ending():
                child.log_params(
                    {
                        L.PARAM_FOLD_ID: fold.fold_id,
                        "train_start": info.get("fit_start"),
                        "train_end": info.get("fit_end"),
                        L.PARAM_TEST_START: window.get(L.PARAM_TEST_START) or str(fold.test_start),
                        L.PARAM_TEST_END: window.get(L.PARAM_TEST_END) or str(fold.test_end),
                        "n_train": info.get("n_fit", 0),
                        "n_test": info.get("n_test", 0),
                    }
                )
                if fold.fold_id in result.fold_metrics.index:
                    child.log_metrics(result.fold_metrics.loc[fold.fold_id].to_dict())
        with tempfile.TemporaryDirectory() as tmp:
            write_files(result, Path(tmp))
            plan = reader.fold_plan(result.experts[0].run_id)
            (Path(tmp) / L.FOLD_PLAN_ARTIFACT).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / L.FOLD_PLAN_ARTIFACT).write_text(json.dumps(plan, indent=2), encoding="utf-8")
            market = result.experts[0].run.market()
            if market is not None:
                (Path(tmp) / L.MARKET_ARTIFACT).parent.mkdir(parents=True, exist_ok=True)
                market.to_parquet(Path(tmp) / L.MARKET_ARTIFACT, index=False)
            for sub in ("stack", "predictions", "folds"):
                run.log_artifacts(str(Path(tmp) / sub), sub)
        if result.bundle is not None:
            from quantml.registry.store import mlflow_uri_scope
            from quantml.tracking.pyfunc import log_bundle_info

            with mlflow_uri_scope(reader.tracking_uri):
                log_bundle_info(result.bundle, run.run_id)
        result.run_id = run.run_id
        run.set_description(f"```\n{result.to_text()[:7800]}\n```")
    if settings.register and result.bundle is not None:
        from quantml.registry.commands import register
        from quantml.registry.store import RegistryStore

        version = register(RegistryStore(reader.tracking_uri), run.run_id, settings.register)
        result.registered = (settings.register, str(version.version))
