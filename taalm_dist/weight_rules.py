"""Token-weight rules: ``rule(doc_batch) -> [B, L]`` weights of θ's per-token loss (no graph).

uniform (fine-tuning), oracle (the object's tokens only), RHO-1 (highest excess loss against θ₀) and φ (a
meta-trained Train-Attention model). ``taalm ckl run`` learns with them (:mod:`taalm_dist.ckl.methods`), φ's CKL
validation compares φ against the first two.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from taalm_dist.losses import eager_per_token_nll, next_token_valid_mask


def uniform_weights(doc: dict) -> torch.Tensor:
    """``[B, L]`` 1 on real tokens."""
    return doc["attention_mask"].float()


def oracle_weights(doc: dict) -> torch.Tensor:
    """``[B, L]`` 1 exactly on the object's tokens in the document (``object_mask``), 0 elsewhere."""
    return (doc["object_mask"] * doc["attention_mask"]).float()


def top_fraction_mask(scores: torch.Tensor, valid: torch.Tensor, keep: float) -> torch.Tensor:
    """``[B, L]`` 1 on the ``ceil(keep · n_valid)`` highest-scoring valid positions of each row."""
    out = torch.zeros_like(scores)
    masked = scores.masked_fill(~valid, float("-inf"))
    for b in range(scores.shape[0]):
        n = int(valid[b].sum())
        k = math.ceil(keep * n)
        if k:
            out[b, masked[b].topk(k).indices] = 1.0
    return out


class Rho1Weights:
    """RHO-1 selection: excess loss against a reference (θ₀ by default: LoRA adapters disabled, or a
    frozen copy of the initial weights when θ trains fully)."""

    def __init__(self, theta: nn.Module, keep: float):
        self.theta, self.keep = theta, keep
        self._frozen = None if hasattr(theta, "disable_adapter") else copy.deepcopy(theta).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _reference(self):
        if self._frozen is not None:
            yield self._frozen
        else:
            with self.theta.disable_adapter():
                yield self.theta

    @torch.no_grad()
    def __call__(self, doc: dict) -> torch.Tensor:
        current = eager_per_token_nll(self.theta, doc)
        with self._reference() as ref:
            reference = eager_per_token_nll(ref, doc)
        valid = next_token_valid_mask(doc["attention_mask"])
        return top_fraction_mask(current - reference, valid, self.keep)


class PhiWeights:
    """φ's weights for a document batch (no graph), each real token's at least ``floor`` and ``uniform_share`` of each
    document's weight spread uniformly (:func:`~taalm_dist.models.train_attention.applied_phi_weights`; 0: φ's own)."""

    def __init__(self, phi: nn.Module, floor: float = 0.0, uniform_share: float = 0.0):
        self.phi, self.floor, self.uniform_share = phi.eval(), floor, uniform_share

    @torch.no_grad()
    def __call__(self, doc: dict) -> torch.Tensor:
        from taalm_dist.models.train_attention import applied_phi_weights

        w = self.phi(doc["input_ids"], doc["attention_mask"]).float()
        return applied_phi_weights(w, doc["attention_mask"], self.floor, self.uniform_share)
