"""The sweep leaderboard (``quantml sweep-report``): one row per parent run of a sweep, the deflated
Sharpe ratio of the best one and the probability of backtest overfitting of the choice.

- **Rows**: each parent run's mean ± std across development folds of the headline metrics per
  horizon (``test_<metric>_mean/<h>``, ``test_<metric>_std/<h>``: rank IC, after-cost Sharpe,
  max drawdown, ECE), its lockbox figures beside them (``holdout_<metric>/<h>``: shown, never
  chosen on; each read is counted on the parent, ``quantml.lockbox_reads``), its config-group
  choices (``choice.*``) and the Sharpe ratio of its book over all development folds.
- **Best run**: the highest (``select.mode=max``) selection figure ``<select.metric>/<horizon>``,
  a development figure (``holdout_*`` is refused): the lockbox is read only after the choice.
- **Trials' returns**: each parent's book per bar (:func:`quantml.registry.gates.bar_returns`:
  the one book the Sharpe gate judges, fold by fold through :mod:`quantml.registry.book`), at one
  horizon (``horizon=``; default the first horizon of the runs).
- **DSR** (:func:`quantml.evaluation.overfitting.deflated_sharpe`) of the best run's book; N
  counts every parent run on its data fingerprint in the store (:func:`count_trials`) unless
  ``dsr.n_trials`` gives an effective number; V[SR] is the variance of the sweep's trials' book
  Sharpe ratios.
- **PBO** (:func:`quantml.evaluation.overfitting.pbo_cscv`) over the trials' books aligned on their
  common bars, with the logit distribution as a figure.

Logged to a sweep-level run (``quantml.kind=sweep``) with the leaderboard as CSV and sortable
HTML; each parent is tagged ``quantml.sweep_run`` with that run's id.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import HORIZON_SEPARATOR, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.evaluation.overfitting import DeflatedSharpe, PBOResult, deflated_sharpe, pbo_cscv, per_period_sharpe
from quantml.registry.gates import TrialCount, bar_returns, count_trials
from quantml.tracking.reader import ParentRun, RunReader
from quantml.tracking.store import sweep_stale_runs

HEADLINE = ("rank_ic", "sharpe_after_cost", "max_drawdown", "ece")
SHORT = {"rank_ic": "rank_ic", "sharpe_after_cost": "sharpe", "max_drawdown": "max_dd", "ece": "ece"}
BOOK_SHARPE = "book_sharpe"  # column: annualised Sharpe of the run's book over all development folds


@dataclass
class SweepReportSettings:
    """What ``conf/sweep_report.yaml`` sets (see there)."""

    sweep_dir: str | None = None
    experiment: str | None = None
    runs: list[str] | None = None
    horizon: str | None = None
    select_metric: str = "test_sharpe_after_cost_mean"
    select_mode: str = "max"
    n_trials: float | None = None
    sr_variance: float | None = None
    pbo_splits: int = 16
    show_lockbox: bool = True
    log_to_mlflow: bool = True
    output_dir: str | None = None

    @classmethod
    def from_config(cls, cfg) -> SweepReportSettings:
        runs = cfg.get("runs")
        if isinstance(runs, str):
            runs = [r.strip() for r in runs.split(",") if r.strip()]
        return cls(
            sweep_dir=cfg.get("sweep_dir") or None,
            experiment=cfg.get("experiment") or None,
            runs=[str(r) for r in runs] if runs else None,
            horizon=str(cfg.horizon) if cfg.get("horizon") else None,
            select_metric=str(cfg.select.metric),
            select_mode=str(cfg.select.mode),
            n_trials=None if cfg.dsr.get("n_trials") is None else float(cfg.dsr.n_trials),
            sr_variance=None if cfg.dsr.get("sr_variance") is None else float(cfg.dsr.sr_variance),
            pbo_splits=int(cfg.pbo.n_splits),
            show_lockbox=bool(cfg.show_lockbox),
            log_to_mlflow=bool(cfg.log_to_mlflow),
            output_dir=cfg.get("output_dir") or None,
        )


@dataclass
class SweepReport:
    """The leaderboard and the statistics below it."""

    label: str
    table: pd.DataFrame  # one row per parent, rank order (CSV columns)
    horizons: list[str]
    horizon: str
    selection: str  # <select.metric>/<horizon>
    best: ParentRun | None
    trials: TrialCount | None
    dsr: DeflatedSharpe | None
    dsr_note: str
    pbo: PBOResult | None
    pbo_note: str
    periods_per_year: float | None
    choices: list[str]  # choice.* columns that differ between rows
    lockbox_read: int = 0
    notes: list[str] = field(default_factory=list)
    sweep_run_id: str | None = None

    # -- the statistics below the table -------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        h = self.horizon
        lines = []
        if self.best is not None:
            value = self.best.metrics.get(self.selection)
            lines.append(
                f"best run (highest {self.selection} over development folds; never the lockbox): "
                f"{self.best.run_name or self.best.run_id} (run {self.best.run_id}, {self.selection} {value:.4g})"
            )
        else:
            lines.append(f"best run: none (no parent run logs {self.selection})")
        if self.dsr is not None:
            d = self.dsr
            ann = ""
            if self.periods_per_year:
                sr_a, sr0_a = d.annualised(self.periods_per_year)
                ann = f" (annualised {sr_a:.3f} vs {sr0_a:.3f})"
            lines.append(
                f"deflated Sharpe ratio {h}: DSR {d.dsr:.4f} = PSR(E[max SR]): book SR {d.sr:.5f}/bar vs "
                f"E[max SR] {d.expected_max_sr:.5f}/bar{ann} over {d.n_obs} bars, skewness {d.skewness:.3f}, "
                f"kurtosis {d.kurtosis:.3f}; N={d.n_trials:g}, V[SR]={d.sr_variance:.4g}; PSR(0) {d.psr_zero:.4f}"
            )
        else:
            lines.append(f"deflated Sharpe ratio {h}: not computed: {self.dsr_note}")
        if self.trials is not None:
            lines.append(f"trials: {self.trials.description}")
        if self.dsr is not None and self.dsr_note:
            lines.append(f"  {self.dsr_note}")
        if self.pbo is not None:
            p = self.pbo
            lines.append(
                f"probability of backtest overfitting {h} (CSCV): PBO {p.pbo:.4f} = share of logits <= 0 over "
                f"C({p.n_splits},{p.n_splits // 2})={p.n_combinations} combinations of {p.n_trials} trials x "
                f"{p.n_obs} common bars; median logit {float(np.median(p.logits)):.3f} (figure {L.SWEEP_PBO_FIGURE})"
            )
        else:
            lines.append(f"probability of backtest overfitting {h}: not computed: {self.pbo_note}")
        if self.lockbox_read:
            lines.append(
                f"lockbox: holdout_* figures shown beside the selection figures, read on {self.lockbox_read} "
                f"parent run(s) (each read counted in {L.TAG_LOCKBOX_READS}; nothing was chosen on them)"
            )
        lines += [f"note: {n}" for n in self.notes]
        return lines

    # -- renderings --------------------------------------------------------------------------------
    def display_columns(self) -> list[tuple[str, str, str | None]]:
        """``(header, value column, std column or None)`` of the shown table."""
        cols: list[tuple[str, str, str | None]] = [("rank", "rank", None), ("run", "run_name", None)]
        cols.append(("status", "status", None))
        for h in self.horizons:
            for m in HEADLINE:
                cols.append((f"{SHORT[m]}/{h}", f"test_{m}_mean/{h}", f"test_{m}_std/{h}"))
            if self.lockbox_read:
                for m in HEADLINE:
                    cols.append((f"lockbox {SHORT[m]}/{h}", f"holdout_{m}/{h}", None))
        cols.append((f"{BOOK_SHARPE}/{self.horizon}", f"{BOOK_SHARPE}/{self.horizon}", None))
        cols += [(c.removeprefix(L.CHOICE_TAG_PREFIX), c, None) for c in self.choices]
        cols.append(("run_id", "run_id", None))
        return cols

    def text_table(self) -> str:
        shown = {}
        for header, col, std in self.display_columns():
            if col == "run_id":
                shown[header] = self.table[col].str[:12]
                continue
            shown[header] = [_cell(row.get(col), row.get(std) if std else None) for _, row in self.table.iterrows()]
        frame = pd.DataFrame(shown)
        frame["run"] = frame["run"].astype(str).str.slice(0, 40)
        with pd.option_context("display.width", 250, "display.max_columns", 80, "display.max_colwidth", 40):
            return frame.to_string(index=False)

    def to_text(self) -> str:
        head = f"Sweep report: {self.label} ({len(self.table)} parent runs; folds: mean ± std of test_<metric>)"
        lines = [head, self.text_table(), "", *self.summary_lines()]
        if self.sweep_run_id:
            lines.append(
                f"logged as MLflow run {self.sweep_run_id} (kind {L.KIND_SWEEP}: {L.SWEEP_LEADERBOARD_HTML}, "
                f"{L.SWEEP_LEADERBOARD_CSV}); each parent run tagged {L.TAG_SWEEP_RUN}"
            )
        return "\n".join(lines)

    def to_html(self, figure_png: bytes | None = None) -> str:
        cols = self.display_columns()
        best_id = self.best.run_id if self.best is not None else None
        head = "".join(f'<th onclick="sortBy({i})">{html.escape(h)}</th>' for i, (h, _, _) in enumerate(cols))
        body = []
        for _, row in self.table.iterrows():
            cells = []
            for _, col, std in cols:
                value = row.get(col)
                key = _sort_key(value)
                cells.append(
                    f'<td data-v="{html.escape(key)}">{html.escape(_cell(value, row.get(std) if std else None))}</td>'
                )
            cls = ' class="best"' if row["run_id"] == best_id else ""
            body.append(f"<tr{cls}>{''.join(cells)}</tr>")
        summary = "".join(f"<p>{html.escape(line)}</p>" for line in self.summary_lines())
        img = ""
        if figure_png:
            data = base64.b64encode(figure_png).decode("ascii")
            img = f'<img alt="PBO logit distribution" src="data:image/png;base64,{data}">'
        return _HTML.format(
            title=html.escape(f"Sweep report: {self.label}"),
            head=head,
            body="\n".join(body),
            summary=summary,
            figure=img,
        )

    def summary_dict(self) -> dict:
        out: dict = {"label": self.label, "horizon": self.horizon, "selection": self.selection}
        out["best_run"] = self.best.run_id if self.best is not None else None
        if self.trials is not None:
            out["trials"] = {
                "n_trials": self.trials.n_trials,
                "source": self.trials.source,
                "description": self.trials.description,
                "by_status": self.trials.by_status,
                "run_ids": [r.run_id for r in self.trials.runs],
            }
        out["dsr"] = None if self.dsr is None else {k: float(v) for k, v in self.dsr.__dict__.items()}
        out["dsr_note"] = self.dsr_note
        if self.pbo is not None:
            out["pbo"] = {
                "pbo": self.pbo.pbo,
                "n_splits": self.pbo.n_splits,
                "n_combinations": self.pbo.n_combinations,
                "n_trials": self.pbo.n_trials,
                "n_obs": self.pbo.n_obs,
                "logits": [float(v) for v in self.pbo.logits],
            }
        else:
            out["pbo"] = None
        out["pbo_note"] = self.pbo_note
        out["notes"] = list(self.notes)
        return out


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }}
th {{ background: #eee; cursor: pointer; }}
tr.best td {{ background: #e8f4e8; font-weight: bold; }}
</style></head><body>
<h2>{title}</h2>
<p>Click a column header to sort. Figures are mean ± std over development folds (test_&lt;metric&gt;);
lockbox columns are the holdout_* figures, shown and never chosen on.
The best row is chosen on the selection figure.</p>
<table id="t"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
{summary}
{figure}
<script>
var dir = {{}};
function sortBy(i) {{
  var tb = document.getElementById("t").tBodies[0];
  var rows = Array.prototype.slice.call(tb.rows);
  dir[i] = -(dir[i] || -1);
  rows.sort(function (a, b) {{
    var x = a.cells[i].getAttribute("data-v"), y = b.cells[i].getAttribute("data-v");
    var nx = parseFloat(x), ny = parseFloat(y);
    if (!isNaN(nx) && !isNaN(ny)) return dir[i] * (nx - ny);
    if (!isNaN(nx)) return -1;
    if (!isNaN(ny)) return 1;
    return dir[i] * x.localeCompare(y);
  }});
  rows.forEach(function (r) {{ tb.appendChild(r); }});
}}
</script>
</body></html>
"""


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _cell(value, std=None) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return "-"
        text = f"{float(value):.4g}"
        return f"{text} ± {float(std):.3g}" if _finite(std) else text
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value)


def _sort_key(value) -> str:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{float(value):.12g}" if math.isfinite(float(value)) else ""
    return "" if value is None else str(value)


# -- which runs ------------------------------------------------------------------------------------
def select_parents(reader: RunReader, settings: SweepReportSettings) -> tuple[list[ParentRun], str]:
    """The parent runs of ``sweep_dir=``, ``experiment=`` or ``runs=`` (exactly one), and a label."""
    given = [k for k in ("sweep_dir", "experiment", "runs") if getattr(settings, k)]
    if len(given) != 1:
        raise QuantmlInputError(
            "name the runs of the report with exactly one of sweep_dir=DIR (the hydra.sweep.dir of a "
            "`quantml train -m` sweep, tag quantml.sweep_dir), experiment=NAME or runs=[RUN_ID,RUN_ID]"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if settings.runs:
        parents = [reader.parent(r, action="report") for r in dict.fromkeys(settings.runs)]
        return parents, f"runs={','.join(p.run_id[:8] for p in parents)}"
    if settings.experiment:
        parents = reader.experiment_parents(settings.experiment)
        if not parents:
            raise QuantmlInputError(
                f"experiment {settings.experiment!r} has no quantml parent runs; run `quantml train`"
            )
        return parents, f"experiment={settings.experiment}"
    sweep_dir = str(settings.sweep_dir)
    candidates = list(dict.fromkeys([sweep_dir, str(Path(sweep_dir).expanduser().resolve())]))
    for path in candidates:
        parents = reader.sweep_parents(path)
        if parents:
            return parents, f"sweep_dir={path}"
    recorded = sorted({p.tags.get(L.TAG_SWEEP_DIR) for p in reader.search_parents() if p.tags.get(L.TAG_SWEEP_DIR)})
    shown = ", ".join(recorded[-8:]) or "none"
    raise QuantmlInputError(
        f"no parent run of the tracking store {reader.tracking_uri} is tagged {L.TAG_SWEEP_DIR}={sweep_dir}; "
        f"pass the sweep dir as the sweep recorded it (recorded: {shown}), or experiment=NAME / runs=[...]"
    )


# -- the report ----------------------------------------------------------------------------------
def _row(parent: ParentRun, horizons: list[str]) -> dict:
    row = {"run_id": parent.run_id, "run_name": parent.run_name, "status": _status(parent)}
    for h in horizons:
        for m in HEADLINE:
            for stat in ("mean", "std"):
                key = f"test_{m}_{stat}{HORIZON_SEPARATOR}{h}"
                row[key] = float(parent.metrics[key]) if _finite(parent.metrics.get(key)) else float("nan")
    return row


def _status(parent: ParentRun) -> str:
    if str(parent.tags.get(L.TAG_PRUNED, "")).lower() == "true":
        return "PRUNED"
    return parent.status


def _horizons(parents: list[ParentRun]) -> list[str]:
    out: list[str] = []
    for p in parents:
        for h in p.horizons:
            if h not in out:
                out.append(h)
    return out


def build_report(reader: RunReader, settings: SweepReportSettings) -> SweepReport:
    """The leaderboard of the selected parent runs, the best one's DSR and the sweep's PBO.
    Reads the lockbox (``holdout_*``, counted per parent) only after the best run is chosen, and
    only when ``show_lockbox``."""
    from quantml.registry.book import run_books

    if settings.select_mode not in ("max", "min"):
        raise QuantmlInputError(f"select.mode={settings.select_mode!r}; use max or min")
    if settings.select_metric.startswith(L.LOCKBOX_PREFIX):
        raise QuantmlInputError(
            f"select.metric={settings.select_metric}: the lockbox is never chosen on (choosing on it spends it); "
            f"select on a development figure, e.g. select.metric=test_sharpe_after_cost_mean"
        )
    parents, label = select_parents(reader, settings)
    horizons = _horizons(parents)
    if not horizons:
        raise QuantmlInputError(f"the runs of {label} record no horizons (tag {L.TAG_HORIZONS}); {_retrain()}")
    horizon = settings.horizon or horizons[0]
    if horizon not in horizons:
        raise QuantmlInputError(f"horizon={horizon}: the runs of {label} have horizons {', '.join(horizons)}")
    selection = f"{settings.select_metric}{HORIZON_SEPARATOR}{horizon}"
    notes: list[str] = []

    # the choice, on development figures only
    scored = [p for p in parents if _finite(p.metrics.get(selection))]
    sign = 1.0 if settings.select_mode == "max" else -1.0
    scored.sort(key=lambda p: -sign * float(p.metrics[selection]))
    best = scored[0] if scored else None
    order = scored + [p for p in parents if p not in scored]

    # each trial's book per bar (the one book of the gates)
    returns: dict[str, pd.Series] = {}
    ppy = None
    for p in parents:
        if p.status != "FINISHED":
            continue
        problem = p.walk_forward_problem()
        if problem:
            notes.append(
                f"run {p.run_id} ({p.run_name}) validated with {p.validation}: counted as a trial, its book is not "
                f"used (its fold models trained on later data)"
            )
            continue
        books = run_books(p)
        if books is None:
            notes.append(f"run {p.run_id} has no {L.OOS_ARTIFACT} with folds: counted as a trial, no book")
            continue
        series = bar_returns(books, horizon)
        if series is None or len(series) < 2:
            notes.append(f"run {p.run_id} has no out-of-sample bars at {horizon}: counted as a trial, no book")
            continue
        returns[p.run_id] = series
        if ppy is None or (best is not None and p.run_id == best.run_id):
            ppy = books.books.periods_per_year

    rows = []
    for rank, p in enumerate(order, start=1):
        row = {"rank": rank, **_row(p, horizons), "selection": float(p.metrics.get(selection, float("nan")))}
        series = returns.get(p.run_id)
        sharpe = per_period_sharpe(series.to_numpy()) if series is not None else float("nan")
        row[f"{BOOK_SHARPE}/{horizon}"] = sharpe * math.sqrt(ppy) if ppy and _finite(sharpe) else float("nan")
        row[f"book_bars/{horizon}"] = int(len(series)) if series is not None else 0
        row["data_fingerprint"] = p.tags.get(L.TAG_DATA_FINGERPRINT, "")
        for k, v in sorted(p.tags.items()):
            if k.startswith(L.CHOICE_TAG_PREFIX):
                row[k] = v
        rows.append(row)
    table = pd.DataFrame(rows)
    choice_cols = sorted(c for c in table.columns if c.startswith(L.CHOICE_TAG_PREFIX))
    varying = [c for c in choice_cols if table[c].fillna("").astype(str).nunique() > 1]
    if f"{L.CHOICE_TAG_PREFIX}backbone" in choice_cols and f"{L.CHOICE_TAG_PREFIX}backbone" not in varying:
        varying.insert(0, f"{L.CHOICE_TAG_PREFIX}backbone")

    # DSR of the best run
    trials, dsr, dsr_note = None, None, ""
    if best is not None:
        fingerprint = best.tags.get(L.TAG_DATA_FINGERPRINT)
        fps = {p.tags.get(L.TAG_DATA_FINGERPRINT) for p in parents if p.tags.get(L.TAG_DATA_FINGERPRINT)}
        if len(fps) > 1:
            notes.append(
                f"the runs were trained on {len(fps)} data fingerprints: N counts the trials on the best run's "
                f"({fingerprint}) plus every run of this report"
            )
        trials = count_trials(reader, fingerprint, also=parents, given=settings.n_trials)
        own = returns.get(best.run_id)
        sharpes = [per_period_sharpe(s.to_numpy()) for s in returns.values()]
        sharpes = [v for v in sharpes if _finite(v)]
        variance = settings.sr_variance
        if variance is None and len(sharpes) >= 2:
            variance = float(np.var(sharpes, ddof=1))
        if own is None:
            dsr_note = f"the best run {best.run_id} has no book at {horizon} (see the notes)"
        elif variance is None and trials.n_trials > 1:
            dsr_note = (
                f"N={trials.n_trials:g} trials but only {len(sharpes)} with a book, so the variance of the trials' "
                f"Sharpe ratios cannot be estimated; pass dsr.sr_variance=V (per-bar Sharpe ratios)"
            )
        else:
            dsr = deflated_sharpe(own.to_numpy(), trials.n_trials, float(variance or 0.0))
            if settings.sr_variance is None:
                dsr_note = f"V[SR] from the per-bar book Sharpe ratios of the {len(sharpes)} trials of this report"
            else:
                dsr_note = f"V[SR]={settings.sr_variance:g} given (dsr.sr_variance)"
    else:
        dsr_note = f"no parent run logs {selection}"

    # PBO over the trials' books on their common bars
    pbo, pbo_note = None, ""
    if len(returns) >= 2:
        matrix = pd.concat(returns, axis=1, join="inner").sort_index()
        try:
            pbo = pbo_cscv(matrix.to_numpy(), settings.pbo_splits)
        except ValueError as exc:
            pbo_note = f"{exc} ({len(matrix)} common bars of {len(returns)} trials; pbo.n_splits={settings.pbo_splits})"
    else:
        pbo_note = f"PBO compares trials: {len(returns)} trial(s) with a book at {horizon}, it needs >= 2"

    report = SweepReport(
        label=label,
        table=table,
        horizons=horizons,
        horizon=horizon,
        selection=selection,
        best=best,
        trials=trials,
        dsr=dsr,
        dsr_note=dsr_note,
        pbo=pbo,
        pbo_note=pbo_note,
        periods_per_year=ppy,
        choices=varying,
        notes=notes,
    )
    if settings.show_lockbox:  # after the choice: shown beside it, counted on each parent
        _add_lockbox(report, parents, horizons)
    return report


def _add_lockbox(report: SweepReport, parents: list[ParentRun], horizons: list[str]) -> None:
    by_id = {}
    for p in parents:
        found = p.lockbox_metrics()  # counted in quantml.lockbox_reads when there are any
        if found:
            report.lockbox_read += 1
        by_id[p.run_id] = found
    for h in horizons:
        for m in HEADLINE:
            key = f"{L.LOCKBOX_PREFIX}{m}{HORIZON_SEPARATOR}{h}"
            report.table[key] = [float(by_id[r].get(key, float("nan"))) for r in report.table["run_id"]]


def _retrain() -> str:
    return "re-run `quantml train` with this quantml version"


# -- figure and logging -----------------------------------------------------------------------------
def pbo_figure(pbo: PBOResult, title: str = ""):
    """Histogram of the CSCV logits with the line at 0 (left of it: the in-sample best was at or
    below the out-of-sample median). A matplotlib Figure (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    bins = min(60, max(10, int(np.sqrt(len(pbo.logits)))))
    ax.hist(pbo.logits, bins=bins, color="#4477aa", alpha=0.85)
    ax.axvline(0.0, color="#cc3311", linestyle="--", linewidth=1.5, label="logit 0 (OOS median)")
    ax.set_xlabel("logit of the in-sample best trial's out-of-sample relative rank")
    ax.set_ylabel("combinations")
    ax.set_title(
        title or f"PBO {pbo.pbo:.3f}: {pbo.n_combinations} CSCV combinations, S={pbo.n_splits}, N={pbo.n_trials} trials"
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_report(report: SweepReport, folder: Path) -> dict[str, Path]:
    """The leaderboard CSV and HTML, the summary JSON and the PBO figure under ``folder``
    (the run layout's artifact paths)."""
    folder = Path(folder)
    paths = {
        "csv": folder / L.SWEEP_LEADERBOARD_CSV,
        "html": folder / L.SWEEP_LEADERBOARD_HTML,
        "summary": folder / L.SWEEP_SUMMARY,
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    png = None
    if report.pbo is not None:
        png = figure_png(pbo_figure(report.pbo))
        paths["figure"] = folder / L.SWEEP_PBO_FIGURE
        paths["figure"].parent.mkdir(parents=True, exist_ok=True)
        paths["figure"].write_bytes(png)
    report.table.to_csv(paths["csv"], index=False)
    paths["html"].write_text(report.to_html(png), encoding="utf-8")
    paths["summary"].write_text(json.dumps(report.summary_dict(), indent=2, default=str), encoding="utf-8")
    return paths


def log_report(reader: RunReader, report: SweepReport, settings: SweepReportSettings) -> str:
    """A sweep run (``quantml.kind=sweep``) in the best (else first) parent's experiment, holding the
    report; each parent tagged ``quantml.sweep_run`` with its id. Returns the run id."""
    from quantml.tracking.writer import RunWriter, TrackedRun

    ids = list(report.table["run_id"])
    first = report.best or reader.parent(ids[0], action="report")
    writer = RunWriter(first.experiment_id, reader.client)
    h = report.horizon
    tags = {L.TAG_KIND: L.KIND_SWEEP, L.TAG_HORIZONS: h}
    if settings.sweep_dir:
        tags[L.TAG_SWEEP_DIR] = report.label.removeprefix("sweep_dir=")
    if report.trials is not None:
        tags[L.TAG_N_TRIALS] = f"{report.trials.n_trials:g}"
        tags[L.TAG_TRIALS_SOURCE] = report.trials.description
    if report.best is not None:
        tags[L.TAG_BEST_RUN] = report.best.run_id
    name = f"sweep · {report.label}"
    run = writer.start(name[:240], tags)
    with run.ending():
        run.log_params(
            {
                "selection": report.selection,
                "select_mode": settings.select_mode,
                "horizon": h,
                "n_parents": len(ids),
                "pbo_n_splits": settings.pbo_splits,
                "n_trials_given": settings.n_trials,
                "sr_variance_given": settings.sr_variance,
            }
        )
        metrics = {"n_parents": float(len(ids))}
        if report.trials is not None:
            metrics["n_trials"] = report.trials.n_trials
        if report.dsr is not None:
            d = report.dsr
            metrics.update(
                {
                    f"oos_dsr{HORIZON_SEPARATOR}{h}": d.dsr,
                    f"oos_psr{HORIZON_SEPARATOR}{h}": d.psr_zero,
                    f"oos_expected_max_sharpe_per_bar{HORIZON_SEPARATOR}{h}": d.expected_max_sr,
                    f"oos_best_sharpe_per_bar{HORIZON_SEPARATOR}{h}": d.sr,
                    f"trials_sharpe_variance{HORIZON_SEPARATOR}{h}": d.sr_variance,
                }
            )
        if report.pbo is not None:
            metrics[f"oos_pbo{HORIZON_SEPARATOR}{h}"] = report.pbo.pbo
        run.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_report(report, Path(tmp))
            for sub in ("sweep", "figures"):
                if (Path(tmp) / sub).is_dir():
                    run.log_artifacts(str(Path(tmp) / sub), sub)
        report.sweep_run_id = run.run_id
        run.set_description(report.to_text())
    for rid in ids:
        TrackedRun(reader.client, rid).set_tags({L.TAG_SWEEP_RUN: run.run_id})
    return run.run_id


def run_sweep_report(tracking_uri: str, settings: SweepReportSettings) -> SweepReport:
    """Build the report, log it (``log_to_mlflow``) and write it to ``output_dir`` when given."""
    reader = RunReader(tracking_uri)
    for experiment in reader.client.search_experiments():  # a killed job's run reads FAILED, not RUNNING
        sweep_stale_runs(reader.client, experiment.experiment_id)
    report = build_report(reader, settings)
    if settings.log_to_mlflow:
        log_report(reader, report, settings)
    if settings.output_dir:
        write_report(report, Path(settings.output_dir).expanduser())
    return report
