"""The MLflow tracker against a real sqlite store and a local server that never answers (no network)."""

import os
import time

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from taalm_dist.config import TrackingConfig  # noqa: E402
from taalm_dist.tracking import MultiTracker, NullLogger, open_run_trackers, run_name_for  # noqa: E402
from taalm_dist.tracking.mlflow_tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MlflowTracker  # noqa: E402


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """The tracker writes MLflow's HTTP settings into os.environ: restore them after each test."""
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_a_hanging_server_costs_timeout_s_once_with_one_warning(hanging_server, monkeypatch, capfd):
    # Robustness issue: with MLFLOW_HTTP_REQUEST_TIMEOUT=300 every checkpoint's wait_ready stalled and nothing was
    # printed. Now the first wait that runs out turns the tracker off with one warning; later ones return at once.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    t0 = time.monotonic()
    tracker = MlflowTracker(hanging_server, "exp", "run", timeout_s=1)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"  # MLflow's own requests give up after 1 s, not 300 s
    tracker.log_params({"a": 1})
    for step in range(1, 6):  # five checkpoints, each asking for the run id
        tracker.log_metrics({"train/loss": 1.0}, step)
        assert tracker.wait_ready() is None
    tracker.close(status="FINISHED")
    waited = time.monotonic() - t0
    assert waited < 2.5, f"the caller waited {waited:.1f} s for a hanging server with timeout_s=1"
    tracker._thread.join(timeout=30)  # the worker's own request timed out after 1 s (300 s before)
    assert not tracker._thread.is_alive()
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "taalm: warning" in line]
    assert len(warnings) == 1 and "did not answer within 1 s; continuing with metrics.jsonl only" in warnings[0], err


def test_a_smaller_http_timeout_in_the_environment_is_kept(hanging_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    tracker = MlflowTracker(hanging_server, "exp", "run", timeout_s=4)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    assert tracker.wait_ready(0) is None  # a poll changes nothing
    tracker.close()


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_close_ends_the_run_with_its_status(store, status):
    # Robustness issue: a killed or failed run stayed RUNNING in the MLflow UI forever.
    tracker = MlflowTracker(store, "statuses", f"run-{status.lower()}")
    run_id = tracker.wait_ready(30)
    assert run_id is not None
    assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"
    tracker.close(status=status)
    assert MlflowClient(store).get_run(run_id).info.status == status


def test_every_tracker_takes_the_status_and_refuses_an_unknown_one(store, tmp_path):
    log, mlflow = open_run_trackers(tmp_path / "killed", TrackingConfig(tracking_uri=store, experiment="statuses"))
    run_id = mlflow.wait_ready(30)
    log.close(status="KILLED")  # MultiTracker → JsonlLogger and MlflowTracker
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"
    for tracker in (MultiTracker(NullLogger()), NullLogger()):
        tracker.close(status="FAILED")
        with pytest.raises(ValueError, match="close\\(status='DONE'\\): use one of FINISHED, FAILED, KILLED"):
            tracker.close(status="DONE")


def test_experiments_are_tagged_for_model_development(store):
    # Robustness issue: MLflow 3 opened the project's experiments in its GenAI view.
    client = MlflowClient(store)
    tracker = MlflowTracker(store, "new-experiment", "run")
    tracker.wait_ready(30)
    tracker.close()
    assert client.get_experiment_by_name("new-experiment").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    client.create_experiment("made-elsewhere")  # an existing experiment without the tag gets it
    client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})  # a kind chosen stays
    for name in ("made-elsewhere", "chosen"):
        tracker = MlflowTracker(store, name, "run")
        tracker.wait_ready(30)
        tracker.close()
    assert client.get_experiment_by_name("made-elsewhere").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment_by_name("chosen").tags[EXPERIMENT_KIND_TAG] == "genai_development"


@pytest.mark.parametrize("configured, method, name", [
    ("smollm2-taalm", "finetune", "smollm2-taalm-finetune"),  # the issue: a finetune run was called smollm2-taalm
    ("smollm2-{method}", "oracle", "smollm2-oracle"),
    ("smollm2-taalm", "taalm", "smollm2-taalm"),
    ("smollm2-taalm", "taalm+mix_review", "smollm2-taalm-taalm+mix_review"),
    ("rho10", "rho1", "rho10-rho1"),  # a word, not a piece of one
    (None, "oracle", "oracle"),  # the run directory's name already states it
    ("smollm2-{method}", None, "smollm2"),
    (None, None, "oracle"),
])
def test_run_names_state_the_method(configured, method, name):
    assert run_name_for(configured, "oracle", method) == name


def test_ckl_run_names_and_tags_reach_the_store(store, tmp_path):
    cfg = TrackingConfig(tracking_uri=store, experiment="names", run_name="smollm2-taalm")
    log, mlflow = open_run_trackers(tmp_path / "ckl" / "finetune", cfg, method="finetune",
                                    tags={"taalm.command": "ckl run"})
    run_id = mlflow.wait_ready(30)
    log.close()
    run = MlflowClient(store).get_run(run_id)
    assert run.info.run_name == "smollm2-taalm-finetune"
    assert run.data.tags["taalm.command"] == "ckl run" and run.data.tags["taalm.method"] == "finetune"
    # resumed (run_id): the same run, running again, its name kept and the tags set again
    log, mlflow = open_run_trackers(tmp_path / "ckl" / "finetune", cfg, run_id=run_id, method="finetune",
                                    tags={"taalm.command": "ckl run", "taalm.resumed": "true"})
    assert mlflow.wait_ready(30) == run_id
    assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"
    log.close()
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "smollm2-taalm-finetune"
    assert run.data.tags["taalm.resumed"] == "true"
