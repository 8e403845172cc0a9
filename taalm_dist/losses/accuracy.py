"""Teacher-forced scores on marked tokens: accuracy (how LAMA-CKL, ``taalm learn`` and φ's CKL validation score θ)
and negative log-likelihood (how TemporalWiki's probes score it).

Token i of a marked span counts as right when ``argmax logits[i-1] == input_ids[i]``; its NLL is
``−log softmax(logits[i-1])[input_ids[i]]``.
"""

from __future__ import annotations

import torch

from taalm_dist.losses.token_weighted_ce import next_token_valid_mask


def object_token_accuracy(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          label_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` fraction of each sequence's object tokens predicted right (teacher forced).

    Args:
        logits: ``[B, L, V]``; ``logits[b, i-1]`` predicts ``input_ids[b, i]``.
        input_ids, attention_mask, label_mask: ``[B, L]``; label_mask is 1 on the object's tokens.

    A sequence without object tokens scores 0 (it cannot be answered).
    """
    B, L = input_ids.shape
    right = torch.zeros(B, L, dtype=torch.bool, device=input_ids.device)
    if L > 1:
        right[:, 1:] = logits[:, :-1].argmax(-1) == input_ids[:, 1:]
    counted = next_token_valid_mask(attention_mask) & label_mask.bool()
    n = counted.sum(dim=1)
    return (right & counted).sum(dim=1).double() / n.clamp(min=1).double()


def object_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     label_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean negative log-likelihood (nats per token, float64) of each sequence's marked tokens, teacher
    forced; arguments as :func:`object_token_accuracy`. A sequence without marked tokens scores NaN (it has none to
    score: the callers refuse such items when they are built)."""
    B, L = input_ids.shape
    nll = torch.zeros(B, L, dtype=torch.float64, device=input_ids.device)
    if L > 1:
        logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        nll[:, 1:] = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    counted = next_token_valid_mask(attention_mask) & label_mask.bool()
    n = counted.sum(dim=1).double()
    return (nll * counted).sum(dim=1) / n.where(n > 0, torch.full_like(n, float("nan")))
