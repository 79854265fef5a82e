"""Serving a model trained on the raw text stream WITH its posts: ``quantml predict text.path=`` /
``data=model``, the pyfunc's ``params={"text_path": ...}``, and without them (the model degrades to its base).

One ridge + ``fusion=residual_gate`` model is trained once for the module on the synthetic panel with a strong
planted text stream (``data.text_stream={strength: 1.0}``, so the fusion's held-out check opens the gate), so
its forecaster is text latents -> gated text residual -> ridge base, and a served row without text must get
the base's forecast.
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR
from quantml.cli.predict import compose_config
from quantml.cli.predict import main as predict_main
from quantml.contracts import QuantmlInputError
from quantml.data import load_panel
from quantml.data.text_stream import load_text_stream
from quantml.registry.store import mlflow_uri_scope
from quantml.serving import predict_panel
from quantml.serving.run import run_predict
from quantml.tracking.pyfunc import load_bundle
from tests.helpers.tiny_runs import temp_store, train_run

TRAIN = [
    "data=synthetic",
    "data.n_bars=1000",
    "data.n_symbols=3",
    "data.text_stream={strength: 1.0}",  # the fusion's held-out check opens the gate (2.9 s.e. on 1000 bars)
    "data.text.n_hash=256",
    "data.text.latent_dim=4",
    "backbone=ridge",
    "fusion=residual_gate",
    "horizon=1h",
    "feature_set=price",
    "validation.n_splits=2",
    "validation.embargo=1h",
    "print_report=false",
]
FORECASTS = ["expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast"]
KEYS = ["symbol", "timestamp", "horizon"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(uri, parent run id, work dir, training config, bundle, panel, stream, panel file, posts file)."""
    root = tmp_path_factory.mktemp("serving_text")
    uri, _ = temp_store(root)
    result = train_run(uri, TRAIN)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="config", overrides=TRAIN)
    GlobalHydra.instance().clear()
    with mlflow_uri_scope(uri):
        bundle = load_bundle(f"runs:/{result.parent_run_id}/model", root / "bundle")
    panel, stream = load_panel(cfg.data), load_text_stream(cfg.data)
    panel_file, posts_file = root / "bars.parquet", root / "posts.parquet"
    panel.to_parquet(panel_file, index=False)
    stream.to_parquet(posts_file, index=False)
    return uri, result.parent_run_id, root, cfg, bundle, panel, stream, panel_file, posts_file


def _predict(uri: str, run_id: str, root, *overrides: str) -> pd.DataFrame:
    name = f"out{abs(hash(overrides))}.parquet"
    cfg = compose_config(
        [f"model=runs:/{run_id}/model", f"tracking.uri={uri}", f"output={root / name}", "last_only=false", *overrides]
    )
    return run_predict(cfg).frame


def _in_process(bundle, cfg, rows_of: pd.DataFrame) -> pd.DataFrame:
    """The final model's own forecasts on the training pipeline's panel (features, text statistics, towers
    built as at training), calibrated, on the (symbol, timestamp) rows of ``rows_of``."""
    from quantml.experiment.prepare import prepare_data

    prepared = prepare_data(cfg)
    sample = prepared.data.subset(np.arange(prepared.data.n_rows))
    frame = bundle.forecaster.predict(sample).to_frame(sample.keys)
    frame = bundle.calibrator.transform(frame) if bundle.calibrator is not None else frame
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    want = rows_of[KEYS].assign(timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True))
    return want.merge(frame, on=KEYS, how="left")


def test_predict_with_the_stream_equals_the_final_models_in_process_forecasts(served):
    uri, run_id, root, cfg, bundle, panel, stream, panel_file, posts_file = served
    assert bundle.contract.text["latent_dim"] == 4
    by_model = _predict(uri, run_id, root, "data=model")  # the version's own data: its text stream too
    by_file = _predict(uri, run_id, root, f"data={panel_file}", f"text.path={posts_file}")
    assert len(by_model) == len(panel) and by_model["gate"].max() > 0.05  # the text counts
    pd.testing.assert_frame_equal(by_model, by_file)
    truth = _in_process(bundle, cfg, by_model)
    for name in [*FORECASTS, "gate", "text_contribution"]:
        np.testing.assert_allclose(by_model[name], truth[name], rtol=1e-6, atol=1e-9, err_msg=name)
    # data=<file> data.text.path=<posts>: the data config's stream, the same posts
    implicit = _predict(uri, run_id, root, f"data={panel_file}", f"data.text.path={posts_file}")
    pd.testing.assert_frame_equal(by_model, implicit)


def test_without_the_stream_the_text_reads_missing_and_the_model_is_its_base(served, caplog):
    uri, run_id, root, cfg, bundle, panel, stream, panel_file, posts_file = served
    with caplog.at_level(logging.WARNING, logger="quantml.serving.predict"):
        bare = _predict(uri, run_id, root, f"data={panel_file}")
    assert "served without text" in caplog.text and "text.path=" in caplog.text
    assert (bare["gate"] == 0).all() and (bare["text_contribution"] == 0).all()
    # the base: the ridge of the fitted fusion on the non-text features, calibrated like the served rows
    from quantml.experiment.prepare import prepare_data

    data = bundle.forecaster._augment(prepare_data(cfg).data)  # + the latents the fusion was fitted with
    fusion = bundle.forecaster.model_
    sample = data.subset(np.arange(data.n_rows))
    base = fusion.base_.predict(fusion._view(data).subset(sample.rows)).to_frame(sample.keys)
    base = bundle.calibrator.transform(base) if bundle.calibrator is not None else base
    base["timestamp"] = pd.to_datetime(base["timestamp"], utc=True)
    base = bare[KEYS].merge(base, on=KEYS, how="left")
    for name in FORECASTS:
        np.testing.assert_allclose(bare[name], base[name], rtol=0, atol=1e-12, err_msg=name)
    with_text = _predict(uri, run_id, root, f"data={panel_file}", f"text.path={posts_file}")
    assert not np.allclose(with_text["expected_return"], bare["expected_return"])


def test_the_pyfunc_takes_the_posts_as_params_text_path(served, tmp_path):
    uri, run_id, root, cfg, bundle, panel, stream, panel_file, posts_file = served
    with mlflow_uri_scope(uri):
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert "text_path" in {p.name for p in model.metadata.get_params_schema().params}
    inputs = panel[[c for c in panel.columns if c in set(model.metadata.get_input_schema().input_names())]]
    got = model.predict(inputs, params={"last_only": True, "text_path": str(posts_file)})
    want = bundle.predict_contract(inputs, last_only=True, text_stream=stream)
    # data_version fingerprints the panel as MLflow's schema enforcement typed it (doubles): not compared
    pd.testing.assert_frame_equal(pd.DataFrame(got).drop(columns="data_version"), want.drop(columns="data_version"))
    assert want["gate"].max() > 0
    bare = model.predict(inputs, params={"last_only": True})
    assert (bare["gate"] == 0).all()
    # a posts file without its text column is refused, naming the column and the fix
    stream.drop(columns=["text"]).to_parquet(tmp_path / "no_text.parquet", index=False)
    with pytest.raises(QuantmlInputError, match=r"lacks column\(s\) \['text'\]"):
        model.predict(inputs, params={"text_path": str(tmp_path / "no_text.parquet")})
    with pytest.raises(QuantmlInputError, match="no such file"):
        model.predict(inputs, params={"text_path": str(tmp_path / "absent.parquet")})


def test_bad_or_unwanted_streams_are_refused_clearly(served, tmp_path, capsys):
    import copy

    uri, run_id, root, cfg, bundle, panel, stream, panel_file, posts_file = served
    stream.drop(columns=["author"]).to_parquet(tmp_path / "no_author.parquet", index=False)
    args = [f"model=runs:/{run_id}/model", f"data={panel_file}", f"tracking.uri={uri}"]
    code = predict_main([*args, f"text.path={tmp_path / 'no_author.parquet'}", f"output={tmp_path / 'x.parquet'}"])
    assert code == 2 and "lacks column(s) ['author']" in capsys.readouterr().err
    # a model that was not trained on raw text refuses posts given on purpose, and ignores (never loads) a
    # data config's stream
    from quantml.serving.predict import ResolvedModel, _text_stream
    from quantml.serving.text_source import TextSource

    plain = copy.deepcopy(bundle)
    plain.contract.text = {}
    with pytest.raises(QuantmlInputError, match="not trained on one"):
        plain.predict_contract(panel, last_only=True, text_stream=stream)
    resolved = ResolvedModel("m", "runs:/x/model")

    def never():
        raise AssertionError("loaded a stream the model does not read")

    assert _text_stream(plain, TextSource(never, False, "the data config's text stream"), resolved) is None
    with pytest.raises(QuantmlInputError, match="was not trained on a raw text stream"):
        _text_stream(plain, TextSource(lambda: stream, True, "text.path=posts.parquet"), resolved)
    with pytest.raises(QuantmlInputError, match="single quantml model"):
        _text_stream(object(), stream, resolved)
    # a table handed to predict_panel is served like text.path=
    from quantml.registry.store import RegistryStore

    frame, _ = predict_panel(f"runs:/{run_id}/model", panel, store=RegistryStore(uri), last_only=True, text=stream)
    assert frame["gate"].max() > 0


def test_paper_trading_reads_the_posts_of_text_path(served, tmp_path):
    from quantml.cli.paper import compose_config as paper_config
    from quantml.contracts.logs import PREDICTION_LOG
    from quantml.serving.logs import read_log
    from quantml.serving.paper import run_paper_config

    uri, run_id, root, cfg, bundle, panel, stream, panel_file, posts_file = served
    start = pd.to_datetime(panel["timestamp"], utc=True).sort_values().unique()[-6].isoformat()  # the last 6 bars
    gates = {}
    for name, extra in (("with", [f"text.path={posts_file}"]), ("without", [])):
        log_dir = tmp_path / name
        args = [f"model=runs:/{run_id}/model", f"data={panel_file}", f"tracking.uri={uri}", f"log_dir={log_dir}"]
        paper = paper_config([*args, f"start={start}", "allow_in_sample=true", "cost=zero", *extra])
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            run_paper_config(paper, echo=lambda line: None)
        logged = read_log(log_dir, PREDICTION_LOG)
        assert len(logged) == 6 * 3  # 6 bars x 3 symbols x 1 horizon
        gates[name] = logged["gate"].to_numpy(dtype=float)
    assert gates["with"].max() > 0 and (gates["without"] == 0).all()


def test_the_monitors_feature_drift_reads_the_models_posts(served):
    from quantml.monitoring.run import _feature_frame

    *_, bundle, panel, stream, _, _ = served
    keys = panel[["symbol", "timestamp"]].iloc[-200:]
    names = ["text_posts", "text_raw_missing"]
    with_posts = _feature_frame(bundle, panel, keys, names, stream)
    without = _feature_frame(bundle, panel, keys, names)
    assert len(with_posts) == len(without) == 200
    assert with_posts["text_posts"].sum() > 0 and (with_posts["text_raw_missing"] == 0).mean() > 0.5
    assert (without["text_raw_missing"] == 1).all()


def test_paper_follow_rereads_posts_caught_half_written(served, tmp_path):
    """``follow=true text.path=posts.csv``: a poll that finds the posts file with a half-written last row says so
    and acts on nothing; the next poll reads it whole and acts on those bars -- the logs of a one-shot replay."""
    from quantml.cli.paper import compose_config as paper_config
    from quantml.serving.logs import read_log
    from quantml.serving.paper import run_paper_config

    uri, run_id, root, cfg, bundle, panel, stream, panel_file, posts_file = served
    times = pd.to_datetime(panel["timestamp"], utc=True).sort_values().unique()
    start, cut = times[-6], times[-4]  # act on the last 6 bars: 3 in the first poll, 3 after the retry
    bars, follow_bars, posts = tmp_path / "bars", tmp_path / "follow_bars", tmp_path / "posts.csv"
    bars.mkdir(), follow_bars.mkdir()
    panel.to_parquet(bars / "part-1.parquet", index=False)
    panel[pd.to_datetime(panel["timestamp"], utc=True) <= cut].to_parquet(follow_bars / "part-1.parquet", index=False)
    in_time = stream.sort_values("available_at", kind="mergesort")  # a file that is appended to
    in_time.to_csv(tmp_path / "all_posts.csv", index=False)
    full = (tmp_path / "all_posts.csv").read_text()
    early = in_time[in_time["available_at"] <= cut]
    early.to_csv(posts, index=False)
    assert 0 < len(early) < len(stream)
    late_row = full.splitlines()[1 + len(early)]  # the first row after the cut
    assert pd.Timestamp(late_row.split(",")[2]) > cut
    half_row = late_row[: late_row.index(",", late_row.index(",") + 1) + 1]  # cut after its event_time
    naps, lines = [], []

    def between_polls(seconds):
        naps.append(seconds)
        if len(naps) == 1:  # the bars land; the posts file is caught mid-append
            panel[pd.to_datetime(panel["timestamp"], utc=True) > cut].to_parquet(follow_bars / "part-2.parquet")
            posts.write_text(early.to_csv(index=False) + half_row)
        if len(naps) == 2:
            posts.write_text(full)

    def run(name, data, text, *extra, sleep=None):
        args = [f"model=runs:/{run_id}/model", f"data={data}", f"tracking.uri={uri}", f"log_dir={tmp_path / name}"]
        paper = paper_config([*args, f"start={start.isoformat()}", "allow_in_sample=true", "cost=zero", *extra])
        paper.text.path = str(text)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            return run_paper_config(paper, echo=lines.append, sleep=sleep or (lambda s: None))

    result = run("follow", follow_bars, posts, "follow=true", "poll_s=0", "max_polls=4", sleep=between_polls)
    assert result.polls == 4 and len(naps) == 3, lines
    assert lines[0].startswith("poll 1: 3 bar(s)"), lines
    assert lines[1].startswith("poll 2: the posts could not be read") and "partial last line" in lines[1], lines
    assert lines[2].startswith("poll 3: 3 bar(s)") and lines[3].startswith("poll 4: no new bar"), lines
    run("replay", bars, tmp_path / "all_posts.csv")
    for log in ("predictions", "executions", "pnl"):
        followed, replayed = (
            read_log(tmp_path / name, log).drop(columns=["logged_at", "data_version"], errors="ignore")
            for name in ("follow", "replay")
        )
        pd.testing.assert_frame_equal(followed, replayed)
    assert read_log(tmp_path / "follow", "predictions")["gate"].max() > 0
