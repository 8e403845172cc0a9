"""Where the package caches what it derives from inputs (tokenised datasets, GGUF → safetensors models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TAALM_CACHE`` or ``~/.cache/taalm_dist``."""
    return Path(os.environ.get("TAALM_CACHE", Path.home() / ".cache" / "taalm_dist"))
