"""Exact-precision switches for the float64 reference path.

[float64 note] Hugging Face Llama-family models silently compute in fp32 even when the model is fp64:
RMSNorm casts its input to fp32 and eager attention takes its softmax in fp32. That caps any
comparison at ~1e-7 relative error, which hides the difference between an exact and an approximate
meta-gradient. ``ATTN_DIFFERENTIABLE_EAGER`` is an eager attention that keeps fp64 (and is
differentiable to any order and in forward mode), and :func:`keep_float64_in_norms` makes the norms
compute in ``max(fp32, input dtype)``. Neither changes anything for fp32/bf16 models.
"""

from __future__ import annotations

import contextlib
import types
from typing import Callable, Iterable

import torch
from torch import nn

ATTN_DIFFERENTIABLE_EAGER = "taalm_eager"
"""``attn_implementation`` name of the dtype-preserving eager attention registered here."""

_registered = False


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _dtype_preserving_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention whose softmax runs in ``max(fp32, query.dtype)``; same contract as HF's eager."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    compute = torch.promote_types(query.dtype, torch.float32)
    probs = torch.softmax(scores, dim=-1, dtype=compute).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def register_attention() -> None:
    """Register :data:`ATTN_DIFFERENTIABLE_EAGER` with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTN_DIFFERENTIABLE_EAGER, _dtype_preserving_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_DIFFERENTIABLE_EAGER, eager_mask)
    _registered = True


def _rmsnorm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    compute = torch.promote_types(hidden_states.dtype, torch.float32)
    x = hidden_states.to(compute)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * x.to(hidden_states.dtype)


def keep_float64_in_norms(model: nn.Module) -> int:
    """Make every Llama-style RMSNorm in ``model`` compute in ``max(fp32, input dtype)``.

    Returns the number of norms changed. Only needed (and only applied by the loaders) for fp64 models.
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rmsnorm_forward, module)
            changed += 1
    return changed


_LOW = (torch.bfloat16, torch.float16)


class _FrozenLinearFloat32(torch.autograd.Function):
    """``x·Wᵀ + b`` in float32 for a frozen low-precision ``W`` (and ``b``), keeping ``W`` itself for the backward and
    the forward-mode tangent and making its float32 copy again there. ``F.linear(x, W.float())`` would keep the
    float32 copy alive in the graph until the backward: twice the base's bytes for every layer between the
    forward and the backward (Llama-2-7B, no checkpointing: 26 GB on top of its 13 GB bf16 base)."""

    @staticmethod
    def forward(x, weight, bias):
        return nn.functional.linear(x, weight.float(), None if bias is None else bias.float())

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, _ = inputs
        ctx.save_for_backward(weight)
        ctx.save_for_forward(weight)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.float(), None, None

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent):
        (weight,) = ctx.saved_tensors
        return nn.functional.linear(x_tangent, weight.float())


def _float32_linear(self, x: torch.Tensor) -> torch.Tensor:
    frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if frozen and torch.is_grad_enabled():
        return _FrozenLinearFloat32.apply(x.float(), self.weight, self.bias)
    bias = None if self.bias is None else self.bias.float()
    return nn.functional.linear(x.float(), self.weight.float(), bias)


def _float32_embedding(self, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                                   self.scale_grad_by_freq, self.sparse).float()


@contextlib.contextmanager
def float32_compute(model: nn.Module):
    """For the duration, ``model`` computes in float32 although its weights stay bfloat16/float16 (no copy of the
    model: each linear layer upcasts its weight for its own call, embeddings upcast the rows they return).

    [mixed precision note] The meta-gradient's finite difference ``(ℓ(θ₊) − ℓ(θ₋)) / 2ε`` divides the rounding
    noise of the two forwards by ε: with bfloat16 activations (relative rounding 2⁻⁸) it swamps the difference
    (measured on the tiny Llama, bf16 base + fp32 LoRA, ε = 1e-3: cosine 0.56 to the fp32 answer for an SGD inner
    step, −0.01 for AdamW). The two difference forwards therefore run under this context. Layers whose weight is
    not bf16/fp16 (float32 adapters, 4-bit bitsandbytes layers) are left alone; a float32 model is unchanged."""
    with replaced_forwards((m, _float32_forward(m)) for m in model.modules()) as count:
        yield count


def _float32_forward(m: nn.Module):
    """The float32 forward for a bf16/fp16 linear or embedding layer, else None."""
    if type(m) is nn.Linear and m.weight.dtype in _LOW:
        return _float32_linear
    if type(m) is nn.Embedding and m.weight.dtype in _LOW:
        return _float32_embedding
    return None


@contextlib.contextmanager
def replaced_forwards(replacements: Iterable[tuple[nn.Module, Callable | None]]):
    """For the duration, each ``(module, fn)`` pair's module runs ``fn(module, *args)`` as its forward (an instance
    attribute; ``fn`` None: left as it is). A module that already has a forward of its own (a nested call, or
    somebody else's patch) is left alone; afterwards only the forwards set here, if still in place, are removed.
    Yields how many modules were given ``fn``."""
    patched = []
    for m, fn in replacements:
        if fn is None or "forward" in m.__dict__:
            continue
        m.forward = types.MethodType(fn, m)
        patched.append((m, m.forward))
    try:
        yield len(patched)
    finally:
        for m, forward in patched:
            if m.__dict__.get("forward") is forward:
                del m.forward
