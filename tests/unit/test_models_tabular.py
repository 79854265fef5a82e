"""Ridge and LightGBM behind the Forecaster interface, on a hand-made panel with a planted signal."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from quantml.models.base import Forecast, PanelData
from quantml.models.lightgbm_model import LightGBMForecaster
from quantml.models.ridge import RidgeForecaster
from quantml.models.tabular import row_blocks

HORIZONS = ["1h", "4h"]


def planted_panel(n_per_symbol: int = 600, n_symbols: int = 3, seed: int = 0) -> PanelData:
    rng = np.random.default_rng(seed)
    n = n_per_symbol * n_symbols
    X = rng.normal(size=(n, 5)).astype(np.float32)
    X[rng.random(size=X.shape) < 0.02] = np.nan  # warm-up style gaps
    signal = np.nan_to_num(X[:, 0])
    vol = 0.01 * (1 + 0.5 * (np.nan_to_num(X[:, 1]) > 0))
    y_ret = np.column_stack([0.01 * signal + vol * rng.normal(size=n), 0.02 * signal + 2 * vol * rng.normal(size=n)])
    times = pd.date_range("2024-01-01", periods=n_per_symbol, freq="1h", tz="UTC")
    keys = pd.DataFrame(
        {"symbol": np.repeat([f"S{i}" for i in range(n_symbols)], n_per_symbol), "timestamp": np.tile(times, n_symbols)}
    )
    t0 = keys["timestamp"].to_numpy(dtype="datetime64[ns]")
    return PanelData(
        keys=keys,
        X=X,
        feature_names=[f"f{i}" for i in range(5)],
        feature_modalities={f"f{i}": "price" for i in range(5)},
        horizons=HORIZONS,
        y_ret=y_ret,
        y_dir=(y_ret > 0).astype(float),
        y_vol=np.column_stack([vol, 2 * vol]) * np.abs(rng.normal(1, 0.1, size=(n, 1))),
        t0=t0,
        t1=t0 + np.timedelta64(4, "h"),
        symbol_codes=np.repeat(np.arange(n_symbols), n_per_symbol),
        symbols=[f"S{i}" for i in range(n_symbols)],
    )


BACKBONES = [
    pytest.param(lambda: RidgeForecaster(HORIZONS, seed=1, alpha=1.0), id="ridge"),
    pytest.param(lambda: LightGBMForecaster(HORIZONS, seed=1, n_estimators=80, min_child_samples=20), id="lightgbm"),
    pytest.param(
        lambda: LightGBMForecaster(HORIZONS, seed=1, n_estimators=60, min_child_samples=20, quantiles="native"),
        id="lightgbm-native-quantiles",
    ),
]


@pytest.mark.parametrize("make", BACKBONES)
def test_forecast_shapes_non_crossing_and_signal_found(make):
    data = planted_panel()
    rows = np.arange(data.n_rows)
    train, valid, test = data.subset(rows[::3]), data.subset(rows[1::3]), data.subset(rows[2::3])
    fc = make().fit(train, valid).predict(test)
    assert isinstance(fc, Forecast)
    assert fc.expected_return.shape == (len(test), 2)
    assert np.all(fc.q10 <= fc.q50) and np.all(fc.q50 <= fc.q90)
    assert np.all((fc.prob_up > 0) & (fc.prob_up < 1))
    assert np.all(fc.vol_forecast > 0)
    ic = np.corrcoef(fc.expected_return[:, 0], test.y_ret[:, 0])[0, 1]
    assert ic > 0.2, f"planted signal not found: IC={ic:.3f}"
    # probability of up moves is higher where the forecast is higher
    hi = fc.prob_up[:, 0] > 0.5
    assert test.y_dir[hi, 0].mean() > test.y_dir[~hi, 0].mean()


@pytest.mark.parametrize("make", BACKBONES)
def test_seed_repeatable_and_pickle_round_trip(make):
    data = planted_panel(n_per_symbol=300)
    rows = np.arange(data.n_rows)
    a = make().fit(data.subset(rows[:600]), data.subset(rows[600:750])).predict(data.subset(rows[750:]))
    model = make().fit(data.subset(rows[:600]), data.subset(rows[600:750]))
    b = model.predict(data.subset(rows[750:]))
    c = pickle.loads(pickle.dumps(model)).predict(data.subset(rows[750:]))
    np.testing.assert_array_equal(a.expected_return, b.expected_return)
    np.testing.assert_array_equal(b.q90, c.q90)
    assert model.feature_importance().index[0] == "f0"


def test_one_sided_direction_labels_give_constant_probability():
    data = planted_panel(n_per_symbol=200, n_symbols=1)
    data.y_dir[:] = 1.0
    fc = RidgeForecaster(HORIZONS).fit(data.subset(np.arange(150))).predict(data.subset(np.arange(150, 200)))
    assert np.all(fc.prob_up == 1.0)


def test_forecast_to_frame_is_horizon_major():
    data = planted_panel(n_per_symbol=50, n_symbols=2)
    sample = data.subset(np.arange(10))
    fc = RidgeForecaster(HORIZONS).fit(data.subset(np.arange(100))).predict(sample)
    frame = fc.to_frame(sample.keys)
    assert len(frame) == 20
    assert list(frame["horizon"].unique()) == HORIZONS
    np.testing.assert_array_equal(frame.loc[frame.horizon == "4h", "expected_return"], fc.expected_return[:, 1])


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        RidgeForecaster(HORIZONS, alpha=0)
    with pytest.raises(ValueError, match="quantiles"):
        LightGBMForecaster(HORIZONS, quantiles="magic")


def test_prediction_frame_aligns_realised_values_per_horizon():
    from quantml.experiment.fitting import prediction_frame

    data = planted_panel(n_per_symbol=40, n_symbols=2)
    rows = np.array([3, 10, 50, 61])
    realised = pd.DataFrame(
        {
            f"{name}@{h}": np.arange(data.n_rows) * (10 if h == "4h" else 1) + k / 10
            for h in HORIZONS
            for k, name in enumerate(("ret", "ret_after_cost", "dir", "vol"))
        }
    )
    realised["ret_next_bar"] = -np.arange(data.n_rows, dtype=float)
    model = RidgeForecaster(HORIZONS).fit(data.subset(np.arange(data.n_rows)))
    frame = prediction_frame(model, data.subset(rows), realised)
    assert len(frame) == 8
    np.testing.assert_array_equal(frame.loc[frame.horizon == "1h", "ret"], rows)
    np.testing.assert_array_equal(frame.loc[frame.horizon == "4h", "ret"], rows * 10)
    np.testing.assert_array_equal(frame.loc[frame.horizon == "4h", "vol"], rows * 10 + 0.3)
    np.testing.assert_array_equal(frame["ret_next_bar"], -np.tile(rows, 2))


# ---- capacity: what a fit grew to, and refits to a fixed capacity -------------------------------


def test_lightgbm_capacity_is_the_best_iteration_per_head_and_horizon():
    from quantml.models.lightgbm_model import _trees_used

    data = planted_panel(n_per_symbol=300)
    rows = np.arange(data.n_rows)
    model = LightGBMForecaster(
        HORIZONS, seed=1, n_estimators=200, min_child_samples=20, early_stopping_rounds=10, n_jobs=1
    )
    model.fit(data.subset(rows[:600]), data.subset(rows[600:750]))
    keys = [f"{head}/{h}" for h in HORIZONS for head in ("return", "direction", "vol")]
    assert list(model.capacity_) == keys
    heads = {"return": model.return_models_, "direction": model.direction_models_, "vol": model.vol_models_}
    for key, trees in model.capacity_.items():
        head, h = key.split("/")
        assert trees == heads[head][HORIZONS.index(h)].best_iteration_ == _trees_used(heads[head][HORIZONS.index(h)])
        assert 1 <= trees < 200  # every head early-stopped before the budget
    assert model.capacity_ == json.loads(json.dumps(model.capacity_))  # JSON-able as it is
    # without a validation slice there is no early stopping: every head grows n_estimators
    assert set(LightGBMForecaster(HORIZONS, n_estimators=7, n_jobs=1).fit(data.subset(rows)).capacity_.values()) == {7}


def test_lightgbm_with_capacity_grows_exactly_those_trees_and_ignores_early_stopping():
    data = planted_panel(n_per_symbol=300)
    rows = np.arange(data.n_rows)
    template = LightGBMForecaster(
        HORIZONS, seed=1, n_estimators=200, min_child_samples=20, early_stopping_rounds=5, n_jobs=1
    )
    fitted = template.with_capacity(None).fit(data.subset(rows[:600]), data.subset(rows[600:750]))
    capacity = {"return/1h": 3, "direction/1h": 40, "vol/1h": 9, "return/4h": 120, "direction/4h": 1}
    fixed = fitted.with_capacity(capacity)
    assert not hasattr(fixed, "return_models_") and not hasattr(fixed, "capacity_")  # an unfitted copy
    assert hasattr(fitted, "return_models_") and fitted.fixed_capacity is None  # the source is untouched
    fixed.fit(data.subset(rows[:600]), data.subset(rows[600:750]))  # valid is there, yet no early stopping
    assert fixed.capacity_ == {**capacity, "vol/4h": 200}  # a head missing from the capacity: n_estimators
    assert fixed.return_models_[1].booster_.current_iteration() == 120
    again = template.with_capacity(capacity).fit(data.subset(rows[:600]))
    np.testing.assert_array_equal(
        again.predict(data.subset(rows[750:])).expected_return, fixed.predict(data.subset(rows[750:])).expected_return
    )


def test_native_quantile_heads_have_a_capacity_too():
    data = planted_panel(n_per_symbol=200)
    rows = np.arange(data.n_rows)
    model = LightGBMForecaster(HORIZONS, n_estimators=30, min_child_samples=20, quantiles="native", n_jobs=1)
    model.fit(data.subset(rows[:400]), data.subset(rows[400:500]))
    assert {"q10/1h", "q50/1h", "q90/4h"} <= set(model.capacity_)
    assert model.uses_residual_quantiles is False
    refit = model.with_capacity({"q90/4h": 4}).fit(data.subset(rows[:400]))
    assert refit.capacity_["q90/4h"] == 4


def test_ridge_capacity_is_empty_and_with_capacity_is_a_plain_copy():
    data = planted_panel(n_per_symbol=100)
    rows = np.arange(data.n_rows)
    model = RidgeForecaster(HORIZONS, alpha=2.0).fit(data.subset(rows))
    assert model.capacity_ == {} and model.uses_residual_quantiles
    clone = model.with_capacity({})
    assert clone.alpha == 2.0 and not hasattr(clone, "scaler_")
    np.testing.assert_array_equal(
        clone.fit(data.subset(rows)).predict(data.subset(rows)).q90, model.predict(data.subset(rows)).q90
    )


def test_median_capacity_per_key_rounded_at_least_one():
    from quantml.models.base import median_capacity

    caps = [{"return/1d": 2, "vol/1d": 80}, {"return/1d": 5, "vol/1d": 81}, {"return/1d": 30}, {}]
    assert median_capacity(caps) == {"return/1d": 5, "vol/1d": 81}  # vol: median(80, 81) = 80.5 -> 81
    assert median_capacity([{"epochs": 2}, {"epochs": 3}]) == {"epochs": 3}
    assert median_capacity([{"a": 0}, {"a": 1}]) == {"a": 1}  # never below one
    assert median_capacity([]) == {} and median_capacity([{}, {}]) == {}


def test_bad_capacities_are_refused_with_the_key_named():
    from quantml.contracts import QuantmlInputError
    from quantml.models.base import median_capacity

    with pytest.raises(QuantmlInputError, match=r"return/1h.*integer >= 1"):
        RidgeForecaster(HORIZONS).with_capacity({"return/1h": 0})
    with pytest.raises(QuantmlInputError, match="mapping"):
        RidgeForecaster(HORIZONS).with_capacity([3])
    with pytest.raises(QuantmlInputError, match=r"capacities\[1\]\['vol/1d'\]"):
        median_capacity([{"vol/1d": 3}, {"vol/1d": "many"}])


# ---- early stopping: the rank metric and the floor of rounds ------------------------------------


def test_rank_ic_metric_is_the_mean_cross_sectional_spearman():
    from quantml.models.lightgbm_model import rank_ic_metric

    times = np.repeat(np.arange(4), 3)  # 4 timestamps x 3 symbols
    y = np.tile([0.1, -0.2, 0.3], 4)
    metric = rank_ic_metric(times, len(y))
    assert metric(y, y * 7 + 1) == ("rank_ic", 1.0, True)  # ranks, not values
    assert metric(y, -y)[1] == pytest.approx(-1.0)
    assert metric(y, np.zeros_like(y))[1] == 0.0  # every forecast tied: no ranking
    mixed = np.r_[y[:6], -y[6:]]  # right on two timestamps, reversed on two
    assert metric(y, mixed)[1] == pytest.approx(0.0)
    # one symbol (time-series mode): Pearson over time
    ts = rank_ic_metric(np.arange(12), 12)
    x = np.linspace(-1, 1, 12)
    assert ts(x, 2 * x + 3)[1] == pytest.approx(1.0)


def test_rank_ic_stopping_and_the_floor_of_rounds():
    data = planted_panel()
    rows = np.arange(data.n_rows)
    train, valid = data.subset(rows[(rows % 600) < 400]), data.subset(rows[(rows % 600) >= 420])
    kw = dict(seed=1, n_estimators=120, min_child_samples=20, n_jobs=1, learning_rate=0.1)
    ranked = LightGBMForecaster(HORIZONS, return_stop_metric="rank_ic", **kw).fit(train, valid)
    assert "rank_ic" in ranked.return_models_[0].best_score_["valid_0"]
    assert "l2" not in ranked.return_models_[0].best_score_["valid_0"]
    assert not hasattr(ranked, "stop_times_")  # fit-time only, not pickled with the model
    again = LightGBMForecaster(HORIZONS, return_stop_metric="rank_ic", **kw).fit(train, valid)
    assert again.capacity_ == ranked.capacity_  # deterministic for a seed
    # the floor: no return head stops before ceil(min_rounds / learning_rate) trees; the others
    # early-stop as without it
    floored = LightGBMForecaster(HORIZONS, min_rounds=2.0, **kw).fit(train, valid)
    plain = LightGBMForecaster(HORIZONS, **kw).fit(train, valid)
    assert all(20 <= floored.capacity_[f"return/{h}"] <= 120 for h in HORIZONS)
    assert {k: v for k, v in floored.capacity_.items() if not k.startswith("return/")} == {
        k: v for k, v in plain.capacity_.items() if not k.startswith("return/")
    }
    # a floor at or below one tree is LightGBM's own early stopping: the numbers of before
    assert LightGBMForecaster(HORIZONS, min_rounds=0.1, **kw).fit(train, valid).capacity_ == plain.capacity_
    with pytest.raises(ValueError, match="return_stop_metric"):
        LightGBMForecaster(HORIZONS, return_stop_metric="sharpe")
    with pytest.raises(ValueError, match="min_rounds"):
        LightGBMForecaster(HORIZONS, min_rounds=-1)


def test_row_blocks_are_views_of_long_runs_and_copies_between_them():
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    rows = np.array([0, 1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 19])
    blocks = row_blocks(X, rows, min_run=4, gather=1)
    # [0..3] a view, 5 a copy, [7..12] a view, 19 a copy
    assert [b[:, 0].tolist() for b in blocks] == [[0, 2, 4, 6], [10], [14, 16, 18, 20, 22, 24], [38]]
    assert [np.shares_memory(b, X) for b in blocks] == [True, False, True, False]
    np.testing.assert_array_equal(np.concatenate(row_blocks(X, rows)), X[rows])


def test_a_lightgbm_fit_of_time_ordered_rows_reads_views_and_grows_the_trees_of_the_sorted_rows(monkeypatch):
    """Samples come in time order over a symbol-major matrix (no two adjacent): the fit reads them in
    the matrix's order, as views of it, and grows the trees it grows on the same rows sorted."""
    import quantml.models.lightgbm_model as lgbm

    data = planted_panel(n_per_symbol=1500)
    order = np.lexsort((data.symbol_codes, data.t0))  # time order, as prepare_data's samples
    train, valid = data.subset(order[: 4 * len(order) // 5]), data.subset(order[4 * len(order) // 5 :])
    assert not np.any(np.diff(train.rows) == 1)
    seen = []
    original = lgbm._BinnedRows.__init__

    def spy(self, X, Xv, params, threads):
        seen.append([np.shares_memory(b, data.X) for b in X.blocks])
        original(self, X, Xv, params, threads)

    monkeypatch.setattr(lgbm._BinnedRows, "__init__", spy)

    def fit(part_train, part_valid):
        make = LightGBMForecaster(HORIZONS, seed=1, n_estimators=20, min_child_samples=20)
        return make.fit(part_train, part_valid)

    a = fit(train, valid)
    assert seen and all(seen[0]) and len(seen[0]) == data.symbol_codes.max() + 1  # one view per symbol
    b = fit(data.subset(np.sort(train.rows)), data.subset(np.sort(valid.rows)))
    assert [m.booster_.model_to_string() for _, m in a._named_heads()] == [
        m.booster_.model_to_string() for _, m in b._named_heads()
    ]
    np.testing.assert_array_equal(a.residual_z_, b.residual_z_)


@pytest.mark.parametrize("quantiles", ["residual", "native"])
def test_lightgbm_fit_on_row_blocks_grows_the_trees_of_the_copied_rows(monkeypatch, quantiles):
    """A fit reads its rows as views (``row_blocks``) where 0.1 copied ``X[rows]``: same bins, same trees,
    and forecasts in chunks equal to forecasts of the whole part at once."""
    import quantml.models.tabular as tabular

    data = planted_panel(n_per_symbol=1500)
    rows = np.arange(data.n_rows)
    train = data.subset(np.concatenate([rows[:1200], rows[1500:2500:2], rows[2600:3800]]))
    valid, test = data.subset(rows[3850:4000]), data.subset(rows[4000:])
    assert [np.shares_memory(b, data.X) for b in row_blocks(data.X, train.rows)] == [True, False, True]

    def fit(blocks: bool):
        make = LightGBMForecaster(HORIZONS, seed=1, n_estimators=30, min_child_samples=20, quantiles=quantiles)
        if not blocks:
            monkeypatch.setattr(LightGBMForecaster, "_fit_matrix", lambda self, part: part.X)
        model = make.fit(train, valid)
        monkeypatch.undo()
        return model

    a, b = fit(True), fit(False)
    assert [m.booster_.model_to_string() for _, m in a._named_heads()] == [
        m.booster_.model_to_string() for _, m in b._named_heads()
    ]
    whole, z_whole = a.predict(test), a._residual_z(test)
    monkeypatch.setattr(tabular, "PREDICT_CHUNK_ROWS", 64)
    chunked = a.predict(test)
    for name in ("expected_return", "q10", "q90", "prob_up", "vol_forecast"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))
    # the residual quantiles keep only each chunk's residuals: the same figures
    resid = (test.y_ret - whole.expected_return) / np.maximum(whole.vol_forecast, tabular._VOL_FLOOR)
    np.testing.assert_array_equal(a._residual_z(test), z_whole)
    np.testing.assert_array_equal(z_whole[:, 0], np.quantile(resid[:, 0][np.isfinite(resid[:, 0])], [0.1, 0.5, 0.9]))
