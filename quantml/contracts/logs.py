"""The logs of a model after promotion: what `quantml paper` (and `quantml predict log_dir=`)
append, and what `quantml monitor` reads.

A log directory holds one partitioned parquet dataset per log (hive partitions
``date=YYYY-MM-DD`` of the row's ``timestamp``, UTC), plus the paper trader's state file:

```
<log_dir>/predictions/date=2026-11-30/part-<uuid>.parquet   one row per symbol x timestamp x horizon
<log_dir>/executions/date=.../part-<uuid>.parquet           one row per fill (symbol x bar x bucket)
<log_dir>/pnl/date=.../part-<uuid>.parquet                  one row per symbol x decision bar x bucket
<log_dir>/paper_state.json                                  positions, carried orders, last bar acted on
```

Every log has a key; a row whose key is already in the log is never written again
(``quantml.serving.logs.append_log``). Money is in units of the portfolio capital (``aum``): PnL,
cost and positions are fractions of it; notionals are in the panel's price currency.
"""

from __future__ import annotations

from quantml.contracts.schema import DIAGNOSTIC_FIELDS, PREDICTION_COLUMNS, SYMBOL, TIMESTAMP

PREDICTION_LOG = "predictions"
EXECUTION_LOG = "executions"
PNL_LOG = "pnl"
LOGS = (PREDICTION_LOG, EXECUTION_LOG, PNL_LOG)
PAPER_STATE_FILE = "paper_state.json"
PARTITION = "date"  # hive partition column: the row's timestamp's UTC date, YYYY-MM-DD

# The prediction log: the prediction contract plus where and when each row was written.
# ``source``: "paper" | "predict". ``logged_at``: wall-clock UTC of the write.
SOURCE_PAPER = "paper"  # rows `quantml paper` writes
SOURCE_PREDICT = "predict"  # rows `quantml predict log_dir=` appends
# the diagnostic columns (a fusion model's ``gate``...) are NaN for a model that declares none
PREDICTION_LOG_COLUMNS = (*PREDICTION_COLUMNS, *DIAGNOSTIC_FIELDS, "source", "logged_at")
PREDICTION_LOG_KEY = ("model_name", "model_version", SYMBOL, TIMESTAMP, "horizon")

# The execution log: one row per fill of a bucket's order in a bar.
# ``timestamp``: the bar the order was (partly) filled in; ``decided_at``: the bar whose close
# decided it; ``bucket``: the horizon whose target the order serves; ``policy``: the execution
# policy of that bucket (short_horizon | long_horizon | close); ``side``: +1 buy, -1 sell;
# ``order_notional`` / ``filled_notional`` / ``carried_notional``: |notional| asked this bar,
# filled, and carried to the next bar (the rest of ``order - filled`` is dropped: beyond the
# slippage cap); ``theoretical_price``: the decision bar's close (what the returns-based backtest
# assumes); ``fill_price``: what was paid; ``slippage_bps`` = side * (fill - theoretical) /
# theoretical * 1e4 (timing + spread + impact); ``fee_bps``, ``spread_bps``, ``impact_bps``: the
# charged components; ``participation``: filled notional over the bar's notional volume;
# ``market_notional``: the part of ``filled_notional`` that went to the market (the rest crossed another
# bucket's opposite order internally, at the theoretical price, free).
FILL_COLUMNS = (
    TIMESTAMP,
    "decided_at",
    SYMBOL,
    "bucket",
    "policy",
    "side",
    "order_notional",
    "filled_notional",
    "carried_notional",
    "theoretical_price",
    "fill_price",
    "slippage_bps",
    "fee_bps",
    "spread_bps",
    "impact_bps",
    "participation",
    "market_notional",
    "model_name",
    "model_version",
)
FILL_KEY = ("model_name", "model_version", SYMBOL, TIMESTAMP, "bucket", "decided_at")

# The PnL log: per decision bar ``timestamp`` (the position held over the next bar, as the
# backtest's bars are indexed), symbol and bucket: the bucket's position (fraction of capital)
# after the bar's fills, its gross PnL over the next bar, its share of the trading cost, pnl =
# gross - cost. Summed over symbols and buckets: the book's after-cost PnL of the bar.
PNL_COLUMNS = (TIMESTAMP, SYMBOL, "bucket", "policy", "position", "gross", "cost", "pnl", "model_name", "model_version")
PNL_KEY = ("model_name", "model_version", SYMBOL, TIMESTAMP, "bucket")

LOG_COLUMNS = {PREDICTION_LOG: PREDICTION_LOG_COLUMNS, EXECUTION_LOG: FILL_COLUMNS, PNL_LOG: PNL_COLUMNS}
LOG_KEYS = {PREDICTION_LOG: PREDICTION_LOG_KEY, EXECUTION_LOG: FILL_KEY, PNL_LOG: PNL_KEY}
