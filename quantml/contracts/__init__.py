"""What every stage shares: the panel schema, the prediction contract, metric names, errors,
the duration grammar, bar size and bars per year, the required-columns check.

The ground floor of the package: it imports nothing else from quantml.
"""

from quantml.contracts.columns import require_columns
from quantml.contracts.errors import QuantmlInputError
from quantml.contracts.metrics import HORIZON_SEPARATOR, metric_name, split_metric_name
from quantml.contracts.schema import (
    BAR_COLUMNS,
    CORE_COLUMNS,
    EXOGENOUS_MODALITY,
    FORECAST_FIELDS,
    IC_MODES,
    MODALITIES,
    OHLCV,
    OPTIONAL_COLUMNS,
    POSITION_FIELDS,
    PREDICTION_COLUMNS,
    PREDICTION_KEYS,
    PROVENANCE_FIELDS,
    REALISED_FIELDS,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    SIGNAL_FIELDS,
    SYMBOL,
    TIMESTAMP,
    modality_of,
)
from quantml.contracts.time import bar_size, parse_duration, periods_per_year

__all__ = [
    "BAR_COLUMNS",
    "CORE_COLUMNS",
    "EXOGENOUS_MODALITY",
    "FORECAST_FIELDS",
    "HORIZON_SEPARATOR",
    "IC_MODES",
    "MODALITIES",
    "OHLCV",
    "OPTIONAL_COLUMNS",
    "POSITION_FIELDS",
    "PREDICTION_COLUMNS",
    "PREDICTION_KEYS",
    "PROVENANCE_FIELDS",
    "QuantmlInputError",
    "REALISED_FIELDS",
    "REQUIRED_COLUMNS",
    "SCHEMA_VERSION",
    "SIGNAL_FIELDS",
    "SYMBOL",
    "TIMESTAMP",
    "bar_size",
    "metric_name",
    "modality_of",
    "parse_duration",
    "periods_per_year",
    "require_columns",
    "split_metric_name",
]
