"""Route maps: the active model per (symbol, horizon), a registered model of its own (docs/routing.md).

Two tiny ridge models (seeds 1 and 2, horizons 1h and 4h, on the seeded synthetic panel of BTC, ETH,
SOL, BNB) are trained once for the module and registered as ``served`` v1 and v2 in a temporary
SQLite store. The tests route them through the ``quantml registry`` command line, promote and roll
back the map, and check which version produced each row of ``quantml predict``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.cli.predict import main as predict_main
from quantml.cli.registry import main as registry_main
from quantml.contracts import PREDICTION_COLUMNS
from quantml.data import load_panel
from quantml.registry import register, routing
from quantml.registry.commands import copy_version_with_bundle
from quantml.serving import predict_panel
from tests.helpers.registry_fakes import mlflow_model_server, post_json
from tests.helpers.tiny_runs import temp_store, train_run

MODEL = "served"
TRAIN = [
    "data=synthetic",
    "data.n_bars=500",
    "backbone=ridge",
    "horizon=1h",
    "horizon.horizons=[1h,4h]",
    "validation.n_splits=3",
    "validation.embargo=4h",
    "print_report=false",
    "tracking.experiment=routing",
]
PANEL = {"source": "synthetic", "freq": "1h", "n_symbols": 4, "n_bars": 300, "seed": 5, "start": "2024-03-01"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(tracking uri, store, work dir) with two trained runs registered as ``served`` v1 and v2."""
    root = tmp_path_factory.mktemp("routing")
    uri, store = temp_store(root, ["routing", routing.ROUTE_EXPERIMENT])
    for seed in (1, 2):
        register(store, train_run(uri, [*TRAIN, f"seed={seed}"]).parent_run_id, MODEL)
    return uri, store, root


@pytest.fixture(scope="module")
def panel():
    return load_panel(PANEL)


def cli(uri: str, *args: str) -> int:
    return registry_main([*args, f"tracking.uri={uri}"])


def test_route_promote_predict_and_roll_one_entry_back(models, panel, capsys, tmp_path):
    uri, store, root = models
    assert cli(uri, "route", "desk", MODEL, "1", "reason=the desk default") == 0
    assert cli(uri, "route", "desk", MODEL, "2", "symbols=BTC,ETH") == 0
    assert cli(uri, "route", "desk", MODEL, "1", "symbols=ETH", "horizons=4h") == 0
    out = capsys.readouterr().out
    assert "desk v1 (alias candidate, a new map): symbols=* horizons=*: unrouted -> served v1" in out
    assert "desk v2 (alias candidate, built on v1): symbols=BTC,ETH horizons=*: unrouted -> served v2" in out
    assert "desk v3 (alias candidate, built on v2)" in out
    mv = store.get_version("desk", 3)
    assert mv.tags[routing.TAG_ROUTE_ENTRIES].count('"model"') == 3 and mv.tags["quantml.horizons"] == "1h,4h"
    assert store.client.get_run(mv.run_id).info.status == "FINISHED"
    assert store.client.get_run(mv.run_id).data.tags["quantml.kind"] == "route"

    # the gates of a map: every distinct entry version's own report, one verdict
    report = routing.check_route_gates(store, "desk", 3)
    names = [r.name for r in report.results]
    assert any(n.startswith("served v1: ") for n in names) and any(n.startswith("served v2: ") for n in names)
    assert report.passed == all(r.passed for r in report.results)
    code = cli(uri, "promote", "desk", "3", "force=true", "reason=tiny test models: the gates are not the point")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Promotion gates for route map desk v3" in out and "served v2: " in out
    assert "desk: active v- -> v3" in out

    # one contract, each row naming the version that produced it
    frame, resolved = predict_panel("models:/desk@active", panel, store=store)
    assert (resolved.name, resolved.version) == ("desk", "3")
    assert list(frame.columns) == list(PREDICTION_COLUMNS)
    assert len(frame) == 4 * 2 and not frame.duplicated(["symbol", "horizon"]).any()
    served = {(r.symbol, r.horizon): r.model_version for r in frame.itertuples()}
    want = {(s, h): "1" for s in ("BNB", "SOL") for h in ("1h", "4h")}
    want.update({("BTC", "1h"): "2", ("BTC", "4h"): "2", ("ETH", "1h"): "2", ("ETH", "4h"): "1"})
    assert served == want
    assert set(frame["model_name"]) == {MODEL}
    # the numbers are each version's own on the whole panel
    v1, _ = predict_panel(f"models:/{MODEL}/1", panel, store=store)
    v2, _ = predict_panel(f"models:/{MODEL}/2", panel, store=store)
    for version, direct in (("1", v1), ("2", v2)):
        mine = frame[frame["model_version"] == version].merge(direct, on=["symbol", "horizon"], suffixes=("", "_d"))
        np.testing.assert_allclose(mine["expected_return"], mine["expected_return_d"])
        np.testing.assert_allclose(mine["target_weight"], mine["target_weight_d"])
    assert frame["horizon"].tolist() == ["1h"] * 4 + ["4h"] * 4  # horizon-major, then symbol
    assert frame["symbol"].tolist()[:4] == sorted(panel["symbol"].unique())

    # the routes table: entries of the active version and their history
    assert cli(uri, "routes", "desk") == 0
    out = capsys.readouterr().out
    assert out.startswith("route map desk v3 (active,candidate,champion): symbols=ETH horizons=4h")
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines()[2:]}
    assert "v1: served v1" in lines["* *"] and "BTC,ETH *" in lines and "ETH 4h" in lines
    assert "v2: served v2" in lines["BTC,ETH *"]

    # roll one entry back: BTC,ETH returns to what it had before (unrouted -> removed), active at once
    assert cli(uri, "rollback", "desk", "symbols=BTC,ETH", "reason=v2 misbehaves on BTC") == 0
    out = capsys.readouterr().out
    assert "rollback symbols=BTC,ETH horizons=*: served v2 -> removed" in out
    assert "active v3 -> v4 (entry rollback)" in out
    assert store.active_version("desk") == "4"
    again, resolved = predict_panel("models:/desk@active", panel, store=store)
    assert resolved.version == "4" and set(again["model_version"]) == {"1"}
    # the entry of a replaced selector returns to its previous version
    assert cli(uri, "route", "desk", MODEL, "2", "horizons=4h", "symbols=ETH") == 0
    capsys.readouterr()
    assert cli(uri, "promote", "desk", "5", "force=true", "reason=try v2 on ETH 4h") == 0
    assert cli(uri, "rollback", "desk", "symbols=ETH", "horizons=4h") == 0
    assert "ETH horizons=4h: served v2 -> served v1" in capsys.readouterr().out
    assert routing.map_entries(store, "desk", 6)[-1].previous == ()

    # plain `rollback MAP` keeps its meaning: the previous active map version (v5: ETH 4h on v2)
    assert cli(uri, "rollback", "desk") == 0
    assert "rolled back active v6 -> v5" in capsys.readouterr().out
    assert cli(uri, "history", "desk") == 0
    history = capsys.readouterr().out
    assert "rollback symbols=BTC,ETH horizons=*" in history and "rollback symbols=ETH horizons=4h" in history

    # `quantml predict` on the map works unchanged
    path = tmp_path / "panel.parquet"
    panel.to_parquet(path)
    output = tmp_path / "routed.parquet"
    assert predict_main(["model=models:/desk@active", f"data={path}", f"output={output}", f"tracking.uri={uri}"]) == 0
    written = pd.read_parquet(output)
    assert "8 predictions from desk v5" in capsys.readouterr().out
    cell = written.set_index(["symbol", "horizon"])["model_version"]
    assert cell[("ETH", "4h")] == "2" and (cell.drop(("ETH", "4h")) == "1").all()


def test_routes_that_cannot_be_served_are_refused(models, capsys):
    uri, store, root = models

    def refused(*args: str) -> str:
        code = cli(uri, *args)
        err = capsys.readouterr().err
        assert code == 2, err
        return err

    err = refused("route", "book", MODEL, "1", "symbols=BTC")
    assert "its first route must be the default" in err and "default=NAME:VERSION" in err
    assert cli(uri, "route", "book", MODEL, "1", "symbols=BTC", f"default={MODEL}:2") == 0
    assert routing.map_entries(store, "book", 1)[0].is_default
    assert "not trained on symbol DOGE (its symbols: BNB, BTC, ETH, SOL)" in refused(
        "route", "book", MODEL, "2", "symbols=BTC,DOGE"
    )
    assert "served v2 has no horizon 1d (it predicts 1h, 4h)" in refused("route", "book", MODEL, "2", "horizons=1d")
    assert "has no version 9" in refused("route", "book", MODEL, "9")
    assert "registered model 'nope' does not exist" in refused("route", "book", "nope", "1")
    assert "is a registered model (versions 1, 2), not a route map" in refused("route", MODEL, MODEL, "1")
    assert "itself a route map" in refused("route", "book", "book", "1")
    assert "has no active version" in refused("rollback", "book", "symbols=BTC")
    assert len(store.versions("book")) == 1  # nothing refused made a version

    # a cross-sectional model (bundle metadata cross_sectional: true) is routed for all its symbols or none
    run = store.client.create_run(store.client.get_experiment_by_name("routing").experiment_id).info.run_id
    try:
        hybrid = copy_version_with_bundle(
            store.client,
            MODEL,
            "1",
            lambda b: b.metadata.update({routing.CROSS_SECTIONAL: True}),
            log_run_id=run,
            artifact_name="hybrid",
        )
    finally:
        store.client.set_terminated(run, "FINISHED")
    err = refused("route", "book", MODEL, str(hybrid.version), "symbols=BTC")
    assert "is cross-sectional" in err and "all its symbols at once" in err
    assert cli(uri, "route", "xs", MODEL, str(hybrid.version)) == 0
    err = refused("route", "xs", MODEL, "2", "symbols=BTC")
    assert "serves all its symbols at 1h or none" in err and "BTC (served v2)" in err
    assert cli(uri, "route", "xs", MODEL, "2", "horizons=4h") == 0  # a whole horizon is fine


@pytest.mark.slow
def test_mlflow_models_serve_answers_the_routed_contract(models, panel):
    uri, store, root = models
    routing.route(store, "served-desk", MODEL, 1)
    change = routing.route(store, "served-desk", MODEL, 2, symbols="BTC")
    expected, _ = predict_panel(f"models:/served-desk/{change.version.version}", panel, store=store)
    wire = panel.assign(timestamp=panel["timestamp"].map(lambda t: t.isoformat()))
    with mlflow_model_server(f"models:/served-desk/{change.version.version}", uri, root, timeout=150) as url:
        status, body = post_json(
            f"{url}/invocations", {"dataframe_split": wire.to_dict(orient="split"), "params": {"last_only": True}}
        )
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert list(served.columns) == list(PREDICTION_COLUMNS)
    assert served["model_version"].tolist() == expected["model_version"].tolist()
    assert set(served.loc[served["symbol"] == "BTC", "model_version"]) == {"2"}
    np.testing.assert_allclose(served["expected_return"], expected["expected_return"], rtol=1e-9)


def test_the_routed_book_is_traded_as_one_book(models):
    from quantml.registry.book import per_fold, run_books
    from quantml.registry.gates import load_gates_config
    from quantml.registry.routed_book import GATE_NAME, RoutedBook, gate_routed_book
    from quantml.tracking import RunReader

    uri, store, _ = models
    assert cli(uri, "route", "onebook", MODEL, "1") == 0  # every cell on v1
    assert cli(uri, "route", "onebook", MODEL, "2", "symbols=BTC") == 0  # BTC from v2
    reader = RunReader(uri)
    own = {}
    for v in ("1", "2"):
        rb = run_books(reader.parent(store.get_version(MODEL, v).run_id))
        own[v] = rb
    # a map of one entry trades exactly that version's book
    whole = RoutedBook(store, "onebook", 1)
    assert whole.problem is None
    assert whole.fold_sharpe() == per_fold(own["1"].books.results(own["1"].strategy()))
    # the mixed map: BTC's rows come from v2's run, every other symbol's from v1's, traded together
    mixed = RoutedBook(store, "onebook", 2)
    frame = mixed.books.frame
    for v, symbols in (("2", {"BTC"}), ("1", {"ETH", "SOL", "BNB"})):
        theirs = own[v].books.frame
        mine = frame[frame["symbol"].isin(symbols)].sort_values(["symbol", "horizon", "timestamp"])
        expected = theirs[theirs["symbol"].isin(symbols)].sort_values(["symbol", "horizon", "timestamp"])
        np.testing.assert_array_equal(mine["expected_return"].to_numpy(), expected["expected_return"].to_numpy())
    assert len(frame) == len(own["1"].books.frame)
    result = gate_routed_book(store, "onebook", 2, load_gates_config())
    assert result.name == GATE_NAME and set(result.figures["candidate"]) == {"1h", "4h"}
    assert "traded with served v1's strategy" in result.detail
    # fold runs carry per-symbol figures: each entry is read on the cells it serves
    table = reader.per_symbol(store.get_version(MODEL, "2").run_id)
    assert set(table["symbol"]) == {"BTC", "ETH", "SOL", "BNB"} and set(table["horizon"]) == {"1h", "4h"}
    assert "per entry, mean fold rank IC on its cells: served v1" in result.detail and "served v2 1h" in result.detail
    assert any(r.name == GATE_NAME for r in routing.check_route_gates(store, "onebook", 2).results)


def test_a_route_map_is_tuned_as_one_book_and_its_tuned_version_serves_and_gates_with_it(models, panel, capsys):
    from quantml.cli.tune import main as tune_main
    from quantml.contracts import run_layout as L
    from quantml.registry.gates import load_gates_config
    from quantml.registry.routed_book import RoutedBook, gate_routed_book
    from quantml.tracking import RunReader
    from quantml.tracking.pyfunc import load_bundle

    uri, store, root = models
    assert cli(uri, "route", "tunedbook", MODEL, "1") == 0
    assert cli(uri, "route", "tunedbook", MODEL, "2", "symbols=BTC") == 0
    capsys.readouterr()
    base = ["study.storage=memory", "study.n_trials=6", "study.n_startup_trials=3", f"tracking.uri={uri}"]
    assert tune_main(["map=tunedbook:2", "attach=tunedbook:2", *base]) == 0
    out = capsys.readouterr().out
    assert "registered tunedbook v3 with the tuned settings" in out
    routed = RoutedBook(store, "tunedbook", 2)
    tuned_mv = store.get_version("tunedbook", 3)
    tune_run = tuned_mv.tags[L.TAG_TUNE_RUN]
    # the study traded the map's routed book: its untuned baseline is the routed book's Sharpe, fold by fold
    reader = RunReader(uri)
    table = pd.read_csv(reader.client.download_artifacts(tune_run, "tune/fold_sharpe.csv", str(root)))
    expected = routed.fold_sharpe()
    for r in table.itertuples():
        np.testing.assert_allclose(r.baseline, expected[r.horizon][int(r.fold)], rtol=1e-9, atol=1e-12)
    assert reader.client.get_run(tune_run).data.tags[L.MLFLOW_PARENT_RUN_ID] == store.get_version("tunedbook", 2).run_id

    # the tuned map version: same entries, the tuned thresholds served for every cell
    assert routing.is_route_version(tuned_mv) and tuned_mv.tags[L.TAG_SOURCE_VERSION] == "2"
    assert routing.tagged_entries(tuned_mv) == routing.tagged_entries(store.get_version("tunedbook", 2))
    with store.global_uri():
        bundle = load_bundle("models:/tunedbook/3", str(root / "tuned"))
        untuned = load_bundle("models:/tunedbook/2", str(root / "untuned"))
    assert bundle.is_tuned and not untuned.is_tuned and bundle.signal != untuned.signal
    served, _ = predict_panel("models:/tunedbook/3", panel, store=store)
    explicit = untuned.predict_contract(panel, last_only=True, signal=dict(bundle.signal))
    np.testing.assert_allclose(served["score"], explicit["score"])
    assert served["action"].tolist() == explicit["action"].tolist()

    # gated on the folds its thresholds were not tuned on, with its own settings
    result = gate_routed_book(store, "tunedbook", 3, load_gates_config())
    selection = sorted({int(f) for f in table.loc[table["split"] == "selection", "fold"]})
    assert "tunedbook v3's tuned settings, on selection folds" in result.detail
    assert all(sorted(by_fold) == selection for by_fold in result.figures["candidate"].values())

    # bad input: a model that is no map, and two sources at once
    assert tune_main([f"map={MODEL}:1", *base]) == 2
    assert "served is not a route map" in capsys.readouterr().err
    assert tune_main(["map=tunedbook:2", "run_id=abc", *base]) == 2
    assert "tune one source" in capsys.readouterr().err
