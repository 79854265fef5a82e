"""Monitoring (``quantml monitor``): a promoted version's logs against its training reference.

The top floor below ``cli``: it may import every other floor. ``checks`` (pure functions),
``realised`` (outcomes of logged rows, the training labels' definitions), ``report`` (HTML and
figures), ``run`` (orchestration and the MLflow ``monitor`` run). See docs/monitoring.md.
"""

from quantml.monitoring.checks import CHECK_COLUMNS, CHECKS, FAIL, NA, OK, WARN, CheckSettings
from quantml.monitoring.realised import realised_outcomes
from quantml.monitoring.run import MonitorResult, run_monitor

__all__ = [
    "CHECKS",
    "CHECK_COLUMNS",
    "FAIL",
    "NA",
    "OK",
    "WARN",
    "CheckSettings",
    "MonitorResult",
    "realised_outcomes",
    "run_monitor",
]
