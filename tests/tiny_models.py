"""Test helpers: tiny random Llamas (no network) and padded batches."""

from __future__ import annotations

import torch

from taalm_dist.config import LoraConfig, ModelSourceConfig, TinyModelConfig
from taalm_dist.models import load_causal_lm, make_trainable

VOCAB = 300  # the toy tokenizer has 388 tokens; tiny tests use the first 300 ids


def tiny_theta(dtype: str = "float64", trainable: str = "lora", seed: int = 0, lora_b_std: float = 0.05):
    """A 2-layer Llama (hidden 32) with LoRA on q/v/down (B ~ N(0, std²) so every adapter moves)."""
    spec = ModelSourceConfig(source="tiny", dtype=dtype, attn_implementation="taalm_eager",
                             tiny=TinyModelConfig(hidden_size=32, intermediate_size=64, seed=seed))
    model = load_causal_lm(spec)
    model = make_trainable(model, trainable, LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    if trainable == "lora":
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * lora_b_std)
    return model


def make_batches(seed: int = 0, doc_lengths=(9, 6), task_lengths=(6, 5), dtype=torch.float64):
    """Right-padded doc/task batches of different lengths, label masks on the last 2 task tokens, weights."""
    gen = torch.Generator().manual_seed(seed)
    B = len(doc_lengths)
    L, Lt = max(doc_lengths), max(task_lengths)
    doc = {"input_ids": torch.randint(4, VOCAB, (B, L), generator=gen), "attention_mask": torch.zeros(B, L, dtype=torch.long)}
    task = {"input_ids": torch.randint(4, VOCAB, (B, Lt), generator=gen), "attention_mask": torch.zeros(B, Lt, dtype=torch.long),
            "label_mask": torch.zeros(B, Lt, dtype=torch.long)}
    for b, (n, m) in enumerate(zip(doc_lengths, task_lengths)):
        doc["attention_mask"][b, :n] = 1
        doc["input_ids"][b, n:] = 0
        task["attention_mask"][b, :m] = 1
        task["input_ids"][b, m:] = 0
        task["label_mask"][b, m - 2 : m] = 1
    weights = torch.rand(B, L, generator=gen, dtype=dtype) * doc["attention_mask"]
    return doc, weights, task
