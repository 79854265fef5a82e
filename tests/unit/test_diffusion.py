"""The diffusion head (head=diffusion), Monte Carlo dropout, the CRPS scores and the bimodal plant.

Fast tests use the hand-built toy panel of test_sequence; the planted head comparison (slow) runs on
the synthetic panel with ``data.bimodal=true`` through the real feature and label pipeline.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import norm

from quantml.contracts import QuantmlInputError
from quantml.data.synthetic import generate_synthetic
from quantml.evaluation.crps import interval_score, quantile_crps, sample_crps
from quantml.models.sequence.diffusion import DiffusionHead, DiffusionSpec, alpha_bars, parse_head
from tests.conftest import CONFIG_DIR
from tests.unit.test_sequence import HORIZONS, make, split_rows, toy_panel

TINY_HEAD = {"name": "diffusion", "steps": 10, "sample_steps": 5, "n_samples": 16, "hidden": 16, "train_draws": 2}


@pytest.fixture(scope="module")
def panel():
    return toy_panel()


@pytest.fixture(scope="module")
def rows():
    return split_rows()


@pytest.fixture(scope="module")
def diffusion_mlp(panel, rows):
    tr, va, _ = rows
    return make("mlp", head=TINY_HEAD).fit(panel.subset(tr), panel.subset(va))


@pytest.fixture(scope="module")
def quantile_mlp(panel, rows):
    tr, va, _ = rows
    return make("mlp").fit(panel.subset(tr), panel.subset(va))


# ---- settings ---------------------------------------------------------------------------------
def test_head_settings_are_checked():
    assert parse_head(None) is None and parse_head({"name": "quantile"}) is None and parse_head("quantile") is None
    spec = parse_head({"name": "diffusion", "steps": 20, "sample_steps": 10, "schedule": "linear"})
    assert spec == DiffusionSpec(schedule="linear", steps=20, sample_steps=10)
    for bad, words in (
        ({"name": "flow"}, "head=diffusion"),
        ({"name": "diffusion", "schedule": "sigmoid"}, "schedule"),
        ({"name": "diffusion", "steps": 10, "sample_steps": 20}, "sample_steps <= steps"),
        ({"name": "diffusion", "n_samples": 0}, "n_samples"),
        ({"name": "diffusion", "eta": 2.0}, "eta"),
        ({"name": "diffusion", "samples": 10}, "no setting"),
        ({"name": "diffusion", "point": "median"}, "point"),
        ({"name": "diffusion", "target": "score"}, "target"),
    ):
        with pytest.raises(QuantmlInputError, match=words):
            parse_head(bad)
    with pytest.raises(QuantmlInputError, match="mc_dropout"):
        make("mlp", mc_dropout=-1)


def test_ridge_and_lightgbm_refuse_the_diffusion_head(compose_cfg):
    from quantml.experiment.fitting import build_model

    for backbone in ("ridge", "lightgbm"):
        assert build_model(compose_cfg([f"backbone={backbone}"]), ["1d"]) is not None  # head=quantile: fine
        with pytest.raises(QuantmlInputError, match="needs a sequence backbone"):
            build_model(compose_cfg([f"backbone={backbone}", "head=diffusion"]), ["1d"])
    model = build_model(compose_cfg(["backbone=tft", "head=diffusion"]), ["1d"])
    assert model.head_spec == DiffusionSpec(
        **{k: v for k, v in compose_cfg(["head=diffusion"]).head.items() if k != "name"}
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_noise_schedules_fall_from_signal_to_noise(schedule):
    ab = alpha_bars(schedule, 50)
    assert ab.shape == (50,) and torch.all(ab[1:] < ab[:-1])
    assert 0.9 < float(ab[0]) < 1 and 0 < float(ab[-1]) < 0.05


def test_denoising_loss_ignores_missing_targets():
    torch.manual_seed(0)
    head = DiffusionHead(4, 2, DiffusionSpec(steps=10, sample_steps=10, train_draws=1))
    c = torch.randn(8, 4)
    y = torch.randn(8, 2)
    y_nan = y.clone()
    y_nan[:, 1] = float("nan")
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    full, part = head.loss(c, y, g()), head.loss(c, y_nan, g())
    assert torch.isfinite(full) and torch.isfinite(part) and not torch.equal(full, part)
    part.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_each_target_converts_to_the_noise_and_the_clean_returns(target, monkeypatch):
    """A denoiser that outputs its target exactly implies the true noise and clean target, and has zero loss."""
    head = DiffusionHead(3, 2, DiffusionSpec(steps=20, sample_steps=10, train_draws=1, target=target))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    k = torch.randint(0, 20, (64,), generator=g)
    ab = head.abar[k].unsqueeze(-1)
    xk = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    exact = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[target]
    monkeypatch.setattr(head, "raw", lambda x, kk, cond: exact)
    e, c = head.eps_x0(xk, k, None, ab)
    torch.testing.assert_close(e, noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head.eps(xk, k, None), noise, rtol=1e-4, atol=1e-4)


def test_the_quantile_frame_diffuses_the_residual_and_maps_draws_back():
    torch.manual_seed(0)
    spec = DiffusionSpec(steps=10, sample_steps=5, train_draws=2, frame="quantile")
    head = DiffusionHead(4, 2, spec)
    plain = DiffusionHead(4, 2, DiffusionSpec(steps=10, sample_steps=5, train_draws=2))
    plain.load_state_dict(head.state_dict())
    c, y = torch.randn(8, 4), torch.randn(8, 2)
    out = {"q50": torch.randn(8, 2), "q10": None, "q90": None}
    out["q10"], out["q90"] = out["q50"] - 0.5, out["q50"] + 2.0
    loc, scale = head.frame(out)
    assert plain.frame(out) is None
    torch.testing.assert_close(scale, torch.full((8, 2), 2.5 / (2 * norm.ppf(0.9))))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(head.loss(c, y, g(), (loc, scale)), plain.loss(c, (y - loc) / scale, g()))
    framed, raw = head.sample(c, 5, g(), (loc, scale)), plain.sample(c, 5, g())
    torch.testing.assert_close(framed, loc.unsqueeze(1) + scale.unsqueeze(1) * raw)
    with pytest.raises(QuantmlInputError, match="frame"):
        parse_head({"name": "diffusion", "frame": "ranks"})


def test_the_scale_condition_sees_the_frames_scale_and_the_symbol_not_the_context():
    """condition=scale: the denoiser's condition is [log frame scale, symbol embedding] exactly, so the
    context's other columns change neither the loss nor the draws (bit for bit), and the scale does."""
    torch.manual_seed(0)
    spec = DiffusionSpec(steps=10, sample_steps=5, train_draws=2, frame="quantile", condition="scale")
    head = DiffusionHead(6, 2, spec, symbol_dim=2)
    assert head.cond.in_features == 2 + 2
    c, y = torch.randn(8, 6), torch.randn(8, 2)
    frame = (torch.randn(8, 2), torch.rand(8, 2) + 0.5)
    torch.testing.assert_close(head.condition(c, frame), torch.cat([frame[1].log(), c[:, 4:]], dim=-1))
    other = c.clone()
    other[:, :4] = torch.randn(8, 4)  # the backbone's part of the context: not seen
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(head.loss(c, y, g(), frame), head.loss(other, y, g(), frame))
    assert torch.equal(head.sample(c, 4, g(), frame), head.sample(other, 4, g(), frame))
    torch.nn.init.normal_(head.out.weight)  # the zero-initialised output would hide any condition
    wider = (frame[0], 2 * frame[1])
    draws = head.sample(c, 4, g(), frame)
    rescaled = (head.sample(c, 4, g(), wider) - frame[0].unsqueeze(1)) / 2
    assert not torch.allclose(rescaled, draws - frame[0].unsqueeze(1), atol=1e-3)
    symbol = c.clone()
    symbol[:, 4:] += 1.0
    assert not torch.allclose(head.sample(symbol, 4, g(), frame), draws, atol=1e-3)
    for bad, words in (
        ({"name": "diffusion", "condition": "scale", "frame": "returns"}, "frame=quantile"),
        ({"name": "diffusion", "condition": "features"}, "condition"),
    ):
        with pytest.raises(QuantmlInputError, match=words):
            parse_head(bad)


# ---- the forecaster --------------------------------------------------------------------------
def test_samples_have_their_shape_and_are_seeded(diffusion_mlp, panel, rows):
    te = panel.subset(rows[2])
    s1, s2 = diffusion_mlp.sample(te), diffusion_mlp.sample(te)
    assert s1.shape == (len(te), 16, len(HORIZONS)) and np.isfinite(s1).all()
    assert np.array_equal(s1, s2)  # same seed -> bit-identical samples
    fc = diffusion_mlp.predict(te)
    assert (fc.q10 <= fc.q50).all() and (fc.q50 <= fc.q90).all()
    assert ((fc.prob_up > 0) & (fc.prob_up < 1)).all()
    np.testing.assert_allclose(fc.q50, np.quantile(s1, 0.5, axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fc.expected_return, s1.mean(axis=1), rtol=1e-9, atol=1e-12)
    # a pickled model (the pyfunc path) draws the same samples
    clone = pickle.loads(pickle.dumps(diffusion_mlp))
    assert np.array_equal(clone.sample(te), s1)
    # another seed draws other samples
    other = make("mlp", seed=1, head=TINY_HEAD).fit(panel.subset(rows[0]), panel.subset(rows[1]))
    assert not np.array_equal(other.sample(te), s1)


def test_head_fit_after_keeps_the_quantile_nets_backbone_and_refits_at_its_epochs(quantile_mlp, panel, rows):
    tr, va, te = (panel.subset(r) for r in rows)
    after = make("mlp", head={**TINY_HEAD, "fit": "after", "fit_epochs": 6, "fit_patience": 2}).fit(tr, va)
    # the backbone is the quantile-only net's, bit for bit: the head is built once it is trained
    ours, theirs = after._run(te.data, te.rows), quantile_mlp._run(te.data, te.rows)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ("mean", "q10", "q50", "q90", "logit", "vol"))
    assert 1 <= after.capacity_["head_epochs"] <= 6 and len(after.head_history_) <= 6
    draws = after.sample(te)
    assert np.isfinite(draws).all() and np.array_equal(pickle.loads(pickle.dumps(after)).sample(te), draws)
    refit = after.with_capacity(after.capacity_).fit(tr, None)  # no validation: the head's epochs are given
    assert refit.head_history_ == [] and refit.capacity_["head_epochs"] == after.capacity_["head_epochs"]
    with pytest.raises(QuantmlInputError, match="head.fit"):
        parse_head({"name": "diffusion", "fit": "later"})


def test_quantile_head_refuses_sample(quantile_mlp, panel, rows):
    with pytest.raises(QuantmlInputError, match="head=diffusion"):
        quantile_mlp.sample(panel.subset(rows[2]))


def test_tft_runs_with_the_diffusion_head(panel, rows):
    tr, va, te = rows
    m = make("tft", head=TINY_HEAD).fit(panel.subset(tr), panel.subset(va))
    assert m.net_.diffusion.cond.in_features == len(HORIZONS) * 16 + 4  # H * hidden + symbol_dim
    s = m.sample(panel.subset(te[:30]))
    assert s.shape == (30, 16, len(HORIZONS)) and np.array_equal(s, m.sample(panel.subset(te[:30])))


# ---- Monte Carlo dropout ------------------------------------------------------------------------
def test_mc_dropout_off_is_bit_identical_and_on_widens_seeded(quantile_mlp, panel, rows):
    tr, va, te = rows
    base = quantile_mlp.predict(panel.subset(te))
    off = make("mlp", mc_dropout=0).fit(panel.subset(tr), panel.subset(va)).predict(panel.subset(te))
    for name in ("expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast"):
        assert np.array_equal(getattr(off, name), getattr(base, name)), name
    mc = make("mlp", mc_dropout=8, dropout=0.3).fit(panel.subset(tr), panel.subset(va))
    det = make("mlp", dropout=0.3).fit(panel.subset(tr), panel.subset(va)).predict(panel.subset(te))
    a, b = mc.predict(panel.subset(te)), mc.predict(panel.subset(te))
    assert np.array_equal(a.q10, b.q10) and np.array_equal(a.q90, b.q90)  # N passes are seeded
    assert np.array_equal(a.expected_return, det.expected_return) and np.array_equal(a.q50, det.q50)
    assert (a.q10 <= det.q10).all() and (a.q90 >= det.q90).all()
    assert (a.q90 - a.q10).mean() > 1.01 * (det.q90 - det.q10).mean()  # intervals widen with N > 0


def test_mc_dropout_with_the_diffusion_head_pools_the_passes(panel, rows):
    tr, va, te = rows
    m = make("mlp", mc_dropout=4, dropout=0.3, head=TINY_HEAD).fit(panel.subset(tr), panel.subset(va))
    s = m.sample(panel.subset(te[:20]))
    assert s.shape == (20, 16, len(HORIZONS)) and np.array_equal(s, m.sample(panel.subset(te[:20])))


# ---- CRPS ---------------------------------------------------------------------------------------
def _implied_quantiles(q10, q50, q90, tau):
    """The module docstring's quantile function, written out on a grid of levels ``tau`` [M]."""
    q10, q50, q90 = (np.asarray(v, dtype=float)[..., None] for v in (q10, q50, q90))
    z, z90 = norm.ppf(tau), norm.ppf(0.9)
    mid_lo, mid_hi = q10 + (q50 - q10) * (tau - 0.1) / 0.4, q50 + (q90 - q50) * (tau - 0.5) / 0.4
    low, high = q10 + (q50 - q10) / z90 * (z + z90), q90 + (q90 - q50) / z90 * (z - z90)
    return np.where(tau < 0.1, low, np.where(tau < 0.5, mid_lo, np.where(tau <= 0.9, mid_hi, high)))


def test_the_closed_form_quantile_crps_is_the_integral_of_the_pinball_loss():
    rng = np.random.default_rng(3)
    n = 120
    b = rng.normal(0, 1, n)
    a, c = b - np.abs(rng.normal(1, 0.5, n)), b + np.abs(rng.normal(1, 0.5, n))
    a[:10], c[10:20], a[20:30] = b[:10], b[10:20], b[20:30] + 0.5  # flat pieces; crossed quantiles
    y = rng.normal(0, 2, n)
    y[30:40], y[40:50], y[50:60] = b[30:40], a[40:50], c[50:60] + 30  # on the knots; far in a tail
    tau = (np.arange(100_000) + 0.5) / 100_000
    e = y[:, None] - _implied_quantiles(a, b, c, tau)
    midpoint = 2 * np.maximum(tau * e, (tau - 1) * e).mean(axis=-1)
    np.testing.assert_allclose(quantile_crps(a, b, c, y), midpoint, rtol=2e-5, atol=1e-7)


def test_crps_of_samples_and_of_three_quantiles_match_the_normal_closed_form():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((500, 2))
    closed = y * (2 * norm.cdf(y) - 1) + 2 * norm.pdf(y) - 1 / np.sqrt(np.pi)
    draws = rng.standard_normal((500, 1000, 2))
    assert sample_crps(draws, y).mean() == pytest.approx(closed.mean(), rel=0.02)
    # few draws: the fair estimate stays unbiased; the empirical distribution's CRPS is E|X - X'| / (2S) higher
    few = rng.standard_normal((500, 40, 5, 2))
    y40 = np.repeat(y, 40, axis=0)
    fair, emp = sample_crps(few.reshape(-1, 5, 2), y40), sample_crps(few.reshape(-1, 5, 2), y40, fair=False)
    assert fair.mean() == pytest.approx(closed.mean(), rel=0.02)
    assert (emp - fair).mean() == pytest.approx(2 / np.sqrt(np.pi) / 10, rel=0.05)
    z = norm.ppf(0.9) * np.ones_like(y)
    # linear between the knots instead of the normal's curve: within 1%
    assert quantile_crps(-z, 0 * z, z, y).mean() == pytest.approx(closed.mean(), rel=0.01)
    y_nan = y.copy()
    y_nan[0, 0] = np.nan
    assert np.isnan(sample_crps(draws, y_nan)[0, 0]) and np.isnan(quantile_crps(-z, 0 * z, z, y_nan)[0, 0])
    # the interval score: width when covered, plus 2/alpha per unit of miss
    assert interval_score(np.array([-1.0]), np.array([1.0]), np.array([0.0]))[0] == 2.0
    assert interval_score(np.array([-1.0]), np.array([1.0]), np.array([2.0]))[0] == pytest.approx(2.0 + 10.0)


# ---- the bimodal plant --------------------------------------------------------------------------
def test_bimodal_plant_jumps_after_the_trigger_and_leaves_the_default_panel_alone():
    kw = dict(freq="1h", n_symbols=3, n_bars=600, seed=4)
    base = generate_synthetic(**kw)
    off = generate_synthetic(**kw, plants={"bimodal": False})
    assert base.bars.equals(off.bars) and base.streams.keys() == off.streams.keys()
    on = generate_synthetic(**kw, plants={"bimodal": {"jump": 5.0}})
    trig, jump = on.truth["bimodal_trigger"], on.truth["bimodal_jump"]
    hours = pd.DatetimeIndex(sorted(set(base.bars["timestamp"]))).hour.to_numpy()
    assert np.array_equal(trig[:, 0] == 1, hours == 8)
    # the jump lands on the bar after each trigger, +-5 sigma of the trigger bar, either sign as often
    assert np.array_equal(jump[1:] != 0, trig[:-1] == 1) and not jump[0].any()
    size = np.abs(jump[1:][trig[:-1] == 1]) / on.truth["sigma"][:-1][trig[:-1] == 1]
    np.testing.assert_allclose(size, 5.0)
    assert 0.35 < np.mean(jump[jump != 0] > 0) < 0.65
    # bars: log returns differ by the planted jump only
    for j, sym in enumerate(sorted(base.bars["symbol"].unique(), key=list(base.bars["symbol"].unique()).index)):
        lb = np.diff(np.log(base.bars.loc[base.bars["symbol"] == sym, "close"].to_numpy()))
        lo = np.diff(np.log(on.bars.loc[on.bars["symbol"] == sym, "close"].to_numpy()))
        np.testing.assert_allclose(lo - lb, jump[1:, j], atol=1e-9)
    for name, table in base.streams.items():
        if name not in ("taker",):  # the taker stream is tied to returns
            assert table.equals(on.streams[name]), name
    with pytest.raises(QuantmlInputError, match="hour"):
        generate_synthetic(**kw, plants={"bimodal": {"hour": 24}})


# ---- end to end -----------------------------------------------------------------------------------
def test_quantml_train_tft_with_the_diffusion_head_finishes(tracking_uri):
    import mlflow

    from tests.helpers import TINY
    from tests.helpers.tiny_runs import train_run

    overrides = [
        *TINY,
        "backbone=tft",
        "head=diffusion",
        "head.steps=10",
        "head.sample_steps=5",
        "head.n_samples=32",
        "head.hidden=16",
        "backbone.max_epochs=2",
        "backbone.limit_train_batches=2",
        "backbone.lookback=8",
        "backbone.hidden_size=8",
        "backbone.batch_size=64",
        "backbone.n_heads=2",
        "backbone.hidden_continuous_size=4",
        "tracking.experiment=diffusion_tiny",
    ]
    result = train_run(tracking_uri, overrides)
    run = mlflow.MlflowClient(tracking_uri).get_run(result.parent_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["head.name"] == "diffusion" and run.data.params["head.n_samples"] == "32"
    assert np.isfinite(run.data.metrics["oos_crps/4h"]) and np.isfinite(run.data.metrics["oos_pinball/4h"])


# ---- the planted comparison (slow) --------------------------------------------------------------
HEAD_FIT = dict(lookback=24, hidden_size=32, batch_size=256, max_epochs=40, limit_train_batches=30, patience=6)
# the shipped head=diffusion settings (conf/head/diffusion.yaml): what a user gets
COMPARE_HEAD = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "head" / "diffusion.yaml"))


def _synthetic_split(compose_cfg, bimodal: bool):
    """The synthetic 1h panel (4 symbols, 2,400 bars; price features; 1h horizon), cut in time: train the
    first 60% of timestamps, early-stopping 62-72%, test from 74%."""
    from quantml.experiment.prepare import prepare_data

    ov = ["data=synthetic", "feature_set=price", "horizon=1h", "seed=3", "data.n_bars=2400"]
    prep = prepare_data(compose_cfg([*ov, *(["data.bimodal=true"] if bimodal else [])]))
    d, rows = prep.data, prep.samples
    t0 = d.t0[rows]
    u = np.unique(t0)
    cut = lambda share: u[int(share * len(u))]  # noqa: E731
    tr, va = rows[t0 < cut(0.6)], rows[(t0 >= cut(0.62)) & (t0 < cut(0.72))]
    return d, tr, va, rows[t0 >= cut(0.74)]


def _pinball(fc, y):
    return np.mean([np.mean(np.maximum(q * (y - a), (q - 1) * (y - a))) for q, a in _levels(fc)])


def _levels(fc):
    return ((0.1, fc.q10), (0.5, fc.q50), (0.9, fc.q90))


# Measured (model seed 0, data seed 3, this split, CPU; sample CRPS the fair estimator, 200 draws). The
# quantile head: implied CRPS 0.004969 (trigger rows 0.02163), 80% coverage 0.820, interval score 0.03231.
# The shipped head (fit=after, target=v, frame=quantile, condition=scale): sample CRPS 0.004934 (0.993x;
# trigger rows 0.02218), coverage 0.804, interval score 0.03239. Conditioned on the context instead
# (condition=context, the head before): 0.005036 (trigger rows 0.02390), coverage 0.791. On data seeds 4-7,
# drawn after the choice, the shipped head's CRPS is 0.984x / 0.992x / 0.990x / 1.001x the quantile head's
# (docs/diffusion.md, "Measured"). The trigger rows alone are not won: even the trigger rows' own training
# residuals, resampled into the frame, give 0.02169 there, because the frame's scale is noisy on them.
@pytest.mark.slow
def test_diffusion_head_beats_the_quantile_head_on_a_bimodal_outcome(compose_cfg):
    from quantml.models.sequence import MLPForecaster

    d, tr, va, te = _synthetic_split(compose_cfg, bimodal=True)
    y = d.y_ret[te]
    quant = MLPForecaster(["1h"], seed=0, **HEAD_FIT).fit(d.subset(tr), d.subset(va))
    diff = MLPForecaster(["1h"], seed=0, head=COMPARE_HEAD, **HEAD_FIT).fit(d.subset(tr), d.subset(va))
    fq, fd = quant.predict(d.subset(te)), diff.predict(d.subset(te))
    crps_q = np.nanmean(quantile_crps(fq.q10, fq.q50, fq.q90, y))
    crps_d = np.nanmean(sample_crps(diff.sample(d.subset(te)), y))
    cov = lambda fc: np.mean((fc.q10 <= y) & (y <= fc.q90))  # noqa: E731
    # the 80% interval: coverage closer to nominal, or a lower interval score at a coverage within 2 points
    closer = abs(cov(fd) - 0.8) < abs(cov(fq) - 0.8)
    better = np.mean(interval_score(fd.q10, fd.q90, y)) < np.mean(interval_score(fq.q10, fq.q90, y))
    assert closer or (better and abs(cov(fd) - 0.8) <= 0.02)
    assert crps_d < crps_q


# Measured: the shipped head's pinball 0.001925 against the quantile head's 0.001907 (1.009x; coverage 0.801
# against 0.793); with condition=context 1.018x; before fit=after, the joint fit gave 1.10-1.11x.
@pytest.mark.slow
def test_diffusion_head_pinball_on_the_default_panel_is_within_5_percent(compose_cfg):
    from quantml.models.sequence import MLPForecaster

    d, tr, va, te = _synthetic_split(compose_cfg, bimodal=False)
    y = d.y_ret[te]
    quant = MLPForecaster(["1h"], seed=0, **HEAD_FIT).fit(d.subset(tr), d.subset(va))
    diff = MLPForecaster(["1h"], seed=0, head=COMPARE_HEAD, **HEAD_FIT).fit(d.subset(tr), d.subset(va))
    assert _pinball(diff.predict(d.subset(te)), y) <= 1.05 * _pinball(quant.predict(d.subset(te)), y)
