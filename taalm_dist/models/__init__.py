"""θ and φ: loading (hub id, local dir, GGUF, tiny), LoRA wiring, the Train-Attention model."""

from taalm_dist.models.loading import check_same_tokenizer, load_causal_lm, load_tokenizer
from taalm_dist.models.lora import make_trainable, trainable_parameters
from taalm_dist.models.theta import build_theta
from taalm_dist.models.train_attention import TrainAttention, build_phi, load_phi, save_phi

__all__ = [
    "TrainAttention",
    "build_phi",
    "build_theta",
    "check_same_tokenizer",
    "load_causal_lm",
    "load_phi",
    "load_tokenizer",
    "make_trainable",
    "save_phi",
    "trainable_parameters",
]
