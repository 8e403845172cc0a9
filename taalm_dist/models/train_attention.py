"""φ, the Train-Attention model: a causal-LM backbone whose LM head is a Linear(hidden, 1) + sigmoid.

``TrainAttention(input_ids, attention_mask)`` returns ``[B, L]`` weights in (0, 1): the output at
position i is ``w_i``, the weight of θ's loss of predicting token i (official convention). Padding
positions get weight 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from taalm_dist import integrity
from taalm_dist.config import PhiConfig, build, to_dict
from taalm_dist.errors import ConfigError, ModelError
from taalm_dist.models.loading import load_causal_lm
from taalm_dist.models.lora import make_trainable

PHI_WEIGHTS = "phi.safetensors"
PHI_CONFIG = "phi_config.json"


def decoder_layers_owner(backbone: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the ``nn.ModuleList`` of decoder layers, and its attribute name."""
    for owner in (backbone, getattr(backbone, "decoder", None)):
        if owner is None:
            continue
        for name in ("layers", "h", "blocks"):
            if isinstance(getattr(owner, name, None), nn.ModuleList):
                return owner, name
    raise ModelError(f"cannot find the decoder layers of {type(backbone).__name__} to truncate φ")


def truncate_layers(backbone: nn.Module, k: int) -> None:
    """Keep the first ``k`` decoder layers (a cheaper φ); updates the config to match."""
    owner, name = decoder_layers_owner(backbone)
    layers = getattr(owner, name)
    if k > len(layers):
        raise ModelError(f"phi.num_layers={k} but the backbone has only {len(layers)} layers")
    setattr(owner, name, nn.ModuleList(list(layers)[:k]))
    cfg = backbone.config
    cfg.num_hidden_layers = k
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[:k]


class TrainAttention(nn.Module):
    """φ: backbone + TA head. Official head init: weight ~ N(0, std²), bias = 4.0 (w starts near 0.98)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, head_init_std: float = 1e-3, head_init_bias: float = 4.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.head.weight.normal_(0.0, head_init_std)
            self.head.bias.fill_(head_init_bias)
        # trainable: float32 even on a bfloat16 backbone (float64 on the float64 reference backbone)
        self.head.to(torch.promote_types(next(backbone.parameters()).dtype, torch.float32))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: bool = False):
        """``[B, L]`` token weights in (0, 1) (fp32 or wider), 0 where ``attention_mask`` is 0; with ``features``,
        also ``[B, H]`` float32: the backbone's last hidden state averaged over each row's real tokens (what
        :mod:`taalm_dist.familiarity` measures a document's familiarity on)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logit = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)
        w = torch.sigmoid(logit)
        w = w * attention_mask.to(w.dtype)
        return (w, pooled_features(hidden, attention_mask)) if features else w


def pooled_features(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, H]`` float32 mean of ``hidden`` ``[B, L, H]`` over each row's real tokens (``attention_mask`` 1)."""
    m = attention_mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


def floor_weights(weights: torch.Tensor, attention_mask: torch.Tensor, floor: float) -> torch.Tensor:
    """φ's ``[B, L]`` weights with every real token's raised to at least ``floor`` (padding stays 0).

    A do-no-harm floor for documents φ was not trained on: the token-weighted loss divides by Σw, so where φ
    recognises nothing (all its weights ≪ ``floor``) θ learns the document almost uniformly, as plain fine-tuning
    would, instead of from whichever token φ's near-zero weights happen to favour; where φ is confident (weights
    ≫ ``floor`` on the tokens it picks) its focus barely changes. ``floor`` = 0 returns ``weights`` unchanged.
    """
    if not floor:
        return weights
    return weights.clamp_min(floor) * attention_mask.to(weights.dtype)


def build_phi(cfg: PhiConfig, vocab_size: int | None = None, seed: int = 0,
              device: torch.device | None = None) -> TrainAttention:
    """Build φ from its config: load the backbone, truncate, add the head, mark what trains (on the CPU
    unless a 4-bit backbone is loaded onto ``device``; ``device`` also chooses the attention)."""
    lm = load_causal_lm(cfg.model, vocab_size=vocab_size, device=device)
    backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
    del lm  # the LM head is not part of φ
    if cfg.num_layers is not None:
        truncate_layers(backbone, cfg.num_layers)
    for p in backbone.parameters():
        p.requires_grad_(False)
    hidden = backbone.config.hidden_size
    with torch.random.fork_rng(devices=[]):  # adapters and head start the same whatever loading consumed
        torch.manual_seed(seed)
        backbone = make_trainable(backbone, cfg.trainable, cfg.lora)
        phi = TrainAttention(backbone, hidden, cfg.head_init_std, cfg.head_init_bias)
    return phi


def phi_state(phi: TrainAttention) -> dict[str, torch.Tensor]:
    """The tensors that define a trained φ beyond its backbone source: every trainable tensor."""
    return {n: p.detach().contiguous().cpu() for n, p in phi.named_parameters() if p.requires_grad}


FAMILIARITY_FILES = ("familiarity.json", "familiarity.safetensors")
"""φ's familiarity record in its directory (:mod:`taalm_dist.familiarity`): written after the φ and its integrity
record, checked by its own hash and φ's fingerprint."""
PHI_FORMAT = 1
"""The ``format`` of ``phi_config.json`` this version writes and reads."""


def save_phi(phi: TrainAttention | dict, cfg: PhiConfig, out_dir: str | Path,
             extra: dict[str, str] | None = None) -> Path:
    """Write ``phi.safetensors`` (trainable tensors), ``phi_config.json``, the text files ``extra`` (name → text,
    e.g. ``selection.json``) and their integrity record (``integrity.json``, :mod:`taalm_dist.integrity`) into
    ``out_dir``.

    ``phi`` is the module or an already gathered :func:`phi_state` (e.g. from a ZeRO-3 engine). A state with a NaN
    or an infinity is refused (:class:`ModelError`): a φ that cannot weigh is never exported."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = phi if isinstance(phi, dict) else phi_state(phi)
    integrity.require_finite(state, f"φ to be saved in {out}", "it is not written; lower the learning rates "
                             "(train.lr, meta.inner_lr) or check the data", ModelError)
    out.mkdir(parents=True, exist_ok=True)
    for name in FAMILIARITY_FILES:  # a record of the weights being replaced describes another φ
        (out / name).unlink(missing_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / PHI_WEIGHTS))
    (out / PHI_CONFIG).write_text(json.dumps({"format": PHI_FORMAT, "phi": to_dict(cfg)}, indent=2))
    for name, text in (extra or {}).items():
        (out / name).write_text(text)
    integrity.write_record(out)
    return out


def phi_fingerprint(path: str | Path) -> dict[str, str]:
    """SHA-256 of the files that define a saved φ (``{"phi.safetensors": ..., "phi_config.json": ...}``): what a
    resumed ``learn`` or ``ckl run`` compares, so a φ changed in place (weights or config) is not resumed with."""
    p = Path(path)
    return {name: integrity.file_sha256(p / name) for name in (PHI_WEIGHTS, PHI_CONFIG) if (p / name).is_file()}


def read_phi_config(path: str | Path) -> dict:
    """The ``phi`` section of a saved φ's ``phi_config.json``, checked: a readable JSON object of the format this
    version writes. Raises :class:`ModelError` naming the file and what is wrong."""
    p = Path(path)
    if not (p / PHI_CONFIG).is_file() or not (p / PHI_WEIGHTS).is_file():
        raise ModelError(f"{p} is not a saved φ: expected {PHI_CONFIG} and {PHI_WEIGHTS} in it")
    try:
        meta = json.loads((p / PHI_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{p / PHI_CONFIG} is not readable JSON ({e}); re-export φ (`taalm meta-train` writes "
                         "phi/) or restore the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("phi"), dict):
        raise ModelError(f"{p / PHI_CONFIG}: expected an object with a \"phi\" section; re-export φ")
    if meta.get("format") != PHI_FORMAT:
        raise ModelError(f"{p / PHI_CONFIG}: format {meta.get('format')!r} is not one this version reads "
                         f"({PHI_FORMAT}); export φ with this version of taalm_dist")
    return meta["phi"]


def load_phi_tokenizer(path: str | Path):
    """The tokenizer of a saved φ's backbone (what θ's tokenizer must equal for φ's weights to line up)."""
    from taalm_dist.config import ModelSourceConfig
    from taalm_dist.models.loading import load_tokenizer

    return load_tokenizer(build(ModelSourceConfig, read_phi_config(path).get("model", {}), "phi.model."))


def load_phi(path: str | Path, device: torch.device | None = None) -> TrainAttention:
    """Rebuild φ saved by :func:`save_phi` (in a single process, no DeepSpeed); ``device`` as in :func:`build_phi`
    (the caller moves φ there).

    Raises:
        ModelError: naming the file and the fix, for a directory that is not a φ, a damaged file (its integrity
            record, a truncated or unreadable safetensors, an invalid config), tensors of other names or shapes
            than its config builds, and non-finite values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    phi_cfg = read_phi_config(p)
    damaged = integrity.verify_record(p)
    if damaged:
        raise ModelError(f"{p} is damaged: {'; '.join(damaged[:3])}; re-export φ or restore it from a copy")
    try:
        state = load_file(str(p / PHI_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{p / PHI_WEIGHTS} is not a readable safetensors file ({e}); re-export φ or restore "
                         "it from a copy") from None
    integrity.require_finite(state, str(p / PHI_WEIGHTS), "this φ cannot weigh tokens; use an earlier export "
                             "(best_phi/, a checkpoint) or meta-train again", ModelError)
    try:
        cfg = build(PhiConfig, phi_cfg, "phi.")
    except ConfigError as e:
        raise ModelError(f"{p / PHI_CONFIG}: {e}") from None
    phi = build_phi(cfg, device=device)
    expected = {k: tuple(v.shape) for k, v in phi_state(phi).items()}
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state))[:3], sorted(set(state) - set(expected))[:3]
        raise ModelError(f"{p / PHI_WEIGHTS} does not match its config: missing {missing}, unexpected {unexpected}")
    shapes = [f"{k} {tuple(v.shape)} (config builds {expected[k]})" for k, v in state.items()
              if tuple(v.shape) != expected[k]]
    if shapes:
        raise ModelError(f"{p / PHI_WEIGHTS} does not match its config: {', '.join(shapes[:3])}")
    phi.load_state_dict(state, strict=False)
    return phi
