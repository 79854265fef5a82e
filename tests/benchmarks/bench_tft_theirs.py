"""pytorch-forecasting side of the TFT benchmark; run by ``test_bench_tft.py`` with the
interpreter of the separate benchmark venv (``QUANTML_BENCH_VENV``), never quantml's.

``python bench_tft_theirs.py {dataset|train} PANEL.npz`` prints one ``BENCH_RESULT {json}`` line.
Same panel, windows (encoder 96, one step ahead), sizes, batches and threads as the quantml side.
"""

from __future__ import annotations

import argparse
import gc
import warnings

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


def frame(arrays):
    import pandas as pd

    n_symbols = int(arrays["n_symbols"])
    df = pd.DataFrame(arrays["X"], columns=OBSERVED + KNOWN)
    df["symbol"] = pd.Categorical.from_codes(arrays["code"], categories=[f"SYM{i:02d}" for i in range(n_symbols)])
    df["time_idx"] = arrays["time_idx"].astype(np.int64)
    return df


def datasets(df, n_bars: int):
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import GroupNormalizer

    _, cutoff = split_bounds(n_bars)
    L = SETTINGS["lookback"]
    training = TimeSeriesDataSet(
        df[df.time_idx < cutoff],
        time_idx="time_idx",
        target="ret",
        group_ids=["symbol"],
        max_encoder_length=L,
        min_encoder_length=L,
        max_prediction_length=1,
        min_prediction_length=1,
        static_categoricals=["symbol"],
        time_varying_known_reals=list(KNOWN),
        time_varying_unknown_reals=list(OBSERVED),
        target_normalizer=GroupNormalizer(groups=["symbol"]),
        add_relative_time_idx=True,
        add_target_scales=True,
        add_encoder_length=False,
    )
    validation = TimeSeriesDataSet.from_dataset(training, df, min_prediction_idx=cutoff, stop_randomization=True)
    return training, validation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["dataset", "train"])
    ap.add_argument("panel")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import lightning.pytorch as pl
    import pytorch_forecasting
    import torch
    from pytorch_forecasting import TemporalFusionTransformer
    from pytorch_forecasting.metrics import QuantileLoss

    torch.set_num_threads(SETTINGS["threads"])
    rss_imports = current_rss_mb()
    with np.load(args.panel) as f:
        arrays = {k: f[k] for k in f.files}
    n_symbols, n_bars = int(arrays["n_symbols"]), int(arrays["n_bars"])
    result = {
        "side": "pytorch-forecasting",
        "version": pytorch_forecasting.__version__,
        "mode": args.mode,
        "rows": n_symbols * n_bars,
        "rss_after_imports_mb": round(rss_imports, 1),
    }
    s = SETTINGS
    with Timer() as t_build:
        df = frame(arrays)
        training, validation = datasets(df, n_bars)
        train_dl = training.to_dataloader(train=True, batch_size=s["batch_size"], num_workers=0)
        valid_dl = validation.to_dataloader(train=False, batch_size=1024, num_workers=0)
        if args.mode == "dataset":
            x, _ = next(iter(train_dl))
            next(iter(valid_dl))
            result["batch_encoder_cont_shape"] = list(x["encoder_cont"].shape)
    result.update(
        construct_seconds=round(t_build.seconds, 2), n_train_samples=len(training), n_valid_samples=len(validation)
    )
    del arrays
    gc.collect()
    if args.mode == "dataset":
        emit(result)
        return

    pl.seed_everything(0, verbose=False)
    tft = TemporalFusionTransformer.from_dataset(
        training,
        hidden_size=s["hidden_size"],
        attention_head_size=s["n_heads"],
        dropout=s["dropout"],
        hidden_continuous_size=s["hidden_continuous_size"],
        loss=QuantileLoss(quantiles=s["quantiles"]),
        learning_rate=s["lr"],
        log_interval=-1,
        optimizer="adam",
        reduce_on_plateau_patience=1000,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        max_steps=s["n_batches"],
        limit_train_batches=s["n_batches"],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    rss_before_fit = current_rss_mb()
    with Timer() as t_fit:
        trainer.fit(tft, train_dataloaders=train_dl)
    result.update(
        fit_seconds=round(t_fit.seconds, 2),
        samples_per_second=round(s["n_batches"] * s["batch_size"] / t_fit.seconds, 1),
        rss_before_fit_mb=round(rss_before_fit, 1),
        peak_rss_after_fit_mb=round(peak_rss_mb(), 1),
        optimizer_steps=int(trainer.global_step),
    )

    # validation pinball on exactly the quantml side's validation rows (symbol, forecast row = target - 1)
    keep = {(int(r // n_bars), int(r % n_bars)) for r in valid_rows(n_symbols, n_bars)}
    classes = training.get_parameters()["categorical_encoders"]["__group_id__symbol"].classes_
    to_code = np.array([int(name[3:]) for name, _ in sorted(classes.items(), key=lambda kv: kv[1])])
    fwd = np.load(args.panel)["fwd_ret"]
    preds, ys, rows = [], [], []
    tft.eval()
    with Timer() as t_pred, torch.inference_mode():
        for x, (y, _) in valid_dl:
            q = tft(x)["prediction"][:, 0, :].double().numpy()
            sym = to_code[x["groups"][:, 0].numpy()]
            t = x["decoder_time_idx"][:, 0].numpy() - 1
            sel = np.array([(int(a), int(b)) in keep for a, b in zip(sym, t)])
            preds.append(q[sel])
            ys.append(y[:, 0].double().numpy()[sel])
            rows.append((sym * n_bars + t)[sel])
    q, y, rows = np.concatenate(preds), np.concatenate(ys), np.concatenate(rows)
    result["target_alignment_max_abs_diff"] = float(np.max(np.abs(fwd[rows] - y)))
    result.update(
        valid_pinball=pinball(q, y),
        predict_seconds=round(t_pred.seconds, 2),
        n_valid_scored=len(y),
        valid_quantile_crossings=int(np.sum(np.diff(q, axis=1) < 0)),
        valid_coverage_80=float(np.mean((y >= q[:, 0]) & (y <= q[:, 2]))),
    )
    emit(result)


if __name__ == "__main__":
    main()
