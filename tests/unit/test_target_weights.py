"""One book: ``strategy.target_weights`` is the weight the backtest engine's book opens, row by row.

The prediction contract's ``target_weight`` (serving) and the book the engine executes (fold
scores, gates, tuning) both read ``RankLongShort.tranche_weights`` /
``AllocatorStrategy.allocation``; these tests read the weights back out of the engine's
positions and compare them with ``target_weights`` for the same frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.backtest import run_backtest
from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.labels import make_labels
from quantml.market.execution import CostModel
from quantml.portfolio import AllocatorConfig, AllocatorStrategy, RankLongShort, market_returns
from quantml.signals import SignalConfig
from tests.helpers.registry_fakes import toy_panel
from tests.helpers.synthetic_oos import synthetic_oos_frame

COSTS = CostModel(fee_bps=1.0, slippage_bps=1.0)
PPY = 252.0


def _one_horizon(frame: pd.DataFrame, h: str, drop: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Horizon ``h`` of ``frame`` with a random ``drop`` share of its rows missing (ragged bars)."""
    part = frame[frame["horizon"] == h]
    keep = np.random.default_rng(seed).random(len(part)) >= drop
    return part[keep].drop(columns=["t1"], errors="ignore").reset_index(drop=True)


def _grid(frame: pd.DataFrame, values: np.ndarray, index: pd.Index, columns: list) -> np.ndarray:
    """``values`` of ``frame``'s rows laid out on ``index x columns`` (0 where no row)."""
    out = np.zeros((len(index), len(columns)))
    out[index.get_indexer(frame[TIMESTAMP]), pd.Index(columns).get_indexer(frame[SYMBOL])] = values
    return out


@pytest.mark.parametrize("mode", ["cross_sectional", "time_series"])
def test_rank_book_held_one_bar_is_the_target_weights(mode):
    frame = _one_horizon(synthetic_oos_frame(n_symbols=4, n_bars=120), "1d")
    strategy = RankLongShort(mode=mode, hold=1)
    weights = strategy.target_weights(frame)
    result = run_backtest(strategy, frame, COSTS, PPY)
    expected = _grid(frame, weights, result.positions.index, list(result.positions.columns))
    np.testing.assert_allclose(result.positions.to_numpy(), expected, atol=1e-15)
    assert np.abs(weights).max() > 0 and (weights > 0).any() and (weights < 0).any()
    if mode == "cross_sectional":  # dollar-neutral, gross 1 at every bar
        by_bar = pd.Series(weights).groupby(frame[TIMESTAMP].to_numpy())
        np.testing.assert_allclose(by_bar.sum(), 0.0, atol=1e-12)
        np.testing.assert_allclose(by_bar.apply(lambda w: np.abs(w).sum()), 1.0)


def test_rank_book_of_overlapping_tranches_opens_the_target_weights():
    """Held k bars, the book adds w/k a bar for k bars: w[t] = k (pos[t] - pos[t-1]) + w[t-k]."""
    k = 5
    frame = _one_horizon(synthetic_oos_frame(n_symbols=3, n_bars=90, horizons=("5d",)), "5d", drop=0.0)
    strategy = RankLongShort(mode="cross_sectional", hold=k)
    result = run_backtest(strategy, frame, COSTS, PPY)
    pos = result.positions.to_numpy()
    opened = np.zeros_like(pos)
    for t in range(len(pos)):
        step = pos[t] - (pos[t - 1] if t else 0.0)
        opened[t] = k * step + (opened[t - k] if t >= k else 0.0)
    expected = _grid(frame, strategy.target_weights(frame), result.positions.index, list(result.positions.columns))
    np.testing.assert_allclose(opened, expected, atol=1e-10)


def test_rank_target_weights_are_per_horizon_and_refuse_an_unbound_mode():
    frame = synthetic_oos_frame(n_symbols=4, n_bars=60, horizons=("1d", "5d"))
    strategy = RankLongShort(mode="cross_sectional")
    both = strategy.target_weights(frame)
    for h in ("1d", "5d"):
        rows = (frame["horizon"] == h).to_numpy()
        np.testing.assert_array_equal(both[rows], strategy.target_weights(frame[rows]))
    with pytest.raises(QuantmlInputError, match="strategy.bind"):
        RankLongShort().target_weights(frame)


def _allocator(cov_window: int = 30, cap: float = 0.5) -> AllocatorStrategy:
    return AllocatorStrategy(
        AllocatorConfig(
            cov_window=cov_window,
            cov_min_periods=10,
            corr_threshold=0.9,
            symbol_cap=cap,
            bucket_cap=2 * cap,
            max_gross=4 * cap,
        ),
        SignalConfig.build({"default": 0.02}, {"default": 0.05}),
    )


def test_allocator_book_opens_the_target_weights_row_by_row():
    frame = synthetic_oos_frame(n_symbols=4, n_bars=150, horizons=("1d", "5d"), duplicate_symbol=True)
    strategy = _allocator()
    weights = strategy.target_weights(frame, periods_per_year=PPY)
    book = strategy.book(frame, PPY)
    t = book.timestamps.get_indexer(frame[TIMESTAMP])
    n = pd.Index(book.symbols).get_indexer(frame[SYMBOL])
    h = pd.Index(book.horizons).get_indexer(frame["horizon"])
    np.testing.assert_array_equal(book.attribution[t, n, h], weights)
    result = run_backtest(strategy, frame, COSTS, PPY)  # the engine's positions: the sum over horizons
    summed = frame.assign(w=weights).groupby([TIMESTAMP, SYMBOL])["w"].sum().unstack(SYMBOL)
    np.testing.assert_allclose(result.positions.to_numpy(), summed.reindex(result.positions.index).to_numpy())
    assert (np.abs(weights) > 1e-6).sum() > 50  # the thresholds trade, and the covariance warmed up
    flat = frame["action"].to_numpy() == "flat"
    assert (np.abs(weights) > 0).any() and (weights[~flat] != 0).any()


def _market(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates([SYMBOL, TIMESTAMP])[[SYMBOL, TIMESTAMP, "ret_next_bar"]]


def test_allocator_with_the_market_weights_a_late_block_as_the_full_history_does():
    """A test block scored with ``market`` (every bar of the panel) reads the covariance of the
    history before it: its weights are the full frame's for the same rows (served frames carry
    no ``ret_next_bar``)."""
    frame = synthetic_oos_frame(n_symbols=3, n_bars=140, horizons=("1d", "5d"))
    strategy = _allocator()
    full = strategy.target_weights(frame, periods_per_year=PPY)
    late = (frame[TIMESTAMP] >= frame[TIMESTAMP].unique()[100]).to_numpy()
    block = frame[late].drop(columns=["ret_next_bar"])
    np.testing.assert_allclose(strategy.target_weights(block, _market(frame), PPY), full[late], rtol=1e-10, atol=1e-14)
    # without the market the block's covariance starts cold: other weights
    cold = strategy.target_weights(frame[late], periods_per_year=PPY)
    assert not np.allclose(cold, full[late])
    # and the book with the market runs from the block's first bar to its last
    book = strategy.book(frame[late], PPY, market=_market(frame))
    assert book.timestamps[0] == block[TIMESTAMP].min() and book.timestamps[-1] == block[TIMESTAMP].max()


def test_allocator_target_weights_do_not_read_the_future():
    frame = synthetic_oos_frame(n_symbols=3, n_bars=100, horizons=("1d",))
    strategy = _allocator()
    market = _market(frame)
    cut = frame[TIMESTAMP].unique()[70]
    base = strategy.target_weights(frame, market, PPY)
    # change every return realised after `cut`'s close and every later forecast
    later = market[TIMESTAMP] >= cut
    shocked_market = market.assign(ret_next_bar=np.where(later, market["ret_next_bar"] * -3.0, market["ret_next_bar"]))
    after = frame[TIMESTAMP] > cut
    shocked = frame.assign(score=np.where(after, -frame["score"], frame["score"]))
    moved = strategy.target_weights(shocked, shocked_market, PPY)
    upto = (frame[TIMESTAMP] <= cut).to_numpy()
    np.testing.assert_array_equal(moved[upto], base[upto])
    assert not np.allclose(moved[~upto], base[~upto])


def test_allocator_needs_cov_window_bars_for_the_backtests_weight():
    """``min_history() = cov_window + 1``: a history of exactly that many bars gives the last bar
    the full-history weight; one bar less gives a shorter window's covariance, another weight."""
    frame = synthetic_oos_frame(n_symbols=3, n_bars=120, horizons=("1d",))
    strategy = _allocator(cov_window=30, cap=10.0)  # no cap binds: the covariance sizes the book
    need, why = strategy.min_history()
    assert need == 31 and "cov_window=30" in why
    bars = frame[TIMESTAMP].unique()
    last = (frame[TIMESTAMP] == bars[-1]).to_numpy()
    full = strategy.target_weights(frame, periods_per_year=PPY)[last]

    def tail(n: int) -> np.ndarray:
        part = frame[frame[TIMESTAMP] >= bars[-n]]
        return strategy.target_weights(part, periods_per_year=PPY)[(part[TIMESTAMP] == bars[-1]).to_numpy()]

    np.testing.assert_allclose(tail(need), full, rtol=1e-10)
    assert np.abs(full).sum() > 0 and not np.allclose(tail(need - 1), full)
    assert RankLongShort(mode="cross_sectional").min_history()[0] == 1
    with pytest.raises(QuantmlInputError, match="periods_per_year"):
        strategy.target_weights(frame)


def test_market_returns_are_the_labels_next_bar_returns():
    panel = toy_panel(n_bars=25, symbols=("AAA", "BBB", "CCC"))
    market = market_returns(panel)
    labels = make_labels(panel, ["1d"], 0.0)
    np.testing.assert_array_equal(market[SYMBOL], panel[SYMBOL])
    np.testing.assert_allclose(market["ret_next_bar"], labels.ret_next_bar, equal_nan=True)
    assert market.groupby(SYMBOL)["ret_next_bar"].apply(lambda r: np.isnan(r.iloc[-1])).all()
