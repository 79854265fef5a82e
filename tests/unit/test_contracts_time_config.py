"""The one duration grammar, bar size, bars per year, required-columns check and config builder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantml.backtest import run_backtest
from quantml.contracts import QuantmlInputError, bar_size, parse_duration, periods_per_year, require_columns
from quantml.contracts.config import build
from quantml.evaluation.evaluate import Scorer
from quantml.market import CostModel
from quantml.portfolio.allocator import AllocatorConfig
from quantml.portfolio.strategy import AllocatorStrategy, RankLongShort, build_strategy
from quantml.signals import SignalConfig
from quantml.validation import make_splitter
from quantml.validation.splitters import CombinatorialPurgedCV, WalkForward
from tests.helpers.synthetic_oos import synthetic_oos_frame

CONF = Path(__file__).resolve().parents[2] / "quantml" / "conf"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("30m", pd.Timedelta(minutes=30)),
        ("15min", pd.Timedelta(minutes=15)),
        ("1h", pd.Timedelta(hours=1)),
        ("4H", pd.Timedelta(hours=4)),
        ("1d", pd.Timedelta(days=1)),
        ("1D", pd.Timedelta(days=1)),
        ("7d", pd.Timedelta(days=7)),
        ("2w", pd.Timedelta(days=14)),
        ("3 days", pd.Timedelta(days=3)),
        (pd.Timedelta("2h"), pd.Timedelta("2h")),
    ],
)
def test_parse_duration_accepts_every_form_in_use(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "1x", "h", "0d", "-1d", "1.5h", "soon", None, 5])
def test_parse_duration_rejects_with_the_setting_named(bad):
    with pytest.raises(QuantmlInputError, match=r"^data\.freq="):
        parse_duration(bad, "data.freq")


def test_parse_duration_zero_when_allowed():
    assert parse_duration(0, "embargo", allow_zero=True) == pd.Timedelta(0)
    assert parse_duration(None, "embargo", allow_zero=True) == pd.Timedelta(0)
    assert parse_duration("0s", "embargo", allow_zero=True) == pd.Timedelta(0)
    with pytest.raises(QuantmlInputError, match="non-negative"):
        parse_duration("-1d", "embargo", allow_zero=True)


def test_bar_size_and_periods_per_year_of_a_long_frame():
    ts = pd.date_range("2024-01-01", periods=48, freq="1h", tz="UTC")
    frame = pd.DataFrame({"timestamp": np.tile(ts, 2), "symbol": np.repeat(["A", "B"], 48)})
    shuffled = frame.sample(frac=1.0, random_state=0)
    doubled = pd.concat([shuffled, shuffled])  # one row per horizon: counted once
    assert bar_size(doubled) == pd.Timedelta("1h")
    assert periods_per_year(doubled) == pytest.approx(365.25 * 24)
    assert bar_size(frame.iloc[:1], default=pd.Timedelta("1D")) == pd.Timedelta("1D")
    with pytest.raises(QuantmlInputError, match="bar size"):
        bar_size(frame.iloc[:1])


def test_require_columns_names_what_and_how_to_fix():
    with pytest.raises(QuantmlInputError, match=r"the frame lacks column\(s\) \['b'\]; add it"):
        require_columns(pd.DataFrame({"a": [1]}), ("a", "b"), "the frame", "add it")
    require_columns(pd.DataFrame({"a": [1]}), ("a",), "the frame")


def _group(name: str):
    return OmegaConf.load(CONF / name)


@pytest.mark.parametrize("name", ["equity", "crypto", "zero"])
def test_cost_configs_build_the_cost_model_from_config_reads(name):
    cfg = _group(f"cost/{name}.yaml")
    built = build(cfg, "cost")
    assert isinstance(built, CostModel) and built.name == name
    assert built == CostModel.from_config(cfg)  # a logged config with _target_ still reads


def test_signal_and_strategy_configs_build_objects():
    signal = build(_group("signal/default.yaml"), "signal", cost=0.001)
    assert signal == SignalConfig.from_config(_group("signal/default.yaml"), cost=0.001)
    rank = build_strategy(_group("strategy/rank_long_short.yaml"), signal)
    assert rank == RankLongShort("auto", "horizon")
    alloc = build_strategy(_group("strategy/allocator.yaml"), signal)
    assert isinstance(alloc, AllocatorStrategy) and alloc.signal == signal
    assert alloc.allocator == AllocatorConfig()  # the yaml spells out the defaults


@pytest.mark.parametrize("name,cls", [("walk_forward", WalkForward), ("cpcv", CombinatorialPurgedCV)])
def test_validation_configs_build_through_target(name, cls):
    splitter = make_splitter(_group(f"validation/{name}.yaml"))
    assert type(splitter) is cls and splitter.embargo == pd.Timedelta("1d")


def test_build_errors_name_the_group_and_key():
    with pytest.raises(QuantmlInputError, match=r"cost\.fee_bp is not a setting of cost"):
        build({"_target_": "quantml.market.CostModel", "fee_bp": 1.0}, "cost")
    with pytest.raises(QuantmlInputError, match=r"strategy\._target_='nope\.Missing' cannot be imported"):
        build({"_target_": "nope.Missing"}, "strategy")
    with pytest.raises(QuantmlInputError, match=r"strategy\.hold"):
        build({"_target_": "quantml.portfolio.strategy.RankLongShort", "hold": 0}, "strategy")
    with pytest.raises(QuantmlInputError, match=r"allocator\.target_vol"):
        build_strategy(
            {
                "_target_": "quantml.portfolio.strategy.AllocatorStrategy",
                "allocator": {"_target_": "quantml.portfolio.allocator.AllocatorConfig", "target_vol": -1},
            }
        )
    with pytest.raises(QuantmlInputError, match="does not match"):
        make_splitter({**OmegaConf.to_container(_group("validation/walk_forward.yaml")), "method": "cpcv"})


def test_scorer_scores_with_the_configured_strategy():
    frame = synthetic_oos_frame(n_symbols=3, n_bars=200, horizons=("1d",), seed=3)
    costs = CostModel(1.0, 1.0)
    default = Scorer(252.0, costs, "cross_sectional", {})(frame, "oos")
    explicit = Scorer(252.0, costs, "cross_sectional", {}, RankLongShort("cross_sectional"))(frame, "oos")
    assert pd.Series(default).equals(pd.Series(explicit))  # NaN-equal (no IR for a dollar-neutral book)
    signal = SignalConfig(cost=costs.round_trip)
    alloc = Scorer(252.0, costs, "cross_sectional", {}, AllocatorStrategy(AllocatorConfig(), signal))(frame, "oos")
    book = run_backtest(AllocatorStrategy(AllocatorConfig(), signal), frame, costs, 252.0)
    assert alloc["oos_sharpe_after_cost/1d"] == pytest.approx(book.stats["sharpe"])
    assert np.isnan(alloc["oos_information_ratio/1d"])  # the allocator book has no benchmark
    assert alloc["oos_rank_ic/1d"] == default["oos_rank_ic/1d"]  # only the backtest block changes
