"""The combiners of `quantml stack` (config group `combiner`), the stack's fold rule and its audit, on
synthetic OOF rows: each head learns what it should, nothing random, best_single chooses on the rows it
is fitted on only, bad settings are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.stacking import BestSingle, EqualWeight, RidgeLogistic, expert_column, fit_mask, stack_folds
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
    built = {p.stem: type(make_combiner(combiner_config(p.stem))) for p in COMBINER_DIR.glob("*.yaml")}
    assert built == {"ridge": RidgeLogistic, "equal_weight": EqualWeight, "best_single": BestSingle}
    with pytest.raises(QuantmlInputError, match="alpha_"):
        make_combiner({**combiner_config("ridge"), "alpha_": 2.0})


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
