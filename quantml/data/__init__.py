"""Data: panel sources, the panel contract, as-of joins of exogenous streams, synthetic data."""

from quantml.data.asof import join_streams
from quantml.data.loaders import load_panel
from quantml.data.panel import (
    data_fingerprint,
    degenerate_symbols,
    infer_bar_frequency,
    parse_duration,
    periods_per_year,
    unavailable_columns,
    validate_panel,
)

__all__ = [
    "data_fingerprint",
    "degenerate_symbols",
    "infer_bar_frequency",
    "join_streams",
    "load_panel",
    "parse_duration",
    "periods_per_year",
    "unavailable_columns",
    "validate_panel",
]
