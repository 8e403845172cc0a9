"""Exact resume across processes under ZeRO-3, crash-safe checkpoints, and the torchrun launch script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from launching import ROOT, tiny_overrides, torchrun

pytestmark = pytest.mark.distributed


def _meta_train(toy_data, out_dir, *extra, flags=()):
    args = ["meta-train", "--config", "taalm_dist/configs/zero3_tiny_cpu.yaml", *flags, *tiny_overrides(toy_data, out_dir, *extra)]
    return torchrun("taalm_dist.cli", *args, module=True)


def _losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/objective"] for r in rows if "train/objective" in r}


def test_exact_resume_after_stop_ignores_half_written_checkpoints(toy_data, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _meta_train(toy_data, whole, "train.max_steps=6")
    _meta_train(toy_data, split, "train.max_steps=3")
    # a save killed half-way: a renamed directory without COMPLETE and a leftover temporary one
    (split / "checkpoints" / "step-000005" / "phi").mkdir(parents=True)
    (split / "checkpoints" / ".tmp-step-000004").mkdir()
    res = _meta_train(toy_data, split, "train.max_steps=6", flags=("--resume", "auto"))
    assert "resumed from" in res.stdout and "step-000003" in res.stdout
    a, b = _losses(whole), _losses(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(a[s] == b[s] for s in a), (a, b)
    pa, pb = load_file(str(whole / "phi" / "phi.safetensors")), load_file(str(split / "phi" / "phi.safetensors"))
    assert pa.keys() == pb.keys() and all((pa[k] == pb[k]).all() for k in pa)
    assert (split / "checkpoints" / "latest").read_text().strip() == "step-000006"


def test_torchrun_launch_script_runs_two_processes(toy_data, tmp_path):
    env = {**os.environ, "NPROC": "2", "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(ROOT)}
    args = tiny_overrides(toy_data, tmp_path / "run", "train.max_steps=2")
    res = subprocess.run(["bash", "launch/meta_train_torchrun.sh", "taalm_dist/configs/zero3_tiny_cpu.yaml", *args],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "done: 2 φ updates" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2


@pytest.mark.slow
def test_a_crafted_zero3_state_file_is_refused_not_executed(toy_data, tmp_path):
    # before: DeepSpeed's checkpoint engine unpickled φ's ZeRO-3 state with weights_only=False, so a crafted
    # *_optim_states.pt ran its code on resume
    import pickle

    out, marker = tmp_path / "run", tmp_path / "ran"
    _meta_train(toy_data, out, "train.max_steps=1")

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    [target] = (out / "checkpoints" / "step-000001").rglob("zero_pp_rank_0_mp_rank_00_optim_states.pt")
    target.write_bytes(pickle.dumps({"optimizer_state_dict": Exploit()}))
    from taalm_dist import integrity

    integrity.write_record(out / "checkpoints" / "step-000001")  # records rewritten too: the loader itself refuses
    with pytest.raises(AssertionError, match="could run code") as e:
        _meta_train(toy_data, out, "train.max_steps=2", flags=("--resume", "auto"))
    assert "taalm: error:" in str(e.value)  # the one-line refusal of the CLI, on the rank that read the file
    assert not marker.exists()
