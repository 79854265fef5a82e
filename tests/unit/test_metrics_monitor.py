"""Monitor metric: direction (lower/higher is better) and the run's best_monitor summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.contracts import QuantmlInputError
from quantml.evaluation import best_monitor, evaluation_options, higher_is_better, monitor_for, monitor_mode


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
