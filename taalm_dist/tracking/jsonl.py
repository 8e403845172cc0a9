"""The tracking protocol and its always-on JSONL implementation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Protocol


RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
"""How a run ended, as ``close(status=...)`` takes it (MLflow's terminal run statuses): ``FINISHED`` when it
ran to its end, ``FAILED`` on an exception, ``KILLED`` when stopped by SIGTERM / SIGINT."""


def check_status(status: str) -> str:
    """``status`` if it is one of :data:`RUN_STATUSES`; a ``ValueError`` (a caller's bug, not a logging failure)."""
    if status not in RUN_STATUSES:
        raise ValueError(f"close(status={status!r}): use one of {', '.join(RUN_STATUSES)}")
    return status


class Tracker(Protocol):
    """What a trainer logs to. Implementations must never raise on a logging failure."""

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def close(self, status: str = "FINISHED") -> None:
        """End the run as ``status`` (one of :data:`RUN_STATUSES`): a run that failed or was killed must not
        look finished, nor stay "RUNNING" forever in MLflow."""


class NullLogger:
    """Logs nothing (non-zero ranks, tests)."""

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        check_status(status)


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the fact visible
    return v


class JsonlLogger:
    """One JSON object per line: ``{"step": n, "time": unix_s, **metrics}``; params go to line 1."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict) -> None:
        self._f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def log_params(self, params: dict) -> None:
        self._write({"event": "params", "time": time.time(), "params": params})

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._write({"step": step, "time": time.time(), **metrics})

    def close(self, status: str = "FINISHED") -> None:
        """Close the file. ``status`` is checked, not written: metrics.jsonl holds the steps' records only."""
        check_status(status)
        self._f.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL metrics file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
