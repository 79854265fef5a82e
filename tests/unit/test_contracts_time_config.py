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
from quantml.contracts.time import (
    Calendar,
    DurationTooShort,
    bars_missing,
    duration_parts,
    duration_to_bars,
    infer_calendars,
)
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


def equity_hours(days: int = 30, start: str = "2024-01-01") -> pd.DatetimeIndex:
    """Hourly equity bars: 7 a weekday (14:30 .. 20:30 UTC), none at night or on weekends."""
    d = pd.bdate_range(start, periods=days, tz="UTC")
    open_ = pd.Timedelta(hours=14, minutes=30)
    return pd.DatetimeIndex([t + open_ + pd.Timedelta(hours=h) for t in d for h in range(7)])


CRYPTO_1H = Calendar(pd.Timedelta("1h"), 24.0, 168.0)
EQUITY_1H = Calendar(pd.Timedelta("1h"), 7.0, 35.0)
EQUITY_1D = Calendar(pd.Timedelta("1D"), 1.0, 5.0)
CRYPTO_1D = Calendar(pd.Timedelta("1D"), 1.0, 7.0)


@pytest.mark.parametrize(
    "text,parts",
    [("4H", (4, "h")), ("30m", (30, "min")), ("15min", (15, "min")), ("2 weeks", (2, "w")), ("1D", (1, "d")),
     (pd.Timedelta("7D"), (7, "d")), (pd.Timedelta("90min"), (90, "min")), ("45s", (45, "s"))],
)  # fmt: skip
def test_duration_parts_keep_the_unit_written(text, parts):
    assert duration_parts(text) == parts


@pytest.mark.parametrize(
    "duration,calendar,bars",
    [
        ("1d", CRYPTO_1H, 24), ("1d", EQUITY_1H, 7), ("1d", EQUITY_1D, 1), ("1d", CRYPTO_1D, 1),
        ("5d", EQUITY_1D, 5), ("5d", CRYPTO_1D, 5), ("5d", EQUITY_1H, 35), ("5d", CRYPTO_1H, 120),
        ("1w", EQUITY_1D, 5), ("1w", CRYPTO_1D, 7), ("1w", EQUITY_1H, 35), ("1w", CRYPTO_1H, 168),
        ("7d", EQUITY_1D, 7), ("2w", EQUITY_1D, 10), ("21d", EQUITY_1D, 21),
        ("4h", CRYPTO_1H, 4), ("4h", EQUITY_1H, 4), ("24h", EQUITY_1H, 24), ("90min", CRYPTO_1H, 2),
        ("1h", CRYPTO_1H, 1), ("48h", EQUITY_1D, 2), ("1d", Calendar(pd.Timedelta("30min"), 13.0, 65.0), 13),
        ("1d", Calendar(pd.Timedelta("1h"), 6.5, 32.5), 7),  # halves round up
    ],
)  # fmt: skip
def test_duration_to_bars_exact(duration, calendar, bars):
    """Trading time: d = trading days, w = trading weeks, h/min/s = clock time on the bar grid."""
    assert duration_to_bars(duration, calendar) == bars


def test_duration_shorter_than_a_bar_is_refused_by_name():
    for duration, cal in (("4h", EQUITY_1D), ("30min", CRYPTO_1H), ("23h", CRYPTO_1D)):
        with pytest.raises(DurationTooShort, match=rf"^volatility\.windows='{duration}' is shorter than one bar"):
            duration_to_bars(duration, cal, "volatility.windows")
    with pytest.raises(QuantmlInputError, match="is not a duration"):
        duration_to_bars("abc", CRYPTO_1H, "volatility.windows")


def test_infer_calendars_on_bundled_stocks_crypto_and_equity_hours():
    from quantml.data import load_panel

    stocks = load_panel({"source": "stocks_daily"})  # holidays, 9/11, Sandy: the medians hold
    assert set(infer_calendars(stocks).values()) == {EQUITY_1D}
    tail = stocks[stocks["timestamp"] >= "2012-12-01"]  # a serving-sized tail infers the same calendar
    assert set(infer_calendars(tail).values()) == {EQUITY_1D}
    crypto = pd.date_range("2024-01-01", periods=24 * 20, freq="1h", tz="UTC")
    eq = equity_hours(30)
    frame = pd.DataFrame({"timestamp": np.r_[crypto, eq], "symbol": ["BTC"] * len(crypto) + ["XYZ"] * len(eq)})
    cals = infer_calendars(frame)
    assert cals == {"BTC": CRYPTO_1H, "XYZ": EQUITY_1H}
    daily = pd.date_range("2024-01-01", periods=60, freq="1D", tz="UTC")
    assert infer_calendars(daily, np.array(["ETH"] * 60)) == {"ETH": CRYPTO_1D}
    assert Calendar.from_dict(cals["XYZ"].to_dict()) == EQUITY_1H


def test_bars_missing_counts_usual_bars_only():
    crypto = pd.date_range("2024-01-01", periods=24 * 28, freq="1h", tz="UTC")
    keep = np.ones(len(crypto), bool)
    keep[100:106] = False  # a 6-hour outage
    keep[300:303] = False  # 3 hours
    ts = crypto[keep]
    got = bars_missing(ts, np.array(["BTC"] * len(ts)))
    assert got[100] == 6 and got[303 - 9] == 3 and got.sum() == 9
    eq = equity_hours(30)
    day = eq.normalize()
    holiday = day == pd.Timestamp("2024-01-17", tz="UTC")  # a Wednesday without a session
    eq = eq[~holiday]
    got = bars_missing(eq)
    first_after = np.flatnonzero(eq.normalize() == pd.Timestamp("2024-01-18", tz="UTC"))[0]
    assert got[first_after] == 7 and got.sum() == 7  # nights and weekends skip no usual bar
    # the bundled stocks: each market holiday skips 1, 9/11 4 trading days; weekends none
    from quantml.data import load_panel

    stocks = load_panel({"source": "stocks_daily", "symbols": ["AAPL"]})
    got = pd.Series(bars_missing(stocks), index=stocks["timestamp"].dt.strftime("%Y-%m-%d"))
    assert got["2001-09-17"] == 4 and got["2012-10-31"] == 2 and got["2002-01-02"] == 1
    assert sorted(got[got > 1].index) == ["2001-09-17", "2007-01-03", "2012-10-31"]  # the rest: 0 or 1
    monday = stocks["timestamp"].dt.day_of_week.to_numpy() == 0
    assert (got.to_numpy()[monday] <= 1).sum() == monday.sum() - 1  # weekends skip nothing; 9/11 is a Monday


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
