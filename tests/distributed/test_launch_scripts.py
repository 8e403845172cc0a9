"""The launch scripts as users type them: `deepspeed launch/X.sh CONFIG ...` and `bash launch/X.sh CONFIG ...`
(DeepSpeed's launcher on its CPU accelerator, 2 gloo processes)."""

import json
import subprocess

import pytest
import yaml

from launching import ROOT, deepspeed_launch as _launch, tiny_overrides
from taalm_dist.data import toy_rows, write_pairs
from taalm_dist.launch import command_line, strip_local_rank

pytestmark = pytest.mark.distributed


# `bash launch/meta_train.sh` runs `deepspeed ... launch/meta_train.sh` (the bash part, then the Python part on every
# rank), so the default run covers both forms in one launch; the direct form is in the slow set.
@pytest.mark.parametrize("how", [pytest.param("deepspeed", marks=pytest.mark.slow), "bash"])
def test_meta_train_script_runs_two_processes(toy_data, tmp_path, how):
    args = ["taalm_dist/configs/zero3_tiny_cpu.yaml", *tiny_overrides(toy_data, tmp_path / "run", "train.max_steps=2")]
    head = ["deepspeed", "--num_gpus", "2", "launch/meta_train.sh"] if how == "deepspeed" else ["bash", "launch/meta_train.sh"]
    res = _launch(*head, *args)
    assert "done: 2 φ updates" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    # (that the script adds --resume auto is test_launcher_arguments_become_the_taalm_command's)


# the default run's 2-rank θ updates and evaluation are covered by the learn script's test (the same CklRunner code)
@pytest.mark.slow
@pytest.mark.parametrize("how", ["deepspeed", "bash"])
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


def test_learn_script_runs_two_processes_like_one_and_resumes(tmp_path):
    """`deepspeed launch/learn.sh`: θ as a 2-rank ZeRO-3 engine learns the windows; its epoch checkpoint resumes
    (a second launch with more epochs) and the exported adapter equals a one-process run's."""
    from safetensors.torch import load_file

    from taalm_dist.config import load_config
    from taalm_dist.programs.learn import run_learn

    docs, qa = tmp_path / "docs.jsonl", tmp_path / "qa.jsonl"
    rows = toy_rows(8, seed=0, filler_words=6)
    write_pairs(rows, docs)
    qa.write_text("".join(json.dumps({"question": r["task_descriptive"][: -len(r["object"])], "answer": r["object"]})
                          + "\n" for r in rows[:5]))  # 5 questions: ranks score 3 and 2
    config = tmp_path / "learn.yaml"
    config.write_text(yaml.safe_dump({
        "theta": {"model": {"tiny": {"hidden_size": 32, "intermediate_size": 64}}, "trainable": "lora",
                  "lora": {"rank": 4}},
        "engine": {"param_persistence_threshold": 0},
        "learn": {"batch_size": 4, "lr": 1e-3, "progress": False, "text_field": "evidence"},
        "tracking": {"mlflow": False}}))
    common = ["--model", "tiny", "--phi", "none", "--docs", str(docs), "--eval-qa", str(qa), "--out", str(tmp_path / "run")]
    _launch("deepspeed", "--num_gpus", "2", "launch/learn.sh", str(config), *common, "learn.epochs=1")
    assert (tmp_path / "run" / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    res = _launch("bash", "launch/learn.sh", str(config), *common, "learn.epochs=2")  # --resume auto: epoch 2 only
    assert "resuming" in res.stdout and "after epoch 1" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["setup"]["processes"] == 2 and summary["updates"] == 4
    one_learner, one_summary = run_learn(load_config(config, [f"learn.docs={docs}", f"learn.eval_qa={qa}",
                                                              f"learn.out_dir={tmp_path / 'one'}", "learn.epochs=2"]))
    assert [r["qa_acc"] for r in summary["epochs"]] == pytest.approx([r["qa_acc"] for r in one_summary["epochs"]])
    two_procs = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    one_proc = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    assert sorted(two_procs) == sorted(one_proc) and len(one_proc) > 0
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["losses"] == pytest.approx(one_learner.losses, rel=1e-5)  # same batches, same mean loss per update
    # AdamW's first updates are ≈ lr·sign(g), so float-level gradient differences move near-zero coordinates
    # visibly; the learned part (lora_B starts at 0) agrees to a few per cent of its size
    for name in (n for n in one_proc if "lora_B" in n):
        diff = (two_procs[name] - one_proc[name]).norm() / one_proc[name].norm()
        assert diff < 0.05, (name, float(diff))


def test_launcher_arguments_become_the_taalm_command():
    assert strip_local_rank(["--local_rank=3", "c.yaml", "a.b=1"]) == (["c.yaml", "a.b=1"], 3)
    assert strip_local_rank(["c.yaml", "--local_rank", "1"]) == (["c.yaml"], 1)
    assert command_line("meta-train", ["--local_rank=0", "c.yaml", "train.max_steps=2"]) == [
        "meta-train", "--config", "c.yaml", "--resume", "auto", "train.max_steps=2"]
    assert command_line("ckl-run", ["c.yaml", "--method", "taalm"]) == ["ckl", "run", "--config", "c.yaml", "--resume", "auto",
                                                                   "--method", "taalm"]
    assert command_line("learn", ["c.yaml", "--phi", "none"]) == ["learn", "--config", "c.yaml", "--resume", "auto",
                                                                  "--phi", "none"]
    assert command_line("twiki-run", ["c.yaml", "--data-dir", "d"]) == ["twiki", "run", "--config", "c.yaml", "--resume",
                                                                       "auto", "--data-dir", "d"]
    with pytest.raises(SystemExit, match="usage: deepspeed launch/meta_train.sh CONFIG.yaml"):
        command_line("meta-train", ["--local_rank=0"])


def test_scripts_are_valid_bash_and_python():
    for script in ("launch/meta_train.sh", "launch/ckl_run.sh", "launch/learn.sh", "launch/twiki_run.sh"):
        text = (ROOT / script).read_text()
        compile(text, script, "exec")
        assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0
        res = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 2 and "usage:" in res.stderr
