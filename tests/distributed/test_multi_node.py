"""Two nodes on localhost: `NNODES=2 NODE_RANK=0|1 bash launch/meta_train_torchrun.sh` starts one torchrun per "node"
with one process each (LOCAL_RANK 0 on both, RANK 0 and 1). The run equals one node with 2 ranks, writes its run
files once (global rank 0), and a stop on one request + `--resume auto` gives the identical φ."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from launching import ROOT, tiny_overrides, torchrun

pytestmark = pytest.mark.distributed
RECIPE = ["theta.trainable=lora", "theta.lora.rank=4", "theta.lora.target_modules=[q_proj,v_proj,down_proj]",
          "train.docs_per_step=4", "train.docs_per_inner_step=1", "train.docs_per_pass=2", "train.max_steps=3",
          "train.save_every=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list[str], stop_file: Path, timeout: int = 240) -> list[subprocess.CompletedProcess]:
    """Both "nodes" of launch/meta_train_torchrun.sh at once; their results (node 0 first)."""
    port = str(_free_port())
    env = {**os.environ, "NNODES": "2", "NPROC": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TAALM_STOP_FILE": str(stop_file),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen(["bash", "launch/meta_train_torchrun.sh", "taalm_dist/configs/zero3_tiny_cpu.yaml", *args], cwd=ROOT,
                              env={**env, "NODE_RANK": str(node)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _phi(run: Path) -> dict:
    return load_file(str(run / "phi" / "phi.safetensors"))


def test_two_nodes_equal_one_node_and_resume_exactly(toy_data, tmp_path):
    one_node, two_nodes, stop = tmp_path / "one_node", tmp_path / "two_nodes", tmp_path / "stop"
    torchrun("taalm_dist.cli", "meta-train", "--config", "taalm_dist/configs/zero3_tiny_cpu.yaml",
             *tiny_overrides(toy_data, one_node, *RECIPE), module=True)

    stop.write_text("")  # a stop request before the first update: each node's trainer stops after φ update 1
    first = _two_nodes(tiny_overrides(toy_data, two_nodes, *RECIPE), stop)
    # the workers exit 75 (preempted, checkpoint written); torchrun reports any worker's non-zero exit as 1
    assert [r.returncode for r in first] == [1, 1], [r.stderr[-3000:] for r in first]
    assert "exitcode  : 75" in first[0].stderr and "exitcode  : 75" in first[1].stderr, first[0].stderr[-3000:]
    assert stop.read_text().startswith("stopped:") and "after φ update 1" in stop.read_text()  # rank 0 answered
    stop.unlink()
    again = _two_nodes(tiny_overrides(toy_data, two_nodes, *RECIPE), stop)
    assert [r.returncode for r in again] == [0, 0], [r.stderr[-3000:] for r in again]
    assert "resumed from" in again[0].stdout and "step-000001" in again[0].stdout
    assert "resumed from" not in again[1].stdout  # node 1's rank is not rank 0: it prints nothing of the run

    summary = json.loads((two_nodes / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    a, b = _phi(one_node), _phi(two_nodes)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "2 nodes + resume != 1 node, 2 ranks"
    # the run's files are written once (global rank 0), not once per node: one row per step, one checkpoint per step
    steps = [json.loads(x)["step"] for x in (two_nodes / "metrics.jsonl").read_text().splitlines()
             if '"train/objective"' in x]
    assert steps == [1, 2, 3]
    shards = sorted(p.name for p in (two_nodes / "checkpoints" / "step-000003").rglob("*model_states.pt"))
    assert len(shards) == 2, shards  # one ZeRO-3 shard per rank (DeepSpeed names them by global rank)
