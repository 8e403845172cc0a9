"""The LAMA-CKL methods: each is a token-weight rule plus, for some, a change to θ or to the data.

* finetune — uniform weights.            * oracle — weight 1 on the object's tokens only.
* taalm — φ's weights (a trained Train-Attention model).
* rho1 — keep the ``keep`` fraction of each document's tokens with the highest excess loss
  ℓ_θ − ℓ_ref (RHO-1; reference = θ₀, the model before this run).
* mix_review — uniform weights; each epoch also replays old-knowledge documents.
* recadam — uniform weights; the loss adds an annealed quadratic pull towards θ₀.
* kadapter — uniform weights; the base is frozen and only bottleneck adapters after each layer train.
* taalm+X — φ's weights with X's change.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import nn

from taalm_dist.losses import eager_per_token_nll, next_token_valid_mask


def base_rule(method: str) -> str:
    """``taalm`` for the taalm methods, else the method's own rule name."""
    return "taalm" if method.startswith("taalm") else method


def mechanism(method: str) -> str | None:
    """The θ/data change of a method: mix_review, recadam, kadapter or None."""
    name = method.split("+", 1)[1] if "+" in method else method
    return name if name in ("mix_review", "recadam", "kadapter") else None


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
    """φ's weights for a document batch (no graph), each real token's at least ``floor``
    (:func:`~taalm_dist.models.train_attention.floor_weights`; 0: φ's own)."""

    def __init__(self, phi: nn.Module, floor: float = 0.0):
        self.phi, self.floor = phi.eval(), floor

    @torch.no_grad()
    def __call__(self, doc: dict) -> torch.Tensor:
        from taalm_dist.models.train_attention import floor_weights

        w = self.phi(doc["input_ids"], doc["attention_mask"]).float()
        return floor_weights(w, doc["attention_mask"], self.floor)


def recadam_lambda(step: int, k: float, t0: int) -> float:
    """RecAdam's annealing coefficient λ(t) = 1 / (1 + exp(−k (t − t₀))): the task loss's share."""
    return 1.0 / (1.0 + math.exp(-k * (step - t0)))


def quadratic_pull(params: list[torch.Tensor], start: list[torch.Tensor]) -> torch.Tensor:
    """Σ ‖θ − θ₀‖² over the trainable tensors."""
    return sum(((p - s) ** 2).sum() for p, s in zip(params, start))


class BottleneckAdapter(nn.Module):
    """K-Adapter-style module: h + up(gelu(down(h))), up initialised to zero (starts as identity)."""

    def __init__(self, hidden: int, size: int):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


def add_kadapters(model: nn.Module, size: int) -> nn.ModuleList:
    """Freeze ``model`` and add a trainable adapter after every decoder layer (forward hooks).

    Returns the adapters (also registered as ``model.kadapters`` so they save and move with it)."""
    from taalm_dist.models.train_attention import decoder_layers_owner

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    owner, name = decoder_layers_owner(getattr(base, "model", base))
    layers = getattr(owner, name)
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = next(model.parameters()).dtype
    adapters = nn.ModuleList(BottleneckAdapter(base.config.hidden_size, size) for _ in layers).to(dtype)
    for layer, adapter in zip(layers, adapters):
        def hook(_module, _inputs, output, adapter=adapter):
            if isinstance(output, tuple):
                return (adapter(output[0]),) + tuple(output[1:])
            return adapter(output)

        layer.register_forward_hook(hook)
    model.kadapters = adapters
    return adapters
