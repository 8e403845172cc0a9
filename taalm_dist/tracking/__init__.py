"""Experiment tracking: a small protocol. JSONL is always written and is the source of truth;
MLflow is best effort."""

from taalm_dist.tracking.jsonl import JsonlLogger, NullLogger, Tracker, read_jsonl
from taalm_dist.tracking.mlflow_tracker import MlflowTracker, MultiTracker, default_tracking_uri, open_run_trackers

__all__ = ["JsonlLogger", "MlflowTracker", "MultiTracker", "NullLogger", "Tracker", "default_tracking_uri", "open_run_trackers",
           "read_jsonl"]
