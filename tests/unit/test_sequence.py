"""Sequence backbones (quantml.models.sequence): windows, normaliser, heads, every backbone.

PanelData is built by hand: random features with a planted signal on a lagged feature.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantml.contracts import FORECAST_FIELDS, QuantmlInputError
from quantml.models.base import PanelData
from quantml.models.sequence import BACKBONES, TFTForecaster
from quantml.models.sequence.heads import LossWeights, MultiHorizonHead, multi_horizon_loss
from quantml.models.sequence.windows import ChunkedBatchSampler, SymbolNormalizer, TargetScaler, WindowDataset

HORIZONS = ["1d", "5d"]
N_BARS = 160
LOOKBACK = 12
# tiny nets, a few dozen steps: every backbone trains in about a second
FAST = dict(
    lookback=LOOKBACK,
    hidden_size=16,
    batch_size=64,
    max_epochs=6,
    limit_train_batches=5,
    num_threads=1,
    symbol_dim=4,
    predict_batch_size=256,
)
ARCH = {
    "patchtst": dict(patch_len=4, stride=4, d_patch=8, n_heads=2, n_layers=1),
    "itransformer": dict(n_heads=2, n_layers=1),
    "tsmixer": dict(ff_size=16),
    "tft": dict(hidden_continuous_size=4, n_heads=2, batch_chunk=8),
}


def toy_panel(
    n_symbols=3, n_bars=N_BARS, n_features=5, seed=0, noise=0.5, horizons=HORIZONS, symbols=None
) -> PanelData:
    """Features N(0,1) (f2 NaN for the first 3 bars of each symbol, the last one a calendar
    feature known in advance); y_ret[:, j] = (j+1) * 0.01 * (0.6 f0[t] + 0.4 f1[t-2] + noise)."""
    rng = np.random.default_rng(seed)
    n = n_symbols * n_bars
    X = rng.standard_normal((n, n_features)).astype(np.float32)
    codes = np.repeat(np.arange(n_symbols), n_bars)
    X[:, -1] = np.tile((np.arange(n_bars) % 7) / 6.0, n_symbols)
    lag2 = np.r_[np.zeros(2, np.float32), X[:-2, 1]]
    signal = 0.6 * X[:, 0] + 0.4 * lag2
    y = np.stack([(j + 1) * 0.01 * (signal + noise * rng.standard_normal(n)) for j in range(len(horizons))], 1)
    symbols = symbols or [f"S{i}" for i in range(n_symbols)]
    for s in range(n_symbols):
        X[s * n_bars : s * n_bars + 3, 2] = np.nan
        y[(s + 1) * n_bars - 5 : (s + 1) * n_bars] = np.nan  # label runs past the data
    ts = pd.date_range("2020-01-01", periods=n_bars, freq="D", tz="UTC")
    keys = pd.DataFrame({"symbol": np.asarray(symbols)[codes], "timestamp": np.tile(ts, n_symbols)})
    names = [f"f{i}" for i in range(n_features - 1)] + ["calendar_dow"]
    t0 = keys["timestamp"].to_numpy(dtype="datetime64[ns]")
    return PanelData(
        keys=keys,
        X=X,
        feature_names=names,
        feature_modalities={**{f: "price" for f in names}, "calendar_dow": "calendar"},
        horizons=list(horizons),
        y_ret=y,
        y_dir=np.where(np.isfinite(y), (y > 0) * 1.0, np.nan),
        y_vol=np.abs(y) + 0.005,
        t0=t0,
        t1=t0,
        symbol_codes=codes.astype(np.int64),
        symbols=list(symbols),
        known_future=["calendar_dow"],
    )


def split_rows(n_symbols=3, n_bars=N_BARS):
    """Per symbol: train = first 60%, valid = next 15% (after a gap), test = the rest."""
    tr, va, te = [], [], []
    for s in range(n_symbols):
        o = s * n_bars
        tr.append(np.arange(o, o + int(0.6 * n_bars)))
        va.append(np.arange(o + int(0.6 * n_bars) + 5, o + int(0.75 * n_bars)))
        te.append(np.arange(o + int(0.75 * n_bars), o + n_bars))
    return np.concatenate(tr), np.concatenate(va), np.concatenate(te)


def make(name, seed=0, **kw):
    return BACKBONES[name](HORIZONS, seed=seed, **{**FAST, **ARCH.get(name, {}), **kw})


@pytest.fixture(scope="module")
def panel():
    return toy_panel()


@pytest.fixture(scope="module")
def fitted(panel):
    """Every backbone fitted once (train + early-stopping valid) on the toy panel."""
    tr, va, _ = split_rows()
    return {name: make(name).fit(panel.subset(tr), panel.subset(va)) for name in BACKBONES}


# ---- windows -------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4), lookback=st.integers(1, 6))
def test_window_ends_at_row_and_stays_in_its_symbol(lengths, lookback):
    n = sum(lengths)
    codes = np.repeat(np.arange(len(lengths)), lengths)
    X = np.arange(n, dtype=np.float32)[:, None] + 1.0
    keys = pd.DataFrame(
        {
            "symbol": [f"S{c}" for c in codes],
            "timestamp": pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), "D"),
        }
    )
    nan = np.full((n, 1), np.nan)
    data = PanelData(
        keys,
        X,
        ["f"],
        {"f": "price"},
        ["1d"],
        nan,
        nan,
        nan,
        keys.timestamp.to_numpy(),
        keys.timestamp.to_numpy(),
        codes.astype(np.int64),
        [f"S{i}" for i in range(len(lengths))],
    )
    norm = SymbolNormalizer(clip=1e9)
    norm.mean_, norm.std_ = np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)
    norm.symbols_, norm.n_features_ = [], 1  # identity: every symbol "unseen" -> global stats 0/1
    scaler = TargetScaler()
    scaler.symbol_stats_ = np.zeros((1, 2), np.float32)
    ds = WindowDataset(data, np.arange(n), lookback, norm, scaler, targets=False)
    batch = ds.__getitems__(np.arange(n))
    x, mask = batch["x"][..., 0].numpy(), batch["mask"].numpy()
    for r in range(n):
        start = data.segment_start[r]
        expected = X[max(start, r - lookback + 1) : r + 1, 0]
        assert x[r, -1] == X[r, 0]  # the window ends at r
        assert np.array_equal(x[r][mask[r]], expected)  # and covers exactly the symbol's past
        assert (x[r][~mask[r]] == 0).all() and mask[r].sum() == len(expected)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), batch=st.integers(1, 16), chunk=st.integers(1, 20), seed=st.integers(0, 3))
def test_chunked_sampler_visits_every_row_once_in_consecutive_chunks(n, batch, chunk, seed):
    def epochs(s):
        sampler = ChunkedBatchSampler(n, batch, chunk, torch.Generator().manual_seed(s), drop_last=False)
        return [list(sampler) for _ in range(2)]

    first = epochs(seed)
    assert first == epochs(seed)  # repeatable
    for batches in first:
        assert sorted(sum(batches, [])) == list(range(n))  # each row once per epoch
        assert all(len(b) == batch for b in batches[:-1])
        if chunk > 1:  # runs of consecutive positions of at least `chunk` (except at the edges)
            flat = np.array(sum(batches, []))
            breaks = np.flatnonzero(np.diff(flat) != 1)
            assert len(breaks) <= -(-n // min(chunk, batch)) + 1


def test_batch_shares_steps_of_overlapping_windows_and_drops_symbols_reproducibly(panel):
    tr, _, _ = split_rows()
    norm = SymbolNormalizer().fit(panel, tr)
    scaler = TargetScaler().fit(panel, tr, norm)
    ds = WindowDataset(panel, tr, LOOKBACK, norm, scaler, symbol_dropout=0.3, rng=np.random.default_rng(1))
    b = ds.__getitems__(np.arange(40))  # 40 consecutive rows of S0
    assert torch.equal(b["x"], b["xu"][b["inv"]])
    assert len(b["xu"]) < 40 * LOOKBACK / 4  # shared steps, not B * L
    dropped = (b["sym"] == 0).numpy()
    assert 0 < dropped.sum() < 40 and (b["static"][dropped] == 0).all()
    again = WindowDataset(panel, tr, LOOKBACK, norm, scaler, symbol_dropout=0.3, rng=np.random.default_rng(1))
    assert torch.equal(again.__getitems__(np.arange(40))["sym"], b["sym"])
    plain = WindowDataset(panel, tr, LOOKBACK, norm, scaler).__getitems__(np.arange(40))
    assert (plain["sym"] == 1).all()  # no dropout outside training


def test_tft_forecast_of_a_row_does_not_depend_on_its_batch(fitted, panel):
    m = fitted["tft"]
    r = N_BARS + 60
    alone = m.predict(panel.subset(np.array([r])))
    crowded = m.predict(panel.subset(np.arange(r - 20, r + 20)))  # overlapping windows share steps
    for f in FORECAST_FIELDS:
        np.testing.assert_allclose(getattr(crowded, f)[20], getattr(alone, f)[0], rtol=1e-5, atol=1e-7)


def test_normaliser_uses_training_rows_only(panel):
    tr, va, te = split_rows()
    norm = SymbolNormalizer().fit(panel, tr)
    for s in range(3):
        rows = tr[panel.symbol_codes[tr] == s]
        np.testing.assert_allclose(norm.mean_[1 + s], np.nanmean(panel.X[rows], 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(norm.std_[1 + s], np.nanstd(panel.X[rows], 0), rtol=1e-4)
    np.testing.assert_allclose(norm.mean_[0], np.nanmean(panel.X[tr], 0), rtol=1e-5, atol=1e-6)
    # wrecking every non-training row changes nothing
    other = toy_panel()
    outside = np.setdiff1d(np.arange(other.n_rows), tr)
    other.X[outside] = 1e6
    again = SymbolNormalizer().fit(other, tr)
    np.testing.assert_array_equal(norm.mean_, again.mean_)
    np.testing.assert_array_equal(norm.std_, again.std_)
    # a model stores it: scaler and normaliser of a fit see the training rows only
    m = make("mlp", max_epochs=1, limit_train_batches=1).fit(other.subset(tr))
    np.testing.assert_array_equal(m.normalizer_.mean_, norm.mean_)
    np.testing.assert_allclose(m.scaler_.ret_scale_, np.nanstd(panel.y_ret[tr], 0))


def test_unseen_symbol_uses_global_statistics(fitted, panel):
    m = fitted["lstm"]
    new = toy_panel(symbols=["S0", "NEW", "S2"])
    ds = WindowDataset(new, np.arange(new.n_rows), LOOKBACK, m.normalizer_, m.scaler_, targets=False)
    assert list(ds._sym_of_code) == [1, 0, 3]
    fc = m.predict(new.subset(np.arange(new.n_rows)))
    assert np.isfinite(fc.expected_return).all()
    # the known symbols keep their forecasts; the new one gets the global-statistics path
    base = m.predict(panel.subset(np.arange(panel.n_rows)))
    s0 = np.arange(N_BARS)
    np.testing.assert_allclose(fc.q50[s0], base.q50[s0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(fc.q50[N_BARS : 2 * N_BARS], base.q50[N_BARS : 2 * N_BARS])


# ---- heads and loss ------------------------------------------------------------------------
def test_quantile_heads_never_cross_even_with_extreme_weights():
    torch.manual_seed(0)
    head = MultiHorizonHead(8, 3)
    with torch.no_grad():
        head.weight.mul_(50)
    out = head(torch.randn(500, 3, 8) * 10)
    assert (out["q10"] <= out["q50"]).all() and (out["q50"] <= out["q90"]).all()
    assert (out["vol"] > 0).all()


def test_loss_ignores_missing_targets_and_penalises_collapse():
    torch.manual_seed(0)
    y = torch.randn(64, 2)
    batch = {"y_ret": y.clone(), "y_dir": (y > 0).float(), "y_logvol": torch.zeros(64, 2)}
    flat = {k: torch.zeros(64, 2) for k in ("mean", "q10", "q50", "q90", "logit")}
    flat["vol"] = torch.ones(64, 2)
    w = LossWeights(spread=1.0)
    loss_flat, parts = multi_horizon_loss(flat, batch, w)
    assert parts["spread"].item() == pytest.approx(1.0)  # zero spread: full penalty
    spread_out = {**flat, "mean": y.clone(), "q50": y.clone()}
    _, parts2 = multi_horizon_loss(spread_out, batch, w)
    assert parts2["spread"].item() == pytest.approx(0.0, abs=1e-6)
    batch_nan = {k: v.clone() for k, v in batch.items()}
    batch_nan["y_ret"][:32] = float("nan")
    batch_nan["y_dir"][:32] = float("nan")
    loss_nan, parts_nan = multi_horizon_loss(flat, batch_nan, LossWeights())
    assert torch.isfinite(loss_nan)
    expected_mse = (y[32:] ** 2).mean()
    assert parts_nan["mse"].item() == pytest.approx(expected_mse.item(), rel=1e-5)


# ---- every backbone ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_overfits_a_tiny_dataset(name):
    data = toy_panel(n_symbols=2, n_bars=40, noise=0.0)
    rows = np.arange(data.n_rows)
    m = make(name, dropout=0.0, symbol_dropout=0.0, batch_size=80, lr=1e-2, max_epochs=60, limit_train_batches=None)
    m.fit(data.subset(rows))
    first, last = m.history_[0]["train_loss"], m.history_[-1]["train_loss"]
    assert last < 0.5 * first, f"{name}: train loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("name", list(BACKBONES))
def test_forecast_shapes_ranges_and_no_crossing(fitted, panel, name):
    _, _, te = split_rows()
    fc = fitted[name].predict(panel.subset(te))
    for f in FORECAST_FIELDS:
        arr = getattr(fc, f)
        assert arr.shape == (len(te), 2) and np.isfinite(arr).all(), f
    assert (fc.q10 <= fc.q50).all() and (fc.q50 <= fc.q90).all()
    assert ((fc.prob_up > 0) & (fc.prob_up < 1)).all() and (fc.vol_forecast > 0).all()
    assert fitted[name].predict(panel.subset(te[:0])).expected_return.shape == (0, 2)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_prediction_for_row_r_ignores_every_later_row(fitted, panel, name):
    m = fitted[name]
    r = np.array([N_BARS + 100, 2 * N_BARS + 20, 30])  # rows in three symbols
    before = m.predict(panel.subset(r))
    wrecked = toy_panel()
    for row in r:
        later = np.arange(row + 1, wrecked.n_rows)
        wrecked.X[later] = np.random.default_rng(row).normal(0, 1e3, (len(later), wrecked.X.shape[1]))
        after = m.predict(wrecked.subset(np.array([row])))
        idx = list(r).index(row)
        for f in FORECAST_FIELDS:
            np.testing.assert_allclose(
                getattr(after, f)[0],
                getattr(before, f)[idx],
                rtol=1e-5,
                atol=1e-7,
                err_msg=f"{name}: {f} of row {row} changed when later rows changed",
            )
        wrecked = toy_panel()
    # and the past does matter (the check above is not vacuous)
    moved = toy_panel()
    moved.X[r[0] - 3 : r[0] + 1] += 3.0
    assert not np.allclose(m.predict(moved.subset(r[:1])).expected_return, before.expected_return[:1])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_pickle_round_trip_predicts_identically(fitted, panel, name):
    _, _, te = split_rows()
    m = fitted[name]
    clone = pickle.loads(pickle.dumps(m))
    assert not hasattr(clone, "trainer") and "net_state_" not in clone.__dict__
    a, b = m.predict(panel.subset(te)), clone.predict(panel.subset(te))
    for f in FORECAST_FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_seed_makes_training_repeatable(panel):
    tr, va, te = split_rows()
    fits = [make("lstm", seed=s).fit(panel.subset(tr), panel.subset(va)).predict(panel.subset(te)) for s in (3, 3, 4)]
    np.testing.assert_array_equal(fits[0].expected_return, fits[1].expected_return)
    np.testing.assert_array_equal(fits[0].q90, fits[1].q90)
    assert not np.allclose(fits[0].expected_return, fits[2].expected_return)


def test_early_stopping_restores_the_best_epoch(panel):
    tr, va, _ = split_rows()
    m = make("mlp", max_epochs=15, patience=2, lr=3e-2).fit(panel.subset(tr), panel.subset(va))
    val = [h["val_loss"] for h in m.history_]
    assert m.best_epoch_ == int(np.argmin(val))
    assert len(val) <= 15
    tr_only = make("mlp", max_epochs=2).fit(panel.subset(tr))
    assert len(tr_only.history_) == 2 and np.isnan(tr_only.history_[0]["val_loss"])


def test_capacity_is_the_restored_epoch_and_a_fixed_capacity_ignores_validation(panel):
    tr, va, te = split_rows()
    m = make("mlp", max_epochs=8, patience=2, lr=3e-2).fit(panel.subset(tr), panel.subset(va))
    assert m.capacity_ == {"epochs": m.best_epoch_ + 1}
    fixed = m.with_capacity({"epochs": 3})
    assert not hasattr(fixed, "net_") and m.fixed_capacity is None  # an unfitted copy; m untouched
    fixed.fit(panel.subset(tr), panel.subset(va))  # valid given, yet no early stopping, no val loss
    assert len(fixed.history_) == 3 and np.isnan(fixed.history_[-1]["val_loss"])
    assert fixed.capacity_ == {"epochs": 3}
    plain = make("mlp", max_epochs=3, patience=2, lr=3e-2).fit(panel.subset(tr))
    np.testing.assert_allclose(
        plain.predict(panel.subset(te)).expected_return, fixed.predict(panel.subset(te)).expected_return, rtol=1e-5
    )


def test_learns_the_planted_signal(fitted, panel):
    _, _, te = split_rows()
    m = make("lstm", max_epochs=25, limit_train_batches=None, patience=5)
    tr, va, _ = split_rows()
    m.fit(panel.subset(tr), panel.subset(va))
    fc = m.predict(panel.subset(te))
    y = panel.y_ret[te, 0]
    ok = np.isfinite(y)
    ic = np.corrcoef(fc.expected_return[ok, 0], y[ok])[0, 1]
    assert ic > 0.3, f"out-of-sample correlation {ic:.2f}"
    hit = np.mean((fc.prob_up[ok, 0] > 0.5) == (y[ok] > 0))
    assert hit > 0.6


def test_spread_penalty_widens_forecasts(record_property):
    """Weak signal under heavy noise: the MSE forecast hugs the mean; the spread term widens it."""
    data = toy_panel(n_symbols=3, n_bars=300, noise=2.5, seed=7)
    rows = np.concatenate([np.arange(s * 300, s * 300 + 240) for s in range(3)])
    test = np.concatenate([np.arange(s * 300 + 240, s * 300 + 295) for s in range(3)])
    ratios = {}
    for w in (0.0, 2.0):
        m = make("mlp", spread_penalty=w, max_epochs=10, limit_train_batches=None, seed=1)
        fc = m.fit(data.subset(rows)).predict(data.subset(test))
        ratios[w] = float(np.std(fc.expected_return[:, 0]) / np.nanstd(data.y_ret[test, 0]))
    record_property("std_ratio_without_penalty", ratios[0.0])
    record_property("std_ratio_with_penalty", ratios[2.0])
    print(f"predicted/realised std ratio: without {ratios[0.0]:.3f}, with spread_penalty=2: {ratios[2.0]:.3f}")
    assert ratios[2.0] > ratios[0.0] * 1.3


# ---- TFT interpretation --------------------------------------------------------------------
def test_tft_variable_selection_and_attention_summaries(fitted):
    m: TFTForecaster = fitted["tft"]
    imp = m.feature_importance()
    assert set(imp.index) == set(m.feature_names_) and imp.sum() == pytest.approx(1.0, abs=1e-4)
    interp = m.interpretation_
    assert interp["static"].sum() == pytest.approx(1.0, abs=1e-4)
    assert list(interp["decoder"].columns) == ["calendar_dow", "horizon_step"]
    np.testing.assert_allclose(interp["decoder"].sum(1), 1.0, atol=1e-4)
    att = interp["attention"]
    assert att.shape == (2, LOOKBACK + 2)
    np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-4)
    assert att[0, -1] == 0.0  # horizon 1 cannot attend to horizon 2's step
    figs = m.figures()
    assert {"tft_variable_importance.png", "tft_attention.png", "tft_loss_curve.png"} <= set(figs)
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def test_tft_attention_ignores_left_padding(fitted, panel):
    m = fitted["tft"]
    row = np.array([N_BARS + 3])  # 4 real steps, the rest of the window is padding
    ds = WindowDataset(panel, row, LOOKBACK, m.normalizer_, m.scaler_, targets=False)
    batch = ds.__getitems__([0])
    with torch.no_grad():
        out = m.net_(batch)
    att = out["attention"][0]  # [heads, H, L+H]
    assert torch.all(att[..., : LOOKBACK - 4] == 0)
    assert torch.all(att[..., LOOKBACK - 4 : LOOKBACK].sum(-1) > 0)


def test_non_tft_backbones_have_a_loss_curve(fitted):
    figs = fitted["gru"].figures()
    assert list(figs) == ["gru_loss_curve.png"]
    import matplotlib.pyplot as plt

    plt.close(figs["gru_loss_curve.png"])


# ---- inputs --------------------------------------------------------------------------------
def test_bad_settings_and_mismatched_panels_are_refused(fitted, panel):
    with pytest.raises(QuantmlInputError, match="lookback"):
        BACKBONES["mlp"](HORIZONS, lookback=0)
    with pytest.raises(QuantmlInputError, match="patch_len"):
        BACKBONES["patchtst"](HORIZONS, lookback=4, patch_len=8)
    with pytest.raises(QuantmlInputError, match="n_heads"):
        BACKBONES["tft"](HORIZONS, hidden_size=30, n_heads=4)
    with pytest.raises(QuantmlInputError, match="not fitted"):
        BACKBONES["gru"](HORIZONS).predict(panel.subset(np.arange(3)))
    with pytest.raises(QuantmlInputError, match="horizon"):
        fitted["mlp"].predict(toy_panel(horizons=["1d"]).subset(np.arange(3)))
    with pytest.raises(QuantmlInputError, match="feature"):
        fitted["mlp"].predict(toy_panel(n_features=6).subset(np.arange(3)))
    unlabelled = toy_panel()
    unlabelled.y_ret[:] = np.nan
    with pytest.raises(QuantmlInputError, match="no labelled rows"):
        make("mlp").fit(unlabelled.subset(np.arange(50)))


def test_hydra_configs_instantiate_every_backbone(compose_cfg):
    from hydra.utils import instantiate

    for name, cls in BACKBONES.items():
        cfg = compose_cfg([f"backbone={name}"])
        model = instantiate(cfg.backbone, horizons=["1d", "7d"], seed=cfg.seed)
        assert type(model) is cls and model.seed == cfg.seed and model.horizons == ["1d", "7d"]
        assert model.lookback == cfg.backbone.lookback and model.num_threads == 1


# ---- MLflow pyfunc: the pipeline pickles the forecaster into a pyfunc artifact ---------------
import mlflow.pyfunc  # noqa: E402


class _ForecasterPyfunc(mlflow.pyfunc.PythonModel):
    """Like quantml.tracking.pyfunc: the fitted forecaster travels as a pickle artifact."""

    def load_context(self, context):
        with open(context.artifacts["bundle"], "rb") as fh:
            self.bundle = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = model_input["row"].to_numpy()
        fc = self.bundle["forecaster"].predict(self.bundle["panel"].subset(rows))
        return fc.to_frame(self.bundle["panel"].keys.iloc[rows].reset_index(drop=True))


def test_mlflow_pyfunc_save_load_predicts_identically(fitted, panel, tmp_path):
    _, _, te = split_rows()
    m = fitted["tft"]
    bundle = tmp_path / "bundle.pkl"
    bundle.write_bytes(pickle.dumps({"forecaster": m, "panel": panel}))
    mlflow.pyfunc.save_model(
        str(tmp_path / "model"),
        python_model=_ForecasterPyfunc(),
        artifacts={"bundle": str(bundle)},
        pip_requirements=["torch", "lightning"],
    )
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    got = loaded.predict(pd.DataFrame({"row": te}))
    want = m.predict(panel.subset(te)).to_frame(panel.keys.iloc[te].reset_index(drop=True))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_exact=True)


def test_tft_inference_in_slices_matches_one_pass(fitted, panel, monkeypatch):
    import quantml.models.sequence.tft as tft_module

    rows = np.arange(0, panel.n_rows, 7)  # scattered rows: few shared steps
    whole = fitted["tft"].predict(panel.subset(rows))
    monkeypatch.setattr(tft_module, "INFERENCE_SLICE", 16)
    sliced = fitted["tft"].predict(panel.subset(rows))
    for f in FORECAST_FIELDS:
        np.testing.assert_allclose(getattr(sliced, f), getattr(whole, f), rtol=1e-5, atol=1e-7)
