"""A hand-made panel with a planted text effect that only acts while text activity is high (for the
fusion tests): price features ``f0, f1``, text features ``social_velocity`` (activity, in bursts),
``sentiment`` (content) and the flag ``social_sentiment_missing``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.models.base import PanelData

TEXT_FEATURES = ["social_velocity", "sentiment", "social_sentiment_missing"]
HORIZONS = ["1h", "4h"]


def text_panel(
    n_per_symbol: int = 500, n_symbols: int = 8, seed: int = 0, text_effect: float = 1.5, noise_text: bool = False
) -> PanelData:
    """``y = 0.5 f0 + text_effect * 1[velocity > 1] * sentiment + noise`` (in units of 1%), horizon 4h
    twice that; ``noise_text``: the text columns shuffled across time (pure noise)."""
    rng = np.random.default_rng(seed)
    n = n_per_symbol * n_symbols
    f = rng.normal(size=(n, 2))
    burst = np.zeros(n)  # bursts of activity: an AR(1) that crosses 1 about a fifth of the time
    for s in range(n_symbols):
        e = rng.normal(size=n_per_symbol)
        v = np.zeros(n_per_symbol)
        for t in range(1, n_per_symbol):
            v[t] = 0.9 * v[t - 1] + np.sqrt(1 - 0.81) * e[t]
        burst[s * n_per_symbol : (s + 1) * n_per_symbol] = v
    sentiment = rng.normal(size=n)
    missing = rng.random(n) < 0.05
    high = burst > 0.85
    base = 0.5 * f[:, 0]
    text = text_effect * high * sentiment
    noise = rng.normal(size=(n, 2))
    y1 = 0.01 * (base + text + noise[:, 0])
    y4 = 0.01 * (2 * base + 2 * text + 2 * noise[:, 1])
    sentiment_obs = np.where(missing, np.nan, sentiment)
    text_cols = np.column_stack([burst, sentiment_obs, missing.astype(float)])
    if noise_text:
        text_cols = text_cols[rng.permutation(n)]
    X = np.column_stack([f, text_cols]).astype(np.float32)
    times = pd.date_range("2024-01-01", periods=n_per_symbol, freq="1h", tz="UTC")
    symbols = [f"S{i}" for i in range(n_symbols)]
    keys = pd.DataFrame({"symbol": np.repeat(symbols, n_per_symbol), "timestamp": np.tile(times, n_symbols)})
    t0 = keys["timestamp"].to_numpy(dtype="datetime64[ns]")
    y_ret = np.column_stack([y1, y4])
    vol = np.column_stack([np.full(n, 0.01), np.full(n, 0.02)]) * np.abs(rng.normal(1, 0.1, size=(n, 1)))
    names = ["f0", "f1", *TEXT_FEATURES]
    return PanelData(
        keys=keys,
        X=X,
        feature_names=names,
        feature_modalities={"f0": "price", "f1": "price", **{c: "text" for c in TEXT_FEATURES}},
        horizons=list(HORIZONS),
        y_ret=y_ret,
        y_dir=(y_ret > 0).astype(float),
        y_vol=vol,
        t0=t0,
        t1=t0 + np.timedelta64(4, "h"),
        symbol_codes=np.repeat(np.arange(n_symbols), n_per_symbol),
        symbols=symbols,
    )


def split_in_time(data: PanelData, share: float = 0.7, gap_hours: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): the first ``share`` of the times, then the rest after a gap."""
    times = np.unique(data.t0)
    cut = times[int(len(times) * share)]
    train = np.flatnonzero(data.t0 < cut - np.timedelta64(gap_hours, "h"))
    test = np.flatnonzero(data.t0 >= cut)
    return train, test


def rank_ic(pred: np.ndarray, y: np.ndarray, times: np.ndarray) -> float:
    """Mean cross-sectional Spearman correlation of ``pred`` with ``y`` (1-D arrays) per time."""
    frame = pd.DataFrame({"t": times, "p": pred, "y": y})
    ics = [g["p"].rank().corr(g["y"].rank()) for _, g in frame.groupby("t") if len(g) > 2]
    return float(np.nanmean(ics))
