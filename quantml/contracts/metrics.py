"""Metric names: ``<split>_<metric>/<horizon>`` everywhere, and the version of their definitions."""

from __future__ import annotations

# MLflow refuses "@" in metric names (allowed: alphanumerics _ - . / : space), so the
# DESIGN's ``<split>_<metric>@<horizon>`` is written ``<split>_<metric>/<horizon>``: the
# same three parts, and the MLflow UI groups each metric's horizons into one section.
HORIZON_SEPARATOR = "/"

# Version of the metric definitions (what ``oos_sharpe_after_cost``, ``test_rank_ic`` ...
# compute); recorded on every parent run as the tag ``quantml.metrics_version``. Bump it
# when a definition changes, so runs computed under different definitions are not compared.
METRICS_VERSION = "2"


def metric_name(split: str, metric: str, horizon: str) -> str:
    """``<split>_<metric>/<horizon>``, the one naming scheme for metrics everywhere."""
    return f"{split}_{metric}{HORIZON_SEPARATOR}{horizon}"


def split_metric_name(name: str) -> tuple[str, str]:
    """``"val_rank_ic/1d" -> ("val_rank_ic", "1d")``; horizon is ``""`` when absent."""
    base, _, horizon = name.partition(HORIZON_SEPARATOR)
    return base, horizon
