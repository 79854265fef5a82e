"""What every stage shares: the panel schema, the prediction contract, metric names, errors.

The ground floor of the package: it imports nothing else from quantml.
"""
from quantml.contracts.errors import QuantmlInputError
from quantml.contracts.metrics import HORIZON_SEPARATOR, metric_name, split_metric_name
from quantml.contracts.schema import (
    EXOGENOUS_MODALITY, FORECAST_FIELDS, MODALITIES, OHLCV, PREDICTION_COLUMNS, PREDICTION_KEYS,
    PROVENANCE_FIELDS, REALISED_FIELDS, REQUIRED_COLUMNS, SCHEMA_VERSION, SIGNAL_FIELDS, SYMBOL, TIMESTAMP,
    modality_of,
)

__all__ = ["EXOGENOUS_MODALITY", "FORECAST_FIELDS", "HORIZON_SEPARATOR", "MODALITIES", "OHLCV",
           "PREDICTION_COLUMNS", "PREDICTION_KEYS", "PROVENANCE_FIELDS", "QuantmlInputError", "REALISED_FIELDS",
           "REQUIRED_COLUMNS", "SCHEMA_VERSION", "SIGNAL_FIELDS", "SYMBOL", "TIMESTAMP", "metric_name",
           "modality_of", "split_metric_name"]
