"""The run lifecycle every program shares (engine/session.py), on one process."""

import json
import random

import pytest
import yaml

from taalm_dist.config import CklRunConfig, EngineConfig, TrackingConfig, to_dict
from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine.preemption import STOP_FILE_ENV, Preempted
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
    assert ckpt.read_state(path) == {"epoch": 1, "mlflow_run_id": None} and (path / "model.bin").is_file()
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
