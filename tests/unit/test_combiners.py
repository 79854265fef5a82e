"""The combiners of `quantml stack` (config group `combiner`), the stack's fold rule and its audit, on
synthetic OOF rows: each head learns what it should, the same seed fits bit-identically, best_single
chooses on the rows it is fitted on only, the regime gate moves its weights to the expert that is good
in each regime, bad settings are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.stacking import BestSingle, EqualWeight, RidgeLogistic, expert_column, fit_mask, stack_folds
from quantml.stacking.combiners import LightGBMCombiner, MLPCombiner, RegimeGate
from quantml.stacking.run import COMBINER_DIR, combiner_config, make_combiner

EXPERTS = ["e0", "e1"]


def oof_rows(n_times=300, n_symbols=4, seed=0, good="e0") -> pd.DataFrame:
    """OOF rows where expert ``good`` forecasts ``ret`` (signal plus noise) and the other is noise."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n_times, freq="1h", tz="UTC")
    frame = pd.DataFrame(
        {"symbol": np.tile([f"S{i}" for i in range(n_symbols)], n_times), "timestamp": np.repeat(ts, n_symbols)}
    )
    n = len(frame)
    signal = rng.normal(0, 0.01, n)
    frame["ret"] = signal + rng.normal(0, 0.01, n)
    frame["dir"] = (frame["ret"] > 0).astype(float)
    for alias in EXPERTS:
        er = signal + rng.normal(0, 0.003, n) if alias == good else rng.normal(0, 0.01, n)
        frame[expert_column(alias, "expected_return")] = er
        frame[expert_column(alias, "prob_up")] = 1 / (1 + np.exp(-er / 0.01))
    return frame


def test_ridge_logistic_weights_the_informative_expert_and_is_deterministic():
    rows = oof_rows()
    comb = RidgeLogistic(alpha=1.0, C=1.0).fit(rows, EXPERTS)
    w = comb.describe()
    assert abs(w["return_weights"][0]) > 5 * abs(w["return_weights"][1]) and w["return_weights"][0] > 0
    assert w["direction_weights"][0] > 5 * abs(w["direction_weights"][1])
    out = comb.predict(rows, EXPERTS)
    assert list(out.columns) == ["expected_return", "prob_up"] and out.index.equals(rows.index)
    assert np.corrcoef(out["expected_return"], rows["ret"])[0, 1] > 0.5
    assert ((out["prob_up"] > 0) & (out["prob_up"] < 1)).all()
    again = RidgeLogistic(alpha=1.0, C=1.0).fit(rows, EXPERTS).predict(rows, EXPERTS)
    pd.testing.assert_frame_equal(out, again, check_exact=True)
    # a heavier ridge penalty shrinks the return head towards the mean return
    shrunk = RidgeLogistic(alpha=1e6).fit(rows, EXPERTS).predict(rows, EXPERTS)
    assert shrunk["expected_return"].std() < 0.05 * out["expected_return"].std()


def test_ridge_logistic_one_class_direction_predicts_its_frequency():
    rows = oof_rows()
    rows["dir"] = 1.0
    prob = RidgeLogistic().fit(rows, EXPERTS).predict(rows, EXPERTS)["prob_up"]
    assert np.allclose(prob, 1 - 1e-6)


def test_equal_weight_is_the_mean():
    rows = oof_rows()
    out = EqualWeight().fit(rows, EXPERTS).predict(rows, EXPERTS)
    er = rows[[expert_column(a, "expected_return") for a in EXPERTS]].mean(axis=1)
    assert np.array_equal(out["expected_return"].to_numpy(), er.to_numpy())
    logit_mean = EqualWeight(prob_space="logit").predict(rows, EXPERTS)["prob_up"]
    p = rows[[expert_column(a, "prob_up") for a in EXPERTS]].to_numpy()
    expected = 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(axis=1)))
    assert np.allclose(logit_mean, expected)


@pytest.mark.parametrize("metric", ["rank_ic", "rmse", "log_loss"])
def test_best_single_chooses_on_the_rows_it_is_fitted_on(metric):
    earlier = oof_rows(good="e1", seed=1)  # e1 is the good expert on the fit rows ...
    later = oof_rows(good="e0", seed=2)  # ... e0 on the rows predicted: no hindsight, e1 is used
    comb = BestSingle(metric=metric).fit(earlier, EXPERTS)
    assert comb.chosen_ == "e1" and comb.describe()["chosen"] == "e1"
    out = comb.predict(later, EXPERTS)
    assert np.array_equal(out["expected_return"].to_numpy(), later[expert_column("e1", "expected_return")].to_numpy())
    assert BestSingle(metric=metric).fit(later, EXPERTS).chosen_ == "e0"


def test_bad_settings_and_missing_columns_are_refused():
    with pytest.raises(QuantmlInputError, match="combiner.alpha"):
        RidgeLogistic(alpha=-1)
    with pytest.raises(QuantmlInputError, match="combiner.C"):
        RidgeLogistic(C=0)
    with pytest.raises(QuantmlInputError, match="combiner.metric"):
        BestSingle(metric="sharpe")
    with pytest.raises(QuantmlInputError, match="prob_space"):
        EqualWeight(prob_space="odds")
    with pytest.raises(QuantmlInputError, match="e2__expected_return"):
        EqualWeight().predict(oof_rows(), ["e0", "e2"])
    with pytest.raises(QuantmlInputError, match="no rows"):
        RidgeLogistic().fit(oof_rows().iloc[:0], EXPERTS)


def test_packaged_combiner_configs_build_their_classes():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    built = {p.stem: type(make_combiner(combiner_config(p.stem))) for p in COMBINER_DIR.glob("*.yaml")}
    classes = {
        "ridge": RidgeLogistic,
        "equal_weight": EqualWeight,
        "best_single": BestSingle,
        "mlp": MLPCombiner,
        "lightgbm": LightGBMCombiner,
        "regime_gate": RegimeGate,
    }
    assert built == classes
    for p in COMBINER_DIR.glob("*.yaml"):  # plain Hydra builds them too, with the interface H2 calls
        comb = instantiate(OmegaConf.load(p), _convert_="all")
        assert type(comb) is classes[p.stem] and isinstance(comb.uses_regime, bool) and comb.name == p.stem
        assert isinstance(comb.describe(), dict)
    assert [make_combiner(combiner_config(n)).uses_regime for n in ("ridge", "mlp", "lightgbm", "regime_gate")] == [
        False,
        True,
        True,
        True,
    ]
    with pytest.raises(QuantmlInputError, match="alpha_"):
        make_combiner({**combiner_config("ridge"), "alpha_": 2.0})


def regime_rows(n_times=250, n_symbols=4, seed=0) -> pd.DataFrame:
    """OOF rows of two regimes (``state`` +1 / -1, switching every ~47 bars, seen through the noisy regime
    feature ``regime__regime_vol_z``; ``regime__momentum_96`` is noise): expert e0 forecasts ``ret`` in
    regime +1 and is noise in -1, e1 the other way round."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n_times, freq="1h", tz="UTC")
    frame = pd.DataFrame(
        {"symbol": np.tile([f"S{i}" for i in range(n_symbols)], n_times), "timestamp": np.repeat(ts, n_symbols)}
    )
    n = len(frame)
    state = np.repeat(np.where(np.sin(np.arange(n_times) / 15.0) >= 0, 1.0, -1.0), n_symbols)
    frame["state"] = state
    frame["regime__regime_vol_z"] = state + rng.normal(0, 0.3, n)
    frame["regime__momentum_96"] = rng.normal(0, 1, n)
    signal = rng.normal(0, 0.01, n)
    frame["ret"] = signal + rng.normal(0, 0.005, n)
    frame["dir"] = (frame["ret"] > 0).astype(float)
    for alias, good in (("e0", state > 0), ("e1", state < 0)):
        er = np.where(good, signal + rng.normal(0, 0.002, n), rng.normal(0, 0.01, n))
        frame[expert_column(alias, "expected_return")] = er
        frame[expert_column(alias, "prob_up")] = 1 / (1 + np.exp(-er / 0.01))
    return frame


def _mse(out: pd.DataFrame, rows: pd.DataFrame) -> float:
    return float(np.mean((out["expected_return"] - rows["ret"]) ** 2))


def _log_loss(out: pd.DataFrame, rows: pd.DataFrame) -> float:
    p, y = np.clip(out["prob_up"].to_numpy(), 1e-6, 1 - 1e-6), rows["dir"].to_numpy()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def test_regime_gate_moves_its_weights_to_the_expert_good_in_each_regime():
    fit, later = regime_rows(seed=0), regime_rows(seed=1)
    gate = RegimeGate().fit(fit, EXPERTS)
    w = gate.weights(later, EXPERTS)
    assert list(w.columns) == EXPERTS and w.index.equals(later.index)
    assert np.allclose(w.sum(axis=1), 1.0)
    by_regime = w.groupby(later["state"].to_numpy()).mean()
    assert by_regime.loc[1.0, "e0"] > 0.85 and by_regime.loc[-1.0, "e1"] > 0.85
    out = gate.predict(later, EXPERTS)
    equal = EqualWeight().predict(later, EXPERTS)
    assert _mse(out, later) < 0.6 * _mse(equal, later)  # measured 0.43
    assert _log_loss(out, later) < _log_loss(equal, later) - 0.1  # measured 0.37 vs 0.58
    info = gate.describe()
    assert info["regime_columns"] == ["regime__momentum_96", "regime__regime_vol_z"] and info["converged"]
    assert info["gate_coef"]["e0"]["regime__regime_vol_z"] > 1.0 > info["gate_coef"]["e0"]["regime__momentum_96"]
    assert info["loss"] < info["loss_equal_weight"]
    again = RegimeGate().fit(fit, EXPERTS).predict(later, EXPERTS)
    pd.testing.assert_frame_equal(out, again, check_exact=True)
    # a heavier penalty on A pulls the weights back towards equal weight; a higher temperature softens them
    flat = RegimeGate(alpha=1e7).fit(fit, EXPERTS).weights(later, EXPERTS)
    assert (flat - 0.5).abs().max().max() < 0.05
    soft = RegimeGate(temperature=1e3, alpha=10.0).fit(fit, EXPERTS).weights(later, EXPERTS)
    assert (soft - 0.5).abs().max().max() < (w - 0.5).abs().max().max()


def test_regime_gate_needs_regime_columns_and_its_experts():
    rows = oof_rows()
    with pytest.raises(QuantmlInputError, match=r"regime columns \(regime__\*\).*attach_regime.*another combiner"):
        RegimeGate().fit(rows, EXPERTS)
    with pytest.raises(QuantmlInputError, match="combiner.regime=false"):
        MLPCombiner().fit(rows, EXPERTS)
    with pytest.raises(QuantmlInputError, match="combiner.regime=false"):
        RidgeLogistic(regime=True).fit(rows, EXPERTS)
    gate = RegimeGate().fit(regime_rows(), EXPERTS)
    with pytest.raises(QuantmlInputError, match="fitted on experts"):
        gate.weights(regime_rows(), ["e1", "e0"])
    with pytest.raises(QuantmlInputError, match="regime__regime_vol_z"):
        gate.predict(regime_rows().drop(columns="regime__regime_vol_z"), EXPERTS)
    with pytest.raises(QuantmlInputError, match="combiner.temperature"):
        RegimeGate(temperature=0)
    with pytest.raises(QuantmlInputError, match="combiner.hidden"):
        MLPCombiner(hidden=[0])
    with pytest.raises(QuantmlInputError, match="combiner.num_leaves"):
        LightGBMCombiner(num_leaves=1)
    with pytest.raises(QuantmlInputError, match="combiner.regime"):
        LightGBMCombiner(regime="yes")


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: RidgeLogistic(regime=True),
        lambda seed: MLPCombiner(hidden=[8], max_iter=200, seed=seed),
        lambda seed: LightGBMCombiner(n_estimators=100, seed=seed),
        lambda seed: RegimeGate(seed=seed),
    ],
    ids=["ridge_regime", "mlp", "lightgbm", "regime_gate"],
)
def test_regime_combiners_learn_deterministically_and_predict_nan_for_nan_inputs(make):
    fit, later = regime_rows(seed=0), regime_rows(seed=1)
    comb = make(0).fit(fit, EXPERTS)
    out = comb.predict(later, EXPERTS)
    assert list(out.columns) == ["expected_return", "prob_up"] and out.index.equals(later.index)
    assert comb.uses_regime and comb.describe()["regime_columns"] == ["regime__momentum_96", "regime__regime_vol_z"]
    # skill: the return head beats predicting the mean, the direction head beats a coin
    assert _mse(out, later) < 0.8 * float(np.mean((later["ret"] - fit["ret"].mean()) ** 2))
    assert _log_loss(out, later) < np.log(2) - 0.1
    again = make(0).fit(fit, EXPERTS).predict(later, EXPERTS)
    pd.testing.assert_frame_equal(out, again, check_exact=True)  # the same seed: bit-identical
    # a NaN input (a regime feature or an expert forecast) predicts NaN for that row only
    holes = later.copy()
    holes.loc[holes.index[3], "regime__momentum_96"] = np.nan
    holes.loc[holes.index[7], expert_column("e1", "prob_up")] = np.nan
    got = comb.predict(holes, EXPERTS)
    assert got.iloc[3].isna().all() and np.isnan(got["prob_up"].iloc[7])
    keep = np.setdiff1d(np.arange(len(later)), [3, 7])
    # (the same values up to the last bits: BLAS blocks a matrix of other rows differently)
    pd.testing.assert_frame_equal(got.iloc[keep], out.iloc[keep], check_exact=False, rtol=1e-12, atol=0.0)
    # fitting skips rows with NaN inputs instead of failing
    assert np.isfinite(make(0).fit(holes, EXPERTS).predict(later, EXPERTS).to_numpy()).all()


def test_mlp_and_lightgbm_capture_the_regime_interaction_that_linear_weights_miss():
    fit, later = regime_rows(seed=0), regime_rows(seed=1)
    linear = _mse(RidgeLogistic(regime=True).fit(fit, EXPERTS).predict(later, EXPERTS), later)
    mlp = MLPCombiner(hidden=[8], max_iter=200).fit(fit, EXPERTS)
    lgbm = LightGBMCombiner(n_estimators=100).fit(fit, EXPERTS)
    assert _mse(mlp.predict(later, EXPERTS), later) < 0.7 * linear
    assert _mse(lgbm.predict(later, EXPERTS), later) < 0.7 * linear
    other = MLPCombiner(hidden=[8], max_iter=200, seed=1).fit(fit, EXPERTS).predict(later, EXPERTS)
    assert not other.equals(mlp.predict(later, EXPERTS))  # the seed is the initial weights
    info = lgbm.describe()
    assert info["inputs"] == ["e0", "e1", "regime__momentum_96", "regime__regime_vol_z"]
    gain = info["return_importance_gain"]
    assert gain["regime__regime_vol_z"] > gain["regime__momentum_96"]
    # without regime inputs they fit on the experts alone and need no regime columns
    plain = MLPCombiner(hidden=[8], max_iter=100, regime=False).fit(oof_rows(), EXPERTS)
    assert not plain.uses_regime and plain.describe()["inputs"] == EXPERTS
    assert np.isfinite(plain.predict(oof_rows(seed=5), EXPERTS).to_numpy()).all()


def test_ridge_regime_false_is_the_plain_ridge_and_true_adds_regime_weights():
    rows = regime_rows()
    plain = RidgeLogistic().fit(rows, EXPERTS)
    info = plain.describe()
    assert "regime_columns" not in info and len(info["return_weights"]) == 2
    with_regime = RidgeLogistic(regime=True).fit(rows, EXPERTS).describe()
    assert len(with_regime["return_regime_weights"]) == 2 and len(with_regime["direction_regime_weights"]) == 2
    # the regime columns are ignored (not read) with regime=False
    pd.testing.assert_frame_equal(
        plain.predict(rows, EXPERTS),
        RidgeLogistic().fit(rows.drop(columns=["regime__regime_vol_z"]), EXPERTS).predict(rows, EXPERTS),
        check_exact=True,
    )


def test_stack_folds_and_the_fit_rule():
    plan = {
        "blocks": [
            {"block": b, "start": f"2024-01-0{1 + 2 * b}T00:00:00+00:00", "end": f"2024-01-0{2 + 2 * b}T23:00:00+00:00"}
            for b in range(4)
        ],
        "folds": [{"fold_id": k, "train_blocks": list(range(k + 1)), "test_blocks": [k + 1]} for k in range(3)],
    }
    folds = stack_folds(plan)
    assert [f.fold_id for f in folds] == [1, 2]
    assert folds[0].test_start == pd.Timestamp("2024-01-05T00:00:00Z")
    ts = pd.date_range("2024-01-03", "2024-01-07", freq="1h", tz="UTC")
    table = pd.DataFrame({"timestamp": ts, "t1": ts + pd.Timedelta("4h")})
    table["fold"] = np.where(ts < folds[0].test_start, 0, np.where(ts < folds[1].test_start, 1, 2))
    rows = table[fit_mask(table, folds[0], pd.Timedelta("2h"))]
    assert (rows["fold"] == 0).all() and rows["t1"].max() + pd.Timedelta("2h") < folds[0].test_start
    assert rows["timestamp"].max() == pd.Timestamp("2024-01-04T17:00:00Z")  # 4h labels, 2h embargo
    with pytest.raises(QuantmlInputError, match="n_splits"):
        stack_folds({**plan, "folds": plan["folds"][:1]})


def _expert(alias, frame, fold_params):
    from types import SimpleNamespace

    from quantml.stacking.experts import Expert

    return Expert(alias, SimpleNamespace(run_id=f"run-{alias}"), frame, [], fold_params)


def test_audit_flags_a_fold_model_whose_training_labels_reach_its_predictions():
    from quantml.stacking import audit_oof

    ts = pd.date_range("2024-01-02", periods=48, freq="1h", tz="UTC")
    frame = pd.DataFrame({"symbol": "A", "timestamp": ts, "horizon": "4h", "t1": ts + pd.Timedelta("4h")})
    for col in ("expected_return", "prob_up", "q10", "q90", "vol_forecast", "score", "ret", "ret_after_cost"):
        frame[col] = 0.5
    frame[["dir", "vol", "ret_next_bar"]] = 1.0
    frame["fold"] = 0
    window = {"test_start": str(ts[0]), "test_end": str(ts[-1])}
    honest = {"0": {"train_end": "2024-01-01 18:00:00+00:00", "valid_end": "2024-01-01 19:00:00+00:00", **window}}
    market = frame[["symbol", "timestamp", "ret_next_bar"]]
    audit = audit_oof([_expert("e0", frame, honest), _expert("e1", frame, honest)], market, 5, 0.0)
    assert audit["clean"], audit
    # the fold model's inner validation ran 10 hours into its test window: labels to 14:00 + 4h
    leaky = {"0": {**honest["0"], "valid_end": "2024-01-02 10:00:00+00:00"}}
    audit = audit_oof([_expert("e0", frame, honest), _expert("e1", frame, leaky)], market, 5, 0.0)
    check = audit["checks"]["training_labels_before_prediction"]
    assert check["status"] == "FAIL" and check["count"] == 15 and "'e1': 15" in check["detail"]
    # time backwards, a gap, a missing prediction
    shuffled = pd.concat([frame.iloc[10:], frame.iloc[:10]], ignore_index=True)
    gappy = frame.drop(index=range(20, 30)).reset_index(drop=True)
    audit = audit_oof([_expert("e0", shuffled, honest), _expert("e1", gappy, honest)], market, 5, 0.0)
    assert audit["checks"]["time_order"]["status"] == "FAIL" and audit["checks"]["time_order"]["count"] == 1
    assert audit["checks"]["gaps"]["status"] == "FAIL" and audit["checks"]["missing_predictions"]["count"] == 10
    assert audit["checks"]["duplicate_keys"]["status"] == "PASS"


def _market_moves(rows: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """``rows`` with a large common move per timestamp added to ``ret`` and, with a different
    loading, to each expert's forecast (as fold models' intercepts track the market): the ranking
    across symbols is unchanged."""
    rng = np.random.default_rng(seed)
    out = rows.copy()
    codes = pd.factorize(out["timestamp"])[0]
    market = rng.normal(0, 0.05, codes.max() + 1)[codes]
    out["ret"] = out["ret"] + market
    out["dir"] = (out["ret"] > 0).astype(float)
    for alias, loading in (("e0", 0.3), ("e1", -0.2)):
        col = expert_column(alias, "expected_return")
        out[col] = out[col] + loading * market
    return out


def _cs_ic(out: pd.DataFrame, rows: pd.DataFrame) -> float:
    frame = pd.DataFrame({"t": rows["timestamp"], "f": out["expected_return"], "r": rows["ret"]})
    return float(frame.groupby("t")[["f", "r"]].apply(lambda g: g["f"].rank().corr(g["r"].rank())).mean())


@pytest.mark.parametrize("make", [lambda cs: RidgeLogistic(cross_section=cs), lambda cs: RegimeGate(cross_section=cs)])
def test_cross_sectional_fit_ranks_symbols_and_ignores_the_market_move(make):
    rows = _market_moves(regime_rows(n_times=400, seed=3))
    fit, test = (
        rows[rows["timestamp"] < rows["timestamp"].iloc[1200]],
        rows[rows["timestamp"] >= rows["timestamp"].iloc[1200]],
    )
    experts = ["e0", "e1"]
    pooled, cross = make("off").fit(fit, experts), make("auto").fit(fit, experts)
    assert not pooled.describe().get("cross_sectional_fit") and cross.describe()["cross_sectional_fit"]
    ic_pooled, ic_cross = _cs_ic(pooled.predict(test, experts), test), _cs_ic(cross.predict(test, experts), test)
    assert ic_cross > ic_pooled + 0.05, (ic_pooled, ic_cross)
    # the level is the experts' mean forecast at the timestamp, the spread the fitted cross-sectional part
    # (the gate's weights differ across a timestamp's rows, so its spread's mean is near 0, not 0)
    out = cross.predict(test, experts)
    level = (
        test[[expert_column(a, "expected_return") for a in experts]]
        .mean(axis=1)
        .groupby(test["timestamp"])
        .transform("mean")
    )
    means = out["expected_return"].groupby(test["timestamp"]).transform("mean")
    assert np.corrcoef(means, level)[0, 1] > 0.99
    # a timestamp's cross-sectional inputs read that timestamp alone: moving a later row changes nothing earlier
    moved = test.copy()
    last = moved["timestamp"] == moved["timestamp"].max()
    moved.loc[last, expert_column("e0", "expected_return")] += 1.0
    before = ~last.to_numpy()
    np.testing.assert_array_equal(
        cross.predict(moved, experts)["expected_return"].to_numpy()[before], out["expected_return"].to_numpy()[before]
    )
    # one symbol per timestamp: auto falls back to the pooled fit (nothing to rank across)
    single = fit[fit["symbol"] == "S0"]
    assert not make("auto").fit(single, experts).describe()["cross_sectional_fit"]
