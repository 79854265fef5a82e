"""``quantml monitor`` end to end on a real (tiny) trained, registered and promoted version.

The logs are written the way ``quantml paper`` writes them (``quantml.serving.logs.append_log``
with the schemas of ``quantml.contracts.logs``): the version's own predictions on the bars after its
training period (``ModelBundle.predict_contract``), and a paper book of its target weights with
PnL rows and fills whose slippage is drawn around the cost model's assumption.

Slow tests: a planted regime change (``data.regime_shift_at``) is flagged within the configured
bars, and 20 stationary seeds raise a FAIL in at most one.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from quantml.cli.monitor import main as monitor_main
from quantml.contracts import run_layout as L
from quantml.contracts.logs import FILL_COLUMNS, PNL_COLUMNS, PREDICTION_LOG_COLUMNS
from quantml.data import load_panel
from quantml.evaluation.reference import REFERENCE_KEY
from quantml.serving.logs import append_log
from tests.helpers.tiny_runs import register_active, temp_store, train_run

NAME = "watched"
HOURLY = {"freq": "1h", "n_symbols": 4, "n_bars": 900, "start": "2024-01-01", "seed": 7}
HOURLY_TRAIN_END = "2024-01-30"  # bar 696: the rest (~200 bars) is the "live" period
ASSUMED_BPS = 4.0  # conf/cost/equity.yaml: fee 1 + slippage 2 + impact 1 bps one way
FEE_BPS = 1.0


def _train(root, data: dict, train_end: str, horizon: str, name: str = NAME, extra=()):
    """(uri, store, run id, bundle): a ridge model on ``data`` up to ``train_end``, registered and active."""
    uri, store = temp_store(root)
    overrides = [
        "data=synthetic",
        *(f"data.{k}={v}" for k, v in data.items() if k != "seed"),
        f"+data.end={train_end}",
        f"seed={data['seed']}",
        "backbone=ridge",
        f"horizon={horizon}",
        "validation.n_splits=3",
        "print_report=false",
        "tracking.experiment=monitored",
        *extra,
    ]
    result = train_run(uri, overrides)
    register_active(store, result.parent_run_id, name, "monitor tests")
    with store.global_uri():
        bundle = mlflow.pyfunc.load_model(f"models:/{name}/1").unwrap_python_model().bundle
    return uri, store, result.parent_run_id, bundle


def write_paper_logs(bundle, panel, log_dir, after: str, version: str = "1", slip_extra_bps: float = 0.0, seed=0):
    """Prediction, PnL and execution logs of ``bundle`` on the bars of ``panel`` after ``after``."""
    rng = np.random.default_rng(seed)
    preds = bundle.predict_contract(panel, last_only=False, model_name=NAME, model_version=version)
    preds = preds[preds["timestamp"] > pd.Timestamp(after, tz="UTC")].reset_index(drop=True)
    preds["source"] = "paper"
    preds["logged_at"] = pd.Timestamp("2026-12-01", tz="UTC")
    append_log(log_dir, "predictions", preds.reindex(columns=list(PREDICTION_LOG_COLUMNS)))
    px = panel[["symbol", "timestamp", "close"]].copy()
    px["next_close"] = px.groupby("symbol")["close"].shift(-1)
    px["next_ts"] = px.groupby("symbol")["timestamp"].shift(-1)
    book = preds.merge(px, on=["symbol", "timestamp"], how="left").sort_values(["symbol", "horizon", "timestamp"])
    book = book[np.isfinite(book["next_close"])].copy()
    book["position"] = book["target_weight"].fillna(0.0)
    book["trade"] = book.groupby(["symbol", "horizon"])["position"].diff().fillna(book["position"])
    book["gross"] = book["position"] * (book["next_close"] / book["close"] - 1.0)
    slip = (ASSUMED_BPS - FEE_BPS + slip_extra_bps) + 3.0 * rng.standard_normal(len(book))
    book["cost"] = book["trade"].abs() * (slip + FEE_BPS) / 1e4
    book["pnl"] = book["gross"] - book["cost"]
    book["bucket"] = book["horizon"]
    book["policy"] = "short_horizon"
    append_log(log_dir, "pnl", book[list(PNL_COLUMNS)])
    traded = (book["trade"].abs() > 1e-12).to_numpy()
    fills = book[traded].copy()
    fills["decided_at"] = fills["timestamp"]
    fills["timestamp"] = fills["next_ts"]
    fills["side"] = np.sign(fills["trade"])
    fills["order_notional"] = fills["filled_notional"] = fills["trade"].abs() * 1e6
    fills["carried_notional"] = 0.0
    fills["theoretical_price"] = fills["close"]
    fills["slippage_bps"] = slip[traded]
    fills["fill_price"] = fills["close"] * (1 + fills["side"] * fills["slippage_bps"] / 1e4)
    fills["fee_bps"] = FEE_BPS
    fills["spread_bps"] = fills["impact_bps"] = 0.5 * np.abs(fills["slippage_bps"])
    fills["participation"] = 0.01
    fills["market_notional"] = fills["filled_notional"]  # every unit to the market: no internal crosses
    append_log(log_dir, "executions", fills[list(FILL_COLUMNS)])
    return preds


def _data_args(data: dict, end: str | None = None, shift: dict | None = None) -> list[str]:
    args = ["data=synthetic", *(f"data.{k}={v}" for k, v in data.items() if k != "seed"), f"seed={data['seed']}"]
    if end:
        args.append(f"+data.end={end}")
    for k, v in (shift or {}).items():
        args.append(f"data.{k}={v}")
    return args


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """(uri, store, run id, bundle, root, panel, log_dir) with clean paper logs of NAME v1."""
    root = tmp_path_factory.mktemp("monitor")
    uri, store, run_id, bundle = _train(root, HOURLY, HOURLY_TRAIN_END, "1h", extra=["validation.embargo=1h"])
    panel = load_panel({"source": "synthetic", **HOURLY})
    log_dir = root / "logs"
    write_paper_logs(bundle, panel, log_dir, HOURLY_TRAIN_END)
    return uri, store, run_id, bundle, root, panel, log_dir


def test_the_reference_is_stored_in_the_version(watched):
    _, _, _, bundle, _, _, _ = watched
    ref = bundle.metadata[REFERENCE_KEY]
    entry = ref["predictions"]["1h"]
    assert set(entry) == {"expected_return", "prob_up", "vol_forecast"}
    assert len(entry["prob_up"]["q"]) == ref["levels"] == 101 and entry["prob_up"]["n_eff"] > 1
    assert 1 <= len(ref["top_features"]) <= 5 and set(ref["top_features"]) == set(ref["features"])
    assert ref["source"] == "final model on the development samples"
    import json

    assert len(json.dumps(ref)) < 40_000  # small: KBs inside the bundle


def test_monitor_cli_end_to_end(watched, tmp_path, monkeypatch, capsys):
    uri, store, run_id, _, _, _, log_dir = watched
    monkeypatch.chdir(tmp_path)
    args = [f"model=models:/{NAME}@active", f"log_dir={log_dir}", *_data_args(HOURLY), "window=120"]
    rc = monitor_main([*args, f"output_dir={tmp_path / 'report'}", f"tracking.uri={uri}"])
    out = capsys.readouterr().out
    assert rc in (0, 1), out
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "checks.csv").is_file()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "psi_over_time.png" in html and "reliability.png" in html and "slippage.png" in html
    checks = pd.read_csv(tmp_path / "report" / "checks.csv", keep_default_na=False)
    assert {"psi_expected_return", "ece", "coverage_80", "pnl", "slippage", "feature_psi", "text_coverage"} <= set(
        checks["check"]
    )
    assert set(checks.loc[checks["check"] == "gate_opening", "status"]) == {"n/a"}
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_run(run_id).info.experiment_id], f"tags.`{L.TAG_KIND}` = '{L.KIND_MONITOR}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[L.TAG_SOURCE_RUN] == run_id and run.data.tags["quantml.monitor_version"] == "1"
    assert "monitor_status" in run.data.metrics and "monitor_psi_expected_return/1h" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "monitor")}
    assert {"monitor/report.html", "monitor/checks.csv", "monitor/rolling.csv"} <= artifacts
    assert "reference from bundle" in (tmp_path / "report" / "report.html").read_text()


def test_a_fail_tags_the_version_and_prints_the_rollback(watched, tmp_path, monkeypatch, capsys):
    uri, store, _, bundle, root, panel, _ = watched
    monkeypatch.chdir(tmp_path)
    log_dir = tmp_path / "expensive_fills"
    write_paper_logs(bundle, panel, log_dir, HOURLY_TRAIN_END, slip_extra_bps=60.0)  # fills cost 15x the model
    args = [f"model=models:/{NAME}/1", f"log_dir={log_dir}", *_data_args(HOURLY), f"tracking.uri={uri}"]
    rc = monitor_main([*args, f"output_dir={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert f'quantml registry rollback {NAME} reason="monitor FAIL: ' in out
    tags = store.get_version(NAME, "1").tags
    assert tags["quantml.degraded"] == "true"
    assert "slippage[all policy:short_horizon, v1]=" in tags["quantml.degraded_reason"]
    assert store.active_version(NAME) == "1"  # rolling back stays a human decision
    store.client.delete_model_version_tag(NAME, "1", "quantml.degraded")


def test_bad_input_exits_2_without_a_run(watched, tmp_path, monkeypatch, capsys):
    uri, _, _, _, _, _, log_dir = watched
    monkeypatch.chdir(tmp_path)
    base = [*_data_args(HOURLY), f"tracking.uri={uri}"]
    assert monitor_main([f"model=models:/{NAME}@active", f"log_dir={tmp_path / 'nowhere'}", *base]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert monitor_main([f"model=models:/{NAME}@active", f"log_dir={tmp_path / 'empty'}", *base]) == 2
    assert f"has no rows of model {NAME!r}" in capsys.readouterr().err
    assert monitor_main([f"log_dir={log_dir}", *base]) == 2
    assert "model=... is required" in capsys.readouterr().err
    assert monitor_main([f"model=models:/{NAME}@active", f"log_dir={log_dir}", "checks.psi.fail=1", *base]) == 2
    assert "checks.psi is not a check" in capsys.readouterr().err


def test_a_version_without_reference_falls_back_to_its_source_run(watched, monkeypatch):
    from quantml.monitoring import run as monitor_run

    _, store, run_id, bundle, _, _, _ = watched
    old = type(bundle)(
        **{**bundle.__dict__, "metadata": {k: v for k, v in bundle.metadata.items() if k != REFERENCE_KEY}}
    )
    monkeypatch.setattr(monitor_run, "_load_bundle", lambda *a: old)
    inputs = monitor_run.version_inputs(store, NAME, "1")
    assert inputs.reference_source == "source run OOS (last fold)" and inputs.run_id == run_id
    assert "1h" in inputs.reference["predictions"] and inputs.reference["top_features"] == []
    assert inputs.assumed_bps == pytest.approx(ASSUMED_BPS)


# -- slow: planted drift and the false-alarm rate on stationary data ------------------------------
DAILY = {"freq": "1d", "n_symbols": 4, "n_bars": 1600, "start": "2018-01-01"}
DAILY_TRAIN_END = "2021-12-31"
SHIFT_AT = "2022-02-01"
DETECT_WITHIN = 85  # bars after the shift within which the monitor must FAIL


@pytest.mark.slow
def test_planted_drift_is_flagged_within_the_configured_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = {**DAILY, "seed": 42}
    uri, store, _, bundle = _train(tmp_path, data, DAILY_TRAIN_END, "1d")
    end = (pd.Timestamp(SHIFT_AT) + pd.Timedelta(days=DETECT_WITHIN)).strftime("%Y-%m-%d")
    shift = {"regime_shift_at": SHIFT_AT, "regime_shift_vol": 5.0}
    panel = load_panel({"source": "synthetic", **data, **shift, "end": end})
    args = [f"model=models:/{NAME}@active", f"window={DETECT_WITHIN}", f"tracking.uri={uri}"]
    write_paper_logs(bundle, panel, tmp_path / "drift", DAILY_TRAIN_END)
    rc = monitor_main([*args, f"log_dir={tmp_path / 'drift'}", *_data_args(data, end, shift), "output_dir=drift_r"])
    out = capsys.readouterr().out
    assert rc == 1, out
    store.client.delete_model_version_tag(NAME, "1", "quantml.degraded")
    # the same bars without the shift: no FAIL
    calm = load_panel({"source": "synthetic", **data, "end": end})
    write_paper_logs(bundle, calm, tmp_path / "calm", DAILY_TRAIN_END)
    rc = monitor_main([*args, f"log_dir={tmp_path / 'calm'}", *_data_args(data, end), "output_dir=calm_r"])
    assert rc == 0, capsys.readouterr().out


@pytest.mark.slow
def test_stationary_seeds_raise_at_most_one_fail_in_twenty(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    failed = []
    for seed in range(20):
        root = tmp_path / f"s{seed}"
        data = {**DAILY, "seed": seed}
        uri, _, _, bundle = _train(root, data, DAILY_TRAIN_END, "1d")
        panel = load_panel({"source": "synthetic", **data})
        write_paper_logs(bundle, panel, root / "logs", DAILY_TRAIN_END, seed=seed)
        args = [f"model=models:/{NAME}@active", f"log_dir={root / 'logs'}", f"window={DETECT_WITHIN}"]
        rc = monitor_main([*args, *_data_args(data), f"tracking.uri={uri}", f"output_dir={root / 'r'}"])
        out = capsys.readouterr().out
        assert rc in (0, 1), out
        if rc == 1:
            failed.append((seed, [line for line in out.splitlines() if line.strip().startswith("FAIL")]))
    assert len(failed) <= 1, failed
