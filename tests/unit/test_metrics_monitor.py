"""Model-selection metric (evaluation.selection_metric): direction, the run's best_monitor summary, the rename."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.evaluation import (
    best_monitor,
    check_selection_keys,
    evaluation_options,
    higher_is_better,
    monitor_for,
    monitor_mode,
    selection_metric_for,
)


def test_direction_of_monitors():
    assert not higher_is_better("val_rmse") and monitor_mode("val_rmse") == "min"
    assert higher_is_better("val_ap") and monitor_mode("val_ap") == "max"
    assert higher_is_better("val_rank_ic") and not higher_is_better("val_ece")
    with pytest.raises(QuantmlInputError, match="monitor"):
        higher_is_better("rmse")


def test_monitor_from_default_config():
    cfg = OmegaConf.load("quantml/conf/evaluation/default.yaml")
    assert monitor_for(cfg, "return") == "val_rmse"
    assert monitor_for(cfg, "direction") == "val_ap"
    assert selection_metric_for(OmegaConf.create({"selection_metric": "val_rank_ic"})) == "val_rank_ic"
    assert "monitor" not in cfg and cfg.selection_metric == "val_rmse"
    assert evaluation_options(cfg) == {"ece_bins": 10, "ic_bucket": None}


def test_best_monitor_averages_folds_then_horizons():
    fm = pd.DataFrame(
        {
            "fold": [0, 1, 2],
            "val_rmse/1d": [1.0, 2.0, np.nan],
            "val_rmse/7d": [3.0, 5.0, 4.0],
            "val_ap/1d": [0.6, 0.7, 0.8],
        }
    )
    name, value = best_monitor(fm, "val_rmse", ["1d", "7d"])
    assert name == "val_rmse_mean" and value == pytest.approx((1.5 + 4.0) / 2)
    assert best_monitor(fm, "val_ap", ["1d"]) == ("val_ap_mean", pytest.approx(0.7))
    with pytest.raises(QuantmlInputError, match="val_ap/7d"):
        best_monitor(fm, "val_ap", ["1d", "7d"])


def test_the_old_monitor_keys_are_refused_with_the_new_name():
    for old, new in (("monitor", "selection_metric"), ("monitor_direction", "selection_metric_direction")):
        cfg = OmegaConf.create({old: "val_ic"})
        with pytest.raises(QuantmlInputError, match=f"evaluation.{old} was renamed evaluation.{new}") as err:
            check_selection_keys(cfg)
        assert f"evaluation.{new}=val_ic" in str(err.value)
        with pytest.raises(QuantmlInputError, match=f"evaluation.{new}"):
            monitor_for(cfg, "return")
    check_selection_keys(OmegaConf.create({"selection_metric": "val_rmse"}))  # the new keys pass


def test_train_refuses_an_old_key_before_any_run(compose_cfg, tracking_uri):
    from quantml.experiment import run_experiment

    cfg = compose_cfg(["data=synthetic", "data.n_bars=200", "backbone=ridge", "+evaluation.monitor=val_ic"])
    with pytest.raises(QuantmlInputError, match="evaluation.monitor was renamed evaluation.selection_metric"):
        run_experiment(cfg)
    import mlflow

    assert mlflow.search_runs(search_all_experiments=True).empty  # refused before a run was made


def test_the_command_line_names_the_new_key_without_a_plus(capsys):
    from quantml.cli.train import main

    assert main(["evaluation.monitor=oos_rank_ic"]) == 2  # Hydra's own "not in struct" error, rewritten
    err = capsys.readouterr().err
    assert "evaluation.monitor was renamed evaluation.selection_metric" in err
    assert "write evaluation.selection_metric=oos_rank_ic instead" in err


def test_per_symbol_metrics_score_each_symbol_and_horizon_over_time():
    import numpy as np
    import pandas as pd

    from quantml.evaluation.per_symbol import per_symbol_metrics

    f = np.array([1.0, 2.0, 3.0, 4.0])
    frame = pd.DataFrame(
        {
            "symbol": ["A"] * 4 + ["B"] * 4,
            "horizon": "1h",
            "expected_return": np.r_[f, f],
            "ret": np.r_[2 * f, [-1.0, -2.0, 3.0, np.nan]],
        }
    )
    out = per_symbol_metrics(frame).set_index("symbol")
    assert out.loc["A", "n"] == 4 and out.loc["A", "ic"] == pytest.approx(1.0) and out.loc["A", "hit_rate"] == 1.0
    assert out.loc["B", "n"] == 3  # the unrealised row is left out
    assert out.loc["B", "hit_rate"] == pytest.approx(1 / 3)
    assert out.loc["B", "rank_ic"] == pytest.approx(0.5)


def test_per_symbol_metrics_match_a_groupby_of_the_rows_whatever_their_order_and_dtypes():
    """Interleaved rows, categorical columns with unused categories: one row per (symbol, horizon)
    present, sorted by their names, each computed on its rows in frame order."""
    import numpy as np
    import pandas as pd

    from quantml.evaluation.per_symbol import per_symbol_metrics

    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame(
        {
            "symbol": pd.Categorical(rng.choice(["ZZ", "AA", "MM"], n), categories=["ZZ", "MM", "AA", "unused"]),
            "horizon": pd.Categorical(rng.choice(["4h", "1h"], n), categories=["4h", "1h", "1d"]),
            "expected_return": rng.normal(size=n),
            "ret": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        }
    )
    out = per_symbol_metrics(frame)
    assert list(zip(out["symbol"], out["horizon"])) == [(s, h) for s in ("AA", "MM", "ZZ") for h in ("1h", "4h")]
    for row in out.itertuples():
        part = frame[(frame["symbol"] == row.symbol) & (frame["horizon"] == row.horizon) & frame["ret"].notna()]
        f, r = part["expected_return"].to_numpy(), part["ret"].to_numpy()
        assert row.n == len(part)
        assert row.ic == np.corrcoef(f, r)[0, 1]
        assert row.rank_ic == pd.Series(f).rank().corr(pd.Series(r).rank())
        assert row.hit_rate == np.mean(np.sign(f) == np.sign(r))
