"""The tracking protocol and its always-on JSONL implementation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    """What a trainer logs to. Implementations must never raise on a logging failure."""

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Logs nothing (non-zero ranks, tests)."""

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


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

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL metrics file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
