"""Temperature scaling, isotonic calibration and split-conformal quantiles, fitted on validation only."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

from quantml.contracts import QuantmlInputError
from quantml.evaluation import fit_calibrator
from quantml.evaluation.calibration import conformal_quantile, fit_temperature
from quantml.evaluation.metrics import expected_calibration_error, probability_metrics, quantile_metrics


def classifier_frame(n, seed, overconfidence=3.0, horizons=("1d",)):
    """An over-confident classifier: true P(up) = sigmoid(z), reported sigmoid(overconfidence * z)."""
    rng = np.random.default_rng(seed)
    parts = []
    for h in horizons:
        z = rng.normal(0, 1, n)
        y = (rng.random(n) < expit(z)).astype(float)
        ret = np.where(y > 0, 1, -1) * np.abs(rng.normal(0, 0.01, n))
        parts.append(
            pd.DataFrame(
                {
                    "horizon": h,
                    "prob_up": expit(overconfidence * z),
                    "q10": -0.01,
                    "q50": 0.0,
                    "q90": 0.01,
                    "ret": ret,
                    "dir": y,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def gaussian_frame(n, seed, width=0.5, horizons=("1d",)):
    """i.i.d. Gaussian returns; the forecaster's interval uses `width` x the true sigma (too narrow < 1)."""
    rng = np.random.default_rng(seed)
    parts = []
    for h in horizons:
        mu = rng.normal(0, 0.01, n)
        sig = np.exp(rng.normal(np.log(0.02), 0.3, n))
        ret = mu + sig * rng.normal(size=n)
        parts.append(
            pd.DataFrame(
                {
                    "horizon": h,
                    "prob_up": 0.5,
                    "q10": mu - 1.2816 * sig * width,
                    "q50": mu,
                    "q90": mu + 1.2816 * sig * width,
                    "ret": ret,
                    "dir": (ret > 0).astype(float),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def ece(frame):
    return expected_calibration_error(frame["prob_up"].to_numpy(), frame["dir"].to_numpy(), 10)


def test_temperature_scaling_reduces_ece_of_an_overconfident_classifier():
    valid, test = classifier_frame(4000, seed=0), classifier_frame(20000, seed=1)
    cal = fit_calibrator(valid, {"calibration": {"method": "temperature"}, "conformal": {"enabled": False}})
    assert cal.temperature["1d"] == pytest.approx(3.0, rel=0.15)  # undoes the x3 over-confidence
    out = cal.transform(test)
    before, after = ece(test), ece(out)
    assert after < 0.5 * before and after < 0.02
    raw = probability_metrics(test["prob_up"], test["dir"])
    new = probability_metrics(out["prob_up"], out["dir"])
    assert new["log_loss"] < raw["log_loss"] and new["brier"] < raw["brier"]
    np.testing.assert_array_equal(out["prob_up_raw"].to_numpy(), test["prob_up"].to_numpy())
    # temperature scaling is monotone: the ranking (and so AP) is unchanged
    assert (
        np.argsort(out["prob_up"].to_numpy(), kind="stable") == np.argsort(test["prob_up"].to_numpy(), kind="stable")
    ).mean() > 0.999


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 50000)
    y = (rng.random(len(z)) < expit(z / 2.0)).astype(float)
    assert fit_temperature(expit(z), y) == pytest.approx(2.0, rel=0.05)


def test_isotonic_option_reduces_ece():
    valid, test = classifier_frame(4000, seed=2), classifier_frame(20000, seed=3)
    cal = fit_calibrator(valid, {"calibration": {"method": "isotonic"}})
    out = cal.transform(test)
    assert ece(out) < 0.5 * ece(test)
    assert out["prob_up"].between(0, 1).all()


def test_method_none_keeps_probabilities():
    valid, test = classifier_frame(500, seed=4), classifier_frame(500, seed=5)
    out = fit_calibrator(valid, {"calibration": {"method": "none"}}).transform(test)
    np.testing.assert_allclose(out["prob_up"], np.clip(test["prob_up"], 1e-6, 1 - 1e-6))


@pytest.mark.parametrize("mode", ["asymmetric", "symmetric"])
def test_conformal_brings_too_narrow_interval_to_nominal_coverage(mode):
    valid, test = gaussian_frame(3000, seed=10, width=0.5), gaussian_frame(40000, seed=11, width=0.5)
    before = quantile_metrics(test["q10"], test["q50"], test["q90"], test["ret"])["coverage_80"]
    cal = fit_calibrator(valid, {"conformal": {"enabled": True, "alpha": 0.2, "mode": mode}})
    out = cal.transform(test)
    after = quantile_metrics(out["q10"], out["q50"], out["q90"], out["ret"])
    assert before < 0.55
    assert 0.77 <= after["coverage_80"] <= 0.83
    if mode == "asymmetric":  # each tail calibrated as well
        assert 0.07 <= after["coverage_q10"] <= 0.13 and 0.87 <= after["coverage_q90"] <= 0.93


def test_conformal_narrows_too_wide_interval_and_keeps_order():
    valid, test = gaussian_frame(3000, seed=12, width=3.0), gaussian_frame(40000, seed=13, width=3.0)
    out = fit_calibrator(valid, {}).transform(test)
    cov = quantile_metrics(out["q10"], out["q50"], out["q90"], out["ret"])["coverage_80"]
    assert 0.77 <= cov <= 0.83
    assert (out["q10"] <= out["q50"]).all() and (out["q50"] <= out["q90"]).all()


def test_conformal_can_be_switched_off():
    valid, test = gaussian_frame(500, seed=14), gaussian_frame(500, seed=15)
    out = fit_calibrator(valid, {"conformal": {"enabled": False}}).transform(test)
    np.testing.assert_array_equal(out["q10"], test["q10"])
    np.testing.assert_array_equal(out["q90"], test["q90"])


def test_conformal_quantile_is_finite_sample_corrected():
    scores = np.arange(1.0, 10.0)  # n = 9: level .8 -> ceil(10 * .8) = 8th smallest
    assert conformal_quantile(scores, 0.8) == 8.0
    assert conformal_quantile(scores, 0.95) == 9.0  # capped at the max
    shuffled = np.random.default_rng(0).permutation(np.r_[scores, scores[:4]])  # unsorted, with ties
    for level in (0.05, 0.5, 0.8, 0.999):
        k = min(int(np.ceil((len(shuffled) + 1) * level)), len(shuffled))
        assert conformal_quantile(shuffled, level) == np.sort(shuffled)[k - 1]
    before = shuffled.copy()
    conformal_quantile(shuffled, 0.5)
    assert np.array_equal(shuffled, before)  # the caller's scores are not reordered


def test_calibration_skips_rows_with_any_non_finite_value():
    valid = classifier_frame(2000, 6, 3.0, ("1d",))
    holed = valid.copy()
    holed.loc[holed.index[::7], "q10"] = np.nan
    holed.loc[holed.index[3::11], "ret"] = np.inf
    dropped = holed[holed.index.isin(holed.index[::7]) | holed.index.isin(holed.index[3::11])].index
    cal, ref = fit_calibrator(holed, {}), fit_calibrator(valid.drop(index=dropped), {})
    assert cal.n_fit == ref.n_fit == {"1d": 2000 - len(dropped)}
    assert cal.temperature == ref.temperature and cal.shift == ref.shift


def test_calibrator_is_per_horizon_picklable_and_idempotent_on_probabilities():
    valid = pd.concat([classifier_frame(2000, 6, 3.0, ("1d",)), classifier_frame(2000, 7, 0.5, ("7d",))])
    cal = fit_calibrator(valid, {})
    assert cal.temperature["1d"] > 2.0 and cal.temperature["7d"] < 0.7  # over- vs under-confident
    test = pd.concat(
        [classifier_frame(300, 8, 3.0, ("1d",)), classifier_frame(300, 9, 0.5, ("7d",))], ignore_index=True
    )
    once = cal.transform(test)
    twice = cal.transform(once)
    np.testing.assert_allclose(once["prob_up"], twice["prob_up"])
    clone = pickle.loads(pickle.dumps(cal))
    pd.testing.assert_frame_equal(clone.transform(test), once)
    assert cal.to_dict()["n_fit"] == {"1d": 2000, "7d": 2000}


def test_too_few_validation_rows_warns_and_keeps_identity():
    valid = classifier_frame(20, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = fit_calibrator(valid, {"calibration": {"min_samples": 50}})
    assert any("min_samples" in str(w.message) for w in caught)
    test = classifier_frame(100, seed=2)
    out = cal.transform(test)
    np.testing.assert_allclose(out["prob_up"], np.clip(test["prob_up"], 1e-6, 1 - 1e-6))
    assert cal.fitted == {"1d": False}


def test_bad_settings_and_frames_raise_clear_errors():
    valid = classifier_frame(100, seed=1)
    with pytest.raises(QuantmlInputError, match="calibration.method"):
        fit_calibrator(valid, {"calibration": {"method": "platt"}})
    with pytest.raises(QuantmlInputError, match="alpha"):
        fit_calibrator(valid, {"conformal": {"alpha": 1.5}})
    with pytest.raises(QuantmlInputError, match="'dir'"):
        fit_calibrator(valid.drop(columns="dir"), {})
    cal = fit_calibrator(valid, {})
    with pytest.raises(QuantmlInputError, match="7d"):
        cal.transform(valid.assign(horizon="7d"))


def test_reads_the_default_yaml():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("quantml/conf/evaluation/default.yaml")
    cal = fit_calibrator(classifier_frame(200, seed=1), cfg)
    assert cal.settings.method == "temperature" and cal.settings.conformal and cal.settings.alpha == 0.2


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 4.0))
def test_transform_never_crosses_quantiles(seed, width):
    valid, test = gaussian_frame(200, seed, width), gaussian_frame(200, seed + 1, width)
    out = fit_calibrator(valid, {"conformal": {"mode": "asymmetric"}}).transform(test)
    assert (out["q10"] <= out["q50"]).all() and (out["q50"] <= out["q90"]).all()
    assert out["prob_up"].between(0, 1).all()


def test_transform_in_place_equals_the_copy_and_leaves_a_copied_input_alone():
    valid, test = gaussian_frame(200, 0, 1.0), gaussian_frame(200, 1, 1.0)
    cal = fit_calibrator(valid, {"conformal": {"mode": "asymmetric"}})
    before = test.copy()
    copied = cal.transform(test)
    pd.testing.assert_frame_equal(test, before)
    in_place = cal.transform(test, copy=False)
    assert in_place is test
    pd.testing.assert_frame_equal(in_place, copied)


def residual_frame(n, seed, z_scale=1.0, horizons=("1d",)):
    """A residual-quantile forecaster whose ``z`` (and so its quantiles) are ``z_scale`` x too narrow."""
    rng = np.random.default_rng(seed)
    parts = []
    for h in horizons:
        er = rng.normal(0, 0.01, n)
        vol = np.exp(rng.normal(np.log(0.02), 0.3, n))
        ret = er + vol * rng.standard_t(5, n)  # heavy tails: the Gaussian 1.2816 is wrong
        z = 1.2816 * z_scale
        parts.append(
            pd.DataFrame(
                {
                    "horizon": h,
                    "expected_return": er,
                    "vol_forecast": vol,
                    "prob_up": 0.5,
                    "q10": er - vol * z,
                    "q50": er,
                    "q90": er + vol * z,
                    "ret": ret,
                    "dir": (ret > 0).astype(float),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_residual_quantiles_are_refitted_on_the_calibration_rows():
    valid, test = residual_frame(5000, 1, z_scale=0.3), residual_frame(20000, 2, z_scale=0.3)
    cal = fit_calibrator(valid, {"conformal": {"enabled": False}}, residual_quantiles=True)
    z10, z50, z90 = cal.residual_z["1d"]
    t5 = np.quantile(np.random.default_rng(0).standard_t(5, 200_000), [0.1, 0.5, 0.9])
    np.testing.assert_allclose([z10, z50, z90], t5, atol=0.06)
    out = cal.transform(test)
    np.testing.assert_allclose(out["q90"], test["expected_return"] + test["vol_forecast"] * z90)
    inside = (test["ret"] >= out["q10"]) & (test["ret"] <= out["q90"])
    assert abs(inside.mean() - 0.8) < 0.02
    assert abs(((test["ret"] >= test["q10"]) & (test["ret"] <= test["q90"])).mean() - 0.8) > 0.3  # was too narrow
    # the conformal shift is then measured on the rebuilt quantiles: almost nothing is left to shift
    shifted = fit_calibrator(valid, {}, residual_quantiles=True)
    assert max(abs(v) for v in shifted.shift["1d"]) < 0.002
    assert shifted.to_dict()["residual_z"]["1d"] == list(shifted.residual_z["1d"])


def test_without_residual_quantiles_the_model_quantiles_are_kept():
    valid, test = residual_frame(2000, 3, z_scale=0.3), residual_frame(500, 4, z_scale=0.3)
    cal = fit_calibrator(valid, {"conformal": {"enabled": False}})
    assert cal.residual_z == {}
    pd.testing.assert_series_equal(cal.transform(test)["q90"], test["q90"])
    # too few rows: the model's own quantiles are the fallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        small = fit_calibrator(valid.iloc[:20], {"calibration": {"min_samples": 50}}, residual_quantiles=True)
    assert small.residual_z == {}
    pd.testing.assert_series_equal(small.transform(test)["q10"], test["q10"])
    with pytest.raises(QuantmlInputError, match="vol_forecast"):
        fit_calibrator(valid.drop(columns="vol_forecast"), {}, residual_quantiles=True)


def test_a_calibrator_pickled_before_residual_quantiles_still_loads():
    cal = fit_calibrator(classifier_frame(500, seed=3), {})
    state = dict(cal.__dict__)
    del state["residual_z"]  # what a 0.1-era pickle holds
    old = object.__new__(type(cal))
    old.__setstate__(state)
    clone = pickle.loads(pickle.dumps(old))
    assert clone.residual_z == {}
    test = classifier_frame(100, seed=4)
    pd.testing.assert_frame_equal(clone.transform(test), cal.transform(test))


def test_a_categorical_horizon_column_calibrates_as_its_strings_do():
    """Large frames carry ``horizon`` as a categorical (read by its codes, no string per row): the
    fitted calibrator and the calibrated frame are those of the same frame with string horizons,
    including a category with no rows and rows in an order other than the categories'."""
    horizons = ("4h", "1h", "1d")
    valid = residual_frame(3000, 3, z_scale=0.5, horizons=horizons)
    valid["prob_up"] = expit(np.random.default_rng(4).normal(0, 1, len(valid)))
    test = residual_frame(2000, 5, z_scale=0.5, horizons=horizons)
    test["prob_up"] = expit(np.random.default_rng(6).normal(0, 1, len(test)))

    def coded(frame):
        return frame.assign(horizon=pd.Categorical(frame["horizon"], categories=["1d", "1h", "4h", "7d"]))

    plain = fit_calibrator(valid, {}, residual_quantiles=True)
    cat = fit_calibrator(coded(valid), {}, residual_quantiles=True)
    assert cat.to_dict() == plain.to_dict() and list(cat.n_fit) == list(horizons)
    expected, got = plain.transform(test), cat.transform(coded(test))
    pd.testing.assert_frame_equal(got.drop(columns="horizon"), expected.drop(columns="horizon"))
    assert (got["horizon"].astype(str) == expected["horizon"]).all()
