"""The monitor's HTML report and figures (matplotlib Agg, the evaluation report's style).

Figures: ``psi_over_time.png`` (PSI of ``expected_return`` against the training reference per
rolling block, per horizon), ``reliability.png`` (the realised rows of the window),
``coverage_rolling.png`` (coverage of ``[q10, q90]`` per rolling block), ``pnl.png`` (cumulative
after-cost paper PnL per bucket and per policy, total per symbol) and ``slippage.png`` (histogram of
the fills' realised one-way cost against the cost model's assumption).
"""

from __future__ import annotations

import base64
import html as html_lib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP
from quantml.evaluation.drift import population_stability_index
from quantml.evaluation.figures import reliability_figure
from quantml.evaluation.reference import reference_sample
from quantml.market.figures import close_figures, figure_png, new_figure
from quantml.monitoring.checks import FAIL, NOMINAL_COVERAGE, OK, WARN

STATUS_COLOUR = {OK: "#2e7d32", WARN: "#ef6c00", FAIL: "#c62828"}


@dataclass
class MonitorReport:
    html: str
    figures: dict = field(default_factory=dict)  # name -> Figure

    def png(self, name: str) -> bytes:
        return figure_png(self.figures[name])

    def write(self, directory) -> Path:
        """``report.html`` and ``figures/*.png`` under ``directory``; returns the HTML path."""
        directory = Path(directory)
        (directory / "figures").mkdir(parents=True, exist_ok=True)
        for name in self.figures:
            (directory / "figures" / name).write_bytes(self.png(name))
        path = directory / "report.html"
        path.write_text(self.html, encoding="utf-8")
        return path

    def close(self) -> None:
        close_figures(self.figures)


def rolling_blocks(timestamps: pd.Series, block: int) -> pd.Series:
    """Block number of each row: consecutive runs of ``block`` distinct timestamps (0 = oldest)."""
    ts = pd.to_datetime(timestamps, utc=True)
    order = np.sort(ts.unique())
    rank = np.searchsorted(order, ts.to_numpy())
    return pd.Series(rank // max(int(block), 1), index=timestamps.index)


def rolling_table(frame: pd.DataFrame, references: dict, block: int, bins: int = 10) -> pd.DataFrame:
    """Per (horizon, block): the block's last bar, PSI of ``expected_return`` against the row's
    version's reference, and the coverage of its realised rows. ``references``: version -> reference."""
    out = []
    if frame.empty:
        return pd.DataFrame(columns=["horizon", "block", "end", "psi", "coverage", "n"])
    blocks = rolling_blocks(frame[TIMESTAMP], block)
    for (h, b), part in frame.groupby([frame["horizon"].astype(str), blocks], sort=True):
        psis = []
        for version, vp in part.groupby(part["model_version"].astype(str)):
            entry = ((references.get(version) or {}).get("predictions") or {}).get(h, {}).get("expected_return")
            if entry is not None:
                psis.append(population_stability_index(reference_sample(entry["q"]), vp["expected_return"], bins))
        real = part[np.isfinite(part["ret"].to_numpy(np.float64))]
        cov = float(((real["ret"] >= real["q10"]) & (real["ret"] <= real["q90"])).mean()) if len(real) else np.nan
        out.append(
            {
                "horizon": h,
                "block": int(b),
                "end": part[TIMESTAMP].max(),
                "psi": float(np.nanmax(psis)) if psis else np.nan,
                "coverage": cov,
                "n": len(part),
            }
        )
    return pd.DataFrame(out)


def _psi_figure(rolling: pd.DataFrame, fail: float):
    fig = new_figure()
    ax = fig.subplots()
    for h, part in rolling.groupby("horizon", sort=False):
        ax.plot(part["end"], part["psi"], marker="o", ms=3, label=f"expected_return {h}")
    ax.axhline(fail, color=STATUS_COLOUR[FAIL], ls="--", lw=0.8, label=f"fail {fail:g}")
    ax.set_title("prediction drift (PSI vs the training reference)")
    ax.set_ylabel("PSI")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return fig


def _coverage_figure(rolling: pd.DataFrame):
    fig = new_figure()
    ax = fig.subplots()
    for h, part in rolling.groupby("horizon", sort=False):
        ax.plot(part["end"], part["coverage"], marker="o", ms=3, label=f"coverage {h}")
    ax.axhline(NOMINAL_COVERAGE, color="grey", ls="--", lw=0.8, label="nominal 0.8")
    ax.set_ylim(0, 1)
    ax.set_title("coverage of [q10, q90] per rolling block")
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return fig


def _pnl_figure(pnl: pd.DataFrame):
    fig = new_figure(9.6, 3.6)
    a1, a2, a3 = fig.subplots(1, 3)
    for ax, by, title in ((a1, "bucket", "by bucket (horizon)"), (a2, "policy", "by policy")):
        for key, part in pnl.groupby(pnl[by].astype(str), sort=True):
            series = part.groupby(TIMESTAMP, sort=True)["pnl"].sum().cumsum()
            ax.plot(series.index, series.to_numpy(), label=str(key))
        ax.set_title(f"cumulative PnL {title}", fontsize=9)
        ax.legend(fontsize=6)
        ax.tick_params(axis="x", labelsize=6, rotation=30)
    totals = pnl.groupby(pnl[SYMBOL].astype(str))["pnl"].sum() if len(pnl) else pd.Series(dtype=float)
    a3.bar(totals.index.astype(str), totals.to_numpy(np.float64))
    a3.set_title("total PnL by symbol", fontsize=9)
    a3.tick_params(axis="x", labelsize=7)
    return fig


def _slippage_figure(fills: pd.DataFrame, assumed_bps: float):
    fig = new_figure()
    ax = fig.subplots()
    cost = (fills["slippage_bps"] + fills["fee_bps"]).to_numpy(np.float64)
    cost = cost[np.isfinite(cost)]
    if len(cost):
        ax.hist(cost, bins=40, color="tab:blue", alpha=0.8)
    ax.axvline(assumed_bps, color=STATUS_COLOUR[FAIL], ls="--", label=f"assumed one-way {assumed_bps:g} bps")
    ax.set_xlabel("realised one-way cost per fill (slippage + fee, bps)")
    ax.set_title("fill slippage vs the cost model")
    ax.legend(fontsize=7)
    return fig


def build_monitor_report(
    checks: pd.DataFrame,
    frame: pd.DataFrame,
    rolling: pd.DataFrame,
    pnl: pd.DataFrame,
    fills: pd.DataFrame,
    assumed_bps: float,
    title: str,
    psi_fail: float,
    notes: list[str] = (),
) -> MonitorReport:
    """The report of one monitor run. ``checks``: the check rows; ``frame``: the window's prediction
    rows with realised outcomes; ``rolling``: :func:`rolling_table`; ``pnl`` / ``fills``: the logs."""
    figures = {}
    if len(rolling):
        figures["psi_over_time.png"] = _psi_figure(rolling, psi_fail)
        figures["coverage_rolling.png"] = _coverage_figure(rolling)
    real = frame[np.isfinite(frame["dir"].to_numpy(np.float64))] if len(frame) else frame
    if len(real):
        figures["reliability.png"] = reliability_figure(real[["horizon", "prob_up", "dir"]])
    if len(pnl):
        figures["pnl.png"] = _pnl_figure(pnl)
    if len(fills):
        figures["slippage.png"] = _slippage_figure(fills, assumed_bps)
    report = MonitorReport("", figures)
    report.html = _html(report, checks, title, list(notes))
    return report


def _html(report: MonitorReport, checks: pd.DataFrame, title: str, notes: list[str]) -> str:
    shown = checks.copy()
    for c in ("window_start", "window_end"):
        shown[c] = pd.to_datetime(shown[c], utc=True).dt.strftime("%Y-%m-%d %H:%M")
    rows = []
    for _, r in shown.iterrows():
        colour = STATUS_COLOUR.get(r["status"], "#666")
        cells = "".join(f"<td>{html_lib.escape(_fmt(r[c]))}</td>" for c in shown.columns if c != "status")
        rows.append(f'<tr><td style="color:{colour};font-weight:bold">{html_lib.escape(r["status"])}</td>{cells}</tr>')
    head = "<th>status</th>" + "".join(f"<th>{html_lib.escape(c)}</th>" for c in shown.columns if c != "status")
    imgs = "\n".join(
        f'<figure><img alt="{html_lib.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(report.png(name)).decode("ascii")}"><figcaption>{html_lib.escape(name)}</figcaption></figure>'
        for name in report.figures
    )
    counts = checks["status"].value_counts().to_dict()
    summary = ", ".join(f"{k}: {counts.get(k, 0)}" for k in (FAIL, WARN, OK, "n/a"))
    note_html = "".join(f"<li>{html_lib.escape(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html_lib.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}} table.t{{border-collapse:collapse;font-size:12px}}
table.t td,table.t th{{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}}
figure{{display:inline-block;margin:0.5em}} img{{max-width:100%}}</style>
</head><body>
<h1>{html_lib.escape(title)}</h1>
<p>{html_lib.escape(summary)}. Each row's warn/fail are the effective thresholds (the configured size of a
change that matters, or the chance level for this many effective rows, whichever is larger).
Definitions: docs/monitoring.md.</p>
<ul>{note_html}</ul>
<h2>Checks</h2>
<table class="t"><tr>{head}</tr>{"".join(rows)}</table>
<h2>Figures</h2>
{imgs}
</body></html>
"""


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)
