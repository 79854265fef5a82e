"""The monitor's checks on constructed inputs: OK / WARN / FAIL, and n/a with too few rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.evaluation.reference import build_reference, effective_size, integrated_time, reference_sample
from quantml.monitoring.checks import (
    FAIL,
    NA,
    OK,
    WARN,
    CheckSettings,
    coverage_check,
    ece_check,
    fusion_checks,
    pnl_checks,
    psi_check,
    slippage_checks,
    worst,
)
from quantml.monitoring.realised import realised_outcomes
from quantml.monitoring.run import apply_window, parse_window, rollback_command

SETTINGS = CheckSettings()


def _frame(n_bars: int, n_sym: int = 4, seed: int = 0) -> pd.DataFrame:
    """Independent rows: n_bars x n_sym, with symbol and timestamp."""
    ts = pd.date_range("2025-01-01", periods=n_bars, freq="1h", tz="UTC")
    return pd.DataFrame(
        {
            "symbol": np.repeat([f"S{i}" for i in range(n_sym)], n_bars),
            "timestamp": np.tile(ts, n_sym),
            "horizon": "1h",
        }
    )


def test_effective_size_counts_serial_and_cross_sectional_dependence():
    rng = np.random.default_rng(0)
    f = _frame(500)
    iid = rng.standard_normal(len(f))
    assert effective_size(iid, f["symbol"], f["timestamp"]) == pytest.approx(len(f), rel=0.25)
    common = np.tile(rng.standard_normal(500), 4)  # every symbol the same value at a bar
    assert effective_size(common, f["symbol"], f["timestamp"]) < 700
    walk = np.concatenate([np.cumsum(rng.standard_normal(500)) for _ in range(4)])  # slow: few independent rows
    assert effective_size(walk, f["symbol"], f["timestamp"]) < 100
    assert integrated_time([rng.standard_normal(1000)]) < 1.5


def test_psi_ok_on_the_reference_distribution_fail_on_a_shift_na_when_few():
    rng = np.random.default_rng(1)
    ref_frame = _frame(1000).assign(expected_return=rng.standard_normal(4000), prob_up=0.5)
    ref = build_reference(ref_frame)["predictions"]["1h"]["expected_return"]
    assert len(ref["q"]) == 101 and ref["n"] == 4000 and ref["n_eff"] > 2000
    assert np.quantile(reference_sample(ref["q"]), 0.5) == pytest.approx(0.0, abs=0.1)
    live = _frame(100).assign(expected_return=rng.standard_normal(400))
    row = psi_check("psi_expected_return", live, "expected_return", ref, SETTINGS, "1h")
    assert row["status"] == OK and row["value"] < row["warn"]
    assert row["fail"] >= 0.25  # the configured threshold is the floor of the effective one
    shifted = live.assign(expected_return=live["expected_return"] + 1.5)
    assert psi_check("psi_expected_return", shifted, "expected_return", ref, SETTINGS, "1h")["status"] == FAIL
    mild = live.assign(expected_return=live["expected_return"] + 0.35)
    assert psi_check("psi_expected_return", mild, "expected_return", ref, SETTINGS, "1h")["status"] == WARN
    few = psi_check("psi_expected_return", live.iloc[:50], "expected_return", ref, SETTINGS, "1h")
    assert few["status"] == NA and few["detail"].startswith("too few rows")
    assert psi_check("psi_prob_up", live.assign(prob_up=0.5), "prob_up", None, SETTINGS, "1h")["status"] == NA


def test_ece_flags_miscalibrated_probabilities():
    rng = np.random.default_rng(2)
    f = _frame(300)
    p = rng.uniform(0.2, 0.8, len(f))
    good = f.assign(prob_up=p, dir=(rng.random(len(f)) < p).astype(float))
    row = ece_check(good, SETTINGS, "1h")
    assert row["status"] == OK, row
    inverted = f.assign(prob_up=p, dir=(rng.random(len(f)) < 1 - p).astype(float))
    bad = ece_check(inverted, SETTINGS, "1h")
    assert bad["status"] == FAIL and bad["value"] > 0.2
    assert ece_check(good.iloc[:150], SETTINGS, "1h")["status"] == NA
    pending = good.assign(dir=np.nan)  # no realised outcome yet: nothing to judge
    assert ece_check(pending, SETTINGS, "1h")["status"] == NA


def test_coverage_of_the_80_interval():
    rng = np.random.default_rng(3)
    f = _frame(300)
    ret = rng.standard_normal(len(f))
    z = 1.2816
    good = f.assign(ret=ret, q10=-z, q90=z)
    row = coverage_check(good, SETTINGS, "1h")
    assert row["status"] == OK and "coverage 0.8" in row["detail"]
    narrow = f.assign(ret=ret, q10=-0.8, q90=0.8)  # covers ~58%
    assert coverage_check(narrow, SETTINGS, "1h")["status"] == FAIL
    wide = f.assign(ret=ret, q10=-1.6, q90=1.6)  # covers ~89%: a material but smaller miss
    assert coverage_check(wide, SETTINGS, "1h")["status"] == WARN
    assert coverage_check(good.iloc[:100], SETTINGS, "1h")["status"] == NA


def _pnl(mean: float, n_bars: int = 200, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f = _frame(n_bars, 2)
    return f.assign(bucket="1h", policy="short_horizon", pnl=mean + 0.01 * rng.standard_normal(len(f)))


def test_pnl_fails_only_on_a_significantly_negative_mean():
    rows = pnl_checks(_pnl(0.0), SETTINGS)
    assert {r["group"] for r in rows} == {"bucket:1h", "symbol:S0", "symbol:S1", "policy:short_horizon"}
    assert worst(r["status"] for r in rows) in (OK, WARN)
    bad = pnl_checks(_pnl(-0.004), SETTINGS)
    assert all(r["status"] == FAIL for r in bad)
    assert pnl_checks(_pnl(0.0, n_bars=10), SETTINGS)[0]["status"] == NA
    assert pnl_checks(_pnl(0.0).iloc[:0], SETTINGS)[0]["status"] == NA


def test_slippage_against_the_assumed_cost():
    rng = np.random.default_rng(5)
    f = _frame(100, 2)
    fills = f.assign(policy="short_horizon", fee_bps=1.0, filled_notional=1e4)
    ok = fills.assign(slippage_bps=3.0 + rng.standard_normal(len(f)))
    assert slippage_checks(ok, 4.0, SETTINGS)[0]["status"] == OK
    assert slippage_checks(ok.assign(slippage_bps=ok["slippage_bps"] + 10), 4.0, SETTINGS)[0]["status"] == WARN
    assert slippage_checks(ok.assign(slippage_bps=ok["slippage_bps"] + 30), 4.0, SETTINGS)[0]["status"] == FAIL
    assert slippage_checks(ok.iloc[:10], 4.0, SETTINGS)[0]["status"] == NA


def test_fusion_checks_are_not_applicable_and_settings_are_checked():
    rows = fusion_checks(SETTINGS)
    assert [r["check"] for r in rows] == ["text_coverage", "gate_opening"]
    assert all(r["status"] == NA and "no fusion model" in r["detail"] for r in rows)
    # a prediction log of a model without a gate carries the column as NaN: still no fusion model
    logged = pd.DataFrame({"horizon": ["1h", "1h"], "gate": [np.nan, np.nan]})
    assert [r["detail"] for r in fusion_checks(SETTINGS, "1", logged)] == [rows[0]["detail"]] * 2
    custom = CheckSettings.from_config({"pnl": {"fail": 4.0}}, {"fail": 1e-4})
    assert custom.thresholds["pnl"].fail == 4.0 and custom.thresholds["pnl"].warn == 2.33
    with pytest.raises(QuantmlInputError, match="checks.psi is not a check"):
        CheckSettings.from_config({"psi": {"fail": 1}})
    with pytest.raises(QuantmlInputError, match="below its warn"):
        CheckSettings.from_config({"ece": {"warn": 0.2, "fail": 0.1}})
    assert worst([OK, NA, WARN]) == WARN and worst([]) == NA


def test_window_parsing_and_selection():
    f = _frame(10, 1)
    assert parse_window(None) is None and parse_window("7") == 7 and parse_window("2h") == pd.Timedelta("2h")
    assert len(apply_window(f, 3)) == 3 and len(apply_window(f, pd.Timedelta("2h"))) == 2
    with pytest.raises(QuantmlInputError):
        parse_window("soon")
    cmd = rollback_command("demo", 'monitor FAIL: ece[1h, v3]=0.2>0.1 "x"')
    assert cmd == "quantml registry rollback demo reason=\"monitor FAIL: ece[1h, v3]=0.2>0.1 'x'\""


def test_realised_outcomes_use_the_training_labels():
    ts = pd.date_range("2025-01-01", periods=6, freq="1h", tz="UTC").as_unit("ns")
    close = np.array([100.0, 101.0, 99.0, 99.5, 102.0, 103.0])
    panel = pd.DataFrame({"timestamp": ts, "symbol": "A", "close": close})
    logged = pd.DataFrame(
        {"symbol": "A", "timestamp": [ts[0], ts[4], ts[5], ts[0]], "horizon": ["2h", "2h", "1h", "1d"]}
    )
    out = realised_outcomes(logged, panel)
    assert out["ret"].iloc[0] == pytest.approx(np.log(99.0 / 100.0)) and out["dir"].iloc[0] == 0.0
    assert out["t1"].iloc[0] == ts[2]
    assert np.isnan(out["ret"].iloc[1]) and np.isnan(out["ret"].iloc[2])  # past the panel: pending
    assert np.isnan(out["ret"].iloc[3])  # a horizon no row of the panel can realise yet
