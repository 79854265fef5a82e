"""quantml side of the TFT benchmark; run as a subprocess by ``test_bench_tft.py``.

``python bench_tft_ours.py {dataset|train} PANEL.npz [--no-valid]`` prints one
``BENCH_RESULT {json}`` line: timings, samples/s, validation pinball and peak RSS.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
from bench_tft_common import (
    KNOWN,
    OBSERVED,
    SETTINGS,
    Timer,
    current_rss_mb,
    emit,
    peak_rss_mb,
    pinball,
    split_bounds,
    valid_rows,
)


def panel_data(arrays):
    """The benchmark arrays as a quantml PanelData (no copies of X)."""
    import pandas as pd

    from quantml.models.base import PanelData

    n_symbols = int(arrays["n_symbols"])
    code = arrays["code"].astype(np.int64)
    ts = pd.to_datetime(arrays["timestamp"], utc=True)
    symbols = [f"SYM{i:02d}" for i in range(n_symbols)]
    keys = pd.DataFrame({"symbol": pd.Categorical.from_codes(code, categories=symbols), "timestamp": ts})
    fwd = arrays["fwd_ret"][:, None]
    y_dir = np.where(np.isfinite(fwd), (fwd > 0).astype(np.float32), np.float32(np.nan))
    y_vol = np.maximum(np.abs(fwd), np.float32(1e-5))
    t0 = arrays["timestamp"].view("datetime64[ns]")
    names = OBSERVED + KNOWN
    return PanelData(
        keys=keys,
        X=arrays["X"],
        feature_names=names,
        feature_modalities={n: ("calendar" if n in KNOWN else "price") for n in names},
        horizons=["1h"],
        y_ret=fwd,
        y_dir=y_dir,
        y_vol=y_vol,
        t0=t0,
        t1=t0,
        symbol_codes=code,
        symbols=symbols,
        known_future=list(KNOWN),
    )


def train_rows(n_symbols: int, n_bars: int) -> np.ndarray:
    lo, cutoff = split_bounds(n_bars)
    return np.concatenate([s * n_bars + np.arange(lo, cutoff - 1) for s in range(n_symbols)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["dataset", "train"])
    ap.add_argument("panel")
    ap.add_argument("--no-valid", action="store_true")
    ap.add_argument("--batch-chunk", type=int, default=SETTINGS["batch_chunk"])
    args = ap.parse_args()

    import torch

    from quantml.models.sequence import TFTForecaster
    from quantml.models.sequence.windows import SymbolNormalizer, TargetScaler, WindowDataset

    torch.set_num_threads(SETTINGS["threads"])
    rss_imports = current_rss_mb()
    with np.load(args.panel) as f:
        arrays = {k: f[k] for k in f.files}
    n_symbols, n_bars = int(arrays["n_symbols"]), int(arrays["n_bars"])
    result = {
        "side": "quantml",
        "mode": args.mode,
        "batch_chunk": args.batch_chunk,
        "rows": n_symbols * n_bars,
        "rss_after_imports_mb": round(rss_imports, 1),
    }

    with Timer() as t_build:
        data = panel_data(arrays)
        rows = train_rows(n_symbols, n_bars)
        vrows = valid_rows(n_symbols, n_bars)
        if args.mode == "dataset":
            norm = SymbolNormalizer().fit(data, rows)
            scaler = TargetScaler().fit(data, rows, norm)
            train_ds = WindowDataset(data, rows, SETTINGS["lookback"], norm, scaler)
            valid_ds = WindowDataset(data, vrows, SETTINGS["lookback"], norm, scaler)
            batch = train_ds.__getitems__(np.arange(SETTINGS["batch_size"]))
            valid_ds.__getitems__(np.arange(SETTINGS["batch_size"]))
            result["batch_x_shape"] = list(batch["x"].shape)
    result["construct_seconds"] = round(t_build.seconds, 2)
    result["n_train_samples"], result["n_valid_samples"] = len(rows), len(vrows)
    del arrays
    gc.collect()
    if args.mode == "dataset":
        emit(result)
        return

    s = SETTINGS
    model = TFTForecaster(
        ["1h"],
        seed=0,
        lookback=s["lookback"],
        hidden_size=s["hidden_size"],
        n_heads=s["n_heads"],
        hidden_continuous_size=s["hidden_continuous_size"],
        batch_size=s["batch_size"],
        batch_chunk=args.batch_chunk,
        lr=s["lr"],
        dropout=s["dropout"],
        max_epochs=1,
        max_steps=s["n_batches"],
        limit_train_batches=s["n_batches"],
        num_threads=s["threads"],
        accelerator="cpu",
        interpret_rows=512,
        predict_batch_size=1024,
    )
    rss_before_fit = current_rss_mb()
    with Timer() as t_fit:
        model.fit(data.subset(rows))
    result.update(
        fit_seconds=round(t_fit.seconds, 2),
        samples_per_second=round(s["n_batches"] * s["batch_size"] / t_fit.seconds, 1),
        rss_before_fit_mb=round(rss_before_fit, 1),
        peak_rss_after_fit_mb=round(peak_rss_mb(), 1),
        optimizer_steps=model.n_steps_,
    )
    if not args.no_valid:
        with Timer() as t_pred:
            fc = model.predict(data.subset(vrows))
        y = data.y_ret[vrows, 0]
        ok = np.isfinite(y)
        q = np.column_stack([fc.q10[:, 0], fc.q50[:, 0], fc.q90[:, 0]])
        result.update(
            valid_pinball=pinball(q[ok], y[ok]),
            predict_seconds=round(t_pred.seconds, 2),
            valid_quantile_crossings=int(np.sum(np.diff(q, axis=1) < 0)),
            valid_coverage_80=float(np.mean((y[ok] >= q[ok, 0]) & (y[ok] <= q[ok, 2]))),
        )
    emit(result)


if __name__ == "__main__":
    main()
