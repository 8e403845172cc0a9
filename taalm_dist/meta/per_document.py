"""Per-document inner steps, batched: B documents, each with its own θ'_j, in one pass of θ.

The authors' recipe resets θ for every document: each document's meta-gradient comes from its own inner step.
Run one after another, B documents cost B passes of small matrices. Here θ's LoRA factors are expanded to one
copy per document for the duration of a meta-step (:func:`per_document_lora`): every ``lora_A`` / ``lora_B``
weight ``[out, in]`` becomes ``[B, out, in]`` and document j's rows of the batch go through copy j only. The
frozen base is shared, so each pass of θ is one batched pass over the B documents. Summing the documents'
losses (instead of averaging them), the gradient with respect to copy j is exactly document j's own gradient;
the inner step (SGD, or AdamW: elementwise) then moves each copy as that document's own inner step would, and
the finite differences step along each document's own unit direction. The meta-gradient of row j equals the
one :func:`taalm_dist.meta.meta_gradient` gives for document j alone (tested in float64 ≤ 1e-8).

:class:`PerDocumentView` is the :class:`~taalm_dist.meta.functional.ThetaView` of the expanded model; the
meta-gradient code asks the view how to scale the batch's mean (:meth:`ThetaView.loss_scale`), how to normalise a
direction (:meth:`ThetaView.direction_norm`) and the batch size B of the centring (:meth:`ThetaView.global_batch`).
LoRA θ on one process only (a full-parameter θ would need B copies of the model).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from taalm_dist.losses import PerTokenLossFn
from taalm_dist.meta.functional import ThetaView
from taalm_dist.models.lora import trainable_parameters


class PerDocumentLinear(nn.Module):
    """A LoRA factor with one weight per document: ``x [B, L, in] → x @ weight[b]ᵀ [B, L, out]``.

    Attributes:
        weight: ``[B, out, in]``, document b's copy in row b (float32 like the adapter it replaces).
    """

    def __init__(self, weight: torch.Tensor, docs: int):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().unsqueeze(0).expand(docs, *weight.shape).clone())
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.weight.shape[0]:
            raise ValueError(f"per-document LoRA holds {self.weight.shape[0]} documents' adapters, but the batch has "
                             f"{x.shape[0]} rows: every pass of the meta-step must carry the same documents in order")
        return torch.matmul(x, self.weight.transpose(-1, -2))


class PerDocumentView(ThetaView):
    """θ with one LoRA copy per document (see the module docstring): ``params`` are the ``[B, ...]`` copies."""

    def __init__(self, model: nn.Module, per_token_loss: PerTokenLossFn | None, docs: int):
        super().__init__(model, per_token_loss)
        self.docs = docs

    def loss_scale(self, batch_size: int) -> float:
        """The documents' losses are summed, so copy j's gradient is document j's own."""
        return float(batch_size)

    def direction_norm(self, direction: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B]`` float64: each document's own ‖direction_j‖ over all its copies.

        Each copy's norm is taken in its own dtype (no float64 copy of the direction): a rounding error in the
        norm cancels, since the difference quotient steps by ``1/norm`` and rescales by ``norm``."""
        return torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(d.flatten(1), dim=1).double() for d in direction]), dim=0)

    def step_along(self, at, direction, step: float, norm: torch.Tensor) -> list[torch.Tensor]:
        """``at_j + step · direction_j / ‖direction_j‖`` for every document j (a zero direction stays put)."""
        scale = step / norm.clamp_min(torch.finfo(torch.float64).tiny)
        return [torch.addcmul(a, scale.to(a.dtype).view(-1, *[1] * (d.dim() - 1)), d) for a, d in zip(at, direction)]

    def per_row(self, norm: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return norm.view(-1, 1).to(like.dtype)

    def global_batch(self, local_batch: int) -> int:
        """Each document is its own inner step's whole batch."""
        return 1


@contextlib.contextmanager
def per_document_lora(view: ThetaView, docs: int):
    """For the duration, θ (``view.model``) holds one copy of its LoRA factors per document; yields the
    :class:`PerDocumentView` to pass to :func:`taalm_dist.meta.meta_gradient`. The copies start at θ's current
    adapters; the original adapter modules are put back afterwards, unchanged.

    Raises:
        ValueError: θ has trainable tensors outside LoRA factors (``theta.trainable: full``), or ``docs < 1``.
    """
    if docs < 1:
        raise ValueError(f"docs={docs} must be >= 1")
    model = view.model
    swapped = []
    for module in model.modules():
        for attr in ("lora_A", "lora_B"):
            factors = getattr(module, attr, None)
            if not isinstance(factors, nn.ModuleDict):
                continue
            for key, linear in list(factors.items()):
                if isinstance(linear, nn.Linear) and linear.weight.requires_grad and linear.bias is None:
                    swapped.append((factors, key, linear))
    try:
        for factors, key, linear in swapped:
            factors[key] = PerDocumentLinear(linear.weight, docs)
        outside = [n for n, p in trainable_parameters(model) if not isinstance(_owner(model, n), PerDocumentLinear)]
        if not swapped or outside:
            raise ValueError("per-document inner steps batch θ's LoRA adapters, but θ trains "
                             f"{outside[:3] if outside else 'no LoRA factor'}: use theta.trainable=lora, or run the "
                             "documents one after another (train.docs_per_pass=1)")
        yield PerDocumentView(model, view.fn, docs)
    finally:
        for factors, key, linear in swapped:
            factors[key] = linear


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model
