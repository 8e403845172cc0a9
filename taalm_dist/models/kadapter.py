"""K-Adapter-style bottleneck adapters: the base frozen, a trainable adapter after every decoder layer."""

from __future__ import annotations

import torch
from torch import nn

from taalm_dist.models.train_attention import decoder_layers_owner


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
