"""The launch scripts as users type them: `deepspeed launch/X.sh CONFIG ...` and `bash launch/X.sh CONFIG ...`
(DeepSpeed's launcher on its CPU accelerator, 2 gloo processes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launching import ROOT, tiny_overrides
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.launch import command_line, strip_local_rank

pytestmark = pytest.mark.distributed


def _launch(*cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)  # deepspeed's launcher lives next to this interpreter
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": "1", "NUM_GPUS": "2", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd[:3])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


# `bash launch/meta_train.sh` runs `deepspeed ... launch/meta_train.sh` (the bash part, then the Python part on every
# rank), so the default run covers both forms in one launch; the direct form is in the slow set.
@pytest.mark.parametrize("how", [pytest.param("deepspeed", marks=pytest.mark.slow), "bash"])
def test_meta_train_script_runs_two_processes(toy_data, tmp_path, how):
    args = ["configs/zero3_tiny_cpu.yaml", *tiny_overrides(toy_data, tmp_path / "run", "train.max_steps=2")]
    head = ["deepspeed", "--num_gpus", "2", "launch/meta_train.sh"] if how == "deepspeed" else ["bash", "launch/meta_train.sh"]
    res = _launch(*head, *args)
    assert "done: 2 φ updates" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    # (that the script adds --resume auto is test_launcher_arguments_become_the_taalm_command's)


@pytest.mark.parametrize("how", ["deepspeed", pytest.param("bash", marks=pytest.mark.slow)])
def test_ckl_run_script_runs_two_processes(tmp_path, how):
    data = tmp_path / "ckl"
    write_pairs(toy_rows(6, seed=0, filler_words=6), data / "to_learn.jsonl")
    write_pairs(toy_rows(4, seed=1, filler_words=6, entity_offset=50), data / "not_to_forget.jsonl")
    config = tmp_path / "ckl.yaml"
    config.write_text(yaml.safe_dump({
        "theta": {"model": {"tiny": {"hidden_size": 32, "intermediate_size": 64}}, "trainable": "lora",
                  "lora": {"rank": 4}},
        "engine": {"param_persistence_threshold": 0},
        "ckl": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "progress": False}, "tracking": {"mlflow": False}}))
    head = ["deepspeed", "--num_gpus", "2", "launch/ckl_run.sh"] if how == "deepspeed" else ["bash", "launch/ckl_run.sh"]
    _launch(*head, str(config), "--method", "finetune", "--data-dir", str(data), "--out", str(tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["setup"]["processes"] == 2 and [r["epoch"] for r in metrics["epochs"]] == [0, 1]


def test_launcher_arguments_become_the_taalm_command():
    assert strip_local_rank(["--local_rank=3", "c.yaml", "a.b=1"]) == (["c.yaml", "a.b=1"], 3)
    assert strip_local_rank(["c.yaml", "--local_rank", "1"]) == (["c.yaml"], 1)
    assert command_line("meta-train", ["--local_rank=0", "c.yaml", "train.max_steps=2"]) == [
        "meta-train", "--config", "c.yaml", "--resume", "auto", "train.max_steps=2"]
    assert command_line("ckl-run", ["c.yaml", "--method", "taalm"]) == ["ckl", "run", "--config", "c.yaml", "--method", "taalm"]
    with pytest.raises(SystemExit, match="usage: deepspeed launch/meta_train.sh CONFIG.yaml"):
        command_line("meta-train", ["--local_rank=0"])


def test_scripts_are_valid_bash_and_python():
    for script in ("launch/meta_train.sh", "launch/ckl_run.sh"):
        text = (ROOT / script).read_text()
        compile(text, script, "exec")
        assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0
        res = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 2 and "usage:" in res.stderr
