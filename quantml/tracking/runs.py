"""The 0.1 home of the run writer; see :mod:`quantml.tracking.writer`."""

from quantml.tracking.writer import ExperimentTracker, RunWriter, TrackedRun

__all__ = ["ExperimentTracker", "RunWriter", "TrackedRun"]
