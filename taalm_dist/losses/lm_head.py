"""θ's per-token losses through the fused linear cross-entropy, for any causal LM the package trains.

:func:`per_token_loss_fn` turns ``loss.impl`` into the :data:`PerTokenLossFn` the meta-step and the CKL
trainer call. For ``chunked`` / ``triton`` the model runs its own forward (so LoRA, activation
checkpointing and DeepSpeed ZeRO-3's parameter gathering all apply as usual) with its output head swapped,
for that one call, for one that returns the per-token NLL from the final hidden states and the head's
weight (gathered by ZeRO-3 for the head's call, like any module's): the ``[tokens × vocab]`` logits are
never held whole, and the model's ``logits`` output is the ``[B, L]`` NLL.
"""

from __future__ import annotations

from typing import Mapping

import torch

from taalm_dist.errors import ConfigError
from taalm_dist.losses.fused_ce import chunked_per_token_nll
from taalm_dist.losses.token_weighted_ce import (PerTokenLossFn, eager_per_token_nll, next_token_valid_mask,
                                                 token_weighted_mean)


def resolve_impl(impl: str, meta_method: str = "fd") -> str:
    """``eager``, ``chunked``, ``triton`` or ``auto`` for ``loss.impl``: ``auto`` stays ``auto`` (the fused loss
    then chooses per call by the tensors' device: triton for CUDA tensors when installed, else chunked), except
    that it is ``eager`` when ``meta_method`` differentiates through the loss twice or forward-mode."""
    if impl == "auto" and meta_method in ("jvp", "double_backward"):
        return "eager"
    return impl


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The LM head of a HF causal LM, a PEFT model or a DeepSpeed engine; refused when it is not a plain linear
    layer without bias (e.g. LoRA on ``lm_head``: its weight alone would not be the head)."""
    inner = getattr(model, "module", model)  # DeepSpeed engine
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        raise ConfigError(f"loss.impl=chunked/triton needs θ's output head to be a bias-free torch.nn.Linear, got "
                          f"{type(head).__name__}: use loss.impl=eager (and no adapters on lm_head)")
    return head


def fused_per_token_nll(impl: str = "chunked", chunk: int | None = None) -> PerTokenLossFn:
    """A :data:`PerTokenLossFn` computing ``[B, L]`` NLL with :func:`chunked_per_token_nll` (see module doc)."""

    def fn(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        head = output_head(model)
        ids, mask = batch["input_ids"], batch["attention_mask"]

        def per_token_head(hidden: torch.Tensor) -> torch.Tensor:
            if hidden.shape[:2] != ids.shape:  # the model kept only some positions (logits_to_keep)
                raise RuntimeError(f"θ's head saw hidden states {tuple(hidden.shape)} for input_ids {tuple(ids.shape)}")
            return chunked_per_token_nll(hidden, head.weight.to(hidden.dtype), ids, mask, chunk=chunk, impl=impl)

        previous = head.__dict__.get("forward")  # e.g. float32_compute's upcasting forward
        head.forward = per_token_head
        try:
            return model(input_ids=ids, attention_mask=mask).logits
        finally:
            if previous is None:
                del head.forward  # back to nn.Linear.forward
            else:
                head.forward = previous

    return fn


def per_token_loss_fn(loss_cfg, meta_method: str = "fd") -> PerTokenLossFn:
    """The :data:`PerTokenLossFn` of a :class:`taalm_dist.config.LossConfig`."""
    impl = resolve_impl(loss_cfg.impl, meta_method)
    return eager_per_token_nll if impl == "eager" else fused_per_token_nll(impl, loss_cfg.chunk)


def token_weighted_loss(model: torch.nn.Module, batch: dict, weights: torch.Tensor, per_token_loss=None) -> torch.Tensor:
    """The mean over sequences of ``Σ_i w_i ℓ_i / (Σ_i w_i + 1e-6)`` over the positions whose loss counts: real
    (unpadded) next-token positions, minus those whose ``labels`` are -100 when the batch has labels (HF's
    convention: ``labels`` aligned with ``input_ids``) and those whose ``loss_mask`` is 0 when it has one.

    Args:
        model: a causal LM (HF, PEFT or wrapped by DeepSpeed/DDP).
        batch: ``input_ids``, ``attention_mask`` ``[B, L]`` (optional ``labels``, ``loss_mask``).
        weights: ``[B, L]`` token weights (``weights[b, i]`` weighs the loss of predicting token i).
        per_token_loss: ``fn(model, batch) -> [B, L]`` NLL; default: the fused loss of ``loss.impl: auto``.
    """
    if per_token_loss is None:
        from taalm_dist.config import LossConfig

        per_token_loss = per_token_loss_fn(LossConfig())
    valid = next_token_valid_mask(batch["attention_mask"])
    if batch.get("labels") is not None:
        labels = batch["labels"]
        known = labels != -100
        if not torch.equal(labels[known], batch["input_ids"][known]):
            raise ConfigError("labels differ from input_ids at positions that are not -100: the token-weighted loss "
                              "trains next-token prediction of input_ids (mask positions with -100 instead)")
        valid = valid & known
    if batch.get("loss_mask") is not None:
        valid = valid & batch["loss_mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return token_weighted_mean(per_token_loss(model, inputs), weights, valid)
