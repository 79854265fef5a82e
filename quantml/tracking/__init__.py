"""MLflow tracking: store set-up, parent/fold runs, the quantml pyfunc."""
from quantml.tracking.runs import ExperimentTracker, TrackedRun
from quantml.tracking.store import flatten_config, git_commit, prepare_store, resolve_tracking_uri, retrying

__all__ = ["ExperimentTracker", "TrackedRun", "flatten_config", "git_commit", "prepare_store",
           "resolve_tracking_uri", "retrying"]
