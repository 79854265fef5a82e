"""quantml: multi-horizon forecasting of financial time series, from sweep to served champion."""
__version__ = "0.1.0"
