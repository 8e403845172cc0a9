"""launch/slurm/meta_train.sbatch without SLURM: srun and scontrol are stubs that record what the script asks of them;
the stub srun plays a trainer that honours $TAALM_STOP_FILE the way taalm_dist.engine.preemption does."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SRUN = """#!/usr/bin/env bash
echo "$@" > "$LOG/srun_args"
for _ in $(seq 200); do  # a trainer: stops once the stop file appears, answering in it
  if [[ -f "$TAALM_STOP_FILE" ]]; then echo "stopped: after φ update 3" > "$TAALM_STOP_FILE"; exit 1; fi
  [[ -n "${FINISH_AFTER:-}" ]] && { sleep "$FINISH_AFTER"; exit "${FINISH_CODE:-0}"; }
  sleep 0.05
done
exit 3
"""
SCONTROL = """#!/usr/bin/env bash
if [[ "$1" == show ]]; then echo node-a; echo node-b; else echo "$@" >> "$LOG/scontrol_calls"; fi
"""


def _run_script(tmp_path, env_extra=None, signal_after=None):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(parents=True)
    log.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LOG": str(log), "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_SUBMIT_DIR": str(tmp_path),
           **(env_extra or {})}
    stale = tmp_path / ".taalm-stop-42"
    stale.write_text("stopped: by the previous allocation\n")  # a requeued job keeps its id
    proc = subprocess.Popen(["bash", str(ROOT / "launch/slurm/meta_train.sbatch"), "cfg.yaml", "train.lr=1e-4"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if signal_after is not None:
        deadline = time.monotonic() + 30
        while not (log / "srun_args").exists():  # the trainer runs (SLURM signals 10 minutes before the end)
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@600` delivers
    out, err = proc.communicate(timeout=60)
    calls = (log / "scontrol_calls").read_text() if (log / "scontrol_calls").exists() else ""
    return proc.returncode, out, calls, (log / "srun_args").read_text()


def test_usr1_stops_the_trainer_through_the_stop_file_and_requeues(tmp_path):
    code, out, calls, args = _run_script(tmp_path, signal_after=0.3)
    assert code == 0, out
    assert "requeue 42" in calls and "stopped: after φ update 3" in out
    assert "meta-train --config cfg.yaml --resume auto train.lr=1e-4" in args
    assert not (tmp_path / ".taalm-stop-42").exists()


def test_a_run_that_ends_or_fails_on_its_own_is_not_requeued(tmp_path):
    code, _, calls, _ = _run_script(tmp_path / "done", {"FINISH_AFTER": "0.2", "FINISH_CODE": "0"})
    assert code == 0 and "requeue" not in calls
    code, _, calls, _ = _run_script(tmp_path / "failed", {"FINISH_AFTER": "0.2", "FINISH_CODE": "2"})
    assert code == 2 and "requeue" not in calls


def test_multi_node_form_starts_one_torchrun_per_node_with_a_rendezvous_on_the_head_node(tmp_path):
    code, _, _, args = _run_script(tmp_path, env_extra={"FINISH_AFTER": "0", "SLURM_GPUS_ON_NODE": "4"})
    assert code == 0
    assert "python -m torch.distributed.run --nnodes 2 --nproc_per_node 4" in args  # SLURM_NNODES, GPUs of a node
    # every node's torchrun meets at the first node of the allocation, under the job's id (a requeue keeps it)
    assert "--rdzv_backend c10d --rdzv_endpoint node-a:29500 --rdzv_id 42" in args
    assert "-m taalm_dist.cli meta-train --config cfg.yaml --resume auto train.lr=1e-4" in args
