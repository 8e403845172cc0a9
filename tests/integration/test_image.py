"""The container release check (`make image-check`; slow, not in `make test`): build the image with `make image`'s
script, run it, and run the compose stack (MLflow server + trainer, CPU override, toy demo) twice.

Needs Docker with a running daemon, or podman (+ podman-compose, in the test extra) as root with debootstrap where
no registry is reachable; skipped with the reason otherwise. Prints the build's wall time and the image's size."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAG = "taalm_dist:latest"
UID = GID = 4321  # not the invoking user's (root here): shows the containers write as the uid they are given
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _engine() -> str | None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman" if shutil.which("podman") else None


ENGINE = _engine()
ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/podman/containers.conf"))}
if ENGINE:
    ENV["ENGINE"] = ENGINE


def _run(cmd: list[str], timeout: float, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _owners(path: Path) -> set[tuple[int, int]]:
    return {(p.stat().st_uid, p.stat().st_gid) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def image() -> dict:
    if ENGINE is None:
        pytest.skip("neither a Docker daemon nor podman here")
    start = time.monotonic()
    res = _run(["bash", str(ROOT / "docker" / "build_image.sh")], timeout=1800, env={**ENV, "TAG": TAG}, cwd=ROOT)
    seconds = time.monotonic() - start
    size = int(_run([ENGINE, "image", "inspect", TAG, "--format", "{{.Size}}"], 60).stdout.strip())
    print(f"\nimage {TAG}: built in {seconds:.0f} s ({ENGINE}), {size / 1e6:.0f} MB; {res.stdout.splitlines()[-1]}")
    return {"seconds": seconds, "bytes": size}


def test_image_runs_the_cli_and_the_toy_demo_as_the_given_user(image, tmp_path):
    assert "usage: taalm" in _run([ENGINE, "run", "--rm", TAG, "taalm", "--help"], 120).stdout
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, UID, GID)
    start = time.monotonic()
    res = _run([ENGINE, "run", "--rm", "--user", f"{UID}:{GID}", "-v", f"{runs}:/runs", TAG,
                "taalm", "demo", "--toy", "--out", "/runs/toy"], 600)
    print(f"\ntoy demo in the image: {time.monotonic() - start:.0f} s")
    assert "φ saved" in res.stdout + res.stderr or (runs / "toy" / "meta_train").is_dir(), res.stdout[-2000:]
    assert _owners(runs) == {(UID, GID)}


def _mlflow_health(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the MLflow service did not answer on port {port} in {timeout_s} s"
        time.sleep(1)


def test_compose_stack_logs_the_trainers_runs_to_its_mlflow_server_and_starts_twice(image, tmp_path):
    stack = tmp_path / "stack"
    (stack / "docker").mkdir(parents=True)
    for name in ("compose.yaml", "compose.cpu.yaml"):  # their ../runs and ../mlruns are the stack's own
        shutil.copy(ROOT / "docker" / name, stack / "docker" / name)
    for d in ("runs", "mlruns"):
        (stack / d).mkdir()
        os.chown(stack / d, UID, GID)
    port = _free_port()
    env = {**ENV, "TAALM_UID": str(UID), "TAALM_GID": str(GID), "TAALM_DEMO_ARGS": "--toy",
           "TAALM_MLFLOW_PORT": str(port), "COMPOSE_PROJECT_NAME": f"taalm_check_{os.getpid()}"}
    compose = ["bash", str(ROOT / "docker" / "compose.sh"), "-f", str(stack / "docker" / "compose.yaml"),
               "-f", str(stack / "docker" / "compose.cpu.yaml")]
    try:
        start = time.monotonic()
        res = _run([*compose, "up", "--no-build", "--exit-code-from", "trainer"], 900, env=env)
        print(f"\ncompose up (MLflow server + toy demo): {time.monotonic() - start:.0f} s")
        assert "continuing with metrics.jsonl only" not in res.stdout + res.stderr, "the trainer did not reach MLflow"
        first = sorted((stack / "runs").glob("demo-*"))
        assert len(first) == 1, first
        before = _tree_digest(first[0])
        time.sleep(1.5)  # the run directory is named by the second it starts
        res = _run([*compose, "up", "--no-build", "--exit-code-from", "trainer"], 900, env=env)
        assert "continuing with metrics.jsonl only" not in res.stdout + res.stderr, "the trainer did not reach MLflow"
        both = sorted((stack / "runs").glob("demo-*"))
        assert len(both) == 2 and both[0] == first[0], both
        assert _tree_digest(first[0]) == before, "the second start changed the first run's files"
        assert _owners(stack / "runs") == {(UID, GID)} and _owners(stack / "mlruns") == {(UID, GID)}

        _run([*compose, "up", "--no-build", "-d", "mlflow"], 300, env=env)
        _mlflow_health(port, 120)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiments = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in experiments])
        summary = [(r.info.run_name, r.info.status, len(r.data.metrics)) for r in runs]
        assert len(runs) >= 2, summary
        for r in runs:
            assert r.info.status == "FINISHED" and r.data.metrics, summary
            assert client.list_artifacts(r.info.run_id), f"run {r.info.run_name}: no artifacts on the server"
        print(f"MLflow server holds {len(runs)} runs: {json.dumps(summary)}")
    finally:
        subprocess.run([*compose, "down", "-v"], capture_output=True, timeout=300, env=env)
