"""GPU acceptance suite (`make test-gpu`): every test here needs CUDA and is skipped with the reason without it."""

import os
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False); run `make test-gpu` on a GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_out(tmp_path_factory) -> Path:
    """Where the suite writes its JSON results: $TAALM_GPU_OUT (kept) or a temporary directory."""
    out = Path(os.environ["TAALM_GPU_OUT"]) if os.environ.get("TAALM_GPU_OUT") else tmp_path_factory.mktemp("gpu_out")
    out.mkdir(parents=True, exist_ok=True)
    return out
