"""The monitor's checks: pure functions, frames in, check rows out.

Every check returns rows of :data:`CHECK_COLUMNS`; ``value`` is oriented so that *higher is worse*
and a row's ``warn`` / ``fail`` are the *effective* thresholds it was judged by:

``effective = max(configured threshold, statistical tolerance at the significance level)``

The configured threshold (``checks.<name>.warn|fail``) is the size of a change that matters; the
statistical tolerance is how large the value gets by chance on stationary data with this many
*effective* rows (:func:`quantml.evaluation.reference.effective_size`: serial and cross-sectional
correlation counted), at ``significance.warn`` (default 1e-2) or ``significance.fail`` (1e-3).
A check with fewer than ``checks.<name>.min_rows`` rows is ``n/a`` ("too few rows").

- ``psi_expected_return`` / ``psi_prob_up`` / ``psi_vol_forecast`` (per horizon) and ``feature_psi``
  (per top feature): PSI against the version's training reference; tolerance
  ``chi2_{B-1}(1 - a) (1/n_eff + 1/n_ref)`` (PSI is about ``chi2_{B-1} / n`` under no drift). The
  window's ``n_eff`` uses the dependence measured on the training data (``tau``, ``icc`` of the
  reference: :func:`quantml.evaluation.reference.window_size`), so a drift inside the window does
  not widen its own tolerance.
- ``ece`` (per horizon): ECE of ``prob_up`` vs the realised direction; tolerance
  ``z_a sum_b (n_b/n) sqrt(p_b (1 - p_b) deff / n_b)`` (the binomial noise of each bin).
- ``coverage_80`` (per horizon): ``|coverage - 0.8|`` of ``[q10, q90]``; tolerance
  ``z_{a/2} sqrt(0.8 * 0.2 / n_eff)`` (two-sided binomial band).
- ``pnl`` (per bucket, symbol, policy): ``-t`` of the mean after-cost PnL per bar (one-sided t-test
  of a mean below zero, AR(1)-corrected standard error); thresholds are z values.
- ``slippage`` (per policy): realised ``slippage_bps + fee_bps`` per unit of market-traded notional
  (``market_notional``: internal crosses between buckets are free and left out), weighted by that
  notional, minus the cost model's assumed one-way cost (bps); tolerance ``z_a * SE`` of that mean.
- ``text_coverage`` / ``gate_opening``: fusion-model checks (per horizon: share of rows with an open
  gate, mean gate opening), reported with status ``n/a``; without a ``gate`` column: ``n/a``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.evaluation.drift import population_stability_index
from quantml.evaluation.metrics import expected_calibration_error
from quantml.evaluation.reference import distribution_size, effective_size, reference_sample, window_size

OK, WARN, FAIL, NA = "OK", "WARN", "FAIL", "n/a"
STATUS_ORDER = {NA: 0, OK: 1, WARN: 2, FAIL: 3}
CHECK_COLUMNS = (
    "check",
    "model_version",
    "horizon",
    "group",
    "value",
    "warn",
    "fail",
    "status",
    "n",
    "n_eff",
    "window_start",
    "window_end",
    "detail",
)
NOMINAL_COVERAGE = 0.8
ALL = "all"
TOO_FEW = "too few rows"
NO_FUSION = "no fusion model (text gate) in this version: check not applicable"

# name -> (warn, fail, min_rows): the packaged defaults (conf/monitor.yaml repeats them)
DEFAULT_THRESHOLDS = {
    "psi_expected_return": (0.10, 0.25, 100),
    "psi_prob_up": (0.10, 0.25, 100),
    "psi_vol_forecast": (0.10, 0.25, 100),
    "feature_psi": (0.10, 0.25, 100),
    "ece": (0.05, 0.10, 200),
    "coverage_80": (0.05, 0.10, 200),
    "pnl": (2.33, 3.09, 30),
    "slippage": (5.0, 20.0, 30),
    "text_coverage": (0.0, 0.0, 0),
    "gate_opening": (0.0, 0.0, 0),
}
CHECKS = tuple(DEFAULT_THRESHOLDS)


@dataclass
class Threshold:
    warn: float
    fail: float
    min_rows: int


@dataclass
class CheckSettings:
    """Thresholds per check, the significance levels of the statistical tolerances, the PSI bins."""

    thresholds: dict[str, Threshold] = field(
        default_factory=lambda: {k: Threshold(*v) for k, v in DEFAULT_THRESHOLDS.items()}
    )
    significance_warn: float = 1e-2
    significance_fail: float = 1e-3
    psi_bins: int = 10
    ece_bins: int = 10

    @classmethod
    def from_config(cls, checks=None, significance=None, psi_bins: int = 10, ece_bins: int = 10) -> CheckSettings:
        """From the ``checks`` mapping (``{name: {warn, fail, min_rows}}``) and ``significance``
        (``{warn, fail}``) of conf/monitor.yaml; unknown names are refused."""
        out = cls(psi_bins=int(psi_bins), ece_bins=int(ece_bins))
        for name, block in dict(checks or {}).items():
            if name not in DEFAULT_THRESHOLDS:
                raise QuantmlInputError(f"checks.{name} is not a check; the checks are {', '.join(CHECKS)}")
            base = out.thresholds[name]
            block = dict(block or {})
            unknown = set(block) - {"warn", "fail", "min_rows"}
            if unknown:
                raise QuantmlInputError(
                    f"checks.{name}.{sorted(unknown)[0]} is not a setting; use warn, fail, min_rows"
                )
            try:
                out.thresholds[name] = Threshold(
                    float(block.get("warn", base.warn)),
                    float(block.get("fail", base.fail)),
                    int(block.get("min_rows", base.min_rows)),
                )
            except (TypeError, ValueError):
                raise QuantmlInputError(f"checks.{name}: warn and fail must be numbers, min_rows an integer") from None
            t = out.thresholds[name]
            if t.fail < t.warn:
                raise QuantmlInputError(f"checks.{name}.fail={t.fail} is below its warn={t.warn}; fail must be >= warn")
        sig = dict(significance or {})
        out.significance_warn = float(sig.get("warn", out.significance_warn))
        out.significance_fail = float(sig.get("fail", out.significance_fail))
        for key, a in (("warn", out.significance_warn), ("fail", out.significance_fail)):
            if not 0.0 < a < 0.5:
                raise QuantmlInputError(f"significance.{key}={a} must be in (0, 0.5), e.g. 0.001")
        if out.significance_fail > out.significance_warn:
            raise QuantmlInputError("significance.fail must be <= significance.warn (a FAIL is the rarer alarm)")
        if out.psi_bins < 2:
            raise QuantmlInputError(f"psi_bins={out.psi_bins} must be >= 2 (10 is the usual choice)")
        return out

    def levels(self) -> tuple[float, float]:
        return self.significance_warn, self.significance_fail


def status_of(value: float, warn: float, fail: float) -> str:
    if value is None or not np.isfinite(value):
        return NA
    if value > fail:
        return FAIL
    if value > warn:
        return WARN
    return OK


def worst(statuses) -> str:
    """The worst status of an iterable (``n/a`` when empty or all n/a)."""
    best = NA
    for s in statuses:
        if STATUS_ORDER.get(s, 0) > STATUS_ORDER[best]:
            best = s
    return best


def _row(check, horizon, group, value, warn, fail, n, n_eff, window, detail="", version="") -> dict:
    status = status_of(value, warn, fail) if not detail.startswith(TOO_FEW) else NA
    return {
        "check": check,
        "model_version": str(version),
        "horizon": str(horizon),
        "group": str(group),
        "value": float(value) if value is not None else np.nan,
        "warn": float(warn),
        "fail": float(fail),
        "status": status,
        "n": int(n),
        "n_eff": float(n_eff),
        "window_start": window[0],
        "window_end": window[1],
        "detail": detail,
    }


def _too_few(check, horizon, group, t: Threshold, n, window, version="") -> dict:
    return _row(
        check, horizon, group, np.nan, t.warn, t.fail, n, 0.0, window, f"{TOO_FEW} ({n} < {t.min_rows})", version
    )


def na_row(check: str, settings: CheckSettings, detail: str, horizon=ALL, group=ALL, version="") -> dict:
    """A row that could not be judged (no reference, unknown cost model ...): status ``n/a``."""
    t = settings.thresholds[check]
    return _row(check, horizon, group, np.nan, t.warn, t.fail, 0, 0.0, (pd.NaT, pd.NaT), detail, version)


def frame_of(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(CHECK_COLUMNS))


def window_of(frame: pd.DataFrame) -> tuple:
    if frame.empty or TIMESTAMP not in frame.columns:
        return (pd.NaT, pd.NaT)
    ts = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return (ts.min(), ts.max())


# -- drift ---------------------------------------------------------------------------------------
def psi_tolerance(n_eff: float, n_ref_eff: float, bins: int, level: float) -> float:
    """PSI reached by chance with probability ``level`` between two samples of these effective sizes."""
    inv = (1.0 / max(n_eff, 1e-9)) + (1.0 / max(n_ref_eff, 1e-9) if n_ref_eff else 0.0)
    return float(stats.chi2.ppf(1.0 - level, bins - 1) * inv)


def psi_check(
    check: str,
    values: pd.DataFrame,
    column: str,
    entry: dict | None,
    settings: CheckSettings,
    horizon: str = ALL,
    group: str = ALL,
    version: str = "",
) -> dict:
    """One PSI row: ``values`` (``symbol, timestamp, <column>``) against a reference ``entry``
    (``{"q": grid, "n", "n_eff"}``); n/a without a reference or with too few rows."""
    t = settings.thresholds[check]
    window = window_of(values)
    v = values[column].to_numpy(np.float64) if column in values.columns else np.zeros(0)
    n = int(np.isfinite(v).sum())
    if entry is None:
        return _row(check, horizon, group, np.nan, t.warn, t.fail, n, 0.0, window, "no training reference", version)
    if n < t.min_rows:
        return _too_few(check, horizon, group, t, n, window, version)
    if "tau" in entry:  # the reference's dependence: a drift inside the window does not widen its own tolerance
        bars = int(pd.to_datetime(values.loc[np.isfinite(v), TIMESTAMP], utc=True).nunique())
        n_eff = window_size(n, bars, float(entry["tau"]), float(entry.get("icc", 0.0)))
    else:
        n_eff = distribution_size(v, values[SYMBOL].to_numpy(), values[TIMESTAMP].to_numpy())
    ref_eff = float(entry.get("n_eff") or entry.get("n") or 0.0)
    psi = population_stability_index(reference_sample(entry["q"]), v, bins=settings.psi_bins)
    warn = max(t.warn, psi_tolerance(n_eff, ref_eff, settings.psi_bins, settings.significance_warn))
    fail = max(t.fail, psi_tolerance(n_eff, ref_eff, settings.psi_bins, settings.significance_fail))
    return _row(check, horizon, group, psi, warn, fail, n, n_eff, window, f"PSI {psi:.3f}", version)


# -- calibration ---------------------------------------------------------------------------------
def _realised(frame: pd.DataFrame, columns) -> pd.DataFrame:
    ok = np.ones(len(frame), dtype=bool)
    for c in columns:
        ok &= np.isfinite(frame[c].to_numpy(np.float64))
    return frame[ok]


def ece_check(frame: pd.DataFrame, settings: CheckSettings, horizon: str, version: str = "") -> dict:
    """ECE of ``prob_up`` vs ``dir`` over the realised rows of ``frame`` (one horizon)."""
    t = settings.thresholds["ece"]
    part = _realised(frame, ("prob_up", "dir"))
    window, n = window_of(part), len(part)
    if n < t.min_rows:
        return _too_few("ece", horizon, ALL, t, n, window, version)
    p = np.clip(part["prob_up"].to_numpy(np.float64), 1e-6, 1 - 1e-6)
    y = part["dir"].to_numpy(np.float64)
    ece = expected_calibration_error(p, y, settings.ece_bins, "uniform")
    n_eff = effective_size(y - p, part[SYMBOL].to_numpy(), part[TIMESTAMP].to_numpy())
    deff = n / max(n_eff, 1.0)
    idx = np.clip((p * settings.ece_bins).astype(int), 0, settings.ece_bins - 1)
    noise = 0.0
    for b in np.unique(idx):
        pb = p[idx == b]
        noise += (len(pb) / n) * np.sqrt(pb.mean() * (1 - pb.mean()) * deff / len(pb))
    warn = max(t.warn, stats.norm.ppf(1 - settings.significance_warn) * noise)
    fail = max(t.fail, stats.norm.ppf(1 - settings.significance_fail) * noise)
    return _row("ece", horizon, ALL, ece, warn, fail, n, n_eff, window, f"ECE {ece:.3f}", version)


def coverage_check(frame: pd.DataFrame, settings: CheckSettings, horizon: str, version: str = "") -> dict:
    """``|coverage - 0.8|`` of the realised ``ret`` by ``[q10, q90]`` (one horizon)."""
    t = settings.thresholds["coverage_80"]
    part = _realised(frame, ("q10", "q90", "ret"))
    window, n = window_of(part), len(part)
    if n < t.min_rows:
        return _too_few("coverage_80", horizon, ALL, t, n, window, version)
    ret = part["ret"].to_numpy(np.float64)
    inside = ((ret >= part["q10"].to_numpy(np.float64)) & (ret <= part["q90"].to_numpy(np.float64))).astype(float)
    cov = float(inside.mean())
    n_eff = effective_size(inside, part[SYMBOL].to_numpy(), part[TIMESTAMP].to_numpy())
    se = np.sqrt(NOMINAL_COVERAGE * (1 - NOMINAL_COVERAGE) / n_eff)
    warn = max(t.warn, stats.norm.ppf(1 - settings.significance_warn / 2) * se)
    fail = max(t.fail, stats.norm.ppf(1 - settings.significance_fail / 2) * se)
    dev = abs(cov - NOMINAL_COVERAGE)
    return _row("coverage_80", horizon, ALL, dev, warn, fail, n, n_eff, window, f"coverage {cov:.3f}", version)


# -- PnL and fills -------------------------------------------------------------------------------
def _serial_n_eff(x: np.ndarray) -> float:
    """AR(1)-corrected effective length of a time series (at least 1)."""
    n = len(x)
    if n < 3 or np.var(x) <= 0:
        return float(n)
    d = x - x.mean()
    rho = min(max(float(np.sum(d[1:] * d[:-1]) / np.sum(d * d)), 0.0), 0.995)
    return float(max(n * (1 - rho) / (1 + rho), 1.0))


def pnl_checks(pnl: pd.DataFrame, settings: CheckSettings, version: str = "") -> list[dict]:
    """``-t`` of the mean after-cost PnL per bar, per bucket (horizon), symbol and policy.

    ``pnl``: the PnL log's rows (``timestamp, symbol, bucket, policy, pnl``)."""
    t = settings.thresholds["pnl"]
    rows = []
    if pnl.empty:
        return [_too_few("pnl", ALL, ALL, t, 0, (pd.NaT, pd.NaT), version)]
    for by in ("bucket", SYMBOL, "policy"):
        for key, part in pnl.groupby(pnl[by].astype(str), sort=True):
            series = part.groupby(TIMESTAMP, sort=True)["pnl"].sum().to_numpy(np.float64)
            series = series[np.isfinite(series)]
            horizon = key if by == "bucket" else ALL
            group = f"{'symbol' if by == SYMBOL else by}:{key}"
            window = window_of(part)
            if len(series) < t.min_rows:
                rows.append(_too_few("pnl", horizon, group, t, len(series), window, version))
                continue
            n_eff = _serial_n_eff(series)
            sd = float(np.std(series, ddof=1))
            mean = float(series.mean())
            tstat = mean / (sd / np.sqrt(n_eff)) if sd > 0 else 0.0
            detail = f"mean PnL/bar {mean:.3g} (t={tstat:.2f}, total {series.sum():.3g})"
            rows.append(
                _row("pnl", horizon, group, -tstat, t.warn, t.fail, len(series), n_eff, window, detail, version)
            )
    return rows


def slippage_checks(fills: pd.DataFrame, assumed_bps: float, settings: CheckSettings, version: str = "") -> list[dict]:
    """Realised one-way cost of the fills (``slippage_bps + fee_bps``, notional-weighted) minus the
    cost model's assumed one-way cost ``assumed_bps``, per execution policy."""
    t = settings.thresholds["slippage"]
    rows = []
    if fills.empty:
        return [_too_few("slippage", ALL, ALL, t, 0, (pd.NaT, pd.NaT), version)]
    for policy, part in fills.groupby(fills["policy"].astype(str), sort=True):
        part = _realised(part, ("slippage_bps", "fee_bps", "filled_notional"))
        part = part[part["filled_notional"].to_numpy(np.float64) > 0]
        window, n = window_of(part), len(part)
        group = f"policy:{policy}"
        if n < t.min_rows:
            rows.append(_too_few("slippage", ALL, group, t, n, window, version))
            continue
        # per market-traded notional: a row's bps are charged on its filled notional, but only its
        # market share paid them (the rest crossed another bucket internally, free); logs written
        # before market_notional count every filled unit as traded
        filled = part["filled_notional"].to_numpy(np.float64)
        market = part["market_notional"].to_numpy(np.float64) if "market_notional" in part.columns else filled.copy()
        market = np.where(np.isfinite(market), market, filled)
        traded = market > 0
        if not traded.any():
            rows.append(_too_few("slippage", ALL, group, t, 0, window, version))
            continue
        paid = (part["slippage_bps"].to_numpy(np.float64) + part["fee_bps"].to_numpy(np.float64)) * filled
        cost = paid[traded] / market[traded]  # bps per unit of market-traded notional
        w = market[traded]
        part, n = part[traded], int(traded.sum())
        crossed = 1.0 - float(market.sum() / filled.sum()) if filled.sum() > 0 else 0.0
        mean = float(np.average(cost, weights=w))
        excess = mean - float(assumed_bps)
        n_eff = effective_size(cost, part[SYMBOL].to_numpy(), part[TIMESTAMP].to_numpy())
        kish = w.sum() ** 2 / np.sum(w * w)  # weights shrink the sample too
        se = float(np.sqrt(np.average((cost - mean) ** 2, weights=w) / max(min(n_eff, kish), 1.0)))
        warn = max(t.warn, stats.norm.ppf(1 - settings.significance_warn) * se)
        fail = max(t.fail, stats.norm.ppf(1 - settings.significance_fail) * se)
        detail = (
            f"realised {mean:.2f} bps vs assumed {assumed_bps:.2f} bps one-way, per market-traded notional "
            f"({crossed:.1%} of the filled notional crossed internally, free)"
        )
        rows.append(_row("slippage", ALL, group, excess, warn, fail, n, n_eff, window, detail, version))
    return rows


def fusion_checks(settings: CheckSettings, version: str = "", frame: pd.DataFrame | None = None) -> list[dict]:
    """``text_coverage`` and ``gate_opening``: n/a without a ``gate`` column in ``frame`` (the version's
    prediction rows); with one (a fusion model, docs/fusion.md), per horizon the share of rows whose gate
    is open (text present) and the mean gate opening, reported with status n/a (no threshold judges them)."""
    has_gate = frame is not None and "gate" in frame.columns and "horizon" in frame.columns
    if not has_gate or not pd.to_numeric(frame["gate"], errors="coerce").notna().any():  # logs keep NaN gates
        return [na_row(name, settings, NO_FUSION, version=version) for name in ("text_coverage", "gate_opening")]
    rows = []
    for h, part in frame.groupby(frame["horizon"].astype(str), sort=True):
        gate = pd.to_numeric(part["gate"], errors="coerce").to_numpy(dtype=float)
        gate = gate[np.isfinite(gate)]
        window = window_of(part)
        for name, value in (
            ("text_coverage", float((gate > 0).mean()) if len(gate) else np.nan),
            ("gate_opening", float(gate.mean()) if len(gate) else np.nan),
        ):
            t = settings.thresholds[name]
            row = _row(name, h, ALL, value, t.warn, t.fail, len(gate), float(len(gate)), window, version=version)
            row["status"], row["detail"] = NA, "fusion model: reported, not judged (no threshold)"
            rows.append(row)
    return rows
