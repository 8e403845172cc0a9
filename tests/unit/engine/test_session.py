"""The run lifecycle every program shares (engine/session.py), on one process."""

import json
import random

import pytest
import yaml

from taalm_dist.config import CklRunConfig, EngineConfig, TrackingConfig, to_dict
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine.preemption import STOP_FILE_ENV, Preempted
from taalm_dist.engine.run_dir import directory_identity
from taalm_dist.engine.session import RunSession

CHECKS = dict(overwrite=False, resume=None, settings={"ckl.lr": 1e-3}, data_sha256={}, defaults={"ckl.lr": 1e-4})


def _session(tmp_path, command="ckl run"):
    s = RunSession(command)
    s.start(EngineConfig(backend="single", device="cpu"))
    s.open(tmp_path / "run", **CHECKS)
    return s


def test_a_run_that_fails_while_building_leaves_no_directory(tmp_path):
    s = _session(tmp_path)
    assert s.out.is_dir() and s.resume_from is None
    with pytest.raises(RuntimeError, match="model would not load"):
        with s.building():
            raise RuntimeError("model would not load")
    assert not (tmp_path / "run").exists()
    s.close("FAILED")


def test_trackers_config_and_checkpoints_of_a_session(tmp_path):
    s = _session(tmp_path)
    cfg = CklRunConfig(tracking=TrackingConfig(mlflow=False))
    assert s.open_trackers(cfg, metrics_step=0, params={"ckl.to_learn_rows": 3}, method="oracle") is True
    saved = yaml.safe_load((s.out / "config.yaml").read_text())
    assert saved == to_dict(cfg) and "train" not in saved and "phi" not in saved  # the program's sections only
    s.log.log_metrics({"loss": 1.0}, step=1)
    rng = random.Random(5)
    rng.random()
    path = s.checkpoint(1, lambda tmp: (tmp / "model.bin").write_bytes(b"x"), {"epoch": 1}, keep=2, rng=rng)
    state = ckpt.read_state(path)
    assert state == {"epoch": 1, "mlflow_run_id": None, "run_dir": directory_identity(s.out)}
    assert (path / "model.bin").is_file() and (path / "integrity.json").is_file()
    expected, restored = rng.random(), random.Random()
    ckpt.load_rng(path, restored)
    assert restored.random() == expected
    s.close()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [1.0]
    params = next(r["params"] for r in rows if r.get("event") == "params")
    assert set(params) == {"ckl", "theta", "data", "engine", "loss", "tracking", "ckl.to_learn_rows"}


def test_a_stop_request_stops_with_an_answer_in_the_stop_file(tmp_path, monkeypatch):
    stop_file = tmp_path / "stop"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop_file))
    s = _session(tmp_path)
    with s.stop_signals(then="finishing"):
        assert not s.stop_requested()
        stop_file.write_text("please")
        assert s.stop_requested()
        with pytest.raises(Preempted, match="stopped after epoch 1"):
            s.stop("stopped after epoch 1")
    assert stop_file.read_text() == "stopped: stopped after epoch 1\n"
    s.close("KILLED")


@pytest.mark.parametrize("how", ["copy", "move"])
def test_a_copied_run_directory_continues_in_a_new_mlflow_run_and_a_moved_one_in_its_own(tmp_path, monkeypatch, how,
                                                                                        capsys):
    # before (second probe): four copies of a run directory resumed into the original MLflow run (four
    # train.objective values at one step in one run)
    import shutil

    import taalm_dist.engine.session as session_module

    s = _session(tmp_path)
    s.checkpoint(1, lambda tmp: None, {"epoch": 1, "settings": CHECKS["settings"], "data_sha256": {}}, keep=2)
    state = ckpt.read_state(ckpt.complete_checkpoints(s.out)[-1])
    state["mlflow_run_id"] = "run-of-the-original"  # as a tracked run records it
    (ckpt.complete_checkpoints(s.out)[-1] / ckpt.STATE).write_text(json.dumps(state))
    s.close()
    (ckpt.complete_checkpoints(tmp_path / "run")[-1] / "integrity.json").unlink()
    other = tmp_path / "other"
    (shutil.copytree if how == "copy" else shutil.move)(tmp_path / "run", other)
    opened = {}

    def fake_trackers(out, tracking, run_id, *, tags, method):
        opened.update(run_id=run_id, tags=tags)
        return session_module.MultiTracker(), None

    monkeypatch.setattr(session_module, "open_run_trackers", fake_trackers)
    resumed = RunSession("ckl run")
    resumed.start(EngineConfig(backend="single", device="cpu"))
    resumed.open(other, **{**CHECKS, "resume": "auto"})
    resumed.open_trackers(CklRunConfig(tracking=TrackingConfig(mlflow=False)), metrics_step=1)
    if how == "copy":
        assert opened["run_id"] is None and opened["tags"]["taalm.copied_from_run"] == "run-of-the-original"
        assert "is a copy of the run directory" in capsys.readouterr().out
    else:
        assert opened["run_id"] == "run-of-the-original" and "taalm.copied_from_run" not in opened["tags"]
    resumed.close()
