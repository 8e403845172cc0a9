"""Which parameters of θ / φ train: LoRA adapters (peft) or everything."""

from __future__ import annotations

import torch
from torch import nn

from taalm_dist.config import LoraConfig
from taalm_dist.errors import ConfigError


def add_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only the adapters require grad afterwards."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise ConfigError(
            f"lora.target_modules {missing} are not module names of {type(model).__name__}; "
            f"linear layers it has include: {sorted(n for n in present if 'proj' in n)[:10]}"
        )
    cfg = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)
    )
    return get_peft_model(model, cfg)


def make_trainable(model: nn.Module, trainable: str, lora: LoraConfig) -> nn.Module:
    """``trainable="lora"``: add adapters; ``"full"``: every parameter requires grad. Either way the trainable
    tensors are float32 (or wider) afterwards: see :func:`keep_trainable_float32`."""
    if trainable == "lora":
        model = add_lora(model, lora)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    keep_trainable_float32(model)
    return model


def keep_trainable_float32(model: nn.Module) -> int:
    """Cast every trainable bfloat16/float16 parameter of ``model`` to float32 in place (mixed precision: the
    frozen base keeps its low precision, updates and optimizer state are float32; a bfloat16 step loses small
    updates to rounding). Returns the number of tensors cast. LoRA layers cast their input to the adapter's
    dtype and their output back, so a float32 adapter on a bfloat16 base needs nothing else."""
    cast = 0
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            if hasattr(p, "ds_id"):  # already partitioned by zero.Init: its shards cannot be recast here
                raise ConfigError(f"{name} is trained but was loaded in {p.dtype} and partitioned by ZeRO-3: train in "
                                  "full from a float32 base (model.dtype: float32), or use trainable: lora")
            p.data = p.data.float()
            cast += 1
    return cast


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter that requires grad, in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
