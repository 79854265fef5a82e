"""The bundle carries the run's strategy: which one serves ``target_weight``, and the history the
allocator's covariance window needs (a hand-made short panel is refused, naming the bars)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.bundle import FeatureContract, ModelBundle
from quantml.contracts import OHLCV, SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts.run_layout import FIRST_BARS, WARMUP_BARS
from quantml.portfolio import AllocatorConfig, AllocatorStrategy, RankLongShort
from quantml.signals import SignalConfig
from tests.helpers.registry_fakes import toy_panel

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf" / "strategy"
SIGNAL = SignalConfig.build({"default": 0.3}, {"default": 0.1}, cost=0.001)


def _strategy_config(name: str) -> dict:
    """``conf/strategy/<name>.yaml`` as the run resolves it (``OmegaConf.to_container(cfg.strategy)``)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=True)


def _bundle(strategy: dict | None = None, allocator: dict | None = None, warmup: int = 5) -> ModelBundle:
    """A bundle whose contract needs only the OHLCV panel; no forecaster (refusals come first)."""
    contract = FeatureContract([TIMESTAMP, SYMBOL, *OHLCV], [], {}, [], ["1d"])
    return ModelBundle(
        None,
        None,
        contract,
        SIGNAL.to_dict(),
        "fp",
        metadata={WARMUP_BARS: warmup, "periods_per_year": 252.0},
        allocator=allocator,
        strategy=strategy,
    )


def test_default_and_old_bundles_serve_the_rank_book_bound_to_the_ic_mode():
    panel = toy_panel(n_bars=12, symbols=("AAA", "BBB", "CCC"))
    strategy = _bundle().serving_strategy(SIGNAL, panel)
    assert strategy == RankLongShort(mode="cross_sectional")  # 3 symbols, as the run chose
    assert _bundle().serving_strategy(SIGNAL, panel[panel[SYMBOL] != "CCC"]).mode == "time_series"
    old = _bundle(_strategy_config("allocator"))
    del old.__dict__["strategy"]  # a bundle pickled before the field existed
    assert isinstance(pickle.loads(pickle.dumps(old)).serving_strategy(SIGNAL, panel), RankLongShort)
    ranked = _bundle(_strategy_config("rank_long_short"))
    ranked.metadata["ic_mode"] = "time_series"  # the run's IC mode wins over the served panel's
    assert ranked.serving_strategy(SIGNAL, panel).mode == "time_series"


def test_allocator_bundle_serves_its_thresholds_and_a_tuned_allocator():
    panel = toy_panel(n_bars=12)
    config = {**_strategy_config("allocator"), "volume_column": "volume"}
    strategy = _bundle(config).serving_strategy(SIGNAL, panel)
    assert isinstance(strategy, AllocatorStrategy)
    assert strategy.signal == SIGNAL  # the thresholds that made the action column
    assert strategy.allocator == AllocatorConfig()  # allocator.yaml's settings are the defaults
    assert strategy.volume_column is None  # impact pricing only: a weight does not read volume
    tuned = AllocatorConfig(cov_window=30, cov_min_periods=10, target_vol=0.2).to_dict()
    assert _bundle(config, allocator=tuned).serving_strategy(SIGNAL, panel).allocator == AllocatorConfig(
        **{**tuned, "risk_budget": {}}
    )


def test_a_panel_shorter_than_the_allocators_covariance_window_is_refused():
    # warm-up 5 bars: 6 bars are enough for the features, not for cov_window=60 returns
    bundle = _bundle(_strategy_config("allocator"))
    panel = toy_panel(n_bars=40, symbols=("AAA", "BBB"))
    with pytest.raises(QuantmlInputError, match=r"needs at least 61 bars .*cov_window=60.*AAA has 40, BBB has 40"):
        bundle.predict_contract(panel, last_only=True)
    tuned = _bundle(_strategy_config("allocator"), allocator=AllocatorConfig(cov_window=30).to_dict())
    short = panel[(panel[SYMBOL] == "AAA") | (panel.groupby(SYMBOL).cumcount() < 20)].reset_index(drop=True)
    with pytest.raises(QuantmlInputError, match=r"needs at least 31 bars .*cov_window=30.*; BBB has 20; send"):
        tuned.predict_contract(short, last_only=True)
    # the rank book needs only the warm-up: the refusal names it, not a covariance window
    with pytest.raises(QuantmlInputError, match=r"warm-up: each symbol needs at least 6 bars .* AAA has 4"):
        _bundle().predict_contract(panel.groupby(SYMBOL).head(4).reset_index(drop=True), last_only=True)


def test_a_symbol_served_with_its_whole_history_is_not_refused_for_the_warm_up():
    # BBB's history began at its first bar here at training (a late listing, like FB in the
    # bundled stocks): 4 bars are all it ever had, so its features are the ones it was trained on
    panel = toy_panel(n_bars=40, symbols=("AAA", "BBB")).groupby(SYMBOL).head(4).reset_index(drop=True)
    first = panel.groupby(SYMBOL)[TIMESTAMP].min()
    bundle = _bundle()
    bundle.metadata[FIRST_BARS] = {
        "AAA": (first["AAA"] - pd.Timedelta("30D")).isoformat(),
        "BBB": first["BBB"].isoformat(),
    }
    history = bundle._whole_history(panel)
    assert history.to_dict() == {"AAA": False, "BBB": True}
    with pytest.raises(QuantmlInputError, match=r"warm-up: each symbol needs at least 6 bars .*; AAA has 4; send"):
        bundle.check_history(panel)
    bundle.metadata[FIRST_BARS]["AAA"] = first["AAA"].isoformat()
    bundle.check_history(panel)  # both hold their whole training history now
