"""The LAMA-CKL methods: each is a token-weight rule plus, for some, a change to θ or to the data.

* finetune — uniform weights.            * oracle — weight 1 on the object's tokens only.
* taalm — φ's weights (a trained Train-Attention model).
* rho1 — keep the ``keep`` fraction of each document's tokens with the highest excess loss
  ℓ_θ − ℓ_ref (RHO-1; reference = θ₀, the model before this run).
* mix_review — uniform weights; each epoch also replays old-knowledge documents.
* recadam — uniform weights; the loss adds an annealed quadratic pull towards θ₀.
* kadapter — uniform weights; the base is frozen and only bottleneck adapters after each layer train.
* taalm+X — φ's weights with X's change.

The weight rules themselves are in :mod:`taalm_dist.weight_rules` (φ's CKL validation uses them too), the
K-Adapter modules in :mod:`taalm_dist.models.kadapter`.
"""

from __future__ import annotations

import math

import torch


def base_rule(method: str) -> str:
    """``taalm`` for the taalm methods, else the method's own rule name."""
    return "taalm" if method.startswith("taalm") else method


def mechanism(method: str) -> str | None:
    """The θ/data change of a method: mix_review, recadam, kadapter or None."""
    name = method.split("+", 1)[1] if "+" in method else method
    return name if name in ("mix_review", "recadam", "kadapter") else None


def recadam_lambda(step: int, k: float, t0: int) -> float:
    """RecAdam's annealing coefficient λ(t) = 1 / (1 + exp(−k (t − t₀))): the task loss's share."""
    return 1.0 / (1.0 + math.exp(-k * (step - t0)))


def quadratic_pull(params: list[torch.Tensor], start: list[torch.Tensor]) -> torch.Tensor:
    """Σ ‖θ − θ₀‖² over the trainable tensors."""
    return sum(((p - s) ** 2).sum() for p, s in zip(params, start))
