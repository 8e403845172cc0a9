"""Which parameters of θ / φ train: LoRA adapters (peft) or everything."""

from __future__ import annotations

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
    """``trainable="lora"``: add adapters; ``"full"``: every parameter requires grad."""
    if trainable == "lora":
        return add_lora(model, lora)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter that requires grad, in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
