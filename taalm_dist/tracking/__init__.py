"""Experiment tracking: a small protocol. JSONL is always written and is the source of truth;
MLflow is best effort."""

from taalm_dist.tracking.jsonl import RUN_STATUSES, JsonlLogger, NullLogger, Tracker, read_jsonl
from taalm_dist.tracking.mlflow_tracker import (MlflowTracker, MultiTracker, default_tracking_uri, open_run_trackers,
                                                run_name_for)

__all__ = ["JsonlLogger", "MlflowTracker", "MultiTracker", "NullLogger", "RUN_STATUSES", "Tracker",
           "default_tracking_uri", "open_run_trackers", "read_jsonl", "run_name_for"]
