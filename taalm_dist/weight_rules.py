"""Token-weight rules: ``rule(doc_batch) -> [B, L]`` weights of θ's per-token loss (no graph).

uniform (fine-tuning), oracle (the object's tokens only), RHO-1 (highest excess loss against θ₀) and φ (a
meta-trained Train-Attention model, with the do-no-harm rules applied to its weights: a floor and a uniform share). ``taalm ckl run`` learns with them (:mod:`taalm_dist.programs.methods`), φ's CKL
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


def mix_uniform(weights: torch.Tensor, attention_mask: torch.Tensor, share: float | torch.Tensor) -> torch.Tensor:
    """φ's ``[B, L]`` weights with a fixed ``share`` (a number, or ``[B]``: one per row) of each document's weight
    moved to uniform, whatever φ's scale.

    The token-weighted loss divides by each document's Σw, so only the shape of φ's weights counts, and that scale
    varies by orders of magnitude between documents; an absolute floor therefore takes most of the weight of some
    documents and none of others. This mix does not: over the positions the loss counts (token and predecessor real),
    ``w'_i = share + (1 - share) · n · w_i / Σ_j w_j`` (``n`` of them), so the weights average 1 (a fine-tuning token's
    weight) and the document's loss is exactly ``share`` × its uniform-weight loss + ``(1 - share)`` × φ's (up to the
    loss's Σw epsilon). ``share`` = 0 returns ``weights`` unchanged; 1 gives the attention mask, fine-tuning's weights.
    Position 0 (which the loss never counts) gets ``share``, padding 0.
    """
    if not torch.is_tensor(share) and not share:
        return weights
    if torch.is_tensor(share):  # one share per row
        share = share.to(weights.dtype).reshape(-1, 1)
    mask = attention_mask.to(weights.dtype)
    valid = next_token_valid_mask(attention_mask).to(weights.dtype)
    phi = weights * valid
    n = valid.sum(dim=1, keepdim=True)
    shape = phi * n / phi.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return share * mask + (1.0 - share) * shape


def applied_phi_weights(weights: torch.Tensor, attention_mask: torch.Tensor, floor: float = 0.0,
                        uniform_share: float = 0.0, abstain_share: torch.Tensor | None = None) -> torch.Tensor:
    """The ``[B, L]`` weights θ learns with from φ's: :func:`~taalm_dist.models.train_attention.floor_weights`, then
    :func:`mix_uniform` with each row's share the larger of ``uniform_share`` and its ``abstain_share`` (``[B]``,
    φ's abstention on documents it does not know: :mod:`taalm_dist.familiarity`; None: none) — all 0: φ's own.
    The one rule ``ckl run``, ``learn``, ``taalm weigh`` and :class:`~taalm_dist.weigh.TokenWeigher` apply."""
    from taalm_dist.models.train_attention import floor_weights

    share = uniform_share if abstain_share is None else abstain_share.to(weights.device).clamp_min(uniform_share)
    return mix_uniform(floor_weights(weights, attention_mask, floor), attention_mask, share)


class PhiWeights:
    """φ's weights for a document batch (no graph), each real token's at least ``floor`` and ``uniform_share`` of each
    document's weight spread uniformly (:func:`applied_phi_weights`; 0: φ's own); with ``familiarity`` (φ's
    :class:`~taalm_dist.familiarity.Familiarity` record), each document also gets its abstention share — at least the
    corpus share :meth:`set_corpus` was given (the documents learnt together, as a set).
    :attr:`abstained` accumulates the documents seen, the sum of their abstention shares and how many were uniform."""

    def __init__(self, phi: nn.Module, floor: float = 0.0, uniform_share: float = 0.0, familiarity=None):
        self.phi, self.floor, self.uniform_share = phi.eval(), floor, uniform_share
        self.familiarity = familiarity
        self.abstained = {"docs": 0, "share_sum": 0.0, "full": 0}
        self.corpus: dict | None = None
        """The corpus rule's verdict (:meth:`~taalm_dist.familiarity.Familiarity.corpus`) once :meth:`set_corpus`
        ran, else None (no floor under the documents' shares)."""
        self.last_distance: torch.Tensor | None = None
        self.last_share: torch.Tensor | None = None

    @torch.no_grad()
    def distances(self, doc: dict) -> torch.Tensor:
        """``[B]`` familiarity distances of a document batch (φ's forward; needs a record)."""
        return self.raw(doc)[1]

    def set_corpus(self, distances: torch.Tensor) -> dict:
        """Apply the corpus rule to the ``[N]`` distances of every document learnt together (:meth:`distances`);
        returns (and keeps in :attr:`corpus`) its verdict, whose ``share`` floors every document's share."""
        self.corpus = self.familiarity.corpus(distances)
        return self.corpus

    @torch.no_grad()
    def raw(self, doc: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One φ forward over a document batch: φ's own ``[B, L]`` weights (float32) and the ``[B]`` familiarity
        distances (None without a record) — what :meth:`apply` turns into the weights θ learns with."""
        if self.familiarity is None:
            return self.phi(doc["input_ids"], doc["attention_mask"]).float(), None
        w, features = self.phi(doc["input_ids"], doc["attention_mask"], features=True)
        return w.float(), self.familiarity.distance(features)

    def apply(self, weights: torch.Tensor, attention_mask: torch.Tensor, distance: torch.Tensor | None) -> torch.Tensor:
        """The ``[B, L]`` weights θ learns with from :meth:`raw`'s output: each document's abstention share from its
        ``distance`` (at least the corpus share), then :func:`applied_phi_weights`; counted in :attr:`abstained`."""
        if distance is None:
            return applied_phi_weights(weights, attention_mask, self.floor, self.uniform_share)
        self.last_distance = distance
        self.last_share = self.familiarity.share(distance)
        if self.corpus is not None:
            self.last_share = self.last_share.clamp_min(self.corpus["share"])
        self.abstained["docs"] += len(self.last_share)
        self.abstained["share_sum"] += float(self.last_share.sum())
        self.abstained["full"] += int((self.last_share >= 1).sum())
        return applied_phi_weights(weights, attention_mask, self.floor, self.uniform_share, self.last_share)

    def __call__(self, doc: dict) -> torch.Tensor:
        weights, distance = self.raw(doc)
        return self.apply(weights, doc["attention_mask"], distance)
