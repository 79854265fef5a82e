"""The training reference's summary statistics computed on integer codes and one shared sort order
equal the direct computation on the rows' strings and timestamps (an unsorted frame with NaNs)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.evaluation.reference import build_reference, dependence, integrated_time, quantile_grid


def _direct_dependence(values, symbols, timestamps) -> tuple[int, float, float, float]:
    """The plain pandas computation: sort by (symbol, time) with string symbols, group by each."""
    frame = pd.DataFrame({"v": np.asarray(values, np.float64), "s": np.asarray(symbols), "t": np.asarray(timestamps)})
    frame = frame[np.isfinite(frame["v"])].sort_values(["s", "t"], kind="mergesort")
    v = frame["v"].to_numpy()
    n, total = len(frame), float(np.var(v))
    means = frame.groupby("t", sort=False)["v"].agg(["mean", "size"])
    m = n / len(means)
    tau = integrated_time([part.to_numpy() for _, part in frame.groupby("s", sort=False)["v"]])
    between = float(np.average((means["mean"] - v.mean()) ** 2, weights=means["size"]))
    icc = min(max((between - total / m) / (total * (1.0 - 1.0 / m)), 0.0), 1.0)
    return n, tau, icc, m


def _panel(seed: int = 0, n_bars: int = 400, symbols=("ETH", "BTC", "SOL", "ADA")) -> pd.DataFrame:
    """Shuffled long rows over two horizons: a common per-bar factor and a slow per-symbol one."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2025-01-01", periods=n_bars, freq="1h")
    rows = []
    for horizon in ("4h", "1h"):  # not in sorted order: the reference keeps the order of appearance
        common = rng.standard_normal(n_bars)
        for s in symbols:
            slow = np.cumsum(rng.standard_normal(n_bars)) * 0.1
            rows.append(
                pd.DataFrame(
                    {
                        "symbol": s,
                        "timestamp": ts,
                        "horizon": horizon,
                        "expected_return": common + slow + rng.standard_normal(n_bars),
                        "prob_up": rng.random(n_bars),
                    }
                )
            )
    frame = pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.loc[rng.random(len(frame)) < 0.05, "expected_return"] = np.nan
    return frame


def test_dependence_matches_the_direct_computation_on_strings():
    frame = _panel()
    for column in ("expected_return", "prob_up"):
        got = dependence(frame[column], frame["symbol"], frame["timestamp"])
        want = _direct_dependence(frame[column], frame["symbol"], frame["timestamp"])
        assert got == want
    n, tau, icc, _ = dependence(frame["expected_return"], frame["symbol"], frame["timestamp"])
    assert n < len(frame) and tau > 1.0 and icc > 0.02  # NaNs dropped; the slow and the common factor


def test_build_reference_is_the_same_for_categorical_and_string_columns():
    frame = _panel(seed=1)
    categorical = frame.assign(
        symbol=pd.Categorical(frame["symbol"], categories=sorted(frame["symbol"].unique())),
        horizon=pd.Categorical(frame["horizon"], categories=["1h", "4h"]),
    )
    plain, coded = build_reference(frame), build_reference(categorical)
    assert plain == coded
    assert list(plain["predictions"]) == [frame["horizon"].iloc[0], *({"1h", "4h"} - {frame["horizon"].iloc[0]})]
    part = frame[frame["horizon"] == "1h"]
    entry = plain["predictions"]["1h"]["expected_return"]
    assert entry["q"] == quantile_grid(part["expected_return"])
    values = part["expected_return"].to_numpy()
    spread = np.abs(values - np.nanmedian(values))
    direct = [_direct_dependence(x, part["symbol"], part["timestamp"]) for x in (values, spread)]
    assert entry["tau"] == max(d[1] for d in direct) and entry["icc"] == max(d[2] for d in direct)
    assert entry["n"] == int(np.isfinite(values).sum())
