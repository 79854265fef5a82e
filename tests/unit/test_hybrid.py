"""The three-stage cross-asset hybrid (quantml.models.hybrid) and the lead-lag plant (quantml.data.plants.lead_lag).

Fast tests run on a small prepared synthetic panel with tiny nets; the planted-effect test and the
``-m backbone=tft,hybrid`` sweep are ``slow``.
"""

from __future__ import annotations

import pickle

import matplotlib
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR
from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.data.plants.lead_lag import TRUTH_LEADER, TRUTH_LOADING, TRUTH_TERM, LeadLagPlant
from quantml.data.synthetic import generate_synthetic
from quantml.experiment.prepare import prepare_data
from quantml.models.hybrid import ATTENTION_FIGURE, MODALITY, HybridForecaster
from quantml.models.hybrid.grid import grid_of, window_rows
from quantml.models.sequence import LSTMForecaster

matplotlib.use("Agg")

TEMPORAL_TINY = dict(
    hidden_size=8, max_epochs=2, limit_train_batches=3, lookback=8, batch_size=64, symbol_dim=4, num_threads=1
)
HYBRID_TINY = dict(temporal="lstm", temporal_kwargs=TEMPORAL_TINY, d_model=16, stage1_max_epochs=3, stage1_patience=2)


def prepared(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides)
    GlobalHydra.instance().clear()
    return prepare_data(cfg)


def time_split(prep, shares=(0.6, 0.62, 0.8)):
    """Train / early-stopping / test rows by time (gaps between them)."""
    d, s = prep.data, prep.samples
    times = np.unique(d.t0[s])
    a, b, c = (times[int(x * len(times))] for x in shares)
    return s[d.t0[s] < a], s[(d.t0[s] >= b) & (d.t0[s] < c)], s[d.t0[s] >= c]


@pytest.fixture(scope="module")
def small():
    """4 symbols x 500 1h bars with the lead-lag plant, price features, a 1h and a 4h horizon."""
    prep = prepared(
        [
            "data=synthetic",
            "data.n_symbols=4",
            "data.n_bars=500",
            "data.lead_lag=true",
            "feature_set=price",
            "horizon.horizons=[1h,4h]",
            "seed=1",
        ]
    )
    return prep, time_split(prep)


@pytest.fixture(scope="module")
def fitted(small):
    prep, (tr, va, _) = small
    return HybridForecaster(["1h", "4h"], seed=1, **HYBRID_TINY).fit(prep.data.subset(tr), prep.data.subset(va))


# ---- the lead-lag plant ---------------------------------------------------------------------
def test_lead_lag_off_is_bit_identical_and_on_moves_only_the_followers():
    base = generate_synthetic(freq="1h", n_symbols=4, n_bars=300, seed=5)
    off = generate_synthetic(freq="1h", n_symbols=4, n_bars=300, seed=5, plants={"lead_lag": False})
    on = generate_synthetic(freq="1h", n_symbols=4, n_bars=300, seed=5, plants={"lead_lag": {"leader": "ETH"}})
    pd.testing.assert_frame_equal(base.bars, off.bars)
    for name, table in base.streams.items():
        pd.testing.assert_frame_equal(table, off.streams[name])
    assert TRUTH_LEADER not in base.truth
    symbols = list(dict.fromkeys(base.bars["symbol"]))
    lead = symbols.index("ETH")
    assert on.truth[TRUTH_LEADER][0].tolist() == [1.0 if j == lead else 0.0 for j in range(4)]
    loading = on.truth[TRUTH_LOADING][0]
    assert loading[lead] == 0.0 and np.all(np.abs(np.delete(loading, lead)) >= 0.3 * 0.5)
    assert (np.delete(loading, lead) > 0).any() and (np.delete(loading, lead) < 0).any()  # followers pulled apart
    close = lambda s: s.bars.pivot(index="timestamp", columns="symbol", values="close")[symbols]  # noqa: E731
    np.testing.assert_array_equal(close(on)["ETH"], close(base)["ETH"])  # the leader is untouched
    assert not np.allclose(close(on).drop(columns="ETH"), close(base).drop(columns="ETH"))


def test_lead_lag_term_reads_only_earlier_leader_returns():
    T, N = 50, 3
    rng = np.random.default_rng(0)
    from quantml.data.plants import PlantContext, plant_rng

    ts = pd.date_range("2024-01-01", periods=T, freq="h", tz="UTC")
    sigma = np.full((T, N), 0.01)
    ret = rng.standard_normal((T, N)) * 0.01
    ret[0] = 0.0
    ctx = PlantContext(ts, pd.Timedelta("1h"), ["A", "B", "C"], 0, sigma, 0.2, plant_rng(0, "lead_lag"))
    out = LeadLagPlant(strength=0.5, lag_weights=[1.0]).returns(ctx, ret.copy())
    term = out - ret
    assert np.all(term[0] == 0.0) and np.all(term[:, 0] == 0.0)
    z = ret[:, 0] / 0.01
    expected = ctx.truth[TRUTH_LOADING][0][None, 1:] * 0.01 * np.r_[0.0, z[:-1]][:, None]
    np.testing.assert_allclose(term[:, 1:], expected, atol=1e-15)  # bar t reads the leader's bar t-1
    np.testing.assert_allclose(ctx.truth[TRUTH_TERM], term, atol=1e-15)


@pytest.mark.parametrize(
    "options, match",
    [({"strength": -1}, "strength"), ({"lag_weights": [1, 1, 1, 1]}, "lag_weights"), ({"leader": "NOPE"}, "leader")],
)
def test_lead_lag_refuses_bad_options(options, match):
    with pytest.raises(QuantmlInputError, match=match):
        generate_synthetic(freq="1h", n_symbols=3, n_bars=50, seed=0, plants={"lead_lag": options})


# ---- the hybrid -----------------------------------------------------------------------------
def test_hybrid_shapes_capacity_and_stage_columns(small, fitted):
    prep, (_, _, te) = small
    fc = fitted.predict(prep.data.subset(te))
    assert fc.expected_return.shape == (len(te), 2)
    assert np.isfinite(fc.expected_return).all() and (fc.q10 <= fc.q50).all() and (fc.q50 <= fc.q90).all()
    assert set(fitted.capacity_) == {"stage1_epochs", "epochs"} and min(fitted.capacity_.values()) >= 1
    names = fitted.temporal_.feature_names_
    added = names[len(prep.data.feature_names) :]
    assert added == [f"xa_rel_{i:02d}" for i in range(16)] + ["xa_att_market", "xa_base_1h", "xa_base_4h"]
    out = fitted.stage1_.transform(prep.data, te)
    T, N = len(np.unique(prep.data.t0[te])), 4
    assert out.relation.shape == (T, N, 16) and out.baseline.shape == (T, N, 2) and out.attention.shape == (T, N, N + 1)
    np.testing.assert_allclose(out.attention.sum(axis=2), 1.0, atol=1e-5)  # each asset's attention row sums to 1
    att = fitted.attention_
    assert list(att.columns) == ["market", *fitted.stage1_.assets_] and att.shape == (4, 5)
    assert fitted.attention_span_[2] == T  # the mean is over the predicted rows' timestamps


def test_stage1_features_are_causal_per_timestamp(small, fitted):
    """Stage 1 at time s reads only the snapshot at s: changing every feature after s (and the labels)
    leaves its outputs at s unchanged, and so the stage-1 columns of every window's past steps."""
    prep, (_, _, te) = small
    data = prep.data
    cut = np.unique(data.t0[te])[10]
    before = te[data.t0[te] <= cut]
    changed = pickle.loads(pickle.dumps(data))
    later = changed.t0 > cut
    changed.X[later] = np.random.default_rng(0).standard_normal(changed.X[later].shape).astype(np.float32) * 5
    changed.y_ret[:] = 0.0
    a = fitted.stage1_.transform(data, before)
    b = fitted.stage1_.transform(changed, before)
    np.testing.assert_array_equal(a.relation, b.relation)
    np.testing.assert_array_equal(a.baseline, b.baseline)
    np.testing.assert_array_equal(fitted.predict(data.subset(before)).q50, fitted.predict(changed.subset(before)).q50)


def test_grid_holds_the_whole_cross_section_and_windows_reach_back(small):
    prep, (_, _, te) = small
    data = prep.data
    grid = grid_of(data, te[:3], sorted(data.symbols))
    assert grid.pos.shape == (len(np.unique(data.t0[te[:3]])), 4) and (grid.pos >= 0).all()
    assert (data.t0[grid.pos] == grid.times[:, None]).all()
    rows = window_rows(data, te[:1], 8)
    assert len(rows) == 8 and rows[-1] == te[0] and (data.symbol_codes[rows] == data.symbol_codes[te[0]]).all()


def test_predict_refuses_a_panel_without_every_training_asset(small, fitted):
    prep, (_, _, te) = small
    data = prep.data
    drop = fitted.stage1_.assets_[1]
    keep = np.flatnonzero(data.keys["symbol"].to_numpy() != drop)
    codes, symbols = pd.factorize(data.keys["symbol"].to_numpy()[keep])
    partial = type(data)(
        keys=data.keys.iloc[keep].reset_index(drop=True),
        X=data.X[keep],
        feature_names=data.feature_names,
        feature_modalities=data.feature_modalities,
        horizons=data.horizons,
        y_ret=data.y_ret[keep],
        y_dir=data.y_dir[keep],
        y_vol=data.y_vol[keep],
        t0=data.t0[keep],
        t1=data.t1[keep],
        symbol_codes=codes.astype(np.int64),
        symbols=list(symbols),
        known_future=data.known_future,
    )
    with pytest.raises(QuantmlInputError, match=f"lacks 1 of the 4 assets it was trained on: {drop}"):
        fitted.predict(partial.subset(np.arange(partial.n_rows)[-10:]))


def test_pickle_round_trip_and_seeded_refit_give_the_same_forecasts(small, fitted):
    prep, (tr, va, te) = small
    part = prep.data.subset(te)
    again = pickle.loads(pickle.dumps(fitted)).predict(part)
    np.testing.assert_array_equal(again.q50, fitted.predict(part).q50)
    refit = HybridForecaster(["1h", "4h"], seed=1, **HYBRID_TINY).fit(prep.data.subset(tr), prep.data.subset(va))
    np.testing.assert_allclose(refit.predict(part).q50, fitted.predict(part).q50, rtol=1e-5, atol=1e-9)


def test_fixed_capacity_residual_boost_sectors_and_index_symbol(small):
    prep, (tr, va, te) = small
    symbols = sorted(prep.data.symbols)
    sectors = {symbols[0]: "a", symbols[1]: "a", symbols[2]: "b", symbols[3]: "b"}
    model = HybridForecaster(
        ["1h", "4h"],
        seed=2,
        **HYBRID_TINY,
        residual_boost=True,
        boost_kwargs={"n_estimators": 10},
        sectors=sectors,
        index_symbol=symbols[0],
    )
    model = model.with_capacity({"stage1_epochs": 2, "epochs": 1, "boost/1h": 5, "boost/4h": 7})
    model.fit(prep.data.subset(tr), None)
    assert model.capacity_ == {"stage1_epochs": 2, "epochs": 1, "boost/1h": 5, "boost/4h": 7}
    assert len(model.stage1_.history_) == 2 and model.boost_.n_oof_ == len(tr)
    assert model.stage_columns_[16:] == ["xa_att_market", "xa_att_sector", "xa_base_1h", "xa_base_4h"] + [
        "xa_boost_1h",
        "xa_boost_4h",
    ]
    assert all(model.temporal_.feature_names_.count(c) == 1 for c in model.stage_columns_)
    fc = model.predict(prep.data.subset(te))
    assert np.isfinite(fc.q50).all()
    out = model.stage1_.transform(prep.data, te)
    assert (out.sector_attention > 0).all() and (out.sector_attention < 1).all()


def _stage3_training_inputs(monkeypatch, model, train):
    """Fit ``model`` (an LSTM stage 3) on ``train`` and return the SampleSet its stage 3 was trained on."""
    seen, original = {}, LSTMForecaster.fit

    def fit_and_keep(self, tr, va=None):
        seen["train"] = tr
        return original(self, tr, va)

    monkeypatch.setattr(LSTMForecaster, "fit", fit_and_keep)
    model.fit(train, None)
    monkeypatch.setattr(LSTMForecaster, "fit", original)
    return seen["train"]


def test_stage3_trains_on_stage1_columns_of_a_model_not_fitted_on_the_rows_block(small, monkeypatch):
    """Stage 3's training forecast columns (xa_base_*) of a row in crossfit block b come from a stage 1
    fitted on the other blocks: changing block b's labels leaves them bit-identical (and moves the other
    blocks'); the latent columns are the fold stage 1's (stage1_crossfit=forecasts), or out of fold too
    (all), or every column the fold stage 1's in sample (off)."""
    from quantml.validation.crossfit import crossfit_parts

    prep, (tr, _, _) = small
    data = prep.data
    changed = pickle.loads(pickle.dumps(data))
    rows = tr[np.isfinite(data.y_ret[tr]).any(axis=1)]
    parts = crossfit_parts(rows, data.t0, data.t1, 3, pd.Timedelta("4h"))
    block, other = parts[1][1], parts[0][1]
    changed.y_ret[block] = np.random.default_rng(5).standard_normal(changed.y_ret[block].shape) * 0.05

    def fit(mode, panel):
        model = HybridForecaster(["1h", "4h"], seed=1, **HYBRID_TINY, stage1_crossfit=mode)
        model = model.with_capacity({"stage1_epochs": 2, "epochs": 1})
        seen = _stage3_training_inputs(monkeypatch, model, panel.subset(tr))
        cols = [seen.data.feature_names.index(c) for c in model.stage_columns_]
        fold = model._augment(panel, np.r_[block, other]).X[:, data.X.shape[1] :]  # the fold stage 1, in sample
        return model, seen.data.X[:, cols].astype(np.float64), fold.astype(np.float64)

    model, seen, fold = fit("forecasts", data)
    assert [b["n_fit"] for b in model.crossfit_blocks_] == [len(f) for f, _ in parts]
    base = [i for i, c in enumerate(model.stage_columns_) if c.startswith("xa_base_")]
    latent = [i for i, c in enumerate(model.stage_columns_) if not c.startswith("xa_base_")]
    assert np.isfinite(seen[block]).all()
    assert not np.allclose(seen[np.ix_(block, base)], fold[np.ix_(block, base)])  # not the in-sample baseline
    np.testing.assert_array_equal(seen[np.ix_(block, latent)], fold[np.ix_(block, latent)])
    _, moved, _ = fit("forecasts", changed)
    np.testing.assert_array_equal(moved[np.ix_(block, base)], seen[np.ix_(block, base)])
    assert not np.array_equal(moved[np.ix_(other, base)], seen[np.ix_(other, base)])

    _, every, _ = fit("all", data)
    _, every_moved, _ = fit("all", changed)
    np.testing.assert_array_equal(every_moved[block], every[block])  # every column of block 1 out of fold
    assert not np.array_equal(every_moved[other], every[other])

    _, plain, plain_fold = fit("off", data)
    np.testing.assert_array_equal(plain[block], plain_fold[block])
    with pytest.raises(QuantmlInputError, match="stage1_crossfit"):
        HybridForecaster(["1h"], stage1_crossfit="blocks")


def test_bad_settings_are_input_errors():
    with pytest.raises(QuantmlInputError, match="relation_dim"):
        HybridForecaster(["1h"], relation_dim=8)
    with pytest.raises(QuantmlInputError, match="temporal"):
        HybridForecaster(["1h"], temporal="ridge")
    with pytest.raises(QuantmlInputError, match="boost_kwargs.bogus"):
        HybridForecaster(["1h"], residual_boost=True, boost_kwargs={"bogus": 1})
    with pytest.raises(QuantmlInputError, match="temporal_kwargs"):
        HybridForecaster(["1h"], temporal_kwargs={"seed": 3})


def test_figures_hold_the_attention_heatmap(fitted):
    figs = fitted.figures()
    assert ATTENTION_FIGURE in figs and "lstm_loss_curve.png" in figs
    assert figs[ATTENTION_FIGURE].axes[0].get_ylabel() == "asset (query)"
    assert list(fitted.fold_figures()) == [ATTENTION_FIGURE]  # what a fold run logs
    assert MODALITY == "cross_asset" and fitted.temporal_.feature_names_[-1] == "xa_base_4h"


def test_tiny_train_run_finishes_and_marks_the_bundle_cross_sectional(tracking_uri, tmp_path):
    import mlflow

    from quantml.tracking.pyfunc import load_bundle
    from tests.helpers.tiny_runs import train_run

    tiny = "{hidden_size: 8, max_epochs: 2, limit_train_batches: 3, lookback: 8, batch_size: 64}"
    result = train_run(
        tracking_uri,
        [
            "data=synthetic",
            "data.n_symbols=3",
            "data.n_bars=500",
            "data.freq=1h",
            "feature_set=price",
            "horizon=4h",
            "validation.n_splits=2",
            "validation.min_train_samples=50",
            "validation.embargo=4h",
            "print_report=false",
            "backbone=hybrid",
            f"backbone.temporal_kwargs={tiny}",
            "backbone.stage1_max_epochs=2",
            "+data.sectors={BNB: a, BTC: a, ETH: b}",
            "backbone.d_model=16",
            "tracking.experiment=hybrid_tiny",
        ],
    )
    client = mlflow.MlflowClient(tracking_uri)
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    figures = {a.path for a in client.list_artifacts(result.parent_run_id, "figures")}
    assert f"figures/{ATTENTION_FIGURE}" in figures
    bundle = load_bundle(result.model_uri, tmp_path / "bundle")
    assert bundle.metadata[L.CROSS_SECTIONAL] is True
    assert isinstance(bundle.forecaster, HybridForecaster)
    assert "xa_att_sector" in bundle.forecaster.stage_columns_  # data.sectors reached the backbone
    from quantml.data.asof import join_streams

    synth = generate_synthetic(freq="1h", n_symbols=3, n_bars=300, seed=3)
    panel = join_streams(synth.bars, synth.streams)
    out = bundle.predict_contract(panel, last_only=True)
    assert len(out) == 3 and out["expected_return"].notna().all()
    with pytest.raises(QuantmlInputError, match="lacks 1 of the 3 assets it was trained on: ETH"):
        bundle.predict_contract(panel[panel["symbol"] != "ETH"], last_only=True)


# ---- the planted effect ---------------------------------------------------------------------
def _followers_rank_ic(model, prep, rows, leader):
    """Mean over test timestamps of the Spearman correlation across the followers of the 1h forecast
    and the realised 1h return."""
    fc = model.predict(prep.data.subset(rows)).expected_return[:, 0]
    keys = prep.data.subset(rows).keys
    frame = pd.DataFrame({"t": keys["timestamp"], "s": keys["symbol"], "f": fc, "y": prep.data.y_ret[rows, 0]})
    frame = frame[frame["s"] != leader]
    ranks = frame.groupby("t")[["f", "y"]].rank()
    ranks["t"] = frame["t"]
    return ranks.groupby("t").apply(lambda g: g["f"].corr(g["y"])).mean()


@pytest.mark.slow
def test_hybrid_beats_stage3_alone_on_the_followers_and_attends_to_the_leader():
    prep = prepared(
        [
            "data=synthetic",
            "data.n_symbols=5",
            "data.n_bars=2400",
            "data.lead_lag=true",
            "feature_set=price",
            "horizon=1h",
            "seed=3",
        ]
    )
    tr, va, te = time_split(prep)
    leader = "BTC"  # the first symbol: the plant's default leader
    temporal = dict(hidden_size=16, max_epochs=8, limit_train_batches=20, lookback=16, batch_size=128, symbol_dim=4)
    alone = LSTMForecaster(["1h"], seed=3, num_threads=1, **temporal).fit(prep.data.subset(tr), prep.data.subset(va))
    hybrid = HybridForecaster(["1h"], seed=3, temporal="lstm", temporal_kwargs=temporal)
    hybrid.fit(prep.data.subset(tr), prep.data.subset(va))
    ic_alone = _followers_rank_ic(alone, prep, te, leader)
    ic_hybrid = _followers_rank_ic(hybrid, prep, te, leader)  # leaves the heatmap over the test timestamps
    assert ic_hybrid > ic_alone + 0.03, (ic_hybrid, ic_alone)
    att = hybrid.attention_
    for follower in [s for s in att.index if s != leader]:
        others = att.loc[follower].drop(follower)  # the market row and every other asset
        assert others.idxmax() == leader, (follower, att.round(3).to_dict("index"))


@pytest.mark.slow
def test_multirun_over_tft_and_hybrid(tracking_uri, tmp_path):
    import mlflow

    from tests.helpers import failed_train, run_train

    args = [
        "-m",
        "backbone=tft,hybrid",
        "data=synthetic",
        "data.n_symbols=3",
        "data.n_bars=400",
        "data.freq=1h",
        "feature_set=price",
        "horizon=4h",
        "validation.n_splits=2",
        "validation.min_train_samples=50",
        "validation.embargo=4h",
        "print_report=false",
        "tracking.experiment=hybrid_multirun",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    proc = run_train(args, tmp_path, timeout=1200)
    assert proc.returncode == 0, failed_train(proc)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("hybrid_multirun")
    parents = {
        r.data.tags["choice.backbone"]: r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get(L.TAG_KIND) == "parent"
    }
    assert sorted(parents) == ["hybrid", "tft"]
    assert all(p.info.status == "FINISHED" for p in parents.values())
    figures = {a.path for a in client.list_artifacts(parents["hybrid"].info.run_id, "figures")}
    assert f"figures/{ATTENTION_FIGURE}" in figures
