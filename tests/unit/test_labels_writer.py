"""The label writer (one horizon at a time into its output columns) against a row-by-row reference."""

import numpy as np
import pandas as pd

from quantml.labels import make_labels

NAT = np.iinfo(np.int64).min


def _panel(seed: int = 5) -> pd.DataFrame:
    """Three symbols of hourly bars with irregular gaps (lost hours, a lost day)."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, sym in enumerate(["AAA", "BBB", "CCC"]):
        hours = np.cumsum(rng.choice([1, 1, 1, 2, 5, 24], size=150 + 40 * i))
        ts = (pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(hours, unit="h")).as_unit("ns")
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
        parts.append(pd.DataFrame({"symbol": sym, "timestamp": ts, "close": close}))
    return pd.concat(parts, ignore_index=True)


def _reference(panel: pd.DataFrame, horizons: list[str], cost: float) -> dict[str, np.ndarray]:
    """Row by row: the label of row i ends at the first bar of its symbol at or after t + h."""
    n, H = len(panel), len(horizons)
    out = {k: np.full((n, H), np.nan) for k in ("ret", "ret_after_cost", "dir", "vol")}
    out["t1"] = np.full((n, H), NAT, dtype=np.int64)
    out["t1_max"] = np.full(n, NAT, dtype=np.int64)
    out["ret_next_bar"] = np.full(n, np.nan)
    ts = panel["timestamp"].array.asi8
    lc = np.log(panel["close"].to_numpy())
    sym = panel["symbol"].to_numpy()
    for i in range(n):
        same = np.flatnonzero(sym == sym[i])
        later = same[same > i]
        if len(later):
            out["ret_next_bar"][i] = lc[later[0]] - lc[i]
        ends = []
        for j, h in enumerate(horizons):
            hit = same[ts[same] >= ts[i] + pd.Timedelta(h).value]
            if not len(hit):
                ends.append(None)
                continue
            e = hit[0]
            ends.append(ts[e])
            r = lc[e] - lc[i]
            steps = np.diff(lc[i : e + 1])
            out["ret"][i, j] = r
            out["ret_after_cost"][i, j] = np.sign(r) * max(abs(r) - cost, 0.0)
            out["dir"][i, j] = float(r > 0)
            out["vol"][i, j] = np.sqrt(np.sum(steps**2))
            out["t1"][i, j] = ts[e]
        if all(e is not None for e in ends):
            out["t1_max"][i] = max(ends)
    return out


def test_label_writer_matches_a_row_by_row_reference():
    panel, horizons, cost = _panel(), ["1h", "5h", "1d", "3d"], 0.004
    lab = make_labels(panel, horizons, cost)
    ref = _reference(panel, horizons, cost)
    for name in ("ret", "ret_after_cost", "dir", "ret_next_bar"):
        np.testing.assert_allclose(getattr(lab, name), ref[name], rtol=1e-12, atol=1e-15, err_msg=name)
    # the writer's vol is the sqrt of a difference of running sums of r^2: a near-zero vol carries the
    # sqrt of the sums' rounding (~sqrt(eps * sum r^2) ~ 1e-9 here), a large one float64 rounding
    np.testing.assert_allclose(lab.vol, ref["vol"], rtol=1e-9, atol=1e-8)
    assert np.array_equal(lab.t1.view(np.int64), ref["t1"])
    assert np.array_equal(lab.t1_max.view(np.int64), ref["t1_max"])
    assert np.isnan(lab.ret[-1]).all() and np.isnat(lab.t1_max[-1])  # the last bar: every horizon past the data
    assert (~np.isnan(lab.ret[:, 0])).sum() > 400  # most rows are labelled
