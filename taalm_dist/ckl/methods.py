"""The pieces of the CKL methods that are numbers, not programs: RecAdam's annealing and pull term. The methods
themselves (a weight rule and a change to θ, its loss or its data, looked up by name) are
:mod:`taalm_dist.programs.methods`; the weight rules :mod:`taalm_dist.weight_rules`, the K-Adapter modules
:mod:`taalm_dist.models.kadapter`.
"""

from __future__ import annotations

import math

import torch


def recadam_lambda(step: int, k: float, t0: int) -> float:
    """RecAdam's annealing coefficient λ(t) = 1 / (1 + exp(−k (t − t₀))): the task loss's share."""
    return 1.0 / (1.0 + math.exp(-k * (step - t0)))


def quadratic_pull(params: list[torch.Tensor], start: list[torch.Tensor]) -> torch.Tensor:
    """Σ ‖θ − θ₀‖² over the trainable tensors."""
    return sum(((p - s) ** 2).sum() for p, s in zip(params, start))
