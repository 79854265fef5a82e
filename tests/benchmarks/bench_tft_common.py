"""Shared by both sides of the TFT benchmark (quantml and pytorch-forecasting venvs).

Only numpy here (plus pandas in the generator, run by the quantml side): the panel is
generated once, saved as ``.npz`` and loaded by each measured subprocess, so both
libraries start from identical arrays.

The panel: ``n_symbols`` x ``n_bars`` hourly bars. Per bar: the bar's log return ``ret``
(observed at t), 9 more observed features and 4 calendar features (known in advance).
Volatility has an intraday pattern and a persistent log-AR(1) part; the next bar's return
carries a small planted signal from ``sentiment`` and ``funding`` observed at t.
Target = next bar's log return (``fwd_ret``); row t of the panel forecasts it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np

# BENCH_N_BATCHES only shortens a trial run of the scripts; the benchmark uses 200.
SETTINGS = dict(
    lookback=96,
    hidden_size=64,
    n_heads=4,
    hidden_continuous_size=16,
    batch_size=256,
    n_batches=int(os.environ.get("BENCH_N_BATCHES", 200)),
    lr=1e-3,
    dropout=0.1,
    threads=2,
    quantiles=[0.1, 0.5, 0.9],
    valid_fraction=0.1,
    max_valid_rows=50_000,
    batch_chunk=16,
)
OBSERVED = ["ret", "ret_4", "ret_24", "rv_24", "volume_z", "funding", "sentiment", "oi_change", "spread", "momentum_96"]
KNOWN = ["hour_sin", "hour_cos", "dow_sin", "dow_cos"]


def generate(n_symbols: int, n_bars: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays sorted by (symbol, time): ``code`` [n], ``time_idx`` [n], ``timestamp`` (ns) [n],
    ``X`` float32 [n, 14] (OBSERVED + KNOWN), ``fwd_ret`` float32 [n] (NaN at each symbol's end)."""
    import pandas as pd
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    ts = pd.date_range("2020-01-01", periods=n_bars, freq="h", tz="UTC")
    hour, dow = ts.hour.to_numpy(), ts.dayofweek.to_numpy()
    season = 1.0 + 0.5 * np.cos(2 * np.pi * (hour - 15) / 24)
    cal = np.stack(
        [
            np.sin(2 * np.pi * hour / 24),
            np.cos(2 * np.pi * hour / 24),
            np.sin(2 * np.pi * dow / 7),
            np.cos(2 * np.pi * dow / 7),
        ],
        1,
    ).astype(np.float32)
    X = np.empty((n_symbols * n_bars, len(OBSERVED) + len(KNOWN)), np.float32)
    fwd = np.empty(n_symbols * n_bars, np.float32)
    for s in range(n_symbols):
        logv = lfilter([1.0], [1.0, -0.98], rng.normal(0, 0.06, n_bars))
        vol = 0.004 * (1 + 0.5 * rng.random()) * season * np.exp(logv)
        sentiment = lfilter([1.0], [1.0, -0.9], rng.normal(0, 0.45, n_bars))
        funding = lfilter([1.0], [1.0, -0.99], rng.normal(0, 0.1, n_bars))
        # return of bar t+1 depends on what is known at t
        ret = np.empty(n_bars)
        ret[0] = vol[0] * rng.standard_normal()
        ret[1:] = vol[:-1] * (0.12 * sentiment[:-1] - 0.06 * funding[:-1] + rng.standard_normal(n_bars - 1))
        volume = np.exp(rng.normal(0, 0.3, n_bars) + 3 * np.abs(ret) / vol.mean())
        f = pd.DataFrame({"ret": ret})
        f["ret_4"] = f["ret"].rolling(4, min_periods=1).sum()
        f["ret_24"] = f["ret"].rolling(24, min_periods=1).sum()
        f["rv_24"] = f["ret"].rolling(24, min_periods=2).std().bfill()
        lv = pd.Series(np.log(volume))
        f["volume_z"] = (lv - lv.rolling(96, min_periods=2).mean()) / lv.rolling(96, min_periods=2).std()
        f["funding"] = funding + rng.normal(0, 0.02, n_bars)
        f["sentiment"] = sentiment + rng.normal(0, 0.3, n_bars)
        f["oi_change"] = rng.normal(0, 1, n_bars) + 0.3 * np.r_[0, np.diff(funding)] * 10
        f["spread"] = vol / vol.mean() + rng.normal(0, 0.1, n_bars)
        f["momentum_96"] = f["ret"].rolling(96, min_periods=1).sum()
        block = slice(s * n_bars, (s + 1) * n_bars)
        X[block, : len(OBSERVED)] = f[OBSERVED].fillna(0.0).to_numpy(np.float32)
        X[block, len(OBSERVED) :] = cal
        fwd[block] = np.r_[ret[1:], np.nan]
    return {
        "code": np.repeat(np.arange(n_symbols, dtype=np.int32), n_bars),
        "time_idx": np.tile(np.arange(n_bars, dtype=np.int32), n_symbols),
        "timestamp": np.tile(ts.as_unit("ns").asi8, n_symbols),
        "X": X,
        "fwd_ret": fwd,
        "n_symbols": np.int64(n_symbols),
        "n_bars": np.int64(n_bars),
    }


def split_bounds(n_bars: int) -> tuple[int, int]:
    """Rows t with ``lookback-1 <= t < cutoff-1`` train (target t+1 before the cutoff);
    rows ``cutoff-1 <= t <= n_bars-2`` validate (target t+1 in ``[cutoff, n_bars-1]``)."""
    cutoff = int(n_bars * (1 - SETTINGS["valid_fraction"]))
    return SETTINGS["lookback"] - 1, cutoff


def valid_rows(n_symbols: int, n_bars: int) -> np.ndarray:
    """Positions (panel order) of the validation rows, thinned to at most ``max_valid_rows``."""
    _, cutoff = split_bounds(n_bars)
    rows = np.concatenate([s * n_bars + np.arange(cutoff - 1, n_bars - 1) for s in range(n_symbols)])
    step = max(1, len(rows) // SETTINGS["max_valid_rows"])
    return rows[::step]


def pinball(q_pred: np.ndarray, y: np.ndarray, quantiles=None) -> float:
    """Mean pinball loss over the quantiles; ``q_pred`` [n, Q], ``y`` [n]."""
    quantiles = np.asarray(quantiles or SETTINGS["quantiles"])
    e = y[:, None] - q_pred
    return float(np.mean(np.maximum(quantiles * e, (quantiles - 1) * e)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def emit(result: dict) -> None:
    """The measured subprocess's one line of output."""
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    sys.stdout.write("BENCH_RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
