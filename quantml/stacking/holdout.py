"""The stack on the lockbox: the served stack, equal weight, the best single expert and every expert's
final model, scored on the same lockbox rows by the Scorer of the comparison, and the scale check.

The :class:`~quantml.stacking.model.StackBundle` predicts the whole panel from the experts' final
models; the rows of lockbox samples (``t0`` at or after ``quantml.lockbox_start``) are scored with the
first expert's Scorer on the lockbox's own bar calendar
(:func:`quantml.experiment.lockbox.holdout_scorer`), giving the stack run's ``holdout_<metric>/<h>``.
The baselines are fitted like the stack (once, on every development OOF row purged before the
lockbox); the best single expert is chosen on those development rows only. Nothing of the lockbox is
fitted on or chosen with: its bars only feed the experts' final models at prediction time.

The scale check compares, per expert and horizon, the spread of the final model's ``score`` and
``expected_return`` on the lockbox with the spread of the same expert's development out-of-fold
predictions: a combiner fitted on OOF forecasts expects the final model to forecast on the same
scale (a final model fitted on more data, or calibrated differently, may not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from quantml.contracts import HORIZON_SEPARATOR, SYMBOL, TIMESTAMP
from quantml.contracts import run_layout as L
from quantml.stacking.combiners import expert_column
from quantml.stacking.model import FinalFit, StackBundle, development_mask, served_columns_ok
from quantml.stacking.oof import EXPERT_FIELDS, KEY, REALISED

COMPARED = ("ap", "ece", "rmse", "rank_ic", "sharpe_after_cost")
SCALE_FIELDS = ("score", "expected_return")
SCALE_BAND = (0.5, 2.0)  # lockbox std / development std within this band: "ok", else "differs"


@dataclass
class HoldoutResult:
    """What the lockbox evaluation measured; ``to_text`` is what the command prints."""

    start: pd.Timestamp
    comparison: pd.DataFrame  # one row per candidate and horizon (stack/holdout_comparison.csv)
    scale_check: pd.DataFrame  # one row per expert, horizon and field (stack/scale_check.csv)
    metrics: dict[str, float]  # the stack's holdout_<metric>/<h>
    predictions: pd.DataFrame  # the stack's lockbox predictions (contract + realised, fold -1)
    chosen: dict[str, str] = field(default_factory=dict)  # best single expert per horizon (development rows)
    n_rows: int = 0
    # per horizon and baseline: the stack's rank IC gain on the lockbox and its t-statistic (stack/holdout_verdict.csv)
    verdict: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_text(self) -> str:
        shown = self.comparison.drop(columns=["run_id"]).copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = [("-" if not math.isfinite(v) else f"{v:.4g}") for v in shown[col]]
        scale = self.scale_check.drop(columns=["run_id"]).copy()
        for col in ("std_development", "std_lockbox", "ratio"):
            scale[col] = [("-" if not math.isfinite(v) else f"{v:.4g}") for v in scale[col]]
        chosen = ", ".join(f"{h}: {a}" for h, a in self.chosen.items()) or "-"
        with pd.option_context("display.width", 250, "display.max_columns", 40):
            return "\n".join(
                [
                    f"Lockbox from {self.start:%Y-%m-%d %H:%M} UTC ({self.n_rows} rows; the experts' final models; "
                    f"best_single chosen on development OOF rows: {chosen}; a read, counted in {L.TAG_LOCKBOX_READS}):",
                    shown.to_string(index=False),
                    "",
                    f"Does the stack beat them on the lockbox? (rank IC gain per timestamp; beats when "
                    f"t >= {BEATS_T:g}, worse when t <= -{BEATS_T:g}, else no better):",
                    _shown(self.verdict).to_string(index=False) if len(self.verdict) else "  -",
                    "",
                    f"Scale check (std of each final model's forecasts on the lockbox / on its development OOF rows; "
                    f"ok within [{SCALE_BAND[0]:g}, {SCALE_BAND[1]:g}]):",
                    scale.to_string(index=False),
                ]
            )


BEATS_T = 2.0  # |t| of the mean per-timestamp rank IC gain for a verdict other than "no better"


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            out[col] = [("-" if not math.isfinite(v) else f"{v:.4g}") for v in out[col]]
    return out


def _ic_by_time(frame: pd.DataFrame, horizon: str) -> pd.Series:
    """Spearman correlation of ``expected_return`` with ``ret`` across the symbols of each timestamp
    (timestamps with 3+ symbols) of one horizon's rows."""
    rows = frame[frame["horizon"].astype(str) == horizon]
    rows = rows[np.isfinite(rows["expected_return"]) & np.isfinite(rows["ret"])]
    ranked = rows.assign(f=rows.groupby(TIMESTAMP)["expected_return"].rank(), r=rows.groupby(TIMESTAMP)["ret"].rank())
    big = ranked.groupby(TIMESTAMP)[SYMBOL].transform("size") >= 3
    return ranked[big].groupby(TIMESTAMP)[["f", "r"]].apply(lambda g: g["f"].corr(g["r"])).dropna()


def rank_ic_verdict(stack: pd.DataFrame, others: dict[str, pd.DataFrame], horizons: list[str]) -> pd.DataFrame:
    """Per horizon and other candidate: the stack's and the other's mean per-timestamp rank IC on the
    same timestamps, the gain, its t-statistic (mean gain / its standard error over timestamps) and a
    verdict: ``beats`` (t >= 2), ``worse`` (t <= -2), else ``no better`` — a stack of redundant
    experts is ``no better`` than its best one, whatever the sign of a tiny gain."""
    rows = []
    for h in horizons:
        mine = _ic_by_time(stack, h)
        for name, frame in others.items():
            theirs = _ic_by_time(frame, h)
            both = mine.index.intersection(theirs.index)
            gain = (mine[both] - theirs[both]).to_numpy(np.float64)
            se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("nan")
            t = float(gain.mean() / se) if se and np.isfinite(se) and se > 0 else float("nan")
            verdict = "beats" if t >= BEATS_T else "worse" if t <= -BEATS_T else "no better"
            rows.append(
                {
                    "horizon": h,
                    "versus": name,
                    "stack_rank_ic": float(mine[both].mean()) if len(both) else float("nan"),
                    "their_rank_ic": float(theirs[both].mean()) if len(both) else float("nan"),
                    "gain": float(gain.mean()) if len(gain) else float("nan"),
                    "t": t,
                    "n_timestamps": len(both),
                    "verdict": verdict,
                }
            )
    return pd.DataFrame(rows)


def lockbox_rows(prep, horizons: list[str]) -> pd.DataFrame:
    """The lockbox samples of ``prep`` in the long layout: ``symbol, timestamp, horizon`` and what was
    realised (``ret, ret_after_cost, dir, vol, ret_next_bar``, ``t1``), ``fold = -1``."""
    rows = np.asarray(prep.holdout_samples)
    keys = prep.data.keys.iloc[rows].reset_index(drop=True)
    parts = []
    for h in horizons:
        part = pd.DataFrame(
            {
                SYMBOL: keys[SYMBOL].to_numpy(),
                TIMESTAMP: pd.to_datetime(keys[TIMESTAMP], utc=True).to_numpy(),
                "horizon": str(h),
            }
        )
        for name in ("ret", "ret_after_cost", "dir", "vol"):
            part[name] = prep.realised.take(f"{name}@{h}", rows)
        part["ret_next_bar"] = prep.realised.take("ret_next_bar", rows)
        part["t1"] = pd.to_datetime(prep.realised.take(f"t1@{h}", rows)).tz_localize("UTC")
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    out["fold"] = -1
    return out


def lockbox_table(bundle: StackBundle, prep) -> pd.DataFrame:
    """The served stack's expert table of the whole panel, cut to the lockbox samples every
    expert forecast (finite), joined with what was realised."""
    served = bundle.expert_table(prep.panel)
    box = lockbox_rows(prep, bundle.horizons)
    table = served.merge(box, on=KEY, how="inner")
    table = table[served_columns_ok(table, bundle.aliases)]
    return table.sort_values(["horizon", TIMESTAMP, SYMBOL], kind="mergesort").reset_index(drop=True)


def expert_frame(table: pd.DataFrame, alias: str) -> pd.DataFrame:
    """One expert's forecasts of ``table`` in the prediction layout, with the realised columns."""
    out = table[["symbol", "timestamp", "horizon", *REALISED, "t1", "fold"]].copy()
    for name in EXPERT_FIELDS:
        out[name] = table[expert_column(alias, name)].to_numpy(np.float64)
    out["path"] = 0
    return out


def _rows(name, kind, run_id, pooled, frame, horizons) -> list[dict]:
    out = []
    for h in horizons:
        row = {"candidate": name, "kind": kind, "horizon": h}
        for m in COMPARED:
            row[m] = float(pooled.get(f"{L.SPLIT_HOLDOUT}_{m}{HORIZON_SEPARATOR}{h}", np.nan))
        row["n_rows"] = int((frame["horizon"].astype(str) == h).sum())
        row["run_id"] = run_id or ""
        out.append(row)
    return out


def scale_check(lock: pd.DataFrame, oof: pd.DataFrame, experts, horizons: list[str], dev: np.ndarray) -> pd.DataFrame:
    """Per expert, horizon and field (``score``, ``expected_return``): the std of the final model's
    forecasts on the lockbox rows, of its development OOF rows, their ratio and a verdict."""
    rows = []
    for e in experts:
        for h in horizons:
            at_lock = lock["horizon"].to_numpy() == h
            at_dev = dev & (oof["horizon"].astype(str).to_numpy() == h)
            for name in SCALE_FIELDS:
                col = expert_column(e.alias, name)
                a = lock.loc[at_lock, col].to_numpy(np.float64)
                b = oof.loc[at_dev, col].to_numpy(np.float64)
                s_lock = float(np.nanstd(a)) if np.isfinite(a).any() else math.nan
                s_dev = float(np.nanstd(b)) if np.isfinite(b).any() else math.nan
                ratio = s_lock / s_dev if s_dev and math.isfinite(s_dev) and math.isfinite(s_lock) else math.nan
                ok = math.isfinite(ratio) and SCALE_BAND[0] <= ratio <= SCALE_BAND[1]
                rows.append(
                    {
                        "expert": e.alias,
                        "horizon": h,
                        "field": name,
                        "std_development": s_dev,
                        "std_lockbox": s_lock,
                        "ratio": ratio,
                        "verdict": "ok" if ok else "differs",
                        "n_development": int(np.isfinite(b).sum()),
                        "n_lockbox": int(np.isfinite(a).sum()),
                        "run_id": e.run_id,
                    }
                )
    return pd.DataFrame(rows)


def evaluate_holdout(
    bundle: StackBundle,
    baselines: dict[str, tuple[str, FinalFit]],
    oof: pd.DataFrame,
    experts,
    prep,
    score,
    embargo: pd.Timedelta,
) -> HoldoutResult | None:
    """The lockbox evaluation (see the module doc); None when the experts have no lockbox.

    ``baselines``: ``{candidate: (kind, final fit)}`` of the other combiner configs; ``oof``: the
    OOF table (the development rows of the scale check); ``score``: the comparison's Scorer."""
    from quantml.experiment.lockbox import holdout_scorer

    start = prep.lockbox.start
    if start is None or not len(prep.holdout_samples):
        return None
    table = lockbox_table(bundle, prep)
    horizons = bundle.horizons
    hs = holdout_scorer(score, prep)
    stack = bundle.combine(table)
    stack["path"] = 0
    metrics = hs(stack, L.SPLIT_HOLDOUT)
    rows = _rows(bundle.combiner_name, "stack", None, metrics, stack, horizons)
    chosen: dict[str, str] = {}
    others: dict[str, pd.DataFrame] = {}
    for name, (kind, fit) in baselines.items():
        frame = replace(bundle, combiners=fit.combiners, calibrators=fit.calibrators).combine(table)
        frame["path"] = 0
        others[name] = frame
        rows += _rows(name, kind, None, hs(frame, L.SPLIT_HOLDOUT), frame, horizons)
        for h, comb in fit.combiners.items():
            if getattr(comb, "chosen_", None):
                chosen[h] = comb.chosen_
    for e in experts:
        frame = expert_frame(table, e.alias)
        rows += _rows(e.alias, "expert", e.run_id, hs(frame, L.SPLIT_HOLDOUT), frame, horizons)
    dev = development_mask(oof, start, embargo)
    return HoldoutResult(
        start=start,
        comparison=pd.DataFrame(rows),
        scale_check=scale_check(table, oof, experts, horizons, dev),
        metrics=metrics,
        predictions=stack,
        chosen=chosen,
        n_rows=len(table),
        verdict=rank_ic_verdict(stack, others, horizons),
    )
