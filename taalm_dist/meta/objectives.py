"""Meta-objectives: how the updated θ' is scored on the task T_D (lower is better).

All are per sequence, then the mean over sequences (so N ranks × 1 document == 1 process × N documents).

* ``task_nll`` — mean NLL of the object's tokens (``label_mask`` = 1), the official ``TD_label``.
* ``task``     — mean NLL of every next-token position of T_D.
* ``change2`` / ``change3`` — mean over the object's tokens of the signed power ``sign(Δ)|Δ|^p`` of
  the change of per-token NLL against θ₀, ``Δ = ℓ(θ') − ℓ(θ₀)`` (p = 2, 3): large drops count more.
* restrict term — ``|NLL(θ', T_U) − NLL(θ₀, T_U)|`` per sequence on an unrelated task T_U (stability).

A sequence with no counted token contributes 0.
"""

from __future__ import annotations

from typing import Mapping

import torch

from taalm_dist.losses import next_token_valid_mask

OBJECTIVES = ("task_nll", "task", "change2", "change3")
NEEDS_BEFORE = ("change2", "change3")


def _masked_seq_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return ((values * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)).mean()


def objective_mask(name: str, task_batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[B, L]`` bool: the positions objective ``name`` averages over."""
    valid = next_token_valid_mask(task_batch["attention_mask"])
    if name == "task":
        return valid
    if "label_mask" not in task_batch:
        raise ValueError(f"objective {name!r} needs task_batch['label_mask'] (1 on the object's tokens)")
    return valid & task_batch["label_mask"].bool()


def objective_value(
    name: str,
    per_token: torch.Tensor,
    task_batch: Mapping[str, torch.Tensor],
    before: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar objective from θ''s per-token NLL on T_D.

    Args:
        name: one of :data:`OBJECTIVES`.
        per_token: ``[B, L]`` NLL of T_D under θ'.
        task_batch: ``input_ids``, ``attention_mask``, ``label_mask`` ``[B, L]``.
        before: ``[B, L]`` NLL of T_D under θ₀ (required by ``change2``/``change3``).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"objective={name!r} is not one of {OBJECTIVES}")
    mask = objective_mask(name, task_batch)
    if name in ("task_nll", "task"):
        return _masked_seq_mean(per_token, mask)
    if before is None:
        raise ValueError(f"objective {name!r} needs the per-token NLL before the update")
    p = 2 if name == "change2" else 3
    d = per_token - before
    return _masked_seq_mean(torch.sign(d) * d.abs().pow(p), mask)


def restrict_value(after: torch.Tensor, before: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Stability term: mean over sequences of ``|mean NLL(θ') − mean NLL(θ₀)|`` on T_U. ``[B, L]`` inputs."""
    valid = next_token_valid_mask(attention_mask).to(after.dtype)
    count = valid.sum(dim=1).clamp(min=1.0)
    return (((after - before) * valid).sum(dim=1) / count).abs().mean()
