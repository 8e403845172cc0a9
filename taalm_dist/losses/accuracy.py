"""Teacher-forced accuracy on marked tokens: how LAMA-CKL, ``taalm learn`` and φ's CKL validation score θ.

Token i of a marked span counts as right when ``argmax logits[i-1] == input_ids[i]``.
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
