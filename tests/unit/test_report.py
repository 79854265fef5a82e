"""Evaluation report: tables, figures, self-contained HTML, console summary."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy.stats import norm

from quantml.evaluation import evaluate_predictions
from quantml.evaluation.report import FIGURE_NAMES, REPORT_METRICS, _symbol_parts, build_report, fold_table
from quantml.market import CostModel

COSTS = CostModel(fee_bps=2.0, slippage_bps=1.0)


def oos_frame(n_symbols=4, n_bars=240, horizons=("1d", "7d"), n_folds=3, seed=0, paths=1):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2021-01-01", periods=n_bars, freq="1D", tz="UTC")
    parts = []
    for path in range(paths):
        for h in horizons:
            for s in range(n_symbols):
                mu = rng.normal(0, 0.01, n_bars)
                sig = np.exp(rng.normal(np.log(0.02), 0.3, n_bars))
                ret = mu + sig * rng.normal(size=n_bars)
                raw = norm.cdf(3 * mu / sig)
                parts.append(
                    pd.DataFrame(
                        {
                            "symbol": f"S{s}",
                            "timestamp": ts,
                            "horizon": h,
                            "expected_return": mu,
                            "q10": mu - sig,
                            "q50": mu,
                            "q90": mu + sig,
                            "prob_up": norm.cdf(mu / sig),
                            "prob_up_raw": raw,
                            "vol_forecast": sig,
                            "ret": ret,
                            "dir": (ret > 0).astype(float),
                            "vol": sig,
                            "ret_next_bar": ret,
                            "fold": np.arange(n_bars) * n_folds // n_bars,
                            "path": path,
                        }
                    )
                )
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def oos():
    return oos_frame()


@pytest.fixture(scope="module")
def fold_metrics(oos):
    rows = []
    for f, part in oos.groupby("fold"):
        rows.append(
            {
                "fold": f,
                **evaluate_predictions(part, "test", 252, COSTS, "cross_sectional"),
                "test_psi/1d": 0.01 * f,
                "test_psi/7d": 0.02 * f,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(oos, fold_metrics):
    return build_report(oos, fold_metrics, 252, COSTS, "cross_sectional")


def test_html_is_self_contained_with_the_four_figures(report):
    assert (
        set(report.figures)
        == set(FIGURE_NAMES)
        == {"reliability_diagram.png", "coverage_by_horizon.png", "cumulative_ic.png", "equity_curve.png"}
    )
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report.html)
    assert sorted(name for name, _ in images) == sorted(FIGURE_NAMES)
    for _, payload in images:
        assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in report.html and "https://" not in report.html
    assert "<table" in report.html and "cross_sectional" in report.html


def test_figures_are_drawn_and_pyplot_free(report):
    import matplotlib.pyplot as plt

    for name, fig in report.figures.items():
        assert isinstance(fig, Figure)
        lines = sum(len(ax.lines) + len(ax.patches) for ax in fig.axes)
        assert lines > 0, name
    assert plt.get_fignums() == []  # nothing left open in the pyplot registry
    reliability = report.figures["reliability_diagram.png"]
    assert len(reliability.axes) == 2  # one panel per horizon


def test_all_rows_equal_the_oos_metrics_and_symbol_rows_the_single_symbol_ones(report, oos):
    table = report.by_symbol_horizon
    assert set(REPORT_METRICS) <= set(table.columns)
    assert len(table) == 2 * (1 + 4)
    oos_m = evaluate_predictions(oos, "oos", 252, COSTS, "cross_sectional")
    for h in ("1d", "7d"):
        row = table[(table.symbol == "ALL") & (table.horizon == h)].iloc[0]
        for key in REPORT_METRICS:
            assert row[key] == pytest.approx(oos_m[f"oos_{key}/{h}"], nan_ok=True), key
        assert row["n_obs"] == 4 * 240
    s1 = evaluate_predictions(oos[oos.symbol == "S1"], "oos", 252, COSTS, "time_series")
    row = table[(table.symbol == "S1") & (table.horizon == "7d")].iloc[0]
    assert row["ic"] == pytest.approx(s1["oos_ic/7d"]) and row["ic_mode"] == "time_series"
    assert row["sharpe_after_cost"] == pytest.approx(s1["oos_sharpe_after_cost/7d"])


def test_symbol_parts_are_the_groupby_parts_one_at_a_time(oos):
    # shuffled rows and a category no row has: the parts are groupby's, in its order, with its row order
    frame = oos.sample(frac=1.0, random_state=3)
    frame["symbol"] = pd.Categorical(frame["symbol"], categories=["S9", *sorted(frame["symbol"].unique())[::-1]])
    expected = list(frame.groupby("symbol", sort=True, observed=True))
    got = list(_symbol_parts(frame))
    assert [s for s, _ in got] == [s for s, _ in expected] == sorted(oos["symbol"].unique())[::-1]
    for (_, part), (_, want) in zip(got, expected, strict=True):
        pd.testing.assert_frame_equal(part, want)


def test_by_fold_reshapes_fold_metrics(report, fold_metrics):
    by_fold = report.by_fold
    assert len(by_fold) == 3 * 2 and list(by_fold.columns[:2]) == ["fold", "horizon"]
    row = by_fold[(by_fold.fold == 2) & (by_fold.horizon == "7d")].iloc[0]
    assert row["test_ic"] == pytest.approx(fold_metrics.loc[2, "test_ic/7d"])
    assert row["test_psi"] == pytest.approx(0.04)


def test_by_fold_recomputed_from_oos_when_fold_metrics_missing(oos, fold_metrics):
    by_fold = fold_table(None, oos, 252, COSTS, "cross_sectional")
    row = by_fold[(by_fold.fold == 1) & (by_fold.horizon == "1d")].iloc[0]
    assert row["test_sharpe_after_cost"] == pytest.approx(fold_metrics.loc[1, "test_sharpe_after_cost/1d"])


def test_summary_is_a_compact_table(report):
    lines = report.summary.splitlines()
    assert len(lines) == 2 + 2  # header, index name, one line per horizon
    assert "rank_ic" in lines[0] and "sharpe_after_cost" in lines[0]
    assert lines[2].startswith("1d") and lines[3].startswith("7d")


def test_write_creates_the_artifacts(report, tmp_path):
    paths = report.write(tmp_path)
    names = {p.name for p in paths}
    assert {"report_by_symbol_horizon.csv", "fold_metrics.csv", "report.html", *FIGURE_NAMES} == names
    back = pd.read_csv(tmp_path / "report_by_symbol_horizon.csv")
    assert len(back) == len(report.by_symbol_horizon)


def test_cpcv_paths_and_time_series_mode():
    oos = oos_frame(n_symbols=2, n_bars=100, horizons=("1d",), paths=2, seed=5)
    rep = build_report(oos, None, 252, COSTS, "time_series")
    row = rep.by_symbol_horizon[rep.by_symbol_horizon.symbol == "ALL"].iloc[0]
    assert row["ic"] > 0.2 and row["ic_mode"] == "time_series"
    assert set(rep.figures) == set(FIGURE_NAMES)
    rep.close()


def test_known_oos_metrics_fill_the_all_rows_without_recomputing(oos, fold_metrics):
    costs = CostModel(fee_bps=1.0, slippage_bps=1.0)
    fresh = evaluate_predictions(oos, "oos", 252.0, costs, "cross_sectional")
    marked = {**fresh, "oos_ic/1d": 123.0}  # a value evaluation could never produce
    rep = build_report(oos, fold_metrics, 252.0, costs, "cross_sectional", oos_metrics=marked)
    all_rows = rep.by_symbol_horizon.set_index(["symbol", "horizon"])
    assert all_rows.loc[("ALL", "1d"), "ic"] == 123.0
    assert all_rows.loc[("ALL", "7d"), "ic"] == pytest.approx(fresh["oos_ic/7d"])


def test_figure_times_are_the_bars_naive_utc_instants_and_draw_the_same_axis():
    """The report's lines take a tz-aware bar index as naive UTC datetime64 (matplotlib converts
    those at once, a tz-aware index one Timestamp at a time): same instants, same axis limits."""
    from matplotlib.dates import date2num

    from quantml.market.figures import new_figure, plot_times

    index = pd.date_range("2024-03-30 22:00", periods=500, freq="5min", tz="Europe/London")
    times = plot_times(index)
    assert times.dtype.kind == "M"
    np.testing.assert_array_equal(times.astype("datetime64[ns]").astype(np.int64), index.as_unit("ns").asi8)
    limits = []
    for x in (index, times):
        ax = new_figure().subplots()
        ax.plot(x, np.arange(len(index)))
        limits.append(ax.get_xlim())
    np.testing.assert_allclose(limits[0], limits[1], rtol=0, atol=1e-9)
    first, last = (date2num(t.tz_convert("UTC").to_pydatetime()) for t in (index[0], index[-1]))
    assert limits[0][0] < first < last < limits[0][1]
    plain = pd.RangeIndex(3)
    assert plot_times(plain) is plain
