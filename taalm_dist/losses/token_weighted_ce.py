"""The token-weighted loss (TWL) of docs/design.md §1, in eager PyTorch: the specification.

Conventions, used everywhere in the package:

* ``input_ids``, ``attention_mask``, ``weights`` all have shape ``[B, L]``.
* Position ``i - 1`` predicts token ``i``; ``loss[b, i]`` is the NLL of token ``i`` and ``weights[b, i]``
  weighs it. Column 0 predicts nothing: ``loss[:, 0] == 0`` and ``weights[:, 0]`` is unused.
* A position ``i`` is *valid* when both token ``i`` and token ``i - 1`` are real (attention mask 1).
  Invalid positions contribute nothing, whatever their weight.
* Per sequence ``TW_b = Σ_i w_bi ℓ_bi / (Σ_i w_bi + WEIGHT_SUM_EPS)`` over valid ``i``; the batch loss is
  the mean of ``TW_b`` over sequences. All-zero weights or an empty sequence give ``TW_b = 0``.
* Losses are computed in at least fp32 (``float64`` stays ``float64``) whatever the logits' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

WEIGHT_SUM_EPS = 1e-6  # [weight-sum eps note] keeps S_b > 0 so all-zero weights give 0, not NaN

PerTokenLossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]
"""``fn(model, batch) -> [B, L]`` per-token NLL (zero where invalid), at least fp32.

The meta-gradient and the trainers take one of these, so a fused kernel or a sharded engine can replace
the eager default without touching them."""


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses are accumulated in: fp32, or fp64 when the inputs are fp64."""
    return torch.promote_types(dtype, torch.float32)


def next_token_valid_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: position ``i`` is predicted (from ``i-1``) and both tokens are real."""
    mask = attention_mask.bool()
    valid = torch.zeros_like(mask)
    valid[:, 1:] = mask[:, 1:] & mask[:, :-1]
    return valid


def per_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token NLL per position.

    Args:
        logits: ``[B, L, V]`` model outputs; ``logits[b, i-1]`` predicts ``input_ids[b, i]``.
        input_ids: ``[B, L]`` token ids.
        attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.

    Returns:
        ``[B, L]`` NLL in nats (fp32, or fp64 for fp64 logits); 0 at column 0 and at invalid positions.
    """
    B, L = input_ids.shape
    out = torch.zeros(B, L, dtype=loss_dtype(logits.dtype), device=logits.device)
    if L < 2:
        return out
    logp = F.log_softmax(logits[:, :-1].to(out.dtype), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    valid = next_token_valid_mask(attention_mask)
    out[:, 1:] = torch.where(valid[:, 1:], nll, torch.zeros_like(nll))
    return out


def token_weighted_mean(per_token: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Batch TWL from per-token losses: ``mean_b Σ_i w ℓ / (Σ_i w + eps)`` over valid positions.

    Args:
        per_token: ``[B, L]`` per-token losses.
        weights: ``[B, L]`` non-negative token weights (any float dtype; promoted like the loss).
        valid: ``[B, L]`` bool mask of positions that count.

    Returns:
        A scalar: the mean over sequences of each sequence's weighted mean loss. Differentiable in both
        ``per_token`` and ``weights``.
    """
    dtype = torch.promote_types(per_token.dtype, weights.dtype)
    w = weights.to(dtype) * valid.to(dtype)
    num = (w * per_token.to(dtype)).sum(dim=1)
    den = w.sum(dim=1) + WEIGHT_SUM_EPS
    return (num / den).mean()


@dataclass
class TokenWeightedLoss:
    """Result of :func:`token_weighted_ce`.

    Attributes:
        loss: scalar batch TWL (differentiable).
        per_token: ``[B, L]`` NLL per position (0 where invalid).
        valid: ``[B, L]`` bool mask of positions that count.
    """

    loss: torch.Tensor
    per_token: torch.Tensor
    valid: torch.Tensor


def token_weighted_ce(
    logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor, attention_mask: torch.Tensor
) -> TokenWeightedLoss:
    """The eager fp32 token-weighted cross-entropy (the spec): see the module docstring.

    Args:
        logits: ``[B, L, V]``; input_ids, weights, attention_mask: ``[B, L]``.
    """
    if weights.shape != input_ids.shape:
        raise ValueError(f"weights has shape {tuple(weights.shape)}, expected input_ids' {tuple(input_ids.shape)}")
    per_token = per_token_nll(logits, input_ids, attention_mask)
    valid = next_token_valid_mask(attention_mask)
    return TokenWeightedLoss(token_weighted_mean(per_token, weights, valid), per_token, valid)


def eager_per_token_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Default :data:`PerTokenLossFn`: one forward of ``model``, full logits, fp32 log-softmax."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return per_token_nll(logits, batch["input_ids"], batch["attention_mask"])
