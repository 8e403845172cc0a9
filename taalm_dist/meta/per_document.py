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
LoRA θ only (a full-parameter θ would need B copies of the model). Under ZeRO-3 each rank expands its own documents:
the LoRA factors are gathered whole once per pass (they are small) into the per-document copies, which are plain
tensors of that rank, while the frozen base stays partitioned and is gathered layer by layer by ZeRO-3's hooks as in
any forward; the copies' gradients are the rank's own documents', so no reduction is needed.

While the copies are in place, each LoRA layer computes its output as one ``baddbmm``:
``base(x) + scaling · (x @ A_bᵀ) @ B_bᵀ`` (:func:`batched_lora_forward`) instead of peft's separate product, scaling
and sum, which pass over the ``[B, L, out]`` output three times more in the forward and once more in the backward
(on the demo's config they were ~6 % of a φ update's time on the CPU).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from taalm_dist.losses import PerTokenLossFn
from taalm_dist.meta.functional import ThetaView
from taalm_dist.models.lora import trainable_parameters
from taalm_dist.models.precision import replaced_forwards


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
        _check_docs(x, self.weight.shape[0])
        return torch.matmul(x, self.weight.transpose(-1, -2))


def _check_docs(x: torch.Tensor, docs: int) -> None:
    if x.shape[0] != docs:
        raise ValueError(f"per-document LoRA holds {docs} documents' adapters, but the batch has {x.shape[0]} rows: "
                         "every pass of the meta-step must carry the same documents in order")


def batched_lora_forward(layer: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward of a peft LoRA ``Linear`` whose factors are :class:`PerDocumentLinear`: for ``x [B, L, in]``,
    ``base(x) + Σ_adapters scaling · (dropout(x) @ A_bᵀ) @ B_bᵀ`` with the last product and the sum fused in one
    ``torch.baddbmm`` (the same value as peft's ``result + lora_B(lora_A(dropout(x))) * scaling`` up to the last
    bit). Cases this does not cover (adapters disabled or merged, a LoRA variant such as DoRA, mixed adapter
    batches, ``x`` not 3-D) run peft's own forward."""
    per_doc = [a for a in layer.active_adapters
               if a in layer.lora_A.keys() and isinstance(layer.lora_A[a], PerDocumentLinear)]
    plain = (x.dim() != 3 or layer.disable_adapters or layer.merged or "adapter_names" in kwargs or not per_doc
             or any(a in getattr(layer, "lora_variant", {}) for a in per_doc))
    if plain:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    for name in per_doc:
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight  # [B, r, in], [B, out, r]
        _check_docs(x, a.shape[0])
        xa = layer.lora_dropout[name](layer._cast_input_dtype(x, a.dtype))
        result = torch.baddbmm(result.to(a.dtype), torch.bmm(xa, a.transpose(1, 2)), b.transpose(1, 2),
                               alpha=layer.scaling[name])
    return result.to(dtype)


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

    @torch.no_grad()
    def assign_step(self, at, direction, step: float, norm: torch.Tensor) -> None:
        """In place: copy j ← ``at_j + step · direction_j / ‖direction_j‖`` for every document j (a zero direction
        stays put)."""
        scale = step / norm.clamp_min(torch.finfo(torch.float64).tiny)
        for p, a, d in zip(self.params, at, direction):
            torch.addcmul(a, scale.to(a.dtype).view(-1, *[1] * (d.dim() - 1)), d, out=p.detach())
        self.sync()

    def per_row(self, norm: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return norm.view(-1, 1).to(like.dtype)

    def global_batch(self, local_batch: int) -> int:
        """Each document is its own inner step's whole batch."""
        return 1


@contextlib.contextmanager
def per_document_lora(view: ThetaView, docs: int):
    """For the duration, θ (``view.model``) holds one copy of its LoRA factors per document; yields the
    :class:`PerDocumentView` to pass to :func:`taalm_dist.meta.meta_gradient`. The copies start at θ's current
    adapters (gathered whole through :meth:`ThetaView.gathered` when ``view`` is sharded); the original adapter
    modules are put back afterwards, unchanged.

    Raises:
        ValueError: θ has trainable tensors outside LoRA factors (``theta.trainable: full``), or ``docs < 1``.
    """
    if docs < 1:
        raise ValueError(f"docs={docs} must be >= 1")
    model = view.model
    lora_linear = _peft_lora_linear()
    swapped, layers = [], []
    for module in model.modules():
        for attr in ("lora_A", "lora_B"):
            factors = getattr(module, attr, None)
            if not isinstance(factors, nn.ModuleDict):
                continue
            for key, linear in list(factors.items()):
                if isinstance(linear, nn.Linear) and linear.weight.requires_grad and linear.bias is None:
                    swapped.append((factors, key, linear))
        if lora_linear is not None and type(module) is lora_linear:
            layers.append(module)
    try:
        with view.gathered([linear.weight for _, _, linear in swapped]):  # whole factors of a sharded θ
            for factors, key, linear in swapped:
                factors[key] = PerDocumentLinear(linear.weight, docs)
        outside = [n for n, p in trainable_parameters(model) if not isinstance(_owner(model, n), PerDocumentLinear)]
        if not swapped or outside:
            raise ValueError("per-document inner steps batch θ's LoRA adapters, but θ trains "
                             f"{outside[:3] if outside else 'no LoRA factor'}: use theta.trainable=lora, or run the "
                             "documents one after another (train.docs_per_pass=1)")
        with replaced_forwards((layer, batched_lora_forward) for layer in layers):
            yield PerDocumentView(model, view.fn, docs)
    finally:
        for factors, key, linear in swapped:
            factors[key] = linear


def _peft_lora_linear() -> type | None:
    """peft's LoRA ``Linear`` layer class (the one :func:`batched_lora_forward` reimplements), None without peft."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # peft is what adds LoRA; without it there is nothing to fuse
        return None
    return Linear


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model
