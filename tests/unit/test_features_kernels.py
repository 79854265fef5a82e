"""The feature kernels against their pandas references (bit for bit), their causality, and the grouped build."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.data import join_streams, validate_panel
from quantml.data.synthetic import generate_synthetic
from quantml.features import build, build_features, kernels
from quantml.features.ops import SegmentOps


def _segmented(seed: int = 0):
    """Values [n] with NaN runs, ties and an infinity-free mix of scales, over segments of 1 to 300 rows."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 3, 7, 300, 40, 1, 150]
    symbols = np.repeat([f"S{i}" for i in range(len(lengths))], lengths)
    n = len(symbols)
    x = np.cumsum(rng.normal(0, 1, n)) + 50.0
    x[rng.random(n) < 0.2] = np.nan
    x[100:130] = np.nan  # a long gap
    x[200:220] = 3.0  # a constant run (pandas: mean exactly 3, std exactly 0)
    x[rng.random(n) < 0.05] = -1.0
    return symbols, x


def _pandas(symbols, x, fn):
    out = np.empty(len(x))
    for sym in pd.unique(symbols):
        rows = np.flatnonzero(symbols == sym)
        out[rows] = fn(pd.Series(x[rows])).to_numpy()
    return out


@pytest.mark.parametrize("how", ["mean", "std", "var", "sum", "max", "min"])
@pytest.mark.parametrize(("window", "min_periods"), [(1, None), (5, None), (24, 12), (24, 2), (500, 1)])
def test_rolling_is_pandas_bit_for_bit(how, window, min_periods):
    symbols, x = _segmented()
    got = SegmentOps(symbols).rolling(x, window, how, min_periods)
    mp = window if min_periods is None else min_periods
    want = _pandas(symbols, x, lambda s: getattr(s.rolling(window, min_periods=mp), how)())
    np.testing.assert_array_equal(got, want)


def test_rolling_per_symbol_windows_and_min_periods():
    symbols, x = _segmented(1)
    k = len(pd.unique(symbols))
    windows = tuple(range(2, 2 + k))
    minp = tuple(max(1, w // 2) for w in windows)
    ops = SegmentOps(symbols)
    got_mean, got_z = ops.mean(x, windows, minp), ops.zscore(x, windows, minp)
    want_mean, want_sd = np.empty(len(x)), np.empty(len(x))
    for i, sym in enumerate(pd.unique(symbols)):
        rows = np.flatnonzero(symbols == sym)
        r = pd.Series(x[rows]).rolling(windows[i], min_periods=minp[i])
        want_mean[rows], want_sd[rows] = r.mean().to_numpy(), r.std().to_numpy()
    np.testing.assert_array_equal(got_mean, want_mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        want_z = np.where(want_sd > 0, (x - want_mean) / want_sd, np.nan)
    np.testing.assert_array_equal(got_z, want_z)


def test_rolling_min_periods_above_window_is_an_error_as_in_pandas():
    symbols, x = _segmented()
    with pytest.raises(ValueError, match="min_periods"):
        SegmentOps(symbols).mean(x, 1, 2)


def test_rolling_with_infinities_is_pandas():
    symbols, x = _segmented(2)
    x[50] = np.inf
    x[260] = -np.inf
    for how in ("mean", "std"):
        got = SegmentOps(symbols).rolling(x, 6, how, 3)
        want = _pandas(symbols, x, lambda s, h=how: getattr(s.rolling(6, min_periods=3), h)())
        np.testing.assert_array_equal(got, want)


def test_rolling_respects_breaks():
    symbols, x = _segmented(3)
    breaks = np.zeros(len(x), dtype=bool)
    breaks[[20, 90, 91, 400]] = True
    got = SegmentOps(symbols, breaks=breaks).mean(x, 10, 1)
    seg = np.cumsum(np.r_[True, (symbols[1:] != symbols[:-1]) | breaks[1:]])
    want = _pandas(seg, x, lambda s: s.rolling(10, min_periods=1).mean())
    np.testing.assert_array_equal(got, want)


def test_ffill_is_pandas_per_segment():
    symbols, x = _segmented(4)
    got = SegmentOps(symbols).ffill(x)
    np.testing.assert_array_equal(got, _pandas(symbols, x, lambda s: s.ffill()))
    assert np.isnan(got[0]) == np.isnan(x[0])


@pytest.mark.parametrize("chunk", [None, 10])
def test_rank_pct_is_groupby_rank(monkeypatch, chunk):
    if chunk:
        monkeypatch.setattr(kernels, "RANK_CHUNK", chunk)  # several blocks of timestamps
    rng = np.random.default_rng(5)
    n_times, n_syms = 400, 7
    t, s = np.meshgrid(np.arange(n_times), np.arange(n_syms), indexing="ij")
    keep = rng.random(t.size) < 0.8  # some symbols missing at some timestamps
    tc, sc = t.ravel()[keep], s.ravel()[keep]
    v = np.round(rng.normal(0, 1, tc.size), 1)  # many ties
    v[rng.random(tc.size) < 0.15] = np.nan
    got = kernels.rank_pct(v, tc, n_times, sc, n_syms)
    want = pd.Series(v).groupby(tc).rank(pct=True).to_numpy()
    np.testing.assert_array_equal(got, want)


def test_kernels_are_causal():
    """Changing rows after t (in every segment) leaves every output at or before t bit-identical."""
    symbols, x = _segmented(6)
    ops = SegmentOps(symbols)
    cut = ops.pos > 60  # "the future": late rows of each segment
    y = x.copy()
    y[cut] = np.random.default_rng(7).normal(0, 5, cut.sum())
    for f in (
        lambda a: ops.mean(a, 24, 2),
        lambda a: ops.std(a, 24, 2),
        lambda a: ops.zscore(a, 48, 3),
        lambda a: ops.max(a, 12),
        lambda a: ops.ffill(a),
    ):
        a, b = f(x), f(y)
        np.testing.assert_array_equal(a[~cut], b[~cut])
        assert not np.array_equal(a[cut], b[cut], equal_nan=True)


def _panel():
    syn = generate_synthetic("1h", 5, 700, seed=3)
    return validate_panel(join_streams(syn.bars, syn.streams))


@pytest.mark.parametrize("feature_set", ["full", "durations"])
def test_grouped_build_equals_one_group(monkeypatch, feature_set):
    """Per-symbol blocks run on groups of whole symbols: any grouping gives the same matrix, bit for bit."""
    panel = _panel()
    if feature_set == "full":
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load("quantml/conf/feature_set/full.yaml"))
    else:
        cfg = {
            "name": "d",
            "blocks": {
                "returns": {"lags": [1, "1d"]},
                "volatility": {"windows": ["12h", "2d"]},
                "cross_section": {"lags": ["4h"], "vol_window": "1d"},
            },
            "gaps": {"break_windows": True, "min_missing": 1},
        }
    whole = build_features(panel, cfg)
    monkeypatch.setattr(build, "GROUP_ROWS", 1)  # one group per symbol
    grouped = build_features(panel, cfg)
    assert list(grouped.frame.columns) == list(whole.frame.columns)
    np.testing.assert_array_equal(grouped.frame.to_numpy(), whole.frame.to_numpy())
    assert grouped.modalities == whole.modalities
    assert grouped.resolved == whole.resolved and grouped.skipped == whole.skipped
    assert grouped.input_columns == whole.input_columns and grouped.known_future == whole.known_future
    assert any(c.startswith("xs_rank_") for c in grouped.frame.columns)


def test_symbol_groups_cover_whole_symbols():
    codes = np.repeat([0, 1, 2, 3], [5, 1, 9, 2])
    groups = build._symbol_groups(codes, 6)
    assert groups == [(0, 15), (15, 17)] or groups == [(0, 6), (6, 15), (15, 17)]
    assert groups[0][0] == 0 and groups[-1][1] == len(codes)
    assert build._symbol_groups(np.zeros(0, dtype=np.int64), 6) == [(0, 0)]
