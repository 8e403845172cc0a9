"""Process-group helpers: rank/world from the launcher's environment, reductions all ranks agree on.

Works with torchrun, the deepspeed launcher and SLURM (srun sets SLURM_* and our sbatch maps them to
RANK/WORLD_SIZE). With one process nothing here touches torch.distributed.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """WORLD_SIZE from the launcher (1 when not launched as a group)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(backend: str = "auto") -> None:
    """Join the process group (idempotent). Launched by torchrun / the deepspeed launcher it joins their group;
    a single process that was not launched (``engine.backend: deepspeed`` on one device) forms a group of one
    on a free local port, which DeepSpeed needs.

    ``backend``: ``gloo``, ``nccl`` or ``auto`` (nccl with CUDA, gloo otherwise).
    """
    if dist.is_available() and dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:  # not launched: a group of one
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                           "WORLD_SIZE": "1"})
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (the launcher's RANK before the group is joined or after it is left)."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the only rank that prints, shows progress and logs."""
    return rank() == 0


def _reduce(values: list[float], op) -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op)
    return t.cpu().tolist()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks (identity with one process)."""
    return _reduce(values, dist.ReduceOp.SUM if is_distributed() else None)


def all_reduce_max(values: list[float]) -> list[float]:
    """Elementwise maximum over ranks (identity with one process)."""
    return _reduce(values, dist.ReduceOp.MAX if is_distributed() else None)


def all_reduce_mean(values: list[float]) -> list[float]:
    """Elementwise mean over ranks."""
    n = world_size()
    return [v / n for v in all_reduce_sum(values)]


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (a decision all ranks take together)."""
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


_left_process_group = False


def shutdown(together: bool = True) -> None:
    """Leave the process group: with ``together``, after a barrier (all ranks end the run together; exiting with it
    open can abort a rank); without, at once (this rank failed alone: waiting for the others could hang, and its
    exit makes the launcher stop them)."""
    global _left_process_group
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
        _left_process_group = True


def left_process_group() -> bool:
    """Whether this process ran with a process group and left it (:func:`shutdown`): the command line then exits
    without the interpreter's teardown (:func:`taalm_dist.cli.exit_process`)."""
    return _left_process_group


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
