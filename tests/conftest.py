"""Shared fixtures: tiny random Llamas (no network), padded batches."""

import os
import socket
import tempfile
import threading

import pytest
import torch

os.environ.setdefault("TAALM_CACHE", tempfile.mkdtemp(prefix="taalm_cache_"))  # never the user's cache

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tiny_models import make_batches, tiny_theta  # noqa: E402


@pytest.fixture
def theta64():
    # seeded: LoRA's A factors draw from the global generator, which the tests run before had left in a state
    # that varied between runs; on one draw fd1's float64 error in the change3/AdamW case was 1.2e-6 (bound 1e-6)
    torch.manual_seed(0)
    return tiny_theta("float64")


@pytest.fixture
def batches():
    return make_batches()


@pytest.fixture
def hanging_server():
    """``http://127.0.0.1:PORT`` of a server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()
