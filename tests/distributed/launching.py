"""Launch 2 gloo ranks on CPU through torchrun (one thread each); a tiny partitioned config."""

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def torchrun(script: str | Path, *args: str, nproc: int = 2, timeout: int = 240, module: bool = False):
    """Run ``script`` (or ``-m module``) on ``nproc`` CPU ranks; returns the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONFAULTHANDLER": "1"}  # a rank that aborts prints every thread's Python stack into the failure
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += (["-m", str(script)] if module else [str(script)]) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise AssertionError(f"torchrun failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


def tiny_overrides(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """A tiny θ/φ config whose parameters really get partitioned (persistence threshold 0)."""
    return [
        "theta.model.tiny.hidden_size=32", "theta.model.tiny.intermediate_size=64", "theta.trainable=full",
        "theta.model.attn_implementation=taalm_eager",
        "phi.model.tiny.hidden_size=32", "phi.model.tiny.intermediate_size=64", "phi.model.tiny.seed=1",
        "phi.trainable=lora", "phi.lora.rank=4", "phi.lora.target_modules=[q_proj,v_proj]",
        f"data.train_file={data_dir / 'train.jsonl'}", f"data.val_file={data_dir / 'val.jsonl'}",
        "data.max_doc_tokens=40",
        "meta.inner=sgd", "meta.inner_lr=0.1", "meta.method=fd",
        "engine.param_persistence_threshold=0",
        f"train.out_dir={out_dir}", "train.docs_per_step=2", "train.docs_per_inner_step=2", "train.lr=1e-3",
        "train.val_every=0", "train.progress=false", "tracking.mlflow=false", *extra,
    ]


def deepspeed_launch(*cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a launch command as a user types it (``deepspeed ... launch/X.sh`` or ``bash launch/X.sh``) with DeepSpeed's
    launcher on its CPU accelerator, 2 gloo processes; asserts it succeeded."""
    bindir = str(Path(sys.executable).parent)  # deepspeed's launcher lives next to this interpreter
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": "1", "NUM_GPUS": "2", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd[:3])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res
