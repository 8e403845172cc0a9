"""θ, the model that learns the documents: loaded, made trainable, optionally with activation checkpointing.

:func:`build_theta` is the one place θ is built (meta-training, ``ckl run``, ``taalm learn``, the benchmarks),
beside :func:`taalm_dist.models.train_attention.build_phi` for φ.
"""

from __future__ import annotations

import torch
from torch import nn

from taalm_dist.config import ThetaConfig
from taalm_dist.models.kadapter import add_kadapters
from taalm_dist.models.loading import load_causal_lm
from taalm_dist.models.lora import make_trainable


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing (works with LoRA and no-grad forwards)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # transformers >= 5.x name
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_theta(cfg: ThetaConfig, vocab_size: int, *, seed: int, device: torch.device | None = None,
                gradient_checkpointing: bool = False, kadapter_size: int | None = None) -> nn.Module:
    """θ loaded from ``cfg.model`` onto ``device`` and made trainable: ``cfg.trainable`` / ``cfg.lora``, or, with
    ``kadapter_size``, frozen with a K-Adapter of that bottleneck size after every decoder layer. The new trainable
    tensors are initialised under ``seed`` whatever loading consumed of the RNG (which is left as it was)."""
    theta = load_causal_lm(cfg.model, vocab_size=vocab_size, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kadapter_size is not None:
            add_kadapters(theta, kadapter_size)
        else:
            theta = make_trainable(theta, cfg.trainable, cfg.lora)
    if gradient_checkpointing:
        enable_gradient_checkpointing(theta)
    return theta
