"""Shared fixtures: tiny random Llamas (no network), padded batches."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("TAALM_CACHE", tempfile.mkdtemp(prefix="taalm_cache_"))  # never the user's cache

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tiny_models import make_batches, tiny_theta  # noqa: E402


@pytest.fixture
def theta64():
    return tiny_theta("float64")


@pytest.fixture
def batches():
    return make_batches()
