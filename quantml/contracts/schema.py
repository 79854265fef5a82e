"""Names shared by every module: the panel contract, modalities, the prediction contract.

The panel is a long table, one row per ``(symbol, timestamp)``, sorted by
``(symbol, timestamp)`` with a fresh ``RangeIndex``. See ``DESIGN.md``.
"""

from __future__ import annotations

SCHEMA_VERSION = "1"

TIMESTAMP = "timestamp"
SYMBOL = "symbol"
OHLCV = ("open", "high", "low", "close", "volume")
# A panel needs only these; the other bar columns are optional (docs/data.md): an optional
# column that is missing or entirely NaN is *absent*, and feature blocks reading it are skipped.
CORE_COLUMNS = (TIMESTAMP, SYMBOL, "close")
OPTIONAL_COLUMNS = ("open", "high", "low", "volume")
# The standard bar columns (timestamp, symbol, OHLCV): every column that is not exogenous.
# The name predates optional OHLCV; only CORE_COLUMNS are required of a panel.
BAR_COLUMNS = (TIMESTAMP, SYMBOL, *OHLCV)
REQUIRED_COLUMNS = BAR_COLUMNS

MODALITIES = (
    "price",
    "volume",
    "derivatives",
    "onchain",
    "macro",
    "text",
    "event",
    "calendar",
    "cross_section",
    "microstructure",
)

# Exogenous columns the loaders and the synthetic generator know, with their modality.
# A user's own exogenous column is tagged by prefix (``macro_*``, ``text_*`` ...).
EXOGENOUS_MODALITY = {
    "funding_rate": "derivatives",
    "open_interest": "derivatives",
    "basis": "derivatives",
    "long_short_ratio": "derivatives",
    "taker_buy_sell_ratio": "derivatives",
    "onchain_netflow": "onchain",
    "social_posts": "text",
    "social_comments": "text",
    "social_sentiment": "text",
    "social_sources": "text",
    "event_count": "event",
    "event_sentiment": "event",
    "macro_surprise": "macro",
    "macro_rate": "macro",
    # the order-book stream (docs/data.md): quotes and sizes at the touch, depth over a few levels
    "bid": "microstructure",
    "ask": "microstructure",
    "bid_size": "microstructure",
    "ask_size": "microstructure",
    "depth_bid": "microstructure",
    "depth_ask": "microstructure",
}

# Columns of the prediction contract, in order (one row per symbol, timestamp, horizon).
PREDICTION_KEYS = (SYMBOL, TIMESTAMP, "horizon")
FORECAST_FIELDS = ("expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast")
SIGNAL_FIELDS = ("score", "confidence", "action")
# The weight the configured strategy's book targets for the (symbol, horizon) row at its bar
# (``strategy.target_weights``: the rank book's tranche weight, the allocator's bucket weight).
POSITION_FIELDS = ("target_weight",)
PROVENANCE_FIELDS = ("model_name", "model_version", "schema_version", "data_version")
PREDICTION_COLUMNS = (*PREDICTION_KEYS, *FORECAST_FIELDS, *SIGNAL_FIELDS, *POSITION_FIELDS, *PROVENANCE_FIELDS)
# Optional diagnostic columns (float, one per row like a forecast) a model declares in its signature and
# appends after PREDICTION_COLUMNS, in this order: a fusion model's gate opening and text contribution
# (docs/fusion.md). Rule for contracts assembled from several models: a stack drops them (a combination
# has no single gate); a route keeps a column any of its entries declares, NaN on rows of an entry that
# does not. Readers of prediction frames ignore columns they do not know.
DIAGNOSTIC_FIELDS = ("gate", "text_contribution")


def prediction_columns(diagnostics=()) -> tuple[str, ...]:
    """The contract's columns for a model declaring ``diagnostics``: PREDICTION_COLUMNS, then the
    declared names of DIAGNOSTIC_FIELDS in that order (unknown names are not part of any contract)."""
    declared = set(diagnostics or ())
    return (*PREDICTION_COLUMNS, *(name for name in DIAGNOSTIC_FIELDS if name in declared))


# How a horizon's forecasts are compared and traded: across symbols at each bar, or per
# symbol over time (quantml.evaluation.ic_mode_for picks one from the number of symbols).
IC_MODES = ("cross_sectional", "time_series")

# Realised columns joined to out-of-sample predictions (``oos_predictions.parquet``); ``t1``
# (UTC) is each row's label end (the first bar at or after ``timestamp + horizon``), how long
# the book holds the row's tranche (runs before metrics version 2 have no ``t1``).
REALISED_FIELDS = ("ret", "ret_after_cost", "dir", "vol", "t1", "ret_next_bar", "fold")


def modality_of(column: str) -> str | None:
    """Modality of a raw exogenous column, or None when it is not exogenous."""
    if column in EXOGENOUS_MODALITY:
        return EXOGENOUS_MODALITY[column]
    prefix = column.split("_", 1)[0]
    if prefix in MODALITIES:
        return prefix
    return None
