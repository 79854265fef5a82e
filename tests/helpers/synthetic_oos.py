"""A seeded synthetic out-of-sample prediction frame and source run, for tests and demos.

The frame follows the ``predictions/oos_predictions.parquet`` contract: a latent alpha
``a[t, n]`` (AR(1)) drives next-bar log returns ``r[t, n] = beta * a + factor + noise``;
the forecasts are the horizon sums of ``beta * a`` seen through extra noise, so there is
a modest, real edge for thresholds to find. Fold ``k`` covers the ``k``-th contiguous
block of bars (walk-forward test blocks); ``path`` is 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from quantml.contracts import SYMBOL, TIMESTAMP
from quantml.market.execution import CostModel
from quantml.signals.core import SignalConfig, compute_signals

HORIZON_BARS = {"1h": 1, "4h": 4, "1d": 1, "5d": 5, "7d": 7}


def synthetic_oos_frame(
    n_symbols: int = 3,
    n_bars: int = 400,
    horizons: tuple[str, ...] = ("1d", "5d"),
    n_folds: int = 5,
    seed: int = 0,
    freq: str = "1D",
    beta: float = 0.002,
    noise: float = 0.012,
    duplicate_symbol: bool = False,
    cost: float = 0.0008,
    start: str = "2023-01-02",
) -> pd.DataFrame:
    """One row per (symbol, timestamp, horizon) with every contract column.

    ``duplicate_symbol``: the last symbol's returns and forecasts copy the first one's
    (plus a little noise), to exercise correlation de-duplication.
    """
    rng = np.random.default_rng(seed)
    T, N = n_bars, n_symbols
    alpha = np.zeros((T, N))
    shocks = rng.standard_normal((T, N))
    for t in range(1, T):
        alpha[t] = 0.9 * alpha[t - 1] + np.sqrt(1 - 0.81) * shocks[t]
    factor = rng.standard_normal(T)[:, None] * noise * 0.6
    r = beta * alpha + factor + rng.standard_normal((T, N)) * noise * 0.8  # r[t] = log return t -> t+1
    seen = alpha + 0.8 * rng.standard_normal((T, N))  # noisy view of alpha
    if duplicate_symbol and N > 1:
        r[:, -1] = r[:, 0] + rng.standard_normal(T) * noise * 0.05
        seen[:, -1] = seen[:, 0] + 0.05 * rng.standard_normal(T)
    sigma = float(np.std(r))
    timestamps = pd.date_range(start, periods=T, freq=freq, tz="UTC")
    symbols = [f"S{i}" for i in range(N)]
    fold = np.minimum(np.arange(T) * n_folds // T, n_folds - 1)
    frames = []
    for h in horizons:
        k = HORIZON_BARS.get(h, 1)
        # forward k-bar log return from bar t: r[t] + ... + r[t+k-1]; NaN past the end
        csum = np.vstack([np.zeros((1, N)), np.cumsum(r, axis=0)])
        fwd = np.full((T, N), np.nan)
        fwd[: T - k + 1] = csum[k:] - csum[: T - k + 1]
        er = beta * seen * k * 0.5
        vol_f = np.full((T, N), sigma * np.sqrt(k))
        z = np.full((T, N), norm.ppf(0.9))
        ret_next = r.copy()
        ret_next[-1] = np.nan
        part = pd.DataFrame(
            {
                SYMBOL: np.tile(symbols, T),
                TIMESTAMP: np.repeat(timestamps, N),
                "horizon": h,
                "expected_return": er.ravel(),
                "q10": (er - z * vol_f).ravel(),
                "q50": er.ravel(),
                "q90": (er + z * vol_f).ravel(),
                "prob_up": norm.cdf(er / vol_f).ravel(),
                "prob_up_raw": norm.cdf(er / vol_f).ravel(),
                "vol_forecast": vol_f.ravel(),
                "ret": fwd.ravel(),
                "vol": np.full(T * N, sigma),
                "ret_next_bar": ret_next.ravel(),
                "fold": np.repeat(fold, N),
                "path": 0,
            }
        )
        frames.append(part)
    frame = pd.concat(frames, ignore_index=True)
    frame["ret_after_cost"] = np.sign(frame["ret"]) * np.maximum(frame["ret"].abs() - cost, 0.0)
    frame["dir"] = (frame["ret"] > 0).astype(float)
    frame = compute_signals(frame, SignalConfig(cost=cost))
    return frame.sort_values(["horizon", SYMBOL, TIMESTAMP], kind="stable").reset_index(drop=True)


def log_synthetic_source_run(
    tracking_uri: str,
    frame: pd.DataFrame | None = None,
    experiment: str = "quantml",
    costs: CostModel | None = None,
    validation: str = "walk_forward",
    log_model: bool = False,
    **frame_kwargs,
) -> str:
    """Create a quantml-train-like parent run through the run writer (fold child runs, OOS parquet,
    a resolved config with ``cost`` and ``signal``); return its id. ``log_model``: also log a stub
    quantml pyfunc (a :class:`ModelBundle` without a forecaster: enough to copy it with tuned
    settings, not to predict)."""
    import tempfile
    from pathlib import Path

    import mlflow

    from quantml.contracts import run_layout as L
    from quantml.tracking.store import ensure_experiment
    from quantml.tracking.writer import RunWriter

    frame = synthetic_oos_frame(**frame_kwargs) if frame is None else frame
    costs = costs or CostModel(fee_bps=2.0, slippage_bps=1.0, impact_bps=1.0)
    client = mlflow.MlflowClient(tracking_uri)
    writer = RunWriter(ensure_experiment(client, experiment), client)
    horizons = list(dict.fromkeys(frame["horizon"]))
    parent = writer.start_parent(
        "synthetic-source",
        horizons=horizons,
        validation=validation,
        commit="synthetic",
        tags={L.TAG_IC_MODE: "time_series", L.TAG_LEAKAGE_AUDIT: "clean"},
    )
    parent.log_resolved_config(
        {
            "cost": costs.to_dict(),
            "signal": {"eps": 1e-6, "threshold": {"default": 0.0}, "min_confidence": {"default": 0.0}},
        }
    )
    for f, part in frame.groupby("fold"):
        child = writer.start_fold(parent, int(f), sorted(set(part["path"])) if "path" in part else [0])
        child.log_params(
            {
                L.PARAM_FOLD_ID: str(f),
                L.PARAM_TEST_START: str(part[TIMESTAMP].min()),
                L.PARAM_TEST_END: str(part[TIMESTAMP].max()),
            }
        )
        child.end("FINISHED")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(L.OOS_ARTIFACT).name
        frame.to_parquet(path, index=False)
        parent.log_artifact(str(path), str(Path(L.OOS_ARTIFACT).parent))
    parent.end("FINISHED")
    if log_model:
        from quantml.bundle import FeatureContract, ModelBundle
        from quantml.registry.store import mlflow_uri_scope
        from quantml.tracking.pyfunc import log_bundle

        contract = FeatureContract(
            input_columns=[TIMESTAMP, SYMBOL, "close"],
            feature_names=[],
            feature_set={},
            drop_modalities=[],
            horizons=horizons,
        )
        stub = ModelBundle(None, None, contract, {"threshold": {"default": 0.0}}, "synthetic")
        with mlflow_uri_scope(tracking_uri):
            log_bundle(stub, parent.run_id)
    return parent.run_id
