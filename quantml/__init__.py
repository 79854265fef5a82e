"""quantml: multi-horizon forecasting of financial time series, from sweep to served active model."""

import os as _os

__version__ = "0.1.0"

# The one place quantml quiets MLflow: no usage telemetry, no tqdm bars for artifact
# transfers (they flood logs of sweeps). setdefault: an explicit environment value wins.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
_os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run" lines per run over http
