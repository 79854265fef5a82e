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


# the lockbox figures a command shows a person beside its selection figures (all stay on the run)
LOCKBOX_HEADLINE = ("rank_ic", "sharpe_after_cost", "max_drawdown")


def format_lockbox(lockbox: dict[str, float], prefix: str = "holdout_") -> str:
    """``holdout_<metric>/<h>`` figures as one short line, headline metrics per horizon:
    ``"1d: rank_ic -0.0075 sharpe_after_cost -1.457 max_drawdown -0.4155; 7d: ..."``
    (``"no lockbox"`` when empty; every figure stays on the run)."""
    by_horizon: dict[str, list[tuple[int, str, float]]] = {}
    for name in sorted(lockbox):
        base, horizon = split_metric_name(name)
        metric = base.removeprefix(prefix)
        if metric in LOCKBOX_HEADLINE:
            by_horizon.setdefault(horizon, []).append((LOCKBOX_HEADLINE.index(metric), metric, lockbox[name]))
    if not by_horizon:
        return "no lockbox" if not lockbox else f"{len(lockbox)} figures (none of {', '.join(LOCKBOX_HEADLINE)})"
    parts = []
    for horizon, items in by_horizon.items():
        shown = " ".join(f"{m} {v:.4g}" for _, m, v in sorted(items))
        parts.append(f"{horizon}: {shown}" if horizon else shown)
    return "; ".join(parts)
