"""One runtime for every trainer: process group, device, DeepSpeed engines and batch placement.

``meta-train`` and ``ckl run`` (and any later trainer) start a :class:`Runtime` from ``engine.*`` and go
through it for everything that depends on where they run:

- one process or DeepSpeed ZeRO-3 (``engine.backend``; ``auto``: ZeRO-3 when launched with several processes);
- the device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU (``engine.device`` forces one; asking
  for CUDA on a machine without it is a :class:`~taalm_dist.errors.ConfigError`);
- the process-group backend: nccl on CUDA, gloo on the CPU (``engine.dist_backend`` forces one);
- :meth:`Runtime.to_device`: the one function through which every batch reaches θ or φ;
- :meth:`Runtime.place`: a model on the runtime's device (one process; DeepSpeed engines place themselves);
- :meth:`Runtime.initialize`: a DeepSpeed engine (the process group is joined by the runtime, never twice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from taalm_dist.config import EngineConfig
from taalm_dist.engine import distributed as D
from taalm_dist.errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    """The device of ``engine.device``: ``auto`` → ``cuda:LOCAL_RANK`` with CUDA, else ``cpu``.

    Raises:
        ConfigError: ``cuda`` was asked for on a machine where ``torch.cuda.is_available()`` is false.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        raise ConfigError(f"engine.device=cuda but this machine has no usable CUDA device (torch {torch.__version__}, "
                          f"{built}); run on a GPU machine, install a CUDA build of torch, or set engine.device=cpu")
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def process_group_backend(requested: str, device: torch.device) -> str:
    """``engine.dist_backend`` for ``device``: ``auto`` → nccl on CUDA, gloo on the CPU; nccl on the CPU is refused."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError(f"engine.dist_backend=nccl needs CUDA devices, but this run is on {device}: use "
                          "engine.dist_backend=gloo (or auto)")
    return requested


def wants_deepspeed(engine: EngineConfig) -> bool:
    """Whether ``engine.backend`` asks for DeepSpeed ZeRO-3 in this launch (``auto``: launched with > 1 process)."""
    return engine.backend == "deepspeed" or (engine.backend == "auto" and D.env_world_size() > 1)


@dataclass
class Runtime:
    """Where a trainer runs; see the module docstring.

    Attributes:
        distributed: DeepSpeed ZeRO-3 (possibly a group of one) rather than plain PyTorch on one process.
        device: the device of this process's models and batches.
        world: number of processes (1 on one process).
        rank: this process's rank (0 on one process).
    """

    distributed: bool
    device: torch.device
    world: int = 1
    rank: int = 0

    @classmethod
    def start(cls, engine: EngineConfig, command: str = "this command") -> "Runtime":
        """Resolve the backend and the device, join the process group under DeepSpeed, select the CUDA device.

        ``command`` names the verb in messages (e.g. ``"meta-train"``)."""
        distributed = wants_deepspeed(engine)
        if not distributed and D.env_world_size() > 1:
            raise ConfigError(f"engine.backend=single but {command} was launched with {D.env_world_size()} processes: "
                              "they would all write the same run; use engine.backend=auto or deepspeed")
        device = resolve_device(engine.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            # DeepSpeed picks its accelerator once, at import: make it the CPU one for a CPU run
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if not distributed:
            return cls(False, device)
        D.init_process_group(process_group_backend(engine.dist_backend, device))
        return cls(True, device, D.world_size(), D.rank())

    # --------------------------------------------------------------------------------- placement
    def to_device(self, batch: Mapping[str, Any] | torch.Tensor | None):
        """``batch`` (a tensor, or a mapping whose tensor values are moved; other values pass through) on
        :attr:`device`. The one way a batch reaches θ or φ."""
        if batch is None:
            return None
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on :attr:`device` (for one process; a DeepSpeed engine moves its own module). A
        bitsandbytes 4-bit model, loaded onto the device already, refuses ``.to``: its other tensors (e.g.
        adapters) are moved one by one."""
        tensors = [*module.parameters(), *module.buffers()]
        if all(t.device == self.device for t in tensors):
            return module
        if not any(type(t).__name__ == "Params4bit" for t in tensors):
            return module.to(self.device)
        for t in tensors:
            if t.device != self.device:
                t.data = t.data.to(self.device)
        return module

    def check_models(self, **specs) -> None:
        """Refuse model settings this runtime cannot run (``specs``: name → ModelSourceConfig)."""
        for name, spec in specs.items():
            if spec.quantization == "4bit" and self.distributed:
                check_bitsandbytes_shards(f"{name}.model.quantization=4bit")

    # --------------------------------------------------------------------------------- DeepSpeed
    def initialize(self, model: torch.nn.Module, config: dict, *, optimizer=None, model_parameters=None):
        """A DeepSpeed engine for ``model`` with ``config`` (the process group is already joined)."""
        if not self.distributed:
            raise RuntimeError("Runtime.initialize is for DeepSpeed runs (engine.backend deepspeed, or a launch with "
                               "several processes)")
        from taalm_dist.engine.zero3 import import_deepspeed

        deepspeed = import_deepspeed()
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=model_parameters,
                                          config=config, dist_init_required=False)
        from taalm_dist.engine.checkpoint import load_weights_only

        load_weights_only(engine)  # its checkpoints are read without unpickling code
        return engine

    def shutdown(self, together: bool = True) -> None:
        """Leave the process group (``together``: all ranks after a barrier; else this rank at once, after an error
        that may be its own); nothing to do on one process."""
        if self.distributed:
            D.shutdown(together)


BNB_SHARDABLE = (0, 43, 0)
"""The first bitsandbytes whose 4-bit weights can be stored in another dtype (``bnb_4bit_quant_storage``)."""


def check_bitsandbytes_shards(what: str, version: str | None = None) -> None:
    """Refuse QLoRA under DeepSpeed ZeRO-3 where bitsandbytes cannot be sharded: ZeRO-3 partitions a model's
    parameters as tensors of one float dtype, so the packed 4-bit weights must be stored in the model's dtype
    (``bnb_4bit_quant_storage``, set by :func:`taalm_dist.models.loading.load_causal_lm`), which bitsandbytes has
    from 0.43 on. ``version``: the installed bitsandbytes (default: looked up; not installed is refused at load)."""
    from importlib import metadata

    if version is None:
        try:
            version = metadata.version("bitsandbytes")
        except metadata.PackageNotFoundError:
            return
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())
    if parts < BNB_SHARDABLE:
        raise ConfigError(f"{what} under DeepSpeed ZeRO-3 needs bitsandbytes >= 0.43 (its 4-bit weights stored in the "
                          f"model's dtype, so ZeRO-3 can shard them), installed: {version}; pip install -U bitsandbytes, "
                          "or run QLoRA on one process, or load the base in bfloat16 (quantization: none)")

