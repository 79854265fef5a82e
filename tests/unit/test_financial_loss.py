"""The cross-sectional surrogate of the financial term (``sharpe_surrogate=cross_section``): its batches of
whole timestamps, its per-timestamp book, and (slow) the term raising the real book's test after-cost Sharpe
on a panel with a learnable signal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantml.contracts import QuantmlInputError
from quantml.models.sequence.cross_section_batches import TimestampBatchSampler
from quantml.models.sequence.financial_loss import FinancialLoss


def test_timestamp_batches_hold_whole_consecutive_cross_sections():
    n_sym, T = 3, 50
    t = np.repeat(np.arange(T), n_sym)[np.random.default_rng(0).permutation(T * n_sym)]  # any position order
    sampler = TimestampBatchSampler(
        t, batch_size=24, block=4, generator=torch.Generator().manual_seed(1), drop_last=False
    )
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(sampler) and sampler.blocks_per_batch == 2  # 24 rows = 2 blocks of 4 x 3
    seen = np.concatenate(batches)
    assert len(seen) == len(np.unique(seen))  # no position twice in an epoch
    for b in batches:
        times, counts = np.unique(t[b], return_counts=True)
        assert (counts == n_sym).all()  # every symbol of each timestamp it holds
    sampler.set_epoch(0)
    assert [list(b) for b in sampler] == [list(b) for b in batches]  # seeded by (seed, epoch)
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in batches]


def _cross_batch(y, t_id):
    n = len(y)
    return {
        "y_ret": y,
        "row": torch.arange(n),
        "mask": torch.ones(n, 4, dtype=torch.bool),
        "t_id": torch.as_tensor(t_id, dtype=torch.float32).reshape(-1, 1),
    }


def test_the_cross_section_book_is_dollar_neutral_gross_one_and_rewards_the_right_ranking():
    gen = torch.Generator().manual_seed(0)
    n_sym, T = 4, 32
    t_id = np.tile(np.arange(T), n_sym)  # symbol-major rows, as the panel: row - 1 is the previous bar
    y = torch.randn(T * n_sym, 1, generator=gen) + 0.5  # a common drift the neutral book does not earn
    y[3, 0] = float("nan")
    term = FinancialLoss(1.0, "cross_section")
    ok = torch.isfinite(y)
    groups = torch.as_tensor(t_id)
    pos = term.positions(torch.randn(T * n_sym, 1, generator=gen), ok, groups)
    net = torch.zeros(T, 1).index_add(0, groups, pos)
    gross = torch.zeros(T, 1).index_add(0, groups, pos.abs())
    torch.testing.assert_close(net, torch.zeros(T, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(gross, torch.ones(T, 1), atol=1e-5, rtol=0)
    assert pos[3, 0] == 0  # the unlabelled row holds nothing
    ranked, reversed_ = (term({"mean": s * y.nan_to_num()}, _cross_batch(y, t_id)) for s in (1.0, -1.0))
    assert ranked < 0 < reversed_
    costly = FinancialLoss(1.0, "cross_section", cost_bps=100.0, ret_scale=np.ones(1))
    assert costly({"mean": y.nan_to_num()}, _cross_batch(y, t_id)) > ranked  # turnover costs
    with pytest.raises(QuantmlInputError, match="t_id"):
        term({"mean": y.nan_to_num()}, {k: v for k, v in _cross_batch(y, t_id).items() if k != "t_id"})


def test_a_sequence_model_trains_on_whole_cross_sections(monkeypatch):
    from quantml.models.sequence import TSMixerForecaster
    from tests.unit.test_sequence import ARCH, FAST, HORIZONS, split_rows, toy_panel

    panel, (tr, va, te) = toy_panel(), split_rows()
    seen = []
    call = FinancialLoss.__call__

    def spy(self, out, batch):
        seen.append(batch["t_id"][:, 0].numpy().copy())
        return call(self, out, batch)

    monkeypatch.setattr(FinancialLoss, "__call__", spy)
    kw = {**FAST, **ARCH["tsmixer"], "checkpoint_every_n_epochs": 0, "max_epochs": 2}
    plain = TSMixerForecaster(HORIZONS, seed=0, **kw).fit(panel.subset(tr), panel.subset(va))
    cross = TSMixerForecaster(
        HORIZONS, seed=0, w_sharpe=0.5, sharpe_surrogate="cross_section", sharpe_cost_bps=4.0, **kw
    ).fit(panel.subset(tr), panel.subset(va))
    assert seen and all((np.unique(t, return_counts=True)[1] == 3).all() for t in seen)  # 3 symbols each
    assert not np.array_equal(
        plain.predict(panel.subset(te)).expected_return, cross.predict(panel.subset(te)).expected_return
    )


# ---- the term on the real book (slow: four small train runs) ---------------------------------------
# a panel with a learnable signal (the planted cross-sectional reversal) traded by the cross-sectional
# rank book; the term trades its stand-in, after the cost config's one-way 4 bps (cost=equity)
SHARPE_RUN = [
    "data=synthetic",
    "data.n_symbols=8",
    "data.n_bars=3000",
    "data.freq=1h",
    "data.price_signal=true",
    "feature_set=full",
    "horizon=4h",
    "validation.n_splits=3",
    "validation.min_train_samples=50",
    "validation.embargo=4h",
    "print_report=false",
    "strategy.mode=cross_sectional",
    "backbone=tsmixer",
    "backbone.max_epochs=15",
    "backbone.limit_train_batches=30",
    "backbone.lookback=16",
    "backbone.hidden_size=16",
    "backbone.checkpoint_every_n_epochs=0",
    "tracking.log_model=false",
    "tracking.experiment=sharpe-term",
]
CROSS_TERM = [
    "backbone.w_sharpe=0.5",
    "backbone.sharpe_surrogate=cross_section",
    "backbone.sharpe_cost_bps=4",
    "backbone.batch_chunk=8",
]
SEEDS = (1, 2)


@pytest.fixture(scope="module")
def sharpe_runs(tmp_path_factory):
    from tests.helpers.tiny_runs import temp_store, train_run

    uri, _ = temp_store(tmp_path_factory.mktemp("sharpe"))
    return {
        (seed, on): train_run(uri, [*SHARPE_RUN, f"seed={seed}", *(CROSS_TERM if on else [])])
        for seed in SEEDS
        for on in (False, True)
    }


@pytest.mark.slow  # four train runs of a small TSMixer: about 1 min on 2 shared cores (11-19 s each)
def test_the_financial_term_raises_the_test_after_cost_sharpe(sharpe_runs, record_property):
    sharpe = {k: r.metrics["test_sharpe_after_cost_mean/4h"] for k, r in sharpe_runs.items()}
    record_property("test_sharpe_after_cost_mean", {str(k): float(v) for k, v in sharpe.items()})
    # measured: 3.36 vs 0.60 (seed 1), 4.44 vs 2.06 (seed 2); validation 1 of 3 folds agrees (-0.70 vs -5.66,
    # 3.73 vs 1.79); test rank IC 0.049 vs 0.028, 0.051 vs 0.027
    for seed in SEEDS:
        assert sharpe[(seed, True)] > sharpe[(seed, False)], seed


@pytest.mark.slow
def test_the_financial_term_keeps_forecast_dispersion(sharpe_runs, record_property):
    std = {k: r.oos.groupby("horizon")["expected_return"].std()["4h"] for k, r in sharpe_runs.items()}
    # plain floats: pytest-xdist sends recorded properties over execnet, which refuses numpy scalars
    record_property("forecast_std", {str(k): float(v) for k, v in std.items()})
    for seed in SEEDS:
        # measured: 0.00755 vs 0.00450 (seed 1), 0.00643 vs 0.00413 (seed 2)
        assert std[(seed, True)] >= 0.5 * std[(seed, False)], seed
