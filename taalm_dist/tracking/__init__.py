"""Experiment tracking: a small protocol. JSONL is always written and is the source of truth."""

from taalm_dist.tracking.jsonl import JsonlLogger, NullLogger, Tracker

__all__ = ["JsonlLogger", "NullLogger", "Tracker"]
