"""Helpers to evaluate θ's per-token loss at given values of its trainable tensors."""

from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from taalm_dist.losses import PerTokenLossFn, eager_per_token_nll
from taalm_dist.models.lora import trainable_parameters


class _PerTokenLossModule(nn.Module):
    """Module view of ``fn(model, batch)`` so ``torch.func.functional_call`` can swap θ's tensors."""

    def __init__(self, model: nn.Module, fn: PerTokenLossFn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, input_ids, attention_mask, **extra):
        return self.fn(self.model, {"input_ids": input_ids, "attention_mask": attention_mask, **extra})


class ThetaView:
    """θ's trainable tensors plus a per-token loss: in-place and functional evaluation.

    Attributes:
        names: dotted names of the trainable parameters.
        params: the parameters themselves (edited in place by the closed-form path).
    """

    def __init__(self, model: nn.Module, per_token_loss: PerTokenLossFn | None = None):
        self.model = model
        self.fn = per_token_loss or eager_per_token_nll
        named = trainable_parameters(model)
        if not named:
            raise ValueError("θ has no trainable parameters (requires_grad): add LoRA or use trainable: full")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._module = _PerTokenLossModule(model, self.fn)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, L]`` per-token NLL at the current (in-place) values."""
        return self.fn(self.model, batch)

    def loss_at(self, tensors: Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, L]`` per-token NLL with the trainable tensors replaced by ``tensors`` (differentiable)."""
        params = {"model." + n: t for n, t in zip(self.names, tensors)}
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        return torch.func.functional_call(self._module, params, args=(), kwargs=kwargs, strict=False)

    def snapshot(self) -> list[torch.Tensor]:
        """Detached copies of the current trainable tensors."""
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def assign(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy ``tensors`` into the trainable parameters in place."""
        for p, t in zip(self.params, tensors):
            p.copy_(t)

    def grad(self, scalar: torch.Tensor) -> list[torch.Tensor]:
        """First-order gradient of ``scalar`` w.r.t. the trainable parameters (no graph kept)."""
        return list(torch.autograd.grad(scalar, self.params, allow_unused=True, materialize_grads=True))

    # The hooks below make a sharded view (taalm_dist.engine.zero3.Zero3ThetaView) a drop-in replacement:
    # there ``params`` are each rank's partitions and these reduce over ranks.

    def sync(self) -> None:
        """Called after ``params`` were edited in place; nothing to do for local tensors."""

    def gathered(self, params: Sequence[torch.Tensor]):
        """Context in which ``params`` (parameters of ``model``) hold their whole values for reading; they
        always do here (a sharded view gathers them)."""
        return contextlib.nullcontext()

    def global_sq_norm(self, tensors: Sequence[torch.Tensor]) -> float:
        """Σ‖t‖² over all of θ's trainable tensors (all ranks, for a sharded view)."""
        return sum(float(t.double().pow(2).sum()) for t in tensors)

    def global_batch(self, local_batch: int) -> int:
        """Number of documents in the inner step's batch (all ranks, for a sharded view)."""
        return local_batch

    # How the meta-gradient treats the batch: one θ' for all its documents here; one per document in
    # taalm_dist.meta.per_document.PerDocumentView.

    def loss_scale(self, batch_size: int) -> float:
        """Factor on the batch's mean loss before differentiating: 1 (one θ' learns the whole batch)."""
        return 1.0

    def direction_norm(self, direction: Sequence[torch.Tensor]) -> torch.Tensor:
        """‖direction‖ over all of θ's trainable tensors (all ranks): a 0-d float64 tensor."""
        return torch.tensor(math.sqrt(self.global_sq_norm(direction)), dtype=torch.float64)

    @torch.no_grad()
    def assign_step(self, at: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], step: float,
                    norm: torch.Tensor) -> None:
        """In place: θ's trainable tensors ← ``at + step · direction / norm`` (``norm`` from :meth:`direction_norm`,
        non-zero), written straight into the parameters (one pass per tensor, no temporary copy of θ), then
        :meth:`sync`."""
        for p, a, d in zip(self.params, at, direction):
            torch.add(a, d.to(a.dtype), alpha=step / float(norm), out=p.detach())
        self.sync()

    def per_row(self, norm: torch.Tensor, like: torch.Tensor) -> float:
        """``norm`` shaped to scale the per-token ``[B, L]`` tensor ``like`` (one number here)."""
        return float(norm)

    @property
    def supports_functional(self) -> bool:
        """Whether ``loss_at`` (functional_call: jvp, double backward) works on this view."""
        return True


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Deterministic for the duration: the meta-gradient is exact only if every forward of θ computes
    the same function. Every dropout is switched off (``nn.Dropout`` modules and attention modules'
    ``attention_dropout``), but the model stays in training mode so that activation checkpointing,
    which HF models only apply in training mode, keeps working."""
    was = model.training
    model.train()
    saved = []
    for m in model.modules():
        if isinstance(m, nn.Dropout) and m.training:
            saved.append((m, "training", True))
            m.training = False
        if isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout:
            saved.append((m, "attention_dropout", m.attention_dropout))
            m.attention_dropout = 0.0
    try:
        yield
    finally:
        for m, name, value in saved:
            setattr(m, name, value)
        model.train(was)
