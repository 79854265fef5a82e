"""A VSSM run as the regime source of `quantml stack` (``regime_source=``, quantml.stacking.regime_posterior):
its out-of-fold regime posterior joins the stack table as ``regime__p*`` exactly on (symbol, timestamp),
as an expert or as a run that is not stacked; the served stack rebuilds the columns from the VSSM's final
model, causally (perturbing later bars leaves every earlier posterior bit-identical)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.features.causality import perturb_after
from quantml.stacking import StackSettings, build_stack
from quantml.stacking.regime import regime_columns
from quantml.stacking.regime_posterior import EXTERNAL, served_posterior
from quantml.stacking.run import combiner_config
from quantml.tracking.reader import RunReader
from tests.helpers import TINY
from tests.helpers.registry_fakes import sqlite_store

TINY_VSSM = [
    "backbone=vssm",
    "backbone.max_epochs=2",
    "backbone.hidden_size=8",
    "backbone.chunk_len=64",
    "backbone.burn_in=16",
    "backbone.n_samples=100",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two ridge experts and a tiny VSSM, trained in-process on the same data and folds (final models logged)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from quantml.cli.common import CONFIG_DIR
    from quantml.experiment import RunContext, run_experiment

    root = tmp_path_factory.mktemp("stack_vssm")
    uri = sqlite_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        ids = {}
        for name, extra in (
            ("a", ["backbone=ridge"]),
            ("b", ["backbone=ridge", "backbone.alpha=30"]),
            ("vssm", TINY_VSSM),
        ):
            GlobalHydra.instance().clear()
            with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
                cfg = compose(
                    "config", overrides=[*TINY, *extra, "tracking.experiment=stack_vssm", "tracking.log_model=true"]
                )
            GlobalHydra.instance().clear()
            ids[name] = run_experiment(cfg, RunContext(sweep_dir="multirun/stack_vssm")).parent_run_id
        reader = RunReader(client=mlflow.MlflowClient(uri))
        yield {"uri": uri, "ids": ids, "reader": reader}
    mlflow.set_tracking_uri(None)


def _settings(runs, experts, source, **kw) -> StackSettings:
    kw = {"log_to_mlflow": False, "baselines": ["equal_weight"], "serve": False, "holdout": False, **kw}
    return StackSettings(
        combiner=combiner_config("regime_gate"), runs=[runs["ids"][e] for e in experts], regime_source=source, **kw
    )


def _assert_exact_join(table: pd.DataFrame, oos: pd.DataFrame) -> None:
    """Every table row's regime__p<k> is the VSSM's out-of-fold regime_p<k> of its (symbol, timestamp), bit for bit."""
    keyed = oos.assign(timestamp=pd.to_datetime(oos["timestamp"], utc=True)).drop_duplicates(["symbol", "timestamp"])
    joined = table[["symbol", "timestamp"]].merge(keyed, on=["symbol", "timestamp"], how="left")
    for k in (0, 1):
        a, b = table[f"regime__p{k}"].to_numpy(np.float64), joined[f"regime_p{k}"].to_numpy(np.float64)
        assert np.isfinite(a).all() and np.array_equal(a.view(np.uint64), b.view(np.uint64)), k


def test_a_vssm_expert_posterior_joins_the_stack_table_exactly(runs):
    reader, vssm = runs["reader"], runs["ids"]["vssm"]
    result = build_stack(reader, _settings(runs, ["a", "vssm"], "e1"))
    assert regime_columns(result.table) == ["regime__p0", "regime__p1"]  # the posterior only, no regime block
    assert result.regime_source == [vssm]
    _assert_exact_join(result.table, reader.oos_predictions(vssm))
    # every stacked row is gated on the posterior, weights summing to 1
    weights = result.gate_weights
    assert {"regime__p0", "regime__p1"} <= set(weights.columns) and weights[["e0", "e1"]].notna().all().all()
    np.testing.assert_allclose(weights[["e0", "e1"]].sum(axis=1), 1.0)
    gate = result.fold_info[max(result.fold_info)]["combiner"]
    assert "regime__p1" in str(gate)

    # both sources: the regime block's columns and the posterior's side by side, the posterior unchanged
    both = build_stack(reader, _settings(runs, ["a", "vssm"], ["block", "e1"], serve=True))
    cols = regime_columns(both.table)
    assert {"regime__p0", "regime__p1", "regime__regime_vol_z"} <= set(cols) and both.regime_source[0] == "block"
    _assert_exact_join(both.table, reader.oos_predictions(vssm))
    # served: the block from the panel, the posterior from the VSSM expert's final model
    from quantml.stacking.model import stack_panel

    bundle = both.bundle
    assert bundle.posterior_source == "e1" and bundle.posterior_model is None and bundle.regime
    panel = stack_panel(both.experts[0]).panel
    served = bundle.expert_table(panel)
    assert regime_columns(served) == cols
    post = served_posterior(bundle.experts[1], panel)
    _assert_exact_join(served, post.rename(columns=lambda c: c.replace("regime__p", "regime_p")))


def test_a_vssm_run_not_stacked_is_a_regime_source_and_is_served_causally(runs):
    reader, vssm = runs["reader"], runs["ids"]["vssm"]
    result = build_stack(reader, _settings(runs, ["a", "b"], vssm, serve=True, holdout=True))
    assert [e.run_id for e in result.experts] == [runs["ids"]["a"], runs["ids"]["b"]]
    assert regime_columns(result.table) == ["regime__p0", "regime__p1"]
    _assert_exact_join(result.table, reader.oos_predictions(vssm))
    bundle = result.bundle
    assert bundle.posterior_source == EXTERNAL and bundle.posterior_model is not None and not bundle.regime
    assert result.holdout is not None and np.isfinite(result.holdout.metrics["holdout_rank_ic/4h"])

    # the served stack rebuilds regime__p* from the VSSM's final model on the served panel
    from quantml.stacking.model import stack_panel

    panel = stack_panel(result.experts[0]).panel
    post = served_posterior(bundle.posterior_model, panel)
    assert list(post.columns) == ["symbol", "timestamp", "regime__p0", "regime__p1"] and len(post) == len(panel)
    np.testing.assert_allclose(post[["regime__p0", "regime__p1"]].sum(axis=1), 1.0, atol=1e-6)
    table = bundle.expert_table(panel)
    assert regime_columns(table) == ["regime__p0", "regime__p1"] and table["regime__p0"].notna().all()
    # causal: perturb every bar after a cut; every posterior at or before it is bit-identical
    cut = pd.Timestamp(np.sort(panel["timestamp"].unique())[400])
    moved = served_posterior(bundle.posterior_model, perturb_after(panel, cut, seed=1))
    past = (pd.to_datetime(post["timestamp"], utc=True) <= cut).to_numpy()
    for col in ("regime__p0", "regime__p1"):
        a, b = post[col].to_numpy(), moved[col].to_numpy()
        assert np.array_equal(a[past].view(np.uint64), b[past].view(np.uint64)), col
    assert not np.array_equal(post["regime__p1"].to_numpy()[~past], moved["regime__p1"].to_numpy()[~past])
    served = bundle.predict_contract(panel, last_only=True)
    assert len(served) and served["expected_return"].notna().all()


def test_a_regime_source_that_is_not_a_regime_model_is_refused(runs):
    reader = runs["reader"]
    with pytest.raises(QuantmlInputError, match="not a regime model"):
        build_stack(reader, _settings(runs, ["a", "vssm"], "e0"))
    with pytest.raises(QuantmlInputError, match="no expert has that alias"):
        build_stack(reader, _settings(runs, ["a", "vssm"], "e7"))
    with pytest.raises(QuantmlInputError, match="one regime model"):
        _settings(runs, ["a", "vssm"], ["e0", "e1"]).validate()


def test_the_command_takes_regime_source_and_logs_it(runs, capsys):
    from quantml.cli import main as dispatcher
    from quantml.contracts import run_layout as L

    ids = runs["ids"]
    rc = dispatcher.main(
        ["stack", f"tracking.uri={runs['uri']}", f"runs=[{ids['a']},{ids['vssm']}]", "combiner=regime_gate",
         "regime_source=[block,e1]", "baselines=[equal_weight]", "serve=false", "holdout=false", "run_name=posterior"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    client = runs["reader"].client
    exp = client.get_experiment_by_name("stack_vssm")
    run = client.search_runs([exp.experiment_id], filter_string=f"tags.`{L.TAG_KIND}` = '{L.KIND_STACK}'")[0]
    assert run.data.params["regime_source"] == f"block,{ids['vssm']}"
    rc = dispatcher.main(
        ["stack", f"tracking.uri={runs['uri']}", f"runs=[{ids['a']},{ids['b']}]", "regime_source=[e0,e1]"]
    )
    assert rc == 2 and "one regime model" in capsys.readouterr().err
