"""Raw text features: bucketing, the two towers, statistics, causality, the per-fold reducer, the wrapper."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from quantml.data.loaders import load_panel
from quantml.data.text_stream import load_text_stream, validate_text_stream
from quantml.features.text import STAT_NAMES, TowerReducer, build_text
from quantml.features.text.bucket import NO_ROW, bucket_rows
from quantml.features.text.causality import perturb_text_after, text_causality_violations
from quantml.features.text.lexicon import sentiment
from quantml.features.text.stats import text_stats
from quantml.features.text.towers import hash_texts
from quantml.models.base import PanelData
from quantml.models.ridge import RidgeForecaster
from quantml.models.text_latents import TextLatentForecaster

H = pd.Timedelta("1h")
T0 = pd.Timestamp("2024-01-01", tz="UTC")
CFG = {"source": "synthetic", "freq": "1h", "n_symbols": 2, "n_bars": 400, "seed": 1, "text_stream": True}
SETTINGS = {"n_hash": 256, "latent_dim": 8, "window": 6}


def _panel(n_bars: int = 4, symbols=("AAA", "BBB")) -> pd.DataFrame:
    rows = [(T0 + H * (i + 1), s) for s in symbols for i in range(n_bars)]
    return pd.DataFrame({"timestamp": [r[0] for r in rows], "symbol": [r[1] for r in rows], "close": 1.0})


def _stream(rows) -> pd.DataFrame:
    """rows: (symbol, available_at, parent_id, author, text, engagement)."""
    df = pd.DataFrame(rows, columns=["symbol", "available_at", "parent_id", "author", "text", "engagement"])
    df["event_time"] = df["available_at"] - pd.Timedelta("1min")
    df["post_id"] = [f"p{i}" for i in range(len(df))]
    return validate_text_stream(df)


def test_bucketing_is_exact_at_the_bar_close():
    panel = _panel()  # closes 01:00 .. 04:00 for AAA (rows 0-3) and BBB (rows 4-7)
    close2 = T0 + 2 * H
    stream = _stream(
        [
            ("AAA", close2, None, "a", "x", 0),  # exactly at a close: that bar
            ("AAA", close2 + pd.Timedelta(1, "ns"), None, "a", "x", 0),  # a nanosecond later: the next bar
            ("BBB", T0 + pd.Timedelta("30min"), None, "b", "x", 0),  # inside the first bar
            ("BBB", T0 + 5 * H, None, "b", "x", 0),  # after the last bar
            ("CCC", close2, None, "c", "x", 0),  # not a panel symbol
            ("AAA", T0 - 2 * H, None, "a", "x", 0),  # before the panel's history
        ]
    )
    got = dict(zip(stream["post_id"], bucket_rows(panel, stream)))
    assert got == {"p0": 1, "p1": 2, "p2": 4, "p3": NO_ROW, "p4": NO_ROW, "p5": NO_ROW}


def test_towers_pool_posts_and_comments_separately_weighted_by_engagement():
    panel = _panel(2)
    stream = _stream(
        [
            ("AAA", T0 + H, None, "a", "moon moon", 0),
            ("AAA", T0 + H, None, "b", "rug", np.e - 1),  # weight log1p(e - 1) + 1 = 2
            ("AAA", T0 + H, "p0", "c", "comment text", 3),
        ]
    )
    text = build_text(panel, stream, SETTINGS)
    post, comment = text.side["text_post"], text.side["text_comment"]
    assert post.shape == comment.shape == (4, 256)
    vec = hash_texts(["moon moon", "rug"], 256).toarray()
    np.testing.assert_allclose(post[0].toarray()[0], (1 * vec[0] + 2 * vec[1]) / 3, rtol=1e-6)
    np.testing.assert_allclose(comment[0].toarray()[0], hash_texts(["comment text"], 256).toarray()[0], rtol=1e-6)
    assert post[1:].nnz == 0 and comment[1:].nnz == 0


def test_statistics_counts_duplicates_sentiment_and_missing():
    panel = _panel(3, ("AAA",))
    stream = _stream(
        [
            ("AAA", T0 + H, None, "bot", "Join NOW", 0),
            ("AAA", T0 + H, None, "bot", "join now", 0),  # same text, another case: a duplicate
            ("AAA", T0 + H, "p0", "u1", "great", 0),
            ("AAA", T0 + 3 * H, None, "bot", "join now", 0),  # within the trailing window: a duplicate
        ]
    )
    frame = build_text(panel, stream, SETTINGS).frame
    assert list(frame.columns) == list(STAT_NAMES)
    np.testing.assert_allclose(frame["text_posts"], np.log1p([2, 0, 1]), rtol=1e-6)
    np.testing.assert_allclose(frame["text_comments"], np.log1p([1, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(frame["text_authors"], np.log1p([2, 0, 1]), rtol=1e-6)
    np.testing.assert_allclose(frame["text_dup_share"], [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(frame["text_raw_missing"], [0, 1, 0])
    assert frame["text_comment_sentiment"].iloc[0] > 0.5 and frame["text_sentiment"].iloc[0] == 0
    np.testing.assert_allclose(frame["text_burst"].iloc[2], np.log1p(1) - np.log1p(1.0), atol=1e-6)  # mean(2, 0)
    absent = text_stats(panel, None, None)
    assert absent["text_raw_missing"].eq(1).all() and absent.drop(columns="text_raw_missing").eq(0).all().all()


def test_lexicons_score_in_the_open_interval():
    s = sentiment(["great gains, love it", "scam rug crash", "nothing here"])
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == 0
    pytest.importorskip("vaderSentiment")
    v = sentiment(["great gains, love it", "terrible awful day"], "vader")
    assert v[0] > 0.5 and v[1] < -0.5


@pytest.fixture(scope="module")
def synthetic():
    return load_panel(CFG), load_text_stream(CFG)


def test_causality_of_the_raw_text_table_and_the_reducer(synthetic):
    panel, stream = synthetic
    ts = panel["timestamp"]
    cut = ts.sort_values().iloc[len(ts) // 2]
    fold = np.flatnonzero((ts <= cut - 24 * H).to_numpy())  # a training fold that ends before the cut
    assert text_causality_violations(panel, stream, SETTINGS, cut, fold) == {}
    # the perturbation is real: later rows do change
    moved = build_text(panel, perturb_text_after(stream, cut), SETTINGS).frame
    later = (ts > cut).to_numpy()
    assert (
        moved["text_posts"].to_numpy()[later]
        != build_text(panel, stream, SETTINGS).frame["text_posts"].to_numpy()[later]
    ).any()


def test_the_reducer_of_a_fold_sees_its_training_rows_only(synthetic):
    panel, stream = synthetic
    ts = panel["timestamp"]
    cut = ts.sort_values().iloc[len(ts) // 2]
    train = np.flatnonzero((ts <= cut).to_numpy())
    a = TowerReducer(8, seed=0).fit(build_text(panel, stream, SETTINGS).side, train)
    b = TowerReducer(8, seed=0).fit(build_text(panel, perturb_text_after(stream, cut, 5), SETTINGS).side, train)
    for tower in a.components_:
        assert np.array_equal(a.components_[tower], b.components_[tower])
        assert np.abs(a.components_[tower]).sum() > 0
    everything = TowerReducer(8, seed=0).fit(build_text(panel, stream, SETTINGS).side, np.arange(len(panel)))
    assert not np.array_equal(everything.components_["text_post"], a.components_["text_post"])


def _panel_data(panel, text) -> PanelData:
    rng = np.random.default_rng(0)
    n = len(panel)
    y = rng.normal(0, 0.01, (n, 1))
    codes, symbols = pd.factorize(panel["symbol"])
    return PanelData(
        keys=panel[["symbol", "timestamp"]].reset_index(drop=True),
        X=np.c_[rng.normal(size=(n, 2)), text.frame.to_numpy()].astype(np.float32),
        feature_names=["f0", "f1", *text.frame.columns],
        feature_modalities={"f0": "price", "f1": "price", **text.modalities},
        horizons=["1h"],
        y_ret=y,
        y_dir=(y > 0).astype(float),
        y_vol=np.abs(y),
        t0=panel["timestamp"].to_numpy(dtype="datetime64[ns]"),
        t1=panel["timestamp"].to_numpy(dtype="datetime64[ns]"),
        symbol_codes=codes.astype(np.int64),
        symbols=list(symbols),
        side=dict(text.side),
    )


def test_text_latent_forecaster_fits_on_train_rows_and_degrades_without_text(synthetic):
    panel, stream = synthetic
    data = _panel_data(panel, build_text(panel, stream, SETTINGS))
    rows = np.arange(len(panel))
    train, test = rows[(rows % 400) < 300], rows[(rows % 400) >= 300]
    model = TextLatentForecaster(RidgeForecaster(["1h"], alpha=1.0), k=8).fit(data.subset(train))
    assert model.capacity_ == {} and model.uses_residual_quantiles
    names = list(model.feature_importance().index)
    assert "text_post_lat_0" in names and "text_comment_lat_7" in names and len(names) == data.X.shape[1] + 16
    fc = model.predict(data.subset(test))
    clone = pickle.loads(pickle.dumps(model))
    assert "cache_" not in clone.__dict__
    np.testing.assert_array_equal(clone.predict(data.subset(test)).expected_return, fc.expected_return)
    # serving without the raw stream: the statistics say missing, the latents are 0 -> finite forecasts
    bare = _panel_data(panel, build_text(panel, None, SETTINGS))
    out = clone.predict(bare.subset(test))
    assert np.isfinite(out.expected_return).all()
    aug = clone._augment(bare)
    assert not aug.X[:, -16:].any()
    # the unfitted template and a fixed capacity copy carry no fitted state
    fresh = model.with_capacity({})
    assert "reducer_" not in fresh.__dict__ and "model_" not in fresh.__dict__


TRAIN = [
    "data=synthetic",
    "data.n_bars=500",
    "data.n_symbols=3",
    "data.text_stream=true",
    "data.text.n_hash=256",
    "backbone=ridge",
    "horizon=1h",
    "feature_set=price_volume_regime",
    "validation.n_splits=3",
    "validation.embargo=1h",
    "print_report=false",
]


@pytest.mark.slow
def test_train_logs_text_latents_serves_with_and_without_text_and_no_text_has_none(tmp_path):
    import mlflow

    from quantml.registry.store import mlflow_uri_scope
    from quantml.tracking.pyfunc import load_bundle
    from tests.helpers.tiny_runs import temp_store, train_run

    uri, _ = temp_store(tmp_path)
    client = mlflow.tracking.MlflowClient(uri)

    def importance(run_id: str) -> list[str]:
        path = client.download_artifacts(run_id, "report/feature_importance.csv", str(tmp_path))
        return [str(n) for n in pd.read_csv(path).iloc[:, 0]]

    with_text = train_run(uri, TRAIN)
    assert client.get_run(with_text.parent_run_id).info.status == "FINISHED"
    names = importance(with_text.parent_run_id)
    assert {"text_post_lat_15", "text_comment_lat_0", "text_burst", "text_raw_missing"} <= set(names)
    with mlflow_uri_scope(uri):
        bundle = load_bundle(f"runs:/{with_text.parent_run_id}/model", tmp_path / "bundle")
    assert bundle.contract.text["n_hash"] == 256 and "text_raw_missing" in bundle.contract.feature_names
    cfg = {"source": "synthetic", "freq": "1h", "n_bars": 500, "n_symbols": 3, "seed": 0, "text_stream": True}
    panel, stream = load_panel(cfg), load_text_stream(cfg)
    served = bundle.predict_contract(panel, last_only=True, text_stream=stream)
    bare = bundle.predict_contract(panel, last_only=True)  # the pyfunc's path: a panel only
    assert len(served) == len(bare) == 3 and np.isfinite(bare["expected_return"]).all()
    assert not np.allclose(served["expected_return"], bare["expected_return"])

    no_text = train_run(uri, [*TRAIN, "ablation=no_text"])
    assert not [n for n in importance(no_text.parent_run_id) if n.startswith("text_")]
