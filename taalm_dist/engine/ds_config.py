"""The DeepSpeed configs of θ and φ, generated from the one config (never written by hand).

θ's engine is never stepped: it exists to shard θ and to reduce the gradients the inner step needs, so
its optimizer is a torch SGD with lr 0 (``zero_allow_untested_optimizer``). φ's engine trains φ with
AdamW (``torch_adam``: no fused_adam JIT build on CPU) and accumulates over the passes of θ of one φ
update (a pass: ``docs_per_inner_step`` documents sharing one θ', or ``docs_per_pass`` documents with one θ'
each; each rank holds 1/N of them). A JSON override (``engine.ds_config_override``) is merged over both; the resolved pair is saved
with the run as ``ds_config.json``.

[mixed precision note] No ``bf16`` section: DeepSpeed's bf16 mode would cast the whole module, adapters
included, to bfloat16. The frozen base is loaded in ``*.model.dtype`` (bfloat16 on GPUs) and the trainable
tensors stay float32 (:func:`taalm_dist.models.lora.keep_trainable_float32`), so DeepSpeed runs its fp32
path on them: fp32 optimizer state, fp32 gradients, and the finite difference of the meta-gradient taken in
fp32 on fp32 partitions.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from taalm_dist.config import MetaTrainConfig
from taalm_dist.errors import ConfigError


def _zero3(cfg) -> dict:
    z = {"stage": 3, "overlap_comm": False, "contiguous_gradients": True}
    if cfg.engine.param_persistence_threshold is not None:
        z["stage3_param_persistence_threshold"] = cfg.engine.param_persistence_threshold
    return z


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_override(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"engine.ds_config_override={path}: file does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"engine.ds_config_override={path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"engine.ds_config_override={path}: must be a JSON object")
    return data


def docs_per_pass_unit(cfg: MetaTrainConfig) -> int:
    """Documents of one pass of θ in a φ update: ``docs_per_pass`` with per-document inner steps, else
    ``docs_per_inner_step`` (the documents one θ' learns jointly)."""
    return max(cfg.train.docs_per_inner_step, cfg.train.docs_per_pass)


def local_docs_per_pass(cfg: MetaTrainConfig, world: int) -> int:
    """Documents each rank holds in one pass of θ; refuses a count the ranks cannot share evenly."""
    t = cfg.train
    n, key = (t.docs_per_pass, "docs_per_pass") if t.docs_per_pass > 1 else (t.docs_per_inner_step, "docs_per_inner_step")
    if n % world:
        raise ConfigError(f"train.{key}={n} must be a multiple of the number of processes ({world}): "
                          "every rank takes the same number of documents")
    return n // world


def phi_backwards_per_update(cfg: MetaTrainConfig) -> int:
    """φ's backward passes in one φ update (its DeepSpeed ``gradient_accumulation_steps``): one per pass of θ."""
    return cfg.train.docs_per_step // docs_per_pass_unit(cfg)


def ds_configs(cfg: MetaTrainConfig, world: int) -> dict[str, dict]:
    """``{"theta": ..., "phi": ...}`` DeepSpeed configs for ``world`` processes."""
    local = local_docs_per_pass(cfg, world)
    passes = phi_backwards_per_update(cfg)
    common = {"zero_optimization": _zero3(cfg), "steps_per_print": 10**9, "wall_clock_breakdown": False}
    theta = {**common, "train_micro_batch_size_per_gpu": local, "gradient_accumulation_steps": 1,
             "train_batch_size": local * world, "zero_allow_untested_optimizer": True}
    phi = {**common, "train_micro_batch_size_per_gpu": local, "gradient_accumulation_steps": passes,
           "train_batch_size": local * passes * world,
           "optimizer": {"type": "AdamW", "params": {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay,
                                                    "torch_adam": True, "betas": [0.9, 0.999], "eps": 1e-8}}}
    if cfg.train.grad_clip is not None:
        phi["gradient_clipping"] = cfg.train.grad_clip
    override = load_override(cfg.engine.ds_config_override)
    return {"theta": _merge(theta, override), "phi": _merge(phi, override)}


def theta_learning_config(cfg, batch_size: int, lr: float, world: int) -> dict:
    """DeepSpeed config of θ learning documents data parallel (``ckl run``, ``taalm learn``; ``cfg`` their program
    config): each rank holds ceil(batch_size / world) documents of a batch, AdamW (torch_adam, ``lr``), no
    accumulation."""
    local = -(-batch_size // world)
    config = {"zero_optimization": _zero3(cfg), "steps_per_print": 10**9, "wall_clock_breakdown": False,
              "train_micro_batch_size_per_gpu": local, "gradient_accumulation_steps": 1,
              "train_batch_size": local * world,
              "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.0, "torch_adam": True}}}
    return _merge(config, load_override(cfg.engine.ds_config_override))


def save_ds_configs(configs: dict[str, dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps(configs, indent=2, sort_keys=True))
