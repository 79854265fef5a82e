"""`quantml stack` on a real tiny sweep of two walk-forward ridge experts (trained in-process): the stack
run and its comparison table, the consistency refusals (a purged K-fold expert, another data
fingerprint), the leakage audit (a planted duplicate key fails and stops; force=true reason= records it),
and the walk-forward rule (fold k's rows never reach the combiner of folds before k, fold k's outcomes
never reach fold k's)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from quantml.cli import main as dispatcher
from quantml.contracts import PREDICTION_COLUMNS, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.registry.store import mlflow_uri_scope
from quantml.stacking import StackSettings, build_stack, fit_mask, walk_forward
from quantml.stacking.experts import CONSISTENCY_FIELDS
from quantml.stacking.run import COMPARED, combiner_config, make_combiner
from quantml.tracking.reader import RunReader
from quantml.tracking.writer import RunWriter
from tests.helpers import TINY
from tests.helpers.registry_fakes import sqlite_store

SWEEP_DIR = "multirun/stack"
WALK_FORWARD_ONLY = ("serve=false", "holdout=false")  # no served stack, no lockbox: the first step's stack


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from quantml.cli.common import CONFIG_DIR
    from quantml.experiment import RunContext, run_experiment

    root = tmp_path_factory.mktemp("stack")
    uri = sqlite_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        ids = []
        for alpha in (0.1, 30.0):
            GlobalHydra.instance().clear()
            with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
                cfg = compose(
                    "config",
                    overrides=[
                        *TINY,
                        "backbone=ridge",
                        f"backbone.alpha={alpha}",
                        "tracking.experiment=stack",
                        "tracking.log_model=true",  # the served stack runs the final models
                    ],
                )
            GlobalHydra.instance().clear()
            ids.append(run_experiment(cfg, RunContext(sweep_dir=SWEEP_DIR)).parent_run_id)
        client = mlflow.MlflowClient(uri)
        yield {"uri": uri, "root": root, "ids": ids, "client": client, "reader": RunReader(client=client)}
    mlflow.set_tracking_uri(None)


def stack(capsys, sweep, *args) -> tuple[int, str, str]:
    rc = dispatcher.main(["stack", f"tracking.uri={sweep['uri']}", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def stack_runs(sweep) -> list:
    client = sweep["client"]
    exp = client.get_experiment_by_name("stack")
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{L.TAG_KIND}` = '{L.KIND_STACK}'",
        order_by=["attributes.start_time DESC"],
    )


def test_stack_run_comparison_and_layout(sweep, capsys):
    out_dir = sweep["root"] / "stack_out"
    # the served stack and the lockbox are tested below (the `served` fixture); here the walk-forward only
    rc, out, err = stack(capsys, sweep, f"sweep_dir={SWEEP_DIR}", f"output_dir={out_dir}", *WALK_FORWARD_ONLY)
    assert rc == 0, err
    reader, client = sweep["reader"], sweep["client"]
    experts = [reader.parent(i) for i in sweep["ids"]]

    # the comparison table: the stack, both baselines and each expert, on the same rows and folds
    table = pd.read_csv(out_dir / L.STACK_COMPARISON_CSV)
    assert list(table.columns) == [
        "candidate", "kind", "horizon", *COMPARED, "rank_ic_fold_mean", "sharpe_after_cost_fold_mean",
        "n_rows", "n_folds", "run_id",
    ]  # fmt: skip
    assert list(table["candidate"]) == ["ridge", "equal_weight", "best_single", "e0", "e1"]
    assert list(table["kind"]) == ["stack", "baseline", "baseline", "expert", "expert"]
    assert table["n_rows"].nunique() == 1 and (table["n_folds"] == 2).all()
    assert np.isfinite(table[list(COMPARED)].to_numpy(float)).all()
    assert list(table["run_id"].fillna("")[3:]) == sweep["ids"]
    assert "Comparison on the same folds" in out and "PASS  duplicate_keys" in out

    # the stack run: kind stack, the consistency fields it checked, its experts, two nested fold runs
    run = stack_runs(sweep)[0]
    tags = run.data.tags
    assert run.info.status == "FINISHED" and run.info.run_id in out
    assert tags[L.TAG_STACK_EXPERTS] == ",".join(sweep["ids"])
    for tag, _ in CONSISTENCY_FIELDS:
        key = L.TAG_EXPERTS_LAYOUT_VERSION if tag == L.TAG_LAYOUT_VERSION else tag
        assert tags[key] == experts[0].tags[tag]
    assert tags[L.TAG_STACK_AUDIT] == "clean" and tags[L.TAG_COMBINER] == "ridge"
    folds = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{L.MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}'"
    )
    assert sorted(f.data.tags[L.TAG_FOLD_ID] for f in folds) == ["1", "2"]
    for f in folds:
        assert pd.Timestamp(f.data.params["train_end"]) < pd.Timestamp(f.data.params["test_start"])
        assert np.isfinite(f.data.metrics["test_rank_ic/4h"])
    # the stack's own pooled figures are the comparison row's; the baselines logged beside them
    stack_row = table.iloc[0]
    assert run.data.metrics["oos_ap/4h"] == pytest.approx(stack_row["ap"], abs=1e-12)
    assert run.data.metrics["cmp_equal_weight_rmse/4h"] == pytest.approx(table.iloc[1]["rmse"], abs=1e-12)
    logged = {a.path for sub in ("stack", "predictions", "folds") for a in client.list_artifacts(run.info.run_id, sub)}
    assert {
        L.STACK_OOF_ARTIFACT, L.STACK_COMPARISON_CSV, L.STACK_AUDIT_ARTIFACT, L.STACK_EXPERTS_ARTIFACT,
        L.OOS_ARTIFACT, L.MARKET_ARTIFACT, L.FOLD_PLAN_ARTIFACT,
    } <= logged  # fmt: skip
    # a stack run is not a parent: never a trial of a sweep, nor listed among its experts
    assert {p.run_id for p in reader.sweep_parents(SWEEP_DIR)} == set(sweep["ids"])

    # the OOF table: one row per key, one block per expert, the stack's predictions in the contract
    oof = pd.read_parquet(out_dir / L.STACK_OOF_ARTIFACT)
    assert not oof.duplicated(["symbol", "timestamp", "horizon"]).any()
    for alias in ("e0", "e1"):
        for name in ("expected_return", "prob_up", "q10", "q90", "vol_forecast", "score"):
            assert f"{alias}__{name}" in oof.columns
    preds = pd.read_parquet(out_dir / L.OOS_ARTIFACT)
    for col in ("expected_return", "prob_up", "q10", "q90", "vol_forecast", "score", "confidence", "action"):
        assert preds[col].notna().all(), col
    assert (preds["q10"] <= preds["q90"]).all() and set(preds["fold"]) == {1, 2}


def test_regime_gate_stack_logs_its_weights_and_their_plot(sweep, capsys):
    out_dir = sweep["root"] / "gate_out"
    rc, out, err = stack(
        capsys, sweep, f"sweep_dir={SWEEP_DIR}", "combiner=regime_gate", "baselines=[equal_weight]",
        f"output_dir={out_dir}", *WALK_FORWARD_ONLY,
    )  # fmt: skip
    assert rc == 0, err
    weights = pd.read_parquet(out_dir / L.STACK_GATE_WEIGHTS_ARTIFACT)
    preds = pd.read_parquet(out_dir / L.OOS_ARTIFACT)
    assert len(weights) == len(preds) and set(weights["fold"]) == {1, 2}
    ok = weights[["e0", "e1"]].notna().all(axis=1)
    assert ok.mean() > 0.9  # NaN only where a regime input is still warming up
    assert np.allclose(weights.loc[ok, ["e0", "e1"]].sum(axis=1), 1.0)
    assert any(c.startswith("regime__") for c in weights.columns)
    assert (out_dir / L.STACK_GATE_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = stack_runs(sweep)[0]
    logged = {a.path for a in sweep["client"].list_artifacts(run.info.run_id, "stack")}
    assert {L.STACK_GATE_WEIGHTS_ARTIFACT, L.STACK_GATE_FIGURE} <= logged
    assert run.data.tags[L.TAG_COMBINER] == "regime_gate"


def _fake_parent(sweep, source_id: str, **changes) -> str:
    """A finished parent run with the tags of ``source_id`` except ``changes`` (what the checks read)."""
    source = sweep["reader"].parent(source_id)
    tags = {k: v for k, v in source.tags.items() if k.startswith(L.TAG_PREFIX) and k != L.TAG_SWEEP_DIR}
    tags.update(changes)
    writer = RunWriter(source.experiment_id, sweep["client"])
    run = writer.start_parent("fake expert", tags=tags, commit="x")
    run.end("FINISHED")
    return run.run_id


def test_consistency_refusals_name_the_run_and_the_field(sweep, capsys):
    a = sweep["ids"][0]
    kfold = _fake_parent(sweep, a, **{L.TAG_VALIDATION: "purged_kfold", L.TAG_TRADABLE: "false"})
    rc, _, err = stack(capsys, sweep, f"runs=[{a},{kfold}]", "log_to_mlflow=false")
    assert rc == 2 and kfold in err and "purged_kfold" in err and "later than" in err
    assert f"exclude=[{kfold}]" in err

    other = _fake_parent(sweep, a, **{L.TAG_DATA_FINGERPRINT: "0123456789abcdef"})
    rc, _, err = stack(capsys, sweep, f"runs=[{a},{other}]", "log_to_mlflow=false")
    assert rc == 2 and other in err and L.TAG_DATA_FINGERPRINT in err and f"exclude=[{other}]" in err

    rc, _, err = stack(capsys, sweep, f"runs=[{a},{other}]", f"exclude=[{other}]", "log_to_mlflow=false")
    assert rc == 2 and "at least 2 experts" in err
    rc, _, err = stack(capsys, sweep, f"runs=[{a},{sweep['ids'][1]}]", "horizons=[1d]", "log_to_mlflow=false")
    assert rc == 2 and "has no horizon 1d" in err
    rc, _, err = stack(capsys, sweep, f"sweep_dir={SWEEP_DIR}", "force=true", "log_to_mlflow=false")
    assert rc == 2 and "reason=" in err
    assert not stack_runs(sweep) or all(kfold not in r.data.tags[L.TAG_STACK_EXPERTS] for r in stack_runs(sweep))


def test_audit_duplicate_key_fails_and_stops_unless_forced(sweep, capsys):
    client, reader = sweep["client"], sweep["reader"]
    expert = sweep["ids"][0]
    original = reader.oos_predictions(expert)
    planted = pd.concat([original, original.iloc[[10]]], ignore_index=True)

    def log_oos(frame):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(L.OOS_ARTIFACT).name
            frame.to_parquet(path, index=False)
            client.log_artifact(expert, str(path), str(Path(L.OOS_ARTIFACT).parent))

    log_oos(planted)
    try:
        assert len(reader.oos_predictions(expert)) == len(original) + 1
        out_dir = sweep["root"] / "audit_out"
        rc, out, err = stack(capsys, sweep, f"sweep_dir={SWEEP_DIR}", f"output_dir={out_dir}", *WALK_FORWARD_ONLY)
        assert rc == 1 and "duplicate_keys (1" in err and "force=true reason=" in err and out == ""
        audit = json.loads((out_dir / L.STACK_AUDIT_ARTIFACT).read_text())
        assert audit["checks"]["duplicate_keys"]["status"] == "FAIL" and not audit["clean"]
        assert audit["checks"]["gaps"]["status"] == "PASS"
        assert not (out_dir / L.STACK_OOF_ARTIFACT).exists()  # stopped before anything was fitted
        failed = stack_runs(sweep)[0]
        assert failed.info.status == "FAILED" and failed.data.tags[L.TAG_STACK_AUDIT] == "violations"
        assert "StackAuditError" in failed.data.tags[L.TAG_ERROR]

        rc, out, err = stack(capsys, sweep, f"sweep_dir={SWEEP_DIR}", "force=true", "reason=x", *WALK_FORWARD_ONLY)
        assert rc == 0, err
        assert "FAIL  duplicate_keys" in out and "reason: x" in out
        forced = stack_runs(sweep)[0]
        assert forced.info.status == "FINISHED"
        assert forced.data.tags[L.TAG_STACK_FORCED] == "true" and forced.data.tags[L.TAG_STACK_FORCE_REASON] == "x"
        with tempfile.TemporaryDirectory() as tmp:
            logged = json.loads(
                Path(client.download_artifacts(forced.info.run_id, L.STACK_AUDIT_ARTIFACT, tmp)).read_text()
            )
        assert logged["forced"] and logged["reason"] == "x" and logged["checks"]["duplicate_keys"]["count"] == 1
    finally:
        log_oos(original)


def test_walk_forward_never_reads_a_fold_before_it_is_predicted(sweep):
    settings = StackSettings(
        combiner=combiner_config("ridge"), sweep_dir=SWEEP_DIR, log_to_mlflow=False, serve=False, holdout=False
    )
    result = build_stack(sweep["reader"], settings)
    table, folds, aliases = result.table, result.folds, [e.alias for e in result.experts]
    kwargs = dict(
        embargo=result.embargo,
        crossfit_folds=result.crossfit_folds,
        cfg_evaluation=result.experts[0].run.config().evaluation,
        signal=_signal(result),
        min_fit_rows=settings.min_fit_rows,
    )
    # the rule itself: fit rows of fold k come from earlier folds, labels ended before its first test bar
    for fold in folds:
        rows = table[fit_mask(table, fold, result.embargo)]
        assert len(rows) and (rows["fold"] < fold.fold_id).all()
        assert (pd.to_datetime(rows["t1"], utc=True) + result.embargo < fold.test_start).all()

    rng = np.random.default_rng(0)
    outcomes = ["ret", "ret_after_cost", "dir"]
    forecasts = [c for c in table.columns if "__" in c]
    for name in ("ridge", "best_single"):
        make = lambda name=name: make_combiner(combiner_config(name))  # noqa: E731
        base, _ = walk_forward(make, table, aliases, folds, **kwargs)
        k = folds[0].fold_id
        at_k = table["fold"] == k
        # fold k's outcomes changed: no prediction for folds <= k changes, the next fold's do
        moved = table.copy()
        moved.loc[at_k, "ret"] = rng.normal(0, 0.05, int(at_k.sum()))
        moved.loc[at_k, "ret_after_cost"] = moved.loc[at_k, "ret"] - 0.001
        moved.loc[at_k, "dir"] = (moved.loc[at_k, "ret"] > 0).astype(float)
        again, _ = walk_forward(make, moved, aliases, folds, **kwargs)
        cols = ["expected_return", "prob_up", "q10", "q90", "vol_forecast", "score", "confidence"]
        same = base["fold"] <= k
        pd.testing.assert_frame_equal(again.loc[same, cols], base.loc[same, cols], check_exact=True)
        later = base["fold"] > k
        assert not np.array_equal(again.loc[later, "prob_up"].to_numpy(), base.loc[later, "prob_up"].to_numpy())
        # fold k's forecasts and outcomes of every expert changed: the folds before it are untouched
        k2 = folds[1].fold_id
        at_k2 = table["fold"] == k2
        moved = table.copy()
        for col in forecasts + outcomes:
            moved.loc[at_k2, col] = moved.loc[at_k2, col].to_numpy() * 1.5 + 0.01
        again, _ = walk_forward(make, moved, aliases, folds, **kwargs)
        same = base["fold"] < k2
        pd.testing.assert_frame_equal(again.loc[same, cols], base.loc[same, cols], check_exact=True)
        assert not np.array_equal(again.loc[~same, "expected_return"], base.loc[~same, "expected_return"])


def _signal(result):
    from quantml.stacking.run import _scorer

    return _scorer(result.experts[0])[1]


# -- the served stack, its registration and its lockbox (docs/stacking.md "The served stack") ------------
STACK_NAME = "stack-served"


@pytest.fixture(scope="module")
def served(sweep, tmp_path_factory):
    """One `quantml stack` run with the served stack, its lockbox evaluation and register=NAME."""
    out_dir = tmp_path_factory.mktemp("served_out")
    experts = [sweep["reader"].parent(i) for i in sweep["ids"]]
    reads = [int(e.tags.get(L.TAG_LOCKBOX_READS, "0")) for e in experts]
    rc = dispatcher.main(
        ["stack", f"tracking.uri={sweep['uri']}", f"sweep_dir={SWEEP_DIR}", f"output_dir={out_dir}",
         f"register={STACK_NAME}", "run_name=served"]
    )  # fmt: skip
    assert rc == 0
    run = [r for r in stack_runs(sweep) if r.info.run_name == "served"][0]
    return {"out": out_dir, "run": run, "reads_before": reads}


def test_served_stack_lockbox_table_scale_check_and_reads(sweep, served, capsys):
    from quantml.stacking.model import stack_panel

    out_dir, run = served["out"], served["run"]
    client, reader = sweep["client"], sweep["reader"]
    hold = pd.read_csv(out_dir / L.STACK_HOLDOUT_COMPARISON_CSV)
    assert list(hold["candidate"]) == ["ridge", "equal_weight", "best_single", "e0", "e1"]
    assert hold["n_rows"].nunique() == 1 and hold["n_rows"].iloc[0] > 20
    assert np.isfinite(hold[["rank_ic", "rmse", "sharpe_after_cost"]].to_numpy(float)).all()
    m = run.data.metrics
    assert m["holdout_rank_ic/4h"] == pytest.approx(hold.iloc[0]["rank_ic"], abs=1e-12)
    assert m["holdout_sharpe_after_cost/4h"] == pytest.approx(hold.iloc[0]["sharpe_after_cost"], abs=1e-12)
    # the scale check: both experts, both fields, sane spreads and a verdict that follows the band
    scale = pd.read_csv(out_dir / L.STACK_SCALE_CHECK_CSV)
    assert sorted(zip(scale["expert"], scale["field"], strict=True)) == [
        ("e0", "expected_return"), ("e0", "score"), ("e1", "expected_return"), ("e1", "score")
    ]  # fmt: skip
    assert (scale["std_development"] > 0).all() and (scale["std_lockbox"] > 0).all()
    np.testing.assert_allclose(scale["ratio"], scale["std_lockbox"] / scale["std_development"], rtol=1e-12)
    inside = scale["ratio"].between(0.5, 2.0)
    assert list(scale["verdict"]) == ["ok" if v else "differs" for v in inside]
    # reads: one on the stack run, one more on each expert
    assert run.data.tags[L.TAG_LOCKBOX_READS] == "1"
    for i, before in zip(sweep["ids"], served["reads_before"], strict=True):
        assert int(client.get_run(i).data.tags[L.TAG_LOCKBOX_READS]) == before + 1
    # the final combiner never saw a lockbox row: its fit rows' labels end before the lockbox
    start = pd.Timestamp(run.data.tags[L.TAG_LOCKBOX_START])
    final = json.loads((out_dir / L.STACK_FINAL_ARTIFACT).read_text())
    for cand in ("ridge", "equal_weight", "best_single"):
        assert pd.Timestamp(final[cand]["4h"]["t1_max"]) < start
    # the served stack (pyfunc of the stack run) on the raw panel == the stack's own lockbox predictions
    expert = reader.parent(sweep["ids"][0])
    prep = stack_panel(type("E", (), {"run": expert, "run_id": expert.run_id})())
    with mlflow_uri_scope(sweep["uri"]):
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/{L.MODEL_ARTIFACT}")
    served_frame = pd.DataFrame(model.predict(prep.panel, params={"last_only": False}))
    assert list(served_frame.columns) == list(PREDICTION_COLUMNS)
    logged = pd.read_parquet(out_dir / L.HOLDOUT_ARTIFACT)
    both = logged.merge(
        served_frame.assign(timestamp=pd.to_datetime(served_frame["timestamp"], utc=True)),
        on=["symbol", "timestamp", "horizon"], suffixes=("", "_served"),
    )  # fmt: skip
    assert len(both) == len(logged) == hold["n_rows"].iloc[0]
    for col in ("expected_return", "prob_up", "q10", "q90", "vol_forecast", "score", "confidence"):
        np.testing.assert_allclose(both[f"{col}_served"], both[col], rtol=1e-10, atol=1e-12, err_msg=col)
    assert (both["action_served"] == both["action"]).all()


def test_stack_run_registers_promotes_predicts_and_rolls_back(sweep, served):
    from quantml.registry import RegistryStore, check_gates, promote, register, rollback
    from quantml.serving import predict_panel

    store = RegistryStore(sweep["uri"])
    run_id = served["run"].info.run_id
    v1 = store.get_version(STACK_NAME, "1")  # register=NAME of the stack command
    assert v1.run_id == run_id and v1.tags[L.TAG_KIND] == L.KIND_STACK
    assert store.aliases(STACK_NAME)[L.ALIAS_CANDIDATE] == "1"
    report = check_gates(store, STACK_NAME, "1")
    by = {r.name: r for r in report.results}
    assert by["leakage_audit"].passed and "stack_audit='clean'" in by["leakage_audit"].detail
    assert "windows" in by["sharpe"].detail and set(by["sharpe"].figures["candidate"]["4h"]) == {"1", "2"}
    assert not by["folds"].passed and "2 fold runs < 3" in by["folds"].detail  # a stack drops fold 0
    assert by["run_status"].passed
    promote(store, STACK_NAME, "1", force=True, reason="test: a stack has one fold fewer than its experts")
    panel = stack_panel_of(sweep)
    frame, resolved = predict_panel(f"models:/{STACK_NAME}@active", panel, store=store)
    assert list(frame.columns) == list(PREDICTION_COLUMNS) and resolved.version == "1"
    assert set(frame["model_version"]) == {"1"} and set(frame["model_name"]) == {STACK_NAME}
    assert frame.groupby("symbol")["timestamp"].nunique().eq(1).all()  # last_only: each symbol's last bar
    v2 = register(store, run_id, STACK_NAME)
    promote(store, STACK_NAME, v2.version, force=True, reason="test")
    assert store.active_version(STACK_NAME) == str(v2.version)
    rollback(store, STACK_NAME, reason="test")
    assert store.active_version(STACK_NAME) == "1"
    with pytest.raises(QuantmlInputError, match="panel"):
        predict_panel(f"models:/{STACK_NAME}@active", panel.drop(columns=["close"]), store=store)


def stack_panel_of(sweep) -> pd.DataFrame:
    from quantml.data import load_panel

    return load_panel(sweep["reader"].parent(sweep["ids"][0]).config().data)


def test_lockbox_bars_fit_and_choose_nothing(sweep, monkeypatch):
    """Perturbing every lockbox bar leaves the development stack, the chosen best single expert, the
    final combiners and the served stack's development predictions bit-identical (regime inputs on)."""
    import quantml.experiment.prepare as prepare
    import quantml.stacking.run as stack_run
    from quantml.contracts import QuantmlInputError as InputError
    from quantml.stacking import model as stack_model

    node = {**combiner_config("ridge"), "regime": True}
    settings = StackSettings(combiner=node, sweep_dir=SWEEP_DIR, log_to_mlflow=False, baselines=["best_single"])
    base = build_stack(sweep["reader"], settings)
    start = base.bundle.metadata["lockbox_start"]
    original = prepare.load_panel

    def perturbed(cfg):
        panel = original(cfg)
        at = (panel["timestamp"] >= pd.Timestamp(start)).to_numpy()
        rng = np.random.default_rng(1)
        bar = rng.uniform(0.9, 1.1, int(at.sum()))  # each lockbox bar scaled as a whole (high >= low kept)
        for col in ("open", "high", "low", "close"):
            panel.loc[at, col] = panel.loc[at, col].to_numpy() * bar
        panel.loc[at, "volume"] = panel.loc[at, "volume"].to_numpy() * rng.uniform(0.5, 1.5, int(at.sum()))
        return panel

    monkeypatch.setattr(prepare, "load_panel", perturbed)
    with pytest.raises(InputError, match="the data changed since they were trained"):
        build_stack(sweep["reader"], settings)
    monkeypatch.setattr(stack_run, "stack_panel", lambda e, fp: stack_model.stack_panel(e, fp, check=False))
    moved = build_stack(sweep["reader"], settings)
    assert any(c.startswith("regime__") for c in base.table.columns)
    pd.testing.assert_frame_equal(moved.table, base.table, check_exact=True)
    for cand in base.predictions:
        pd.testing.assert_frame_equal(moved.predictions[cand], base.predictions[cand], check_exact=True)
    assert moved.final_info == base.final_info  # describe() of every final combiner, calibrator, fit window
    assert moved.holdout.chosen == base.holdout.chosen and base.holdout.chosen
    data = _expert(sweep).run.config().data
    whole, whole_moved = original(data), perturbed(data)
    a = base.bundle.predict_contract(whole)
    b = moved.bundle.predict_contract(whole_moved)
    dev_a, dev_b = (f[f["timestamp"] < pd.Timestamp(start)].drop(columns=["data_version"]) for f in (a, b))
    assert len(dev_a) > 100
    pd.testing.assert_frame_equal(dev_b, dev_a, check_exact=True)
    # ... and the lockbox figures do move with the lockbox bars
    assert moved.holdout.metrics["holdout_rmse/4h"] != base.holdout.metrics["holdout_rmse/4h"]


def _expert(sweep):
    run = sweep["reader"].parent(sweep["ids"][0])
    return type("E", (), {"run": run, "run_id": run.run_id})()
