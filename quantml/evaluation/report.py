"""The evaluation report of a run: per symbol x horizon, per fold, figures, HTML, console table.

``by_symbol_horizon`` has one row per (symbol, horizon) evaluated on that symbol alone
(time-series IC within calendar buckets, sign long/short of the one symbol), plus one row
``symbol="ALL"`` per horizon evaluated on the whole panel in the run's ``ic_mode``
(the numbers logged as ``oos_*`` metrics). ``by_fold`` is ``fold_metrics`` reshaped to one
row per (fold, horizon).
"""

from __future__ import annotations

import base64
import html as html_lib
import warnings
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.backtest import run_backtest
from quantml.contracts import HORIZON_SEPARATOR, SYMBOL, TIMESTAMP, split_metric_name
from quantml.evaluation.evaluate import check_prediction_frame, evaluate_predictions
from quantml.evaluation.figures import (
    close_figures,
    coverage_figure,
    cumulative_ic_figure,
    equity_figure,
    figure_png,
    reliability_figure,
)
from quantml.evaluation.metrics import check_ic_mode, ic_series
from quantml.market import CostModel
from quantml.portfolio.strategy import RankLongShort

REPORT_METRICS = (
    "ic",
    "icir",
    "rank_ic",
    "rank_icir",
    "ann_return",
    "sharpe_after_cost",
    "information_ratio",
    "max_drawdown",
    "hit_rate",
    "ap",
    "rmse",
    "ece",
    "brier",
    "coverage_80",
    "pinball",
    "turnover",
)
SUMMARY_METRICS = (
    "ic",
    "rank_ic",
    "icir",
    "sharpe_after_cost",
    "ann_return",
    "max_drawdown",
    "hit_rate",
    "ap",
    "ece",
    "coverage_80",
)
FIGURE_NAMES = ("reliability_diagram.png", "coverage_by_horizon.png", "cumulative_ic.png", "equity_curve.png")
ALL = "ALL"


@dataclass
class Report:
    """Tables, figures (file name -> matplotlib Figure), a self-contained HTML page and a console table."""

    by_symbol_horizon: pd.DataFrame
    by_fold: pd.DataFrame
    figures: dict = field(default_factory=dict)
    html: str = ""
    summary: str = ""

    def png(self, name: str) -> bytes:
        """The figure rendered once as PNG bytes (shared by the HTML page and the logged files)."""
        cache = self.__dict__.setdefault("_png_cache", {})
        if name not in cache:
            cache[name] = figure_png(self.figures[name])
        return cache[name]

    def write(self, directory) -> list[Path]:
        """Write ``report_by_symbol_horizon.csv``, ``fold_metrics.csv``, ``report.html`` and the PNGs."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "report_by_symbol_horizon.csv", out / "fold_metrics.csv", out / "report.html"]
        self.by_symbol_horizon.to_csv(paths[0], index=False)
        self.by_fold.to_csv(paths[1], index=False)
        paths[2].write_text(self.html, encoding="utf-8")
        for name in self.figures:
            (out / name).write_bytes(self.png(name))
            paths.append(out / name)
        return paths

    def close(self) -> None:
        close_figures(self.figures)


def _by_horizon(metrics: dict[str, float], split: str) -> dict[str, dict[str, float]]:
    """``{"oos_ic/1d": v} -> {"1d": {"ic": v}}``."""
    prefix = f"{split}_"
    out: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        base, h = split_metric_name(name)
        out.setdefault(h, {})[base[len(prefix) :]] = value
    return out


def _symbol_parts(oos: pd.DataFrame):
    """``(symbol, rows)`` in sorted symbol order, each symbol's rows in frame order, one symbol at a time.

    Iterating ``oos.groupby(SYMBOL)`` would first take the whole frame in sorted order (a second
    copy of a frame of tens of millions of rows); this copies one symbol's rows at a time.
    """
    codes, symbols = pd.factorize(oos[SYMBOL], sort=True)
    for k, symbol in enumerate(symbols):
        yield symbol, oos.iloc[np.flatnonzero(codes == k)]


def _coverage_by_horizon(oos: pd.DataFrame) -> pd.DataFrame:
    """Share of rows (unlabelled ones count as misses) at or below each quantile, and inside q10..q90, per horizon.

    On the columns' arrays, one horizon's mask at a time: a groupby-apply would first take the
    whole frame in horizon order.
    """
    codes, horizons = pd.factorize(oos["horizon"])
    ret, q10, q50, q90 = (oos[c].to_numpy(np.float64) for c in ("ret", "q10", "q50", "q90"))
    rows = []
    for k in range(len(horizons)):
        at = codes == k
        r = ret[at]
        lo, hi = q10[at], q90[at]
        rows.append(
            {
                "coverage_q10": float(np.mean(r <= lo)),
                "coverage_q50": float(np.mean(r <= q50[at])),
                "coverage_q90": float(np.mean(r <= hi)),
                "coverage_80": float(np.mean((lo <= r) & (r <= hi))),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(np.asarray(horizons), name="horizon"))


def symbol_horizon_table(
    oos: pd.DataFrame,
    periods_per_year: float,
    costs: CostModel,
    ic_mode: str,
    ece_bins: int = 10,
    ic_bucket: str | None = None,
    oos_metrics: dict[str, float] | None = None,
    strategy=None,
    market: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (symbol, horizon) plus ``ALL`` rows; columns ``symbol, horizon, n_obs`` + REPORT_METRICS.

    ``oos_metrics`` (the ``oos_*`` metrics of ``oos``, when the caller already has them) fill
    the ``ALL`` rows instead of being computed again.
    """
    rows = []
    groups = chain([(ALL, oos, ic_mode)], ((s, part, "time_series") for s, part in _symbol_parts(oos)))
    for symbol, part, mode in groups:
        known = oos_metrics if symbol == ALL and oos_metrics else None
        metrics = _by_horizon(
            known
            or evaluate_predictions(
                part,
                "oos",
                periods_per_year,
                costs,
                mode,
                ece_bins=ece_bins,
                ic_bucket=ic_bucket,
                strategy=strategy,
                market=market,
            ),
            "oos",
        )
        n_obs = part.groupby("horizon", sort=False)["ret"].count()
        for h, values in metrics.items():
            rows.append(
                {
                    "symbol": symbol,
                    "horizon": h,
                    "ic_mode": mode,
                    "n_obs": int(n_obs.get(h, 0)),
                    **{k: values.get(k, np.nan) for k in REPORT_METRICS},
                }
            )
    return pd.DataFrame(rows)


def fold_table(
    fold_metrics: pd.DataFrame | None,
    oos: pd.DataFrame,
    periods_per_year: float,
    costs: CostModel,
    ic_mode: str,
    strategy=None,
    market: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``fold_metrics`` (one row per fold, columns ``<split>_<metric>/<h>``) as one row per (fold, horizon).

    Columns: ``fold, horizon`` then ``<split>_<metric>`` for every metric present. When
    ``fold_metrics`` is empty, the test metrics are recomputed from ``oos`` per fold.
    """
    if fold_metrics is None or fold_metrics.empty:
        fold_metrics = pd.DataFrame(
            [
                {
                    "fold": f,
                    **evaluate_predictions(
                        part.drop(columns=["path"], errors="ignore").drop_duplicates([SYMBOL, TIMESTAMP, "horizon"]),
                        "test",
                        periods_per_year,
                        costs,
                        ic_mode,
                        strategy=strategy,
                        market=market,
                    ),
                }
                for f, part in oos.groupby("fold", sort=True)
            ]
        )
    fm = fold_metrics.copy()
    fold_col = next((c for c in ("fold", "fold_id") if c in fm.columns), None)
    folds = fm[fold_col].to_numpy() if fold_col else fm.index.to_numpy()
    per_metric = [c for c in fm.columns if isinstance(c, str) and HORIZON_SEPARATOR in c]
    records: dict[tuple, dict] = {}
    for i, f in enumerate(folds):
        for col in per_metric:
            base, h = split_metric_name(col)
            records.setdefault((f, h), {"fold": f, "horizon": h})[base] = fm[col].iloc[i]
    table = pd.DataFrame(list(records.values()))
    if table.empty:
        return pd.DataFrame(columns=["fold", "horizon"])
    first = [c for c in ("fold", "horizon") if c in table.columns]
    ordered = first + sorted(c for c in table.columns if c not in first)
    return table[ordered].sort_values(first, kind="stable").reset_index(drop=True)


def _path_series(oos: pd.DataFrame, fn) -> dict[str, pd.Series]:
    """``fn(part_of_one_horizon_and_path) -> Series`` averaged over paths by index, per horizon."""
    out = {}
    paths = oos["path"].to_numpy() if "path" in oos.columns else None
    codes, horizons = pd.factorize(oos["horizon"])  # on a categorical column's codes, no string per row
    for k, h in enumerate(horizons):
        rows = codes == k
        part = oos[rows]
        if paths is None or len(pd.unique(paths[rows])) < 2:  # one path: the part itself, no second copy
            series = [fn(part)]
        else:
            series = [fn(p) for _, p in part.groupby(paths[rows], sort=True)]
        del part
        series = [s for s in series if len(s)]
        out[str(h)] = pd.concat(series, axis=1).mean(axis=1).sort_index() if series else pd.Series(dtype=np.float64)
    return out


def _pnl_and_benchmark(
    frame: pd.DataFrame, strategy, costs: CostModel, periods_per_year: float, market: pd.DataFrame | None = None
) -> pd.Series:
    bt = run_backtest(strategy, frame, costs, periods_per_year, market=market)
    bench = bt.benchmark if bt.benchmark is not None else pd.Series(np.nan, index=bt.pnl.index)
    return pd.concat({"pnl": bt.pnl.rename("pnl"), "benchmark": bench.rename("benchmark")})


NOT_TRADABLE_NOTE = (
    "tradable=no: purged K-fold / CPCV folds train on data after their test block; the backtest "
    "columns are a statistic of the forecasts, not a tradable track record (use walk_forward)."
)


def summary_table(by_symbol_horizon: pd.DataFrame, tradable: bool | None = None) -> str:
    """Compact console table of the ``ALL`` rows (one line per horizon). ``tradable=False`` adds
    a ``tradable`` column (``no``) and :data:`NOT_TRADABLE_NOTE` under the table."""
    rows = by_symbol_horizon[by_symbol_horizon["symbol"] == ALL]
    cols = ["horizon", *SUMMARY_METRICS]
    table = rows[cols].set_index("horizon")
    if tradable is False:
        table = table.assign(tradable="no")
    text = table.to_string(float_format=lambda v: f"{v:.4f}")
    return f"{text}\n{NOT_TRADABLE_NOTE}" if tradable is False else text


def _html_page(report: Report, ic_mode: str, periods_per_year: float, costs: CostModel) -> str:
    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, na_rep="nan", float_format=lambda v: f"{v:.4g}", border=0, classes="t")

    imgs = "\n".join(
        f'<figure><img alt="{html_lib.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(report.png(name)).decode("ascii")}">'
        f"<figcaption>{html_lib.escape(name)}</figcaption></figure>"
        for name in report.figures
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>quantml evaluation report</title>
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}} table.t{{border-collapse:collapse;font-size:12px}}
table.t td,table.t th{{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}}
figure{{display:inline-block;margin:0.5em}} img{{max-width:100%}} pre{{background:#f6f6f6;padding:0.6em}}</style>
</head><body>
<h1>quantml evaluation report</h1>
<p>IC mode: <b>{html_lib.escape(ic_mode)}</b>; periods per year: {periods_per_year:g};
one-way cost: {costs.one_way * 1e4:g} bps. Definitions: docs/evaluation.md.</p>
<h2>Out-of-sample summary</h2><pre>{html_lib.escape(report.summary)}</pre>
<h2>Figures</h2>
{imgs}
<h2>Per symbol x horizon</h2>
{table(report.by_symbol_horizon)}
<h2>Per fold</h2>
{table(report.by_fold)}
</body></html>
"""


def build_report(
    oos: pd.DataFrame,
    fold_metrics: pd.DataFrame | None,
    periods_per_year: float,
    costs: CostModel,
    ic_mode: str,
    *,
    ece_bins: int = 10,
    ic_bucket: str | None = None,
    oos_metrics: dict[str, float] | None = None,
    strategy=None,
    market: pd.DataFrame | None = None,
    tradable: bool | None = None,
) -> Report:
    """Build the report of a run from its out-of-sample prediction frame and per-fold metrics.

    Parameters
    ----------
    oos : the OOS prediction frame of the contract (forecast + realised columns, ``fold``
        [, ``path``]).
    fold_metrics : one row per fold (column ``fold`` or the index), metric-name columns; None
        or empty -> test metrics recomputed per fold from ``oos``.
    periods_per_year, costs, ic_mode, strategy, market : as in :func:`evaluate_predictions`.
    tradable : False for a validation whose test blocks are not a tradable timeline (purged
        K-fold, CPCV: folds train on the future of their test block): the summary table then
        gets a ``tradable`` column and a note line; None/True: no column.
    """
    check_prediction_frame(oos, what="out-of-sample frame")
    check_ic_mode(ic_mode)
    strategy = strategy if strategy is not None else RankLongShort()
    by_sh = symbol_horizon_table(
        oos, periods_per_year, costs, ic_mode, ece_bins, ic_bucket, oos_metrics, strategy, market
    )
    by_fold = fold_table(fold_metrics, oos, periods_per_year, costs, ic_mode, strategy, market)
    all_rows = by_sh[by_sh["symbol"] == ALL].set_index("horizon")
    coverage = _coverage_by_horizon(oos) if oos["ret"].notna().any() else pd.DataFrame()
    coverage = coverage.reindex(all_rows.index) if len(coverage) else coverage
    labelled = oos[np.isfinite(oos["ret"].to_numpy(np.float64))]
    ic = _path_series(labelled, lambda p: ic_series(p, ic_mode, "pearson", bucket=ic_bucket))
    ric = _path_series(labelled, lambda p: ic_series(p, ic_mode, "spearman", bucket=ic_bucket))
    bound = strategy.bind(ic_mode=ic_mode)
    both = _path_series(oos, lambda p: _pnl_and_benchmark(p, bound, costs, periods_per_year, market))
    equity = {h: s.xs("pnl", level=0) if len(s) else s for h, s in both.items()}
    bench = {h: s.xs("benchmark", level=0) if len(s) else s for h, s in both.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # matplotlib: empty legends / tight layout
        figures = {
            "reliability_diagram.png": reliability_figure(labelled, ece_bins),
            "coverage_by_horizon.png": coverage_figure(coverage),
            "cumulative_ic.png": cumulative_ic_figure(ic, ric),
            "equity_curve.png": equity_figure(
                {h: s.cumsum() for h, s in equity.items()}, {h: s.cumsum() for h, s in bench.items()}
            ),
        }
    report = Report(by_sh, by_fold, figures)
    report.summary = summary_table(by_sh, tradable)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report.html = _html_page(report, ic_mode, periods_per_year, costs)
    return report
