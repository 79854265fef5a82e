"""The OOF table of a stack and its leakage audit.

The table has one row per ``(symbol, timestamp, horizon)`` that every expert predicted out of fold,
the realised columns (``ret, ret_after_cost, dir, vol, ret_next_bar`` of the first expert, ``t1`` the
latest label end of any expert: the purge uses the longest label), the fold of the calendar-anchored
fold plan (``fold``), and one block of columns per expert, ``<alias>__<field>`` for
:data:`EXPERT_FIELDS`.

:func:`audit_oof` checks the experts' out-of-fold predictions before anything is fitted and returns
``{"clean", "checks": {name: {"ok", "status" (PASS | FAIL), "count", "detail"}}}``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.stacking.combiners import expert_column
from quantml.stacking.experts import Expert

KEY = [SYMBOL, TIMESTAMP, "horizon"]
EXPERT_FIELDS = ("expected_return", "prob_up", "q10", "q50", "q90", "vol_forecast", "score", "confidence")
REQUIRED_FIELDS = ("expected_return", "prob_up", "q10", "q90", "vol_forecast", "score")
REALISED = ("ret", "ret_after_cost", "dir", "vol", "ret_next_bar")
AUDIT_CHECKS = (
    "duplicate_keys",
    "time_order",
    "gaps",
    "missing_predictions",
    "realised_agree",
    "fold_agree",
    "training_labels_before_prediction",
)


def _check(ok: bool, count: int, detail: str) -> dict:
    return {"ok": bool(ok), "status": "PASS" if ok else "FAIL", "count": int(count), "detail": detail}


def _frame(expert: Expert) -> pd.DataFrame:
    frame = expert.oos
    missing = [c for c in (*KEY, "fold", "t1", *REALISED, *REQUIRED_FIELDS) if c not in frame.columns]
    if missing:
        raise QuantmlInputError(
            f"the out-of-fold predictions of run {expert.run_id} lack column(s) {missing}; re-run `quantml train` "
            f"with this quantml version, or drop it with exclude=[{expert.run_id}]"
        )
    return frame


def _deduped(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates(KEY, keep="first")


def build_oof_table(experts: list[Expert]) -> pd.DataFrame:
    """The OOF table over the keys every expert predicted (duplicate keys keep their first row; an
    audit that finds them fails, see :func:`audit_oof`), sorted by horizon, timestamp, symbol."""
    first = _deduped(_frame(experts[0]))
    table = first[[*KEY, "fold", "t1", *REALISED]].copy()
    for e in experts:
        frame = _deduped(_frame(e))
        block = frame[KEY].copy()
        for name in EXPERT_FIELDS:
            block[expert_column(e.alias, name)] = frame[name].to_numpy(np.float64) if name in frame else np.nan
        block[expert_column(e.alias, "t1")] = pd.to_datetime(frame["t1"], utc=True).to_numpy()
        block[expert_column(e.alias, "fold")] = frame["fold"].astype(int).to_numpy()
        table = table.merge(block, on=KEY, how="inner")
        ok = np.isfinite(table[[expert_column(e.alias, n) for n in REQUIRED_FIELDS]].to_numpy(np.float64)).all(axis=1)
        table = table[ok]
    t1s = [table[expert_column(e.alias, "t1")] for e in experts]
    table["t1"] = pd.concat(t1s, axis=1).max(axis=1)
    table = table.drop(columns=[expert_column(e.alias, c) for e in experts for c in ("t1", "fold")])
    table["timestamp"] = pd.to_datetime(table[TIMESTAMP], utc=True)
    table["horizon"] = table["horizon"].astype(str)
    table["fold"] = table["fold"].astype(int)
    table = table.sort_values(["horizon", TIMESTAMP, SYMBOL], kind="mergesort").reset_index(drop=True)
    if table.empty:
        raise QuantmlInputError(
            "the experts share no out-of-fold row (symbol, timestamp, horizon); they were not trained on the "
            "same development bars: check their data settings, or drop the odd one with exclude=[...]"
        )
    return table


def _training_label_end(expert: Expert, fold_id: str, t1_by_bar: pd.Series, span: pd.Timedelta):
    """The latest label end of the fold model's training rows (fit and inner validation): the
    ``t1`` logged for its last training bar when that bar has out-of-fold rows, else that bar plus
    the expert's longest label span (an upper bound). ``(end, exact)`` or ``(None, False)``."""
    params = expert.fold_params.get(fold_id)
    if not params:
        return None, False
    ends = [pd.Timestamp(params[k]) for k in ("train_end", "valid_end") if params.get(k)]
    if not ends:
        return None, False
    last = max(ends)
    last = last.tz_localize("UTC") if last.tzinfo is None else last.tz_convert("UTC")
    if last in t1_by_bar.index:
        return t1_by_bar[last], True
    return last + span, False


def audit_oof(experts: list[Expert], market: pd.DataFrame | None, max_gap_bars: int, max_missing: float) -> dict:
    """The leakage audit of the experts' out-of-fold predictions (see the module docstring)."""
    checks: dict[str, dict] = {}
    frames = {e.alias: _frame(e) for e in experts}

    dup = {a: int(f.duplicated(KEY).sum()) for a, f in frames.items()}
    n = sum(dup.values())
    checks["duplicate_keys"] = _check(
        n == 0, n, f"repeated (symbol, timestamp, horizon) rows per expert: {dup}" if n else "no repeated key"
    )

    back = {}
    for a, f in frames.items():
        count = 0
        for _, g in f.groupby([SYMBOL, "horizon"], sort=False):
            ts = pd.to_datetime(g[TIMESTAMP], utc=True).to_numpy()
            fold = g["fold"].to_numpy()
            count += int(((ts[1:] < ts[:-1]) | (fold[1:] < fold[:-1])).sum())
        back[a] = count
    n = sum(back.values())
    checks["time_order"] = _check(
        n == 0,
        n,
        f"rows whose time (or fold) goes backwards within a symbol, per expert: {back}"
        if n
        else "time and folds move forward within every symbol",
    )

    union = pd.concat([_deduped(f)[KEY] for f in frames.values()]).drop_duplicates()
    missing = {}
    for a, f in frames.items():
        d = _deduped(f)
        ok = np.isfinite(d[list(REQUIRED_FIELDS)].to_numpy(np.float64)).all(axis=1)
        missing[a] = int(len(union) - int(ok.sum()))
    n = sum(missing.values())
    share = max(missing.values()) / max(len(union), 1)
    checks["missing_predictions"] = _check(
        share <= max_missing,
        n,
        f"keys of the union ({len(union)}) an expert did not predict (or predicted NaN): {missing}; the largest "
        f"share {share:.4f} vs audit.max_missing={max_missing:g} (rows missing an expert are not stacked)",
    )

    ref = _deduped(frames[experts[0].alias])
    mismatch, fold_mismatch = {}, {}
    for a, f in list(frames.items())[1:]:
        both = ref.merge(_deduped(f), on=KEY, suffixes=("", "_other"))
        bad = np.zeros(len(both), dtype=bool)
        for col in ("ret", "dir"):
            x, y = both[col].to_numpy(np.float64), both[f"{col}_other"].to_numpy(np.float64)
            bad |= ~np.isclose(x, y, rtol=0, atol=1e-12, equal_nan=True)
        mismatch[a] = int(bad.sum())
        fold_mismatch[a] = int((both["fold"].to_numpy() != both["fold_other"].to_numpy()).sum())
    n = sum(mismatch.values())
    checks["realised_agree"] = _check(
        n == 0, n, f"shared keys whose realised ret/dir differ from {experts[0].alias}'s: {mismatch}"
    )
    n = sum(fold_mismatch.values())
    checks["fold_agree"] = _check(
        n == 0, n, f"shared keys an expert puts in another fold than {experts[0].alias} does: {fold_mismatch}"
    )

    checks["gaps"] = _gap_check(build_table_keys(frames), market, max_gap_bars)

    leaks, bounds = {}, {}
    for e in experts:
        f = frames[e.alias]
        ts = pd.to_datetime(f[TIMESTAMP], utc=True)
        t1 = pd.to_datetime(f["t1"], utc=True)
        t1_by_bar = t1.groupby(ts.to_numpy()).max()
        t1_by_bar.index = (
            pd.DatetimeIndex(t1_by_bar.index).tz_localize("UTC") if t1_by_bar.index.tz is None else (t1_by_bar.index)
        )
        span = (t1 - ts).max()
        count, upper = 0, 0
        for fold_id, idx in f.groupby(f["fold"].astype(int).astype(str)).groups.items():
            rows_t = ts.loc[idx]
            end, exact = _training_label_end(e, str(fold_id), t1_by_bar, span)
            params = e.fold_params.get(str(fold_id), {})
            if end is None:
                count += len(idx)  # no fold run: the model that made these predictions is unknown
                continue
            upper += 0 if exact else 1
            bad = rows_t <= end
            start, stop = params.get("test_start"), params.get("test_end")
            if start and stop:
                bad |= (rows_t < pd.Timestamp(start)) | (rows_t > pd.Timestamp(stop))
            count += int(bad.sum())
        leaks[e.alias] = count
        bounds[e.alias] = upper
    n = sum(leaks.values())
    checks["training_labels_before_prediction"] = _check(
        n == 0,
        n,
        "rows predicted by a fold model whose training labels (fit and inner validation) reach the row's time, "
        f"or that lie outside their fold run's test window, per expert: {leaks}; folds judged on an upper bound "
        f"of the label end (last training bar + longest label span): {bounds}",
    )
    clean = all(c["ok"] for c in checks.values())
    return {"clean": clean, "checks": {k: checks[k] for k in AUDIT_CHECKS}}


def build_table_keys(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The keys every expert predicted (the rows the table will hold)."""
    keys = None
    for f in frames.values():
        k = _deduped(f)[KEY]
        keys = k if keys is None else keys.merge(k, on=KEY, how="inner")
    return keys


def _gap_check(keys: pd.DataFrame, market: pd.DataFrame | None, max_gap_bars: int) -> dict:
    if market is None:
        return _check(True, 0, "skipped: the experts logged no market calendar (predictions/market.parquet)")
    bars = {s: np.sort(pd.to_datetime(g[TIMESTAMP], utc=True).to_numpy()) for s, g in market.groupby(SYMBOL)}
    count, worst = 0, 0
    for (sym, _), g in keys.groupby([SYMBOL, "horizon"], sort=False):
        ts = np.sort(pd.to_datetime(g[TIMESTAMP], utc=True).to_numpy())
        cal = bars.get(sym)
        if cal is None or len(ts) < 2:
            continue
        pos = np.searchsorted(cal, ts)
        between = np.diff(pos) - 1
        count += int((between > max_gap_bars).sum())
        worst = max(worst, int(between.max()))
    return _check(
        count == 0,
        count,
        f"consecutive stacked rows of a symbol more than audit.max_gap_bars={max_gap_bars} market bars apart "
        f"(the largest gap: {worst} bars)",
    )
