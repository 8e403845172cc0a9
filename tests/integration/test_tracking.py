"""MLflow tracking for real (a server on 127.0.0.1 started here), and a dead server not stopping a run."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taalm_dist.config import load_config
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.programs.meta_train import MetaTrainer
from taalm_dist.tracking import read_jsonl

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, uri: str, name: str, *extra: str):
    write_pairs(toy_rows(20, seed=0, filler_words=8), tmp_path / "train.jsonl")
    write_pairs(toy_rows(2, seed=1, filler_words=8, entity_offset=50), tmp_path / "val.jsonl")
    cfg = load_config(None, [
        "theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64",
        "phi.model.tiny.hidden_size=32", "phi.model.tiny.intermediate_size=64", "phi.lora.rank=2",
        f"data.train_file={tmp_path / 'train.jsonl'}", f"data.val_file={tmp_path / 'val.jsonl'}",
        f"train.out_dir={tmp_path / name}", "train.max_steps=3", "train.docs_per_step=2", "train.val_every=3",
        "train.progress=false", f"tracking.tracking_uri={uri}", "tracking.timeout_s=2", *extra,
    ])
    trainer = MetaTrainer(cfg)
    t0 = time.perf_counter()
    try:
        trainer.setup()
        summary = trainer.train()
    finally:
        trainer.cleanup()
    return trainer, summary, time.perf_counter() - t0


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root", str(tmp_path / "art"),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 90 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_real_mlflow_server_receives_params_metrics_and_artifacts(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    trainer, summary, _ = _run(tmp_path, mlflow_server, "tracked")
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(trainer.mlflow.run_id)
    assert run.data.params["meta.inner"] == "sgd" and run.data.params["train.max_steps"] == "3"
    history = client.get_metric_history(run.info.run_id, "train.objective")
    assert [m.step for m in history] == [1, 2, 3]
    jsonl = {r["step"]: r["train/objective"] for r in read_jsonl(tmp_path / "tracked" / "metrics.jsonl") if "train/objective" in r}
    assert all(abs(m.value - jsonl[m.step]) < 1e-9 for m in history)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "phi"} <= artifacts


def test_a_closed_port_does_not_stop_or_slow_the_run(tmp_path, capfd):
    _, summary, seconds = _run(tmp_path, f"http://127.0.0.1:{_free_port()}", "untracked")
    assert summary["steps"] == 3
    assert "continuing with metrics.jsonl only" in capfd.readouterr().err
    assert len([r for r in read_jsonl(tmp_path / "untracked" / "metrics.jsonl") if "train/objective" in r]) == 3
    assert seconds < 60


def test_a_hanging_server_costs_one_timeout_and_one_warning_not_one_per_checkpoint(tmp_path, hanging_server,
                                                                                     monkeypatch, capfd):
    # Robustness issue: with MLFLOW_HTTP_REQUEST_TIMEOUT=300 every checkpoint (it records the MLflow run id) waited
    # on the server and no warning was printed.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    trainer, summary, seconds = _run(tmp_path, hanging_server, "hanging", "train.save_every=1")
    assert summary["steps"] == 3
    warnings = [x for x in capfd.readouterr().err.splitlines() if "taalm: warning: MLflow" in x]
    assert len(warnings) == 1 and "continuing with metrics.jsonl only" in warnings[0], warnings
    t0 = time.perf_counter()
    assert trainer.mlflow.wait_ready() is None and time.perf_counter() - t0 < 0.5  # later checkpoints do not wait
    assert len([r for r in read_jsonl(tmp_path / "hanging" / "metrics.jsonl") if "train/objective" in r]) == 3
    assert seconds < 60


def test_a_sqlite_store_keeps_artifacts_beside_the_database_not_in_the_working_directory(tmp_path, monkeypatch):
    from taalm_dist.tracking.mlflow_tracker import MlflowTracker

    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "note.txt").write_text("x")
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "exp", "run")
    tracker.log_artifact(tmp_path / "note.txt")
    tracker.close()
    assert list((tmp_path / "store" / "mlartifacts").rglob("note.txt"))
    assert not (tmp_path / "mlruns").exists()
