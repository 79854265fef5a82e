"""Serving a real (tiny) quantml-train model: quantml-predict and ``mlflow models serve``.

One ridge model is trained once for the module on a seeded synthetic panel with the
``price_volume_regime`` feature set (its contract needs the exogenous ``funding_rate`` and
``open_interest`` columns, so a panel without them must be refused), registered and
promoted to active in a temporary SQLite store.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from quantml.cli.common import CONFIG_DIR
from quantml.cli.predict import main as predict_main
from quantml.contracts import PREDICTION_COLUMNS, QuantmlInputError
from quantml.data import load_panel
from quantml.portfolio import AllocatorConfig, market_returns
from quantml.registry import ACTIVE, CHAMPION
from quantml.serving import predict_panel, resolve_model
from quantml.signals import SignalConfig
from tests.helpers.registry_fakes import mlflow_model_server, post_json
from tests.helpers.tiny_runs import register_active, temp_store, train_run

NAME = "served"
TRAIN = [
    "data=synthetic",
    "data.n_bars=500",
    "backbone=ridge",
    "horizon=1h",
    "feature_set=price_volume_regime",
    "validation.n_splits=3",
    "validation.embargo=1h",  # 1h labels: a day's embargo would empty the inner early-stopping part
    "print_report=false",
    "tracking.experiment=serving",
]
PANEL = {"source": "synthetic", "freq": "1h", "n_symbols": 4, "n_bars": 300, "seed": 5, "start": "2024-03-01"}


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """(tracking uri, store, parent run id, work dir) with the trained model as NAME v1 @active."""
    root = tmp_path_factory.mktemp("serving")
    uri, store = temp_store(root, ["serving"])
    result = train_run(uri, TRAIN)
    register_active(store, result.parent_run_id, NAME, "serving tests")
    return uri, store, result.parent_run_id, root


@pytest.fixture(scope="module")
def panel():
    return load_panel(PANEL)


def test_predict_panel_fills_the_contract_from_the_resolved_version(champion, panel):
    uri, store, run_id, _ = champion
    frame, resolved = predict_panel(f"models:/{NAME}@{ACTIVE}", panel, store=store)
    assert (resolved.name, resolved.version, resolved.run_id, resolved.load_uri) == (
        NAME,
        "1",
        run_id,
        f"models:/{NAME}/1",
    )
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    last = panel.groupby("symbol")["timestamp"].max()
    assert len(frame) == len(last)  # last_only, one horizon
    assert (frame.set_index("symbol")["timestamp"] == last.loc[frame["symbol"]]).all()
    assert set(frame["model_name"]) == {NAME} and set(frame["model_version"]) == {"1"}
    assert set(frame["action"]) <= {"long", "flat", "short"}
    assert np.isfinite(frame[["expected_return", "q10", "q90", "prob_up", "vol_forecast"]].to_numpy()).all()
    # the same numbers as the run's own pyfunc, loaded directly
    with store.global_uri():
        direct = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(panel, params={"last_only": True})
    np.testing.assert_allclose(frame["expected_return"], direct["expected_return"])


def test_signal_tag_of_the_version_is_applied(champion, panel):
    uri, store, _, _ = champion
    plain, _ = predict_panel(f"models:/{NAME}/1", panel, store=store)
    signal = {"threshold": {"default": 1e9}, "min_confidence": {"default": 0.0}, "cost": 0.0, "eps": 1e-6}
    store.client.set_model_version_tag(NAME, "1", "quantml.signal", json.dumps(signal))
    try:
        tuned, resolved = predict_panel(f"models:/{NAME}@{ACTIVE}", panel, store=store)
    finally:
        store.client.delete_model_version_tag(NAME, "1", "quantml.signal")
    assert resolved.signal.threshold_for("1h") == 1e9
    assert set(tuned["action"]) == {"flat"}  # nothing clears a threshold of 1e9
    assert (plain["action"] != "flat").any()  # ... while the logged thresholds did trade
    np.testing.assert_allclose(tuned["expected_return"], plain["expected_return"])
    store.client.set_model_version_tag(NAME, "1", "quantml.signal", "{not json")
    try:
        with pytest.raises(QuantmlInputError, match="served v1: the quantml.signal tag is not JSON"):
            resolve_model(f"models:/{NAME}@{ACTIVE}", store)
    finally:
        store.client.delete_model_version_tag(NAME, "1", "quantml.signal")


def test_panel_that_breaks_the_feature_contract_is_refused(champion, panel):
    _, store, _, _ = champion
    with pytest.raises(QuantmlInputError, match=r"feature contract.*lacks column\(s\) \['funding_rate'\]"):
        predict_panel(f"models:/{NAME}@{ACTIVE}", panel.drop(columns=["funding_rate"]), store=store)
    with pytest.raises(QuantmlInputError, match="schema_version \\['2'\\] does not match"):
        predict_panel(f"models:/{NAME}@{ACTIVE}", panel.assign(schema_version="2"), store=store)


def test_model_uris_resolve_or_fail_clearly(champion):
    _, store, run_id, _ = champion
    assert resolve_model(f"models:/{NAME}/latest", store).version == "1"
    # promote moved `active` and, for one release, the 0.1 alias `champion` with it
    assert resolve_model(f"models:/{NAME}@{ACTIVE}", store).version == "1"
    assert resolve_model(f"models:/{NAME}@{CHAMPION}", store).version == "1"
    assert resolve_model(f"models:/{NAME}", store).version == "1"  # the default alias: active
    assert resolve_model(f"runs:/{run_id}/model", store).name == ""
    with pytest.raises(QuantmlInputError, match="has no alias 'staging'"):
        resolve_model(f"models:/{NAME}@staging", store)
    with pytest.raises(QuantmlInputError, match="has no version 7"):
        resolve_model(f"models:/{NAME}/7", store)
    with pytest.raises(QuantmlInputError, match="not a model URI"):
        resolve_model("served@champion", store)


def test_cli_writes_parquet_for_a_data_config_and_for_a_file(champion, panel, capsys):
    uri, _, _, root = champion
    out = root / "preds" / "champion.parquet"
    code = predict_main(
        [
            f"model=models:/{NAME}@{ACTIVE}",
            "data=synthetic",
            "data.n_bars=300",
            f"output={out}",
            f"tracking.uri={uri}",
            "preview=3",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert len(frame) == 4 and set(frame["model_version"]) == {"1"}
    assert f"4 predictions from {NAME} v1 -> {out}" in printed
    assert len(printed.strip().splitlines()) == 1 + 1 + 3  # summary, header, 3 preview rows

    path = root / "panel.parquet"
    panel.to_parquet(path)
    out_all = root / "preds" / "all.parquet"
    assert (
        predict_main(
            [f"model=models:/{NAME}/1", f"data={path}", "last_only=false", f"output={out_all}", f"tracking.uri={uri}"]
        )
        == 0
    )
    every = pd.read_parquet(out_all)
    assert len(every) == len(panel)  # every bar of every symbol, one horizon
    assert not every.duplicated(["symbol", "timestamp", "horizon"]).any()

    panel.drop(columns=["open_interest"]).to_parquet(root / "bad.parquet")
    capsys.readouterr()
    assert predict_main([f"model=models:/{NAME}@{ACTIVE}", f"data={root / 'bad.parquet'}", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert "open_interest" in err and "feature contract" in err
    assert predict_main(["data=synthetic", f"tracking.uri={uri}"]) == 2
    assert "model=... is required" in capsys.readouterr().err


def test_mlflow_models_serve_answers_the_contract_and_refuses_bad_panels(champion, panel):
    uri, store, _, root = champion
    expected, _ = predict_panel(f"models:/{NAME}@{ACTIVE}", panel, store=store)
    wire = panel.assign(timestamp=panel["timestamp"].map(lambda t: t.isoformat()))
    with mlflow_model_server(f"models:/{NAME}@{ACTIVE}", uri, root, timeout=150) as url:
        status, body = post_json(
            f"{url}/invocations",
            {
                "dataframe_split": wire.to_dict(orient="split"),
                "params": {"last_only": True, "model_name": NAME, "model_version": "1"},
            },
        )
        assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        assert list(served.columns) == list(PREDICTION_COLUMNS)
        assert served["timestamp"].tolist() == expected["timestamp"].map(lambda t: t.isoformat()).tolist()
        np.testing.assert_allclose(served["expected_return"], expected["expected_return"], rtol=1e-9)
        assert served["action"].tolist() == expected["action"].tolist()
        assert served["target_weight"].tolist() == expected["target_weight"].tolist()
        assert set(served["model_name"]) == {NAME}

        status, body = post_json(
            f"{url}/invocations", {"dataframe_split": wire.drop(columns=["funding_rate"]).to_dict(orient="split")}
        )
        assert status == 400
        assert "QuantmlInputError" in body.get("stack_trace", "") and "funding_rate" in body["stack_trace"]
        status, body = post_json(
            f"{url}/invocations", {"dataframe_split": wire.assign(schema_version="2").to_dict(orient="split")}
        )
        assert status == 400 and "does not match the model's" in body.get("stack_trace", "")


# -- one honest chain: tuned settings inside a version, serve == predict, warm-up --------------------
@pytest.fixture(scope="module")
def tuned(champion, panel):
    """NAME v<new>: v1 copied with non-trivial thresholds in its bundle (quantml tune attach=)."""
    from quantml.signals import SignalConfig
    from quantml.tuning.run import attach_to_model_version

    uri, store, run_id, _ = champion
    plain, _ = predict_panel(f"models:/{NAME}/1", panel, store=store, last_only=False)
    thr = float(plain["score"].abs().quantile(0.6))  # trades some bars, not all
    signal = SignalConfig.build({"default": thr}, {"default": 0.0}, cost=0.0005)
    mv = attach_to_model_version(
        NAME, "1", signal, AllocatorConfig(cov_window=30), source_run_id=run_id, tune_run_id=None, tracking_uri=uri
    )
    return str(mv.version), signal, plain


def _cfg(uri, model, path):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "model": model,
            "data": {"source": "file", "path": str(path)},
            "tracking_uri": uri,
            "last_only": False,
            "output": str(path.with_name("out.parquet")),
        }
    )


def test_attach_registers_a_new_candidate_whose_bundle_pyfunc_equals_predict(champion, panel, tuned, tmp_path):
    from quantml.serving.run import run_predict

    uri, store, run_id, _ = champion
    version, signal, plain = tuned
    mv = store.get_version(NAME, version)
    assert version != "1" and mv.run_id == run_id and mv.tags["quantml.source_version"] == "1"
    assert store.aliases(NAME)["candidate"] == version and store.aliases(NAME)[ACTIVE] == "1"  # gated again
    assert "quantml.signal" not in mv.tags
    path = tmp_path / "panel.parquet"
    panel.to_parquet(path)
    result = run_predict(_cfg(uri, f"models:/{NAME}/{version}", path))
    with store.global_uri():
        direct = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(panel, params={"last_only": False})
    assert result.resolved.signal is None
    assert result.frame["action"].tolist() == pd.DataFrame(direct)["action"].tolist()
    assert result.frame["action"].tolist() != plain["action"].tolist()  # the thresholds changed actions
    assert set(result.frame["action"]) >= {"flat"} and (result.frame["action"] != "flat").any()


def test_mlflow_models_serve_answers_the_same_actions_as_predict_after_attach(champion, panel, tuned):
    uri, store, _, root = champion
    version, _, plain = tuned
    expected, _ = predict_panel(f"models:/{NAME}/{version}", panel, store=store, last_only=False)
    wire = panel.assign(timestamp=panel["timestamp"].map(lambda t: t.isoformat()))
    with mlflow_model_server(f"models:/{NAME}/{version}", uri, root, timeout=150) as url:
        status, body = post_json(
            f"{url}/invocations", {"dataframe_split": wire.to_dict(orient="split"), "params": {"last_only": False}}
        )
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert served["action"].tolist() == expected["action"].tolist()
    assert served["action"].tolist() != plain["action"].tolist()
    # the rank book's weights read the forecasts, not the thresholds: tuning left them as they were
    assert served["target_weight"].tolist() == expected["target_weight"].tolist() == plain["target_weight"].tolist()


def test_a_panel_shorter_than_the_warm_up_is_refused(champion, panel, tmp_path):
    from quantml.tracking.pyfunc import load_bundle

    _, store, _, _ = champion
    with store.global_uri():
        bundle = load_bundle(f"models:/{NAME}/1", tmp_path)
    warmup = bundle.warmup_bars
    assert warmup and warmup >= 1
    bars = min(60, warmup)  # a 60-bar panel used to answer silently with other last-bar outputs
    short = panel.groupby("symbol", group_keys=False).tail(bars).reset_index(drop=True)
    with pytest.raises(QuantmlInputError, match=rf"needs at least {warmup + 1} bars .* has {bars}"):
        predict_panel(f"models:/{NAME}@{ACTIVE}", short, store=store)
    # one symbol short is named; a long enough panel answers
    mixed = pd.concat(
        [panel[panel["symbol"] != panel["symbol"].iloc[0]], short[short["symbol"] == panel["symbol"].iloc[0]]]
    )
    with pytest.raises(QuantmlInputError, match=f"{panel['symbol'].iloc[0]} has {bars}"):
        predict_panel(f"models:/{NAME}@{ACTIVE}", mixed.reset_index(drop=True), store=store)
    enough = panel.groupby("symbol", group_keys=False).tail(warmup + 1).reset_index(drop=True)
    frame, _ = predict_panel(f"models:/{NAME}@{ACTIVE}", enough, store=store)
    assert len(frame) == panel["symbol"].nunique()


def test_a_bundle_without_warmup_bars_still_predicts(champion, panel, tmp_path):
    from quantml.tracking.pyfunc import load_bundle

    _, store, _, _ = champion
    with store.global_uri():
        bundle = load_bundle(f"models:/{NAME}/1", tmp_path)
    bundle.metadata.pop("warmup_bars")
    del bundle.__dict__["allocator"]  # a bundle pickled before the field existed
    out = bundle.predict_contract(panel.groupby("symbol", group_keys=False).tail(5), last_only=True)
    assert len(out) == panel["symbol"].nunique()


# -- one book: target_weight is the configured strategy's, the same through predict and serve -------
ALLOCATOR_YAML = Path(CONFIG_DIR) / "strategy" / "allocator.yaml"
TUNED_ALLOCATOR = AllocatorConfig(cov_window=30, cov_min_periods=10, target_vol=0.2)


@pytest.fixture(scope="module")
def allocator_versions(champion, tuned):
    """``(allocator version, its tuned copy)``: v1 with ``strategy=allocator`` in its bundle (what a
    run with ``strategy=allocator`` logs), then ``quantml tune attach=`` of it with the tuned
    thresholds and allocator settings of ``tuned``."""
    from omegaconf import OmegaConf

    from quantml.registry.commands import copy_version_with_bundle
    from quantml.tuning.run import attach_to_model_version

    uri, store, run_id, _ = champion
    _, signal, _ = tuned
    config = OmegaConf.to_container(OmegaConf.load(ALLOCATOR_YAML), resolve=True)

    def allocator_strategy(bundle) -> None:
        bundle.strategy = config

    plain = copy_version_with_bundle(
        store.client, NAME, "1", allocator_strategy, log_run_id=run_id, artifact_name="model_allocator"
    )
    mv = attach_to_model_version(
        NAME, str(plain.version), signal, TUNED_ALLOCATOR, source_run_id=run_id, tune_run_id=None, tracking_uri=uri
    )
    return str(plain.version), str(mv.version)


def _through_pyfunc(store, version: str, panel: pd.DataFrame, last_only: bool) -> pd.DataFrame:
    with store.global_uri():
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    return pd.DataFrame(model.predict(panel, params={"last_only": last_only}))


def test_pyfunc_and_predict_give_the_same_actions_and_target_weights_for_both_strategies(
    champion, panel, tuned, allocator_versions
):
    _, store, _, _ = champion
    rank_tuned = tuned[0]
    allocator, allocator_tuned = allocator_versions
    frames = {}
    for version in ("1", rank_tuned, allocator, allocator_tuned):
        frame, _ = predict_panel(f"models:/{NAME}/{version}", panel, store=store, last_only=False)
        direct = _through_pyfunc(store, version, panel, last_only=False)
        assert list(frame.columns) == list(PREDICTION_COLUMNS)
        assert frame["action"].tolist() == direct["action"].tolist()
        assert frame["target_weight"].tolist() == direct["target_weight"].tolist()
        # the last bar's weight is the same whether the panel's other bars are predicted or not
        last, _ = predict_panel(f"models:/{NAME}/{version}", panel, store=store, last_only=True)
        at_last = frame.merge(last[["symbol", "timestamp", "horizon"]], on=["symbol", "timestamp", "horizon"])
        np.testing.assert_allclose(last["target_weight"], at_last["target_weight"], rtol=1e-12, atol=1e-15)
        frames[version] = frame
    rank, alloc, alloc_tuned = frames["1"], frames[allocator], frames[allocator_tuned]
    # the rank book: dollar-neutral rank weights, gross 1 at every bar with forecasts
    gross = rank.groupby("timestamp")["target_weight"].apply(lambda w: np.abs(w).sum())
    np.testing.assert_allclose(gross[gross > 0], 1.0)
    # the allocator: flat rows get no weight, the thresholds and allocator settings move the book
    assert (alloc.loc[alloc["action"] == "flat", "target_weight"] == 0).all()
    assert (alloc["target_weight"] != 0).sum() > 50
    assert alloc["target_weight"].tolist() != rank["target_weight"].tolist()
    assert alloc_tuned["target_weight"].tolist() != alloc["target_weight"].tolist()
    assert alloc_tuned["action"].tolist() == frames[rank_tuned]["action"].tolist()  # same tuned thresholds


def test_served_target_weights_are_the_backtest_books_positions(champion, panel, allocator_versions):
    """The engine, run on the served frame with the panel as its market, holds exactly the
    served weights: serve == backtest, for the rank book (1h bars, 1h horizon: held one bar) and
    the tuned allocator."""
    from quantml.backtest import run_backtest
    from quantml.market.execution import CostModel
    from quantml.tracking.pyfunc import load_bundle

    _, store, _, root = champion
    market = market_returns(panel)
    for version in ("1", allocator_versions[1]):
        frame, _ = predict_panel(f"models:/{NAME}/{version}", panel, store=store, last_only=False)
        with store.global_uri():
            bundle = load_bundle(f"models:/{NAME}/{version}", root / f"bundle-{version}")
        strategy = bundle.serving_strategy(SignalConfig.from_dict(bundle.signal), panel)
        ppy = bundle.periods_per_year(panel)
        result = run_backtest(strategy, frame, CostModel(), ppy, market=market)
        held = result.positions.rename_axis(index="timestamp", columns="symbol").stack().rename("held").reset_index()
        both = frame.merge(held, on=["timestamp", "symbol"])
        assert len(both) == len(frame)
        np.testing.assert_allclose(both["held"], both["target_weight"], rtol=1e-12, atol=1e-15)
        assert (both["held"] != 0).any()


def test_an_allocator_model_refuses_a_panel_shorter_than_its_covariance_window(
    champion, panel, allocator_versions, tmp_path
):
    """This model's warm-up (263 bars of 1h features) already covers allocator.yaml's 60-bar
    window; a covariance window past the warm-up is refused by its own message, naming the bars."""
    from quantml.tracking.pyfunc import load_bundle

    _, store, _, _ = champion
    with store.global_uri():
        bundle = load_bundle(f"models:/{NAME}/{allocator_versions[0]}", tmp_path)
    warmup = bundle.warmup_bars
    window = warmup + 10
    bundle.strategy = {**bundle.strategy, "allocator": {**bundle.strategy["allocator"], "cov_window": window}}
    assert window + 1 <= panel.groupby("symbol").size().min()
    short = panel.groupby("symbol", group_keys=False).tail(warmup + 1).reset_index(drop=True)
    with pytest.raises(
        QuantmlInputError,
        match=rf"needs at least {window + 1} bars \(the allocator's covariance window, "
        rf"strategy.allocator.cov_window={window}.* has {warmup + 1}",
    ):
        bundle.predict_contract(short, last_only=True)
    enough = panel.groupby("symbol", group_keys=False).tail(window + 1).reset_index(drop=True)
    frame = bundle.predict_contract(enough, last_only=True)
    assert len(frame) == panel["symbol"].nunique() and (frame["target_weight"] != 0).any()
    # (the last bar's weight equals a longer history's only given equal forecasts: the features'
    # 480-bar regime window still moves them here; tests/unit/test_target_weights.py pins the window)


def test_mlflow_models_serve_answers_the_allocators_target_weights_after_attach(champion, panel, allocator_versions):
    uri, store, _, root = champion
    version = allocator_versions[1]
    expected, _ = predict_panel(f"models:/{NAME}/{version}", panel, store=store, last_only=False)
    last, _ = predict_panel(f"models:/{NAME}/{version}", panel, store=store, last_only=True)
    wire = panel.assign(timestamp=panel["timestamp"].map(lambda t: t.isoformat()))
    with mlflow_model_server(f"models:/{NAME}/{version}", uri, root, timeout=150) as url:
        answers = [
            post_json(
                f"{url}/invocations", {"dataframe_split": wire.to_dict(orient="split"), "params": {"last_only": flag}}
            )
            for flag in (False, True)
        ]
    for (status, body), want in zip(answers, (expected, last)):
        assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        assert served["action"].tolist() == want["action"].tolist()
        assert served["target_weight"].tolist() == want["target_weight"].tolist()
    assert (expected["target_weight"] != 0).any() and (last["target_weight"] != 0).any()
