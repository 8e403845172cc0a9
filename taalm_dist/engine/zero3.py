"""θ and φ under DeepSpeed ZeRO-3, and the sharded θ view the closed-form meta-gradient runs on.

The closed form (docs/design.md §2) needs only forwards, backwards and in-place edits of θ's trainable tensors,
so under ZeRO-3 each rank edits its own partitions (``param.ds_tensor``) and reads its partition of the
rank-averaged gradient. [partition cache note] After a forward+backward, ZeRO-3 keeps gathered copies of
parameters; an in-place edit of ``ds_tensor`` is silently ignored by later forwards unless
``engine.empty_partition_cache()`` runs first — without it the meta-gradient is all zeros.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from taalm_dist.engine import distributed as D
from taalm_dist.losses import PerTokenLossFn, eager_per_token_nll
from taalm_dist.meta.functional import ThetaView


def import_deepspeed():
    """Import DeepSpeed for this machine: CPU accelerator without CUDA, and no JIT build of the
    shared-memory inference all-reduce op (70–140 s on a fresh cache; unused by training)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import transformers.models.llama.modeling_llama  # noqa: F401  (zero.Init needs model modules imported first)
    import deepspeed
    import deepspeed.ops

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def partition_while_loading(ds_config: dict):
    """Make transformers build/load models already partitioned (``zero.Init``), so no rank ever holds a
    whole θ or φ. Keep the returned object alive while models are created."""
    import_deepspeed()
    from transformers.integrations import HfDeepSpeedConfig

    # only what zero.Init reads: the batch arithmetic would be checked against a world size DeepSpeed's
    # own comm layer does not know yet (we join the process group through torch.distributed)
    init_config = {k: v for k, v in ds_config.items() if k in ("zero_optimization", "bf16", "fp16")}
    init_config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    return HfDeepSpeedConfig(init_config)


def build_theta_engine(rt, theta: torch.nn.Module, ds_config: dict):
    """Shard θ (already made trainable) under ZeRO-3 through the runtime ``rt``; its optimizer is never stepped."""
    params = [p for p in theta.parameters() if p.requires_grad]
    return rt.initialize(theta, ds_config, optimizer=torch.optim.SGD(params, lr=0.0))


def build_phi_engine(rt, phi: torch.nn.Module, ds_config: dict):
    """Shard φ under ZeRO-3 through the runtime ``rt``, with the AdamW optimizer of its DeepSpeed config."""
    return rt.initialize(phi, ds_config, model_parameters=[p for p in phi.parameters() if p.requires_grad])


class Zero3ThetaView(ThetaView):
    """θ's trainable tensors as this rank's ZeRO-3 partitions; gradients are the partitions of the
    gradient averaged over ranks (each rank's loss is the mean over its own documents)."""

    def __init__(self, engine, per_token_loss: PerTokenLossFn | None = None):
        self.engine = engine
        self.model = engine.module
        self.fn = per_token_loss or eager_per_token_nll
        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("θ has no trainable parameters under ZeRO-3")
        self.names = [n for n, _ in named]
        self._full = [p for _, p in named]
        self.params = [p.ds_tensor for p in self._full]
        r = D.rank()
        # the last rank's partition is padded; padding must not enter norms or directions
        self._real = [max(0, min(t.numel(), p.ds_numel - r * t.numel())) for p, t in zip(self._full, self.params)]

    def loss(self, batch):
        return self.fn(self.engine.module, batch)

    def loss_at(self, tensors, batch):
        raise NotImplementedError("a sharded θ has no functional form: use method='fd'")

    @property
    def supports_functional(self) -> bool:
        return False

    def grad(self, scalar: torch.Tensor) -> list[torch.Tensor]:
        from deepspeed.utils import safe_get_local_grad

        self.engine.optimizer.zero_grad()
        self.engine.backward(scalar)
        grads = []
        for p, t, real in zip(self._full, self.params, self._real):
            g = safe_get_local_grad(p)
            g = torch.zeros_like(t) if g is None else g.detach().clone().view_as(t).to(t.dtype)
            g[real:] = 0
            grads.append(g)
        self.engine.optimizer.zero_grad()
        return grads

    def sync(self) -> None:
        self.engine.empty_partition_cache()  # [partition cache note]

    def gathered(self, params):
        """ZeRO-3's gather of ``params`` for reading (every rank takes part; released on exit)."""
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)

    @torch.no_grad()
    def assign(self, tensors: Sequence[torch.Tensor]) -> None:
        super().assign(tensors)
        self.sync()

    def global_sq_norm(self, tensors: Sequence[torch.Tensor]) -> float:
        local = sum(float(t[:real].double().pow(2).sum()) for t, real in zip(tensors, self._real))
        return D.all_reduce_sum([local])[0]

    def global_batch(self, local_batch: int) -> int:
        return local_batch * D.world_size()


def local_numel(engine) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model) — to check that sharding happened."""
    params = list(engine.module.parameters())
    return sum(p.ds_tensor.numel() for p in params), sum(p.ds_numel for p in params)


def gathered_phi_state(engine) -> dict[str, torch.Tensor]:
    """φ's trainable tensors gathered in full (every rank takes part; use rank 0's copy)."""
    import deepspeed

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {n: p.detach().clone().cpu().contiguous() for n, p in named}
