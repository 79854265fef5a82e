"""MLflow tracking: store set-up, the one run writer and reader, the quantml pyfunc."""

from quantml.tracking.reader import FoldRun, ParentRun, RunLayoutError, RunReader
from quantml.tracking.store import flatten_config, git_commit, prepare_store, resolve_tracking_uri, retrying
from quantml.tracking.writer import ExperimentTracker, RunWriter, TrackedRun

__all__ = [
    "ExperimentTracker",
    "FoldRun",
    "ParentRun",
    "RunLayoutError",
    "RunReader",
    "RunWriter",
    "TrackedRun",
    "flatten_config",
    "git_commit",
    "prepare_store",
    "resolve_tracking_uri",
    "retrying",
]
