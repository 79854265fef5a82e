"""quantml.data.audit on small hand-made panels, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantml.contracts import QuantmlInputError
from quantml.data.audit import ReadyThresholds, audit_panel, require_ready

HOURS = 5 * 7 * 24  # five weeks of hourly bars: every hour of the week is a usual slot (>= 75% of weeks)
OUTAGE = slice(400, 406)  # 6 hourly bars lost


def crypto_panel(outage: bool = True) -> pd.DataFrame:
    """BTC: 840 hourly 24/7 bars from Monday 2024-01-01 01:00 UTC, bars 400..405 lost; a funding
    stream missing on 84 of its 834 bars; one post and three comments per bar."""
    ts = pd.date_range("2024-01-01 01:00", periods=HOURS, freq="1h", tz="UTC")
    keep = np.ones(HOURS, dtype=bool)
    if outage:
        keep[OUTAGE] = False
    n = int(keep.sum())
    close = 100.0 + np.arange(n, dtype=float)
    close[10] = close[9]  # one stale close
    flag = np.zeros(n)
    flag[:84] = 1.0
    return pd.DataFrame(
        {
            "timestamp": ts[keep],
            "symbol": "BTC",
            "close": close,
            "funding_rate": np.where(flag == 1, np.nan, 0.0001),
            "funding_rate_missing": flag,
            "social_posts": 1.0,
            "social_posts_missing": 0.0,
            "social_comments": 3.0,
            "social_comments_missing": 0.0,
        }
    )


def test_a_24_7_symbol_with_a_6_bar_outage_inferred_and_declared():
    panel = crypto_panel()
    for calendars in (None, "24/7"):
        audit = audit_panel(panel, calendars, thresholds=ReadyThresholds(min_coverage=0.995, max_gap="4h"))
        row = audit.symbols.iloc[0]
        assert row["calendar"] == ("inferred" if calendars is None else "24/7")
        assert (row["bars_present"], row["bars_missing"], row["bars_expected"]) == (834, 6, 840)
        assert row["coverage"] == pytest.approx(834 / 840)
        assert row["longest_gap_bars"] == 6
        t0 = pd.Timestamp("2024-01-01 01:00", tz="UTC")
        assert row["longest_gap_start"] == t0 + pd.Timedelta(hours=399)  # the last bar before the outage
        assert row["longest_gap_end"] == t0 + pd.Timedelta(hours=406)  # the first bar after it
        assert row["stale_share"] == pytest.approx(1 / 833)
        assert not audit.ready
        failed = audit.checks[audit.checks["verdict"] == "FAIL"]
        assert set(failed["check"]) == {"coverage", "longest_gap"}
        lines = audit.shortfalls()
        assert any("BTC coverage 0.9929 < 0.995 (missing 6 of 840 bars)" in line for line in lines), lines
        assert any("BTC longest gap 6 bars" in line and "(4 bars, by 2)" in line for line in lines), lines


def test_stream_missing_shares_and_per_stream_limits():
    panel = crypto_panel()
    audit = audit_panel(panel, thresholds=ReadyThresholds(min_coverage=None, max_missing=0.05))
    streams = audit.streams.set_index("stream")
    assert streams.loc["funding_rate", "missing_bars"] == 84 and streams.loc["funding_rate", "bars"] == 834
    assert streams.loc["funding_rate", "missing_share"] == pytest.approx(84 / 834)
    assert streams.loc["social_posts", "missing_share"] == 0.0
    assert audit.shortfalls() == ["funding_rate missing on 10.1% of BTC's bars > 5.0% (84 of 834 bars)"]
    relaxed = ReadyThresholds(min_coverage=None, max_missing=0.05, max_missing_by={"funding_*": 0.2})
    assert relaxed.missing_limit("funding_rate") == 0.2 and relaxed.missing_limit("social_posts") == 0.05
    assert audit_panel(panel, thresholds=relaxed).ready
    exact = ReadyThresholds(max_missing_by={"funding_*": 0.2, "funding_rate": 0.01})
    assert exact.missing_limit("funding_rate") == 0.01  # the exact name wins over a pattern


def test_text_counts_per_day():
    audit = audit_panel(crypto_panel(outage=False), thresholds=ReadyThresholds())
    text = audit.text
    assert list(text.columns) == ["symbol", "day", "bars", "social_posts", "social_comments"]
    first, second = text.iloc[0], text.iloc[1]
    assert first["day"] == pd.Timestamp("2024-01-01", tz="UTC") and first["bars"] == 23  # 01:00 .. 23:00
    assert (second["bars"], second["social_posts"], second["social_comments"]) == (24, 24.0, 72.0)
    assert text["social_posts"].sum() == HOURS


def test_window_keeps_the_last_span_only():
    panel = crypto_panel()
    audit = audit_panel(panel, window="14d", thresholds=ReadyThresholds(min_coverage=0.999))
    row = audit.symbols.iloc[0]
    assert (row["bars_present"], row["bars_missing"], row["coverage"]) == (14 * 24, 0, 1.0)  # the outage is older
    assert audit.ready and audit.window == "14d"
    assert audit.start == panel["timestamp"].max() - pd.Timedelta("14D")


def nyse_hourly(drop_day: str | None = None) -> pd.DataFrame:
    """AAPL: hourly NYSE bars 2024-07-01 .. 2024-07-12 on the clock (14:00 .. 20:00 UTC, 7 a session),
    the half day 2024-07-03 closing at 17:00 (4 bars), no bar on the 2024-07-04 holiday."""
    days = [d for d in pd.bdate_range("2024-07-01", "2024-07-12") if d != pd.Timestamp("2024-07-04")]
    stamps = []
    for d in days:
        last = 17 if d == pd.Timestamp("2024-07-03") else 20
        if drop_day is not None and d == pd.Timestamp(drop_day):
            continue
        stamps += [d + pd.Timedelta(hours=h) for h in range(14, last + 1)]
    ts = pd.DatetimeIndex(stamps).tz_localize("UTC")
    return pd.DataFrame({"timestamp": ts, "symbol": "AAPL", "close": 100.0 + np.arange(len(ts))})


def test_a_declared_holiday_is_not_a_gap_and_a_lost_session_is():
    full = nyse_hourly()
    assert len(full) == 8 * 7 + 4
    audit = audit_panel(full, {"AAPL": "XNYS"}, thresholds=ReadyThresholds(min_coverage=1.0, max_gap="1d"))
    row = audit.symbols.iloc[0]
    assert (row["bars_present"], row["bars_missing"], row["longest_gap_bars"]) == (60, 0, 0)
    assert audit.ready
    lost = nyse_hourly(drop_day="2024-07-09")
    audit = audit_panel(lost, {"default": "XNYS"}, thresholds=ReadyThresholds(min_coverage=0.88, max_gap="4h"))
    row = audit.symbols.iloc[0]
    assert (row["bars_present"], row["bars_missing"], row["bars_expected"]) == (53, 7, 60)
    assert row["longest_gap_start"] == pd.Timestamp("2024-07-08 20:00", tz="UTC")
    assert row["longest_gap_end"] == pd.Timestamp("2024-07-10 14:00", tz="UTC")
    assert row["coverage"] == pytest.approx(53 / 60)  # >= 0.88: passes
    assert audit.shortfalls() == [
        "AAPL longest gap 7 bars (2024-07-08 20:00:00+00:00 to 2024-07-10 14:00:00+00:00) > max_gap 4h (4 bars, by 3)"
    ]
    # one trading day of hourly NYSE bars is 7 bars: a lost session passes max_gap=1d
    assert audit_panel(lost, "XNYS", thresholds=ReadyThresholds(min_coverage=None, max_gap="1d")).ready


def test_require_ready_lists_every_shortfall():
    panel = crypto_panel()
    with pytest.raises(QuantmlInputError) as err:
        require_ready(panel, None, None, ReadyThresholds(min_coverage=0.995, max_missing=0.05, max_stale=0.0))
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.require_ready=true: the panel is not ready (3 check(s)")
    for text in ("BTC coverage 0.9929 < 0.995", "funding_rate missing on 10.1% of BTC's bars > 5.0%", "BTC close"):
        assert text in message, message
    assert require_ready(panel, None, None, ReadyThresholds(min_coverage=0.99)).ready


@pytest.mark.parametrize(
    "node, culprit",
    [
        ({"min_coverage": 1.5}, "data.ready.min_coverage=1.5"),
        ({"max_missing": "a lot"}, "data.ready.max_missing='a lot'"),
        ({"max_gap": "soon"}, "data.ready.max_gap"),
        ({"min_coverge": 0.9}, "data.ready.min_coverge is not a readiness threshold"),
        ({"max_missing_by": [0.1]}, "data.ready.max_missing_by=[0.1] must be a mapping"),
    ],
)
def test_bad_thresholds_name_the_setting(node, culprit):
    with pytest.raises(QuantmlInputError) as err:
        ReadyThresholds.from_config(node)
    assert culprit in str(err.value)


def test_a_window_without_bars_is_bad_input():
    panel = crypto_panel()
    with pytest.raises(QuantmlInputError, match="audit.window"):
        audit_panel(panel, window="soon")
